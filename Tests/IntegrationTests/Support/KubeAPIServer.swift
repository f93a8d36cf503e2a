import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import PylonOperator
import Synchronization

/// A real Kubernetes control plane on loopback: etcd and kube-apiserver v1.20.2 (built from
/// Debian's source package by `scripts/install-kube.sh`, which `make deps` runs), with a static
/// admin token, RBAC and a self-signed serving certificate; on demand, a kube-controller-manager
/// (its garbage collector) and more apiservers on the same etcd, as in a highly available control
/// plane.
final class KubeAPIServer: Sendable {
    let port: Int
    let directory: ScratchDirectory
    /// nil for a server that shares another's etcd.
    let etcd: LocalProcess?
    private let apiserver: Mutex<LocalProcess>
    private let controllerManager = Mutex<LocalProcess?>(nil)
    private let arguments: [String]
    /// The bearer token of `admin` (group system:masters).
    let token = "pylon-test-admin-token"
    /// The bearer token of the operator's ServiceAccount (`manifests/rbac`), with only the rights
    /// its roles grant.
    let operatorToken = "pylon-test-operator-token"
    let etcdPort: Int

    /// Where install-kube.sh keeps the binaries.
    static var binaries: URL {
        let environment = ProcessInfo.processInfo.environment
        let cache = environment["PYLON_CACHE"] ?? "\(NSHomeDirectory())/.cache/pylon"
        return URL(fileURLWithPath: "\(cache)/kubernetes-v1.20.2")
    }

    /// A new control plane; with `sharing`, another apiserver on that one's etcd (same token and
    /// service-account key, its own port and serving certificate).
    init(sharing other: KubeAPIServer? = nil) async throws {
        let directory = try ScratchDirectory()
        self.directory = directory
        let path = directory.url.path
        let apiserverBinary = Self.binaries.appendingPathComponent("kube-apiserver").path
        guard FileManager.default.isExecutableFile(atPath: apiserverBinary) else {
            throw HarnessError("no kube-apiserver at \(apiserverBinary): run scripts/install-kube.sh (make deps does)")
        }
        let shared: String
        if let other {
            self.etcdPort = other.etcdPort
            self.etcd = nil
            shared = other.directory.url.path
        } else {
            let (etcdPort, peerPort) = (try Ports.free(), try Ports.free())
            self.etcdPort = etcdPort
            self.etcd = try LocalProcess("etcd", [
                "--data-dir", "\(path)/etcd", "--listen-client-urls", "http://127.0.0.1:\(etcdPort)",
                "--advertise-client-urls", "http://127.0.0.1:\(etcdPort)", "--listen-peer-urls", "http://127.0.0.1:\(peerPort)",
                "--initial-advertise-peer-urls", "http://127.0.0.1:\(peerPort)", "--initial-cluster", "default=http://127.0.0.1:\(peerPort)",
            ], name: "etcd", log: directory.url.appendingPathComponent("etcd.log"))
            try Ports.waitUntilOpen(etcdPort)
            try "\(self.token),admin,1,system:masters\n\(self.operatorToken),system:serviceaccount:pylon-system:pylon-operator,2\n".write(toFile: "\(path)/tokens.csv", atomically: true, encoding: .utf8)
            let keygen = Process()
            keygen.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
            keygen.arguments = ["genrsa", "-out", "\(path)/sa.key", "2048"]
            keygen.standardError = FileHandle.nullDevice
            try keygen.run()
            keygen.waitUntilExit()
            shared = path
        }
        self.port = try Ports.free()
        self.arguments = [
            "--etcd-servers", "http://127.0.0.1:\(self.etcdPort)", "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", "\(self.port)", "--insecure-port", "0", "--cert-dir", "\(path)/certs",
            "--token-auth-file", "\(shared)/tokens.csv", "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc", "--service-account-key-file", "\(shared)/sa.key",
            "--service-account-signing-key-file", "\(shared)/sa.key", "--service-cluster-ip-range", "10.96.0.0/16",
        ]
        self.apiserver = Mutex(try Self.launch(self.arguments, directory: directory))
        try await self.waitUntilReady()
    }

