import Foundation
import Logging

/// Where the webhook's certificate comes from, and how the API server learns to trust it.
///
/// Made by the operator (the default): a Secret shared by all replicas holds the CA, its key and
/// the serving certificate; whichever replica finds it missing or due for renewal (two thirds
/// into its life) makes a new one and writes it, guarded by the Secret's resourceVersion, and the
/// others pick it up on their next look. Or from files another tool renews (cert-manager's Secret,
/// mounted): read as they are. Either way the CA bundle is put into every webhook of the
/// MutatingWebhookConfiguration whose caBundle differs.
public struct WebhookCertificates: Sendable {
    public enum Source: Sendable {
        case secret(namespace: String, name: String, hosts: [String], validity: TimeInterval)
        /// A folder with tls.crt, tls.key and ca.crt.
        case directory(String)
    }

    let client: KubeClient
    let source: Source
    /// The MutatingWebhookConfiguration to keep the caBundle of.
    let configuration: String
    let logger: Logger

    public init(client: KubeClient, source: Source, configuration: String, logger: Logger) {
        self.client = client
        self.source = source
        self.configuration = configuration
        self.logger = logger
    }

    static let mutatingWebhookConfigurations = KubeResource(group: "admissionregistration.k8s.io", version: "v1", plural: "mutatingwebhookconfigurations", namespaced: false)

    /// The certificate to serve now: read, or made when missing or due.
    public func current() async throws -> WebhookCertificate {
        switch self.source {
        case .directory(let path):
            func read(_ file: String) throws -> String {
                guard let text = try? String(contentsOfFile: "\(path)/\(file)", encoding: .utf8) else {
                    throw WebhookCertificate.Invalid(description: "cannot read \(path)/\(file) (the webhook's certificate folder holds tls.crt, tls.key and ca.crt)")
                }
                return text
            }
            return WebhookCertificate(certificatePEM: try read("tls.crt"), privateKeyPEM: try read("tls.key"), caBundlePEM: try read("ca.crt"))
        case .secret(let namespace, let name, let hosts, let validity):
            for _ in 0..<3 {
                let secret = try await self.client.get(Secret.self, namespace: namespace, name: name)
                let stored = secret.flatMap(Self.certificate(in:))
                if let stored, let renewal = try? stored.renewalDate(), renewal > Date() { return stored }
                let fresh = try WebhookCertificate.issue(hosts: hosts, validity: validity, previous: stored)
                do {
                    if let secret {
                        _ = try await self.client.patch(Secret.resource, namespace: namespace, name: name, merge: [
                            "metadata": ["resourceVersion": .string(secret.metadata.resourceVersion ?? "")], "data": Self.data(of: fresh),
                        ])
                    } else {
                        var created = Secret(metadata: ObjectMeta(name: name, namespace: namespace, labels: ["app.kubernetes.io/part-of": "pylon"]))
                        created.type = "kubernetes.io/tls"
                        created.data = Self.data(of: fresh).object?.compactMapValues(\.string)
                        _ = try await self.client.create(created)
                    }
                    self.logger.info("made a new webhook certificate", metadata: ["secret": "\(namespace)/\(name)", "hosts": "\(hosts)", "renew_at": "\((try? fresh.renewalDate()) ?? Date())"])
                    return fresh
                } catch let error as KubeError where error.isConflict {
                    continue  // another replica wrote it first: use theirs
                }
            }
            throw WebhookCertificate.Invalid(description: "the webhook certificate Secret \(namespace)/\(name) kept changing under this replica")
        }
    }

    static func certificate(in secret: Secret) -> WebhookCertificate? {
        func text(_ key: String) -> String? { secret.data?[key].flatMap { Data(base64Encoded: $0) }.map { String(decoding: $0, as: UTF8.self) } }
        guard let certificate = text("tls.crt"), let key = text("tls.key"), let bundle = text("ca.crt") else { return nil }
        return WebhookCertificate(certificatePEM: certificate, privateKeyPEM: key, caBundlePEM: bundle, caKeyPEM: text("ca.key"))
    }

    static func data(of certificate: WebhookCertificate) -> JSON {
        var data: [String: JSON] = [
            "tls.crt": .string(Data(certificate.certificatePEM.utf8).base64EncodedString()),
            "tls.key": .string(Data(certificate.privateKeyPEM.utf8).base64EncodedString()),
            "ca.crt": .string(Data(certificate.caBundlePEM.utf8).base64EncodedString()),
        ]
        if let key = certificate.caKeyPEM { data["ca.key"] = .string(Data(key.utf8).base64EncodedString()) }
        return .object(data)
    }

    /// Puts the CA bundle into each webhook of the configuration whose caBundle differs (a JSON
    /// patch that tests each webhook's name first, so a reordered list is never written wrongly).
    /// False when the configuration does not exist (yet).
    @discardableResult
    public func publish(_ certificate: WebhookCertificate) async throws -> Bool {
        let configuration: JSON
        do { configuration = try await self.client.get(Self.mutatingWebhookConfigurations, name: self.configuration) } catch let error as KubeError where error.isNotFound {
            return false
        }
        let bundle = Data(certificate.caBundlePEM.utf8).base64EncodedString()
        var operations: [JSON] = []
        for (index, webhook) in (configuration["webhooks"]?.array ?? []).enumerated() where webhook[path: "clientConfig.caBundle"]?.string != bundle {
            operations.append(["op": "test", "path": .string("/webhooks/\(index)/name"), "value": webhook["name"] ?? .null])
            operations.append(["op": "add", "path": .string("/webhooks/\(index)/clientConfig/caBundle"), "value": .string(bundle)])
        }
        guard !operations.isEmpty else { return true }
        _ = try await self.client.call("PATCH", Self.mutatingWebhookConfigurations.path(name: self.configuration), body: .array(operations), contentType: "application/json-patch+json")
        self.logger.info("put the webhook's CA bundle into the MutatingWebhookConfiguration", metadata: ["configuration": "\(self.configuration)", "webhooks": "\(operations.count / 2)"])
        return true
    }
}
