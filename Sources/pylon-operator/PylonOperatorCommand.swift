import ArgumentParser
import Foundation
import Logging
import NIOPosix
import PylonOperator
import Shared
import ServiceLifecycle

/// `pylon-operator`: turns PylonWorlds and PylonRacks into running racks.
@main
struct PylonOperatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pylon-operator",
        abstract: "Reconcile PylonWorld and PylonRack objects into running racks.",
        version: Pylon.version
    )

    @Option(help: "A kubeconfig file (default: in-cluster service account, else KUBECONFIG, else ~/.kube/config).")
    var kubeconfig: String?
    @Option(help: "Watch only this namespace (default: every namespace).")
    var namespace: String?
    @Flag(name: .customLong("leader-elect"), help: "Run as one of several replicas: only the holder of the Lease reconciles.")
    var leaderElect = false
    @Option(name: .customLong("lease-namespace"), help: "Namespace of the leader-election Lease (default: the configuration's namespace).")
    var leaseNamespace: String?
    @Option(help: "This replica's identity in the Lease (default: the host name).")
    var identity: String?
    @Option(name: .customLong("lease-duration-s"), help: "A leader that has not renewed the Lease for this many seconds is replaced (default 15).")
    var leaseDuration = 15
    @Option(name: .customLong("sidecar-image"), help: "The pylon-sidecar image racks run unless they name one.")
    var sidecarImage = "ghcr.io/pylon/pylon-sidecar:latest"
    @Option(help: "Serve the sidecar-injection admission webhook (HTTPS, POST /mutate-pods) at HOST:PORT, e.g. 0.0.0.0:9443 (default: off).")
    var webhook: String?
    @Option(name: .customLong("webhook-hosts"), help: "Names and addresses the webhook's certificate is for, comma-separated (default: pylon-webhook.NAMESPACE.svc).")
    var webhookHosts: String?
    @Option(name: .customLong("webhook-cert-secret"), help: "The Secret (in the lease namespace) where the operator keeps the webhook certificate it makes and renews.")
    var webhookCertSecret = "pylon-webhook-cert"
    @Option(name: .customLong("webhook-cert-dir"), help: "Serve tls.crt/tls.key from this folder and trust ca.crt (a certificate another tool renews, e.g. cert-manager's) instead of making one.")
    var webhookCertDir: String?
    @Option(name: .customLong("webhook-cert-validity-s"), help: "Life of a certificate the operator makes, in seconds; renewed two thirds in (default: one year).")
    var webhookCertValidity = 365 * 24 * 3600
    @Option(name: .customLong("webhook-configuration"), help: "The MutatingWebhookConfiguration whose caBundle the operator keeps.")
    var webhookConfiguration = "pylon-sidecar-injector"
    @Option(name: .customLong("native-sidecars"), help: "auto (from the cluster's version: 1.29+), on or off: inject the sidecar as a restartable init container.")
    var nativeSidecars = "auto"
    @Option(help: "Admin HTTP address for /healthz, /readyz and /metrics.")
    var admin = "0.0.0.0:9490"
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel = "info"
    @Option(name: .customLong("log-format"), help: "text or json.")
    var logFormat = "text"

    func run() async throws {
        guard let level = Logger.Level(rawValue: self.logLevel) else { throw ValidationError("--log-level: expected one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))") }
        guard let format = LogFormat(rawValue: self.logFormat) else { throw ValidationError("--log-format: expected text or json") }
        let adminParts = self.admin.split(separator: ":")
        guard adminParts.count == 2, let adminPort = Int(adminParts[1]) else { throw ValidationError("--admin: expected HOST:PORT, got '\(self.admin)'") }
        PylonLogging.bootstrap(format: format, level: level)
        let logger = Logger(label: "pylon.operator")
        let config: KubeConfig
        do {
            config = try self.kubeconfig.map { try KubeConfig.kubeconfig(path: $0) } ?? ((try? KubeConfig.inCluster()) ?? KubeConfig.kubeconfig())
        } catch {
            throw ValidationError("\(error)")
        }
        let client = KubeClient(config: config)
        do {
            let versions = try await client.discoverVersions()
            logger.info("API versions served", metadata: ["versions": "\(versions.versions.sorted { $0.key < $1.key }.map { "\($0.key)/\($0.value)" })"])
        } catch {
            logger.critical("cannot use this Kubernetes API server", metadata: ["server": "\(config.server)", "error": "\(error)"])
            throw ExitCode.failure
        }
        // One informer per kind for the whole process: the reconcilers and the webhook share them.
        let informers = SharedInformers(client: client, namespace: self.namespace, logger: logger)
        let service = PylonOperatorService(client: client, settings: .init(namespace: self.namespace, renderer: .init(sidecarImage: self.sidecarImage)), informers: informers, logger: logger)
        let election = LeaderElection(
            client: client,
            settings: .init(
                namespace: self.leaseNamespace ?? config.namespace, identity: self.identity ?? ProcessInfo.processInfo.hostName,
                leaseDuration: .seconds(self.leaseDuration), retryPeriod: .milliseconds(max(200, self.leaseDuration * 1000 / 7))
            ),
            logger: logger
        )
        var webhook: WebhookService?
        if let address = self.webhook {
            let parts = address.split(separator: ":")
            guard parts.count == 2, let port = Int(parts[1]) else { throw ValidationError("--webhook: expected HOST:PORT, got '\(address)'") }
            let native: Bool?
            switch self.nativeSidecars {
            case "auto": native = nil
            case "on": native = true
            case "off": native = false
            default: throw ValidationError("--native-sidecars: expected auto, on or off")
            }
            let namespace = self.leaseNamespace ?? config.namespace
            let hosts = self.webhookHosts.map { $0.split(separator: ",").map(String.init) } ?? ["pylon-webhook.\(namespace).svc"]
            let source: WebhookCertificates.Source = self.webhookCertDir.map { .directory($0) }
                ?? .secret(namespace: namespace, name: self.webhookCertSecret, hosts: hosts, validity: TimeInterval(self.webhookCertValidity))
            webhook = try await WebhookService.start(
                client: client, renderer: RackRenderer(settings: .init(sidecarImage: self.sidecarImage)),
                settings: .init(host: String(parts[0]), port: port, certificates: source, configuration: self.webhookConfiguration, nativeSidecars: native),
                informers: informers, logger: logger
            )
        }
        let leaderElect = self.leaderElect
        let server = try await AdminServer.start(host: String(adminParts[0]), port: adminPort, group: MultiThreadedEventLoopGroup.singleton, routes: [
            "/healthz": { .init(body: "ok\n") },
            "/readyz": { .init(body: "ready\n") },
            "/metrics": {
                .init(contentType: "text/plain; version=0.0.4; charset=utf-8",
                      body: service.metrics.render() + "# TYPE pylon_operator_leader gauge\npylon_operator_leader \(!leaderElect || election.isLeader ? 1 : 0)\n")
            },
        ])
        logger.info("pylon-operator started", metadata: ["server": "\(config.server)", "namespace": "\(self.namespace ?? "*")", "leader_elect": "\(self.leaderElect)"])
        // Started in this order, stopped in reverse: the reconcilers stop first, the informers last.
        let parts: [any ServiceLifecycle.Service] = [
            StoppedOnShutdown("informers") { informers.stop() }, StoppedOnShutdown("admin server") { await server.close() },
        ] + (webhook.map { webhook in [StoppedOnShutdown("webhook") { await webhook.stop() }] } ?? [])
            + [ReconcilerService(service, election: leaderElect ? election : nil)]
        let group = ServiceGroup(configuration: .init(services: parts.map { .init(service: $0) }, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        logger.info("stopped")
    }
}