    /// Starts kube-controller-manager with only the garbage collector: objects whose owners are
    /// gone are deleted, as in a real cluster. It learns resource types (CRDs) at start.
    func startGarbageCollector() throws {
        let kubeconfig = try self.kubeconfig()
        let process = try LocalProcess(Self.binaries.appendingPathComponent("kube-controller-manager").path, [
            "--kubeconfig", kubeconfig, "--controllers", "garbagecollector", "--leader-elect=false",
            "--port", "0", "--secure-port", "0", "--use-service-account-credentials=false",
        ], name: "kube-controller-manager", log: self.directory.url.appendingPathComponent("kube-controller-manager.log"))
        self.controllerManager.withLock { $0 = process }
    }

    /// Compacts etcd's history up to now: watches from any older resourceVersion get 410 Gone.
    func compactEtcd() async throws {
        let etcd = URL(string: "http://127.0.0.1:\(self.etcdPort)/v3/kv")!
        func post(_ path: String, _ body: String) async throws -> JSON {
            var request = URLRequest(url: etcd.appendingPathComponent(path))
            request.httpMethod = "POST"
            request.httpBody = Data(body.utf8)
            let (data, _) = try await URLSession.shared.data(for: request)
            return try JSON(data: data)
        }
        // The current revision, from any read (the key is "/" in base64).
        let revision = try await post("range", #"{"key": "Lw==", "limit": 1}"#)[path: "header.revision"]?.string ?? "0"
        _ = try await post("compaction", #"{"revision": "\#(revision)", "physical": true}"#)
    }

    private static func launch(_ arguments: [String], directory: ScratchDirectory) throws -> LocalProcess {
        try LocalProcess(Self.binaries.appendingPathComponent("kube-apiserver").path, arguments, name: "kube-apiserver", log: directory.url.appendingPathComponent("kube-apiserver.log"))
    }

    private func waitUntilReady() async throws {
        // A new client each time: the serving certificate it must trust appears during start-up.
        // Ready, and its `default` namespace made (the apiserver creates it just after start).
        let ready = try await eventually(timeout: .seconds(60)) {
            (try? await self.client().get(.namespaces, name: "default")) != nil
        }
        guard ready else { throw HarnessError("kube-apiserver did not become ready; see \(self.directory.url.path)/kube-apiserver.log") }
    }

    /// Stops the apiserver and starts it again on the same port and etcd (watches drop).
    func restart() async throws {
        self.apiserver.withLock { $0.stop() }
        let fresh = try Self.launch(self.arguments, directory: self.directory)
        self.apiserver.withLock { $0 = fresh }
        try await self.waitUntilReady()
    }

    /// The serving certificate (and its CA) the apiserver generated.
    var caPEM: Data? { FileManager.default.contents(atPath: self.directory.url.appendingPathComponent("certs/apiserver.crt").path) }

    var config: KubeConfig {
        KubeConfig(server: "https://127.0.0.1:\(self.port)", caPEM: self.caPEM, token: .fixed(self.token))
    }

    /// A client as `admin`, or with another bearer token (`operatorToken`).
    /// A client that has read the server's discovery document, as the operator does at start.
    func client(token: String? = nil) async throws -> KubeClient {
        var config = self.config
        if let token { config.token = .fixed(token) }
        let client = KubeClient(config: config)
        try await client.discoverVersions()
        return client
    }

    /// A kubeconfig file for kubectl and for `--kubeconfig`.
    func kubeconfig(token: String? = nil) throws -> String {
        let token = token ?? self.token
        let file = self.directory.url.appendingPathComponent("kubeconfig-\(token)").path
        try """
        apiVersion: v1
        kind: Config
        current-context: test
        contexts: [{name: test, context: {cluster: test, user: admin, namespace: default}}]
        clusters: [{name: test, cluster: {server: "https://127.0.0.1:\(self.port)", certificate-authority-data: \((self.caPEM ?? Data()).base64EncodedString())}}]
        users: [{name: admin, user: {token: \(token)}}]
        """.write(toFile: file, atomically: true, encoding: .utf8)
        return file
    }

    func stop() {
        self.controllerManager.withLock { $0?.stop() }
        self.apiserver.withLock { $0.stop() }
        self.etcd?.stop()
    }

    /// Freezes the apiserver (SIGSTOP: connections stay open, nothing is answered) or thaws it.
    func pauseServer() { self.apiserver.withLock { $0.pause() } }
    func resumeServer() { self.apiserver.withLock { $0.resume() } }

    /// Stops the apiserver only (it comes back with `restart`).
    func stopServer() {
        self.apiserver.withLock { $0.stop() }
    }
}
