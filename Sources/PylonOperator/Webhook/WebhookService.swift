import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// The sidecar-injecting admission webhook as the operator runs it: the HTTPS server on every
/// replica (admission must not wait for a leader), its certificate kept current and trusted.
public final class WebhookService: Sendable {
    public struct Settings: Sendable {
        public var host: String
        public var port: Int
        public var certificates: WebhookCertificates.Source
        /// The MutatingWebhookConfiguration whose caBundle the operator keeps.
        public var configuration: String
        /// Native sidecars (restartable init containers): nil decides from the API server's
        /// version (Kubernetes 1.29 and later, where they are on by default).
        public var nativeSidecars: Bool?

        public init(host: String, port: Int, certificates: WebhookCertificates.Source, configuration: String = "pylon-sidecar-injector", nativeSidecars: Bool? = nil) {
            self.host = host
            self.port = port
            self.certificates = certificates
            self.configuration = configuration
            self.nativeSidecars = nativeSidecars
        }
    }

    let server: WebhookServer
    let certificates: WebhookCertificates
    let logger: Logger
    private let served: Mutex<WebhookCertificate>
    private let refresher: Mutex<Task<Void, Never>?> = Mutex(nil)
    /// The informers, when the webhook made its own (stopped with it).
    private let ownInformers: SharedInformers?
    public let admission: PodAdmission

    public var port: Int? { self.server.localAddress?.port }

    /// The certificate served now.
    public var certificate: WebhookCertificate { self.served.withLock { $0 } }

    /// With `informers` nil the webhook makes (and stops) its own; the operator passes the
    /// process's, which its reconcilers share.
    public static func start(client: KubeClient, renderer: RackRenderer, settings: Settings, informers shared: SharedInformers? = nil, logger: Logger) async throws -> WebhookService {
        let native: Bool
        if let chosen = settings.nativeSidecars { native = chosen } else { native = try await Self.supportsNativeSidecars(client) }
        // Racks and worlds kept in memory, so admitting a pod asks the API server nothing; one the
        // informer does not have (created a moment ago) is asked for before a pod is refused.
        let informers = shared ?? SharedInformers(client: client, namespace: nil, logger: logger)
        let (racks, worlds) = (informers.informer(Pylon.racks), informers.informer(Pylon.worlds))
        let admission = PodAdmission(injector: SidecarInjector(renderer: renderer, nativeSidecars: native)) { namespace, rackName in
            guard let rack = try await racks.get(PylonRack.self, namespace: namespace, name: rackName, orAsk: client) else { return (nil, nil) }
            return (rack, try await worlds.get(PylonWorld.self, namespace: namespace, name: rack.spec.world, orAsk: client))
        }
        let certificates = WebhookCertificates(client: client, source: settings.certificates, configuration: settings.configuration, logger: logger)
        let certificate = try await certificates.current()
        let server = try await WebhookServer.start(host: settings.host, port: settings.port, group: MultiThreadedEventLoopGroup.singleton, certificate: certificate) { path, body in
            guard path == "/mutate-pods" else { return (.notFound, Data("not found; the webhook is POST /mutate-pods\n".utf8)) }
            return (.ok, (await admission.review(body)).json.data)
        }
        let service = WebhookService(server: server, certificates: certificates, admission: admission, ownInformers: shared == nil ? informers : nil, served: certificate, logger: logger)
        logger.info("sidecar injection webhook serving", metadata: ["port": "\(server.localAddress?.port ?? settings.port)", "native_sidecars": "\(native)"])
        service.keepCurrent(every: Self.checkInterval(settings.certificates))
        return service
    }

    private init(server: WebhookServer, certificates: WebhookCertificates, admission: PodAdmission, ownInformers: SharedInformers?, served: WebhookCertificate, logger: Logger) {
        self.ownInformers = ownInformers
        self.server = server
        self.certificates = certificates
        self.admission = admission
        self.served = Mutex(served)
        self.logger = logger
    }

    /// How often the certificate is looked at: every minute, or more often for short-lived ones.
    static func checkInterval(_ source: WebhookCertificates.Source) -> Duration {
        guard case .secret(_, _, _, let validity) = source else { return .seconds(60) }
        return .milliseconds(Int64(min(60, max(0.5, validity / 20)) * 1000))
    }

    /// Serves a renewed certificate as soon as it exists, and keeps the configuration's caBundle
    /// (which someone may re-apply without it) equal to its CAs.
    private func keepCurrent(every interval: Duration) {
        let task = Task {
            while !Task.isCancelled {
                do {
                    let current = try await self.certificates.current()
                    if current != self.served.withLock({ $0 }) {
                        try self.server.use(current)
                        self.served.withLock { $0 = current }
                        self.logger.info("serving the renewed webhook certificate")
                    }
                    try await self.certificates.publish(current)
                } catch {
                    self.logger.warning("cannot renew or publish the webhook certificate; retrying", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: interval)
            }
        }
        self.refresher.withLock { $0 = task }
    }

    /// Native sidecars from Kubernetes 1.29 (beta, on by default there).
    static func supportsNativeSidecars(_ client: KubeClient) async throws -> Bool {
        let version = try await client.call("GET", "/version")
        let minor = Int((version["minor"]?.string ?? "").prefix { $0.isNumber }) ?? 0
        return Int(version["major"]?.string ?? "") ?? 0 > 1 || minor >= 29
    }

    public func stop() async {
        let task = self.refresher.withLock { $0 }
        task?.cancel()
        await task?.value
        await self.server.close()
        self.ownInformers?.stop()
    }
}
