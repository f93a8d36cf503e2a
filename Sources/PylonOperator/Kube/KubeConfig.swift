import Foundation
import Yams

/// Where the Kubernetes API is and how to authenticate: from a kubeconfig file (`--kubeconfig`,
/// `KUBECONFIG`, `~/.kube/config`) or, inside a pod, from the service account.
public struct KubeConfig: Sendable {
    public var server: String
    var tls: CurlTransfer.TLS
    public var token: Token?
    /// The namespace to work in by default (the kubeconfig context's, or the pod's).
    public var namespace: String

    /// A bearer token; one read from a file is read again when it changes (service-account
    /// tokens are rotated).
    public enum Token: Sendable {
        case fixed(String)
        case file(String)

        var value: String? {
            switch self {
            case .fixed(let token): token
            case .file(let path): (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            }
        }
    }

    public struct Error: Swift.Error, CustomStringConvertible {
        public let description: String
    }

    public init(server: String, caPEM: Data? = nil, token: Token? = nil, clientCertificatePEM: Data? = nil, clientKeyPEM: Data? = nil, insecureSkipVerify: Bool = false, namespace: String = "default") {
        self.server = server.hasSuffix("/") ? String(server.dropLast()) : server
        self.tls = CurlTransfer.TLS(caPEM: caPEM, clientCertificatePEM: clientCertificatePEM, clientKeyPEM: clientKeyPEM, insecureSkipVerify: insecureSkipVerify)
        self.token = token
        self.namespace = namespace
    }

    /// In a pod: the API server from the environment, the service account's CA and token.
    public static func inCluster(root: String = "/var/run/secrets/kubernetes.io/serviceaccount") throws -> KubeConfig {
        let environment = ProcessInfo.processInfo.environment
        guard let host = environment["KUBERNETES_SERVICE_HOST"], let port = environment["KUBERNETES_SERVICE_PORT"] else {
            throw Error(description: "not in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set (give --kubeconfig)")
        }
        guard let ca = FileManager.default.contents(atPath: "\(root)/ca.crt") else { throw Error(description: "no service-account CA at \(root)/ca.crt") }
        let namespace = (try? String(contentsOfFile: "\(root)/namespace", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "default"
        let address = host.contains(":") ? "[\(host)]" : host
        return KubeConfig(server: "https://\(address):\(port)", caPEM: ca, token: .file("\(root)/token"), namespace: namespace)
    }

    /// The current context of a kubeconfig file (`path`, else `KUBECONFIG`'s first entry, else
    /// `~/.kube/config`).
    public static func kubeconfig(path: String? = nil) throws -> KubeConfig {
        let environment = ProcessInfo.processInfo.environment
        let file = path ?? environment["KUBECONFIG"]?.split(separator: ":").first.map(String.init) ?? "\(NSHomeDirectory())/.kube/config"
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw Error(description: "cannot read kubeconfig '\(file)'") }
        return try self.parse(kubeconfig: text, directory: (file as NSString).deletingLastPathComponent)
    }

    static func parse(kubeconfig text: String, directory: String) throws -> KubeConfig {
        guard let document = try Yams.load(yaml: text) as? [String: Any] else { throw Error(description: "kubeconfig: not a mapping") }
        func named(_ list: String, _ name: String?) -> [String: Any]? {
            (document[list] as? [[String: Any]])?.first { $0["name"] as? String == name }
        }
        guard let contextName = document["current-context"] as? String, let context = named("contexts", contextName)?["context"] as? [String: Any] else {
            throw Error(description: "kubeconfig: no current-context")
        }
        guard let cluster = named("clusters", context["cluster"] as? String)?["cluster"] as? [String: Any], let server = cluster["server"] as? String else {
            throw Error(description: "kubeconfig: context '\(contextName)' names no cluster with a server")
        }
        let user = named("users", context["user"] as? String)?["user"] as? [String: Any] ?? [:]
        func material(_ dataKey: String, _ fileKey: String, in section: [String: Any]) throws -> Data? {
            if let encoded = section[dataKey] as? String {
                guard let data = Data(base64Encoded: encoded) else { throw Error(description: "kubeconfig: \(dataKey) is not base64") }
                return data
            }
            guard let file = section[fileKey] as? String else { return nil }
            let path = file.hasPrefix("/") ? file : "\(directory)/\(file)"
            guard let data = FileManager.default.contents(atPath: path) else { throw Error(description: "kubeconfig: cannot read \(fileKey) '\(path)'") }
            return data
        }
        var token: Token?
        if let fixed = user["token"] as? String { token = .fixed(fixed) } else if let file = user["tokenFile"] as? String { token = .file(file) }
        return KubeConfig(
            server: server,
            caPEM: try material("certificate-authority-data", "certificate-authority", in: cluster),
            token: token,
            clientCertificatePEM: try material("client-certificate-data", "client-certificate", in: user),
            clientKeyPEM: try material("client-key-data", "client-key", in: user),
            insecureSkipVerify: cluster["insecure-skip-tls-verify"] as? Bool ?? false,
            namespace: context["namespace"] as? String ?? "default"
        )
    }
}
