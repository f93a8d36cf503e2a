import Foundation
import PylonOperator
import Testing

/// charts/pylon rendered with Go's text/template (Helm's engine; scripts/render-chart.sh): its
/// defaults are manifests/, its values change what they say, and the API server accepts it.
@Suite("Helm chart", .serialized, .timeLimit(.minutes(3)))
struct HelmChartTests {
    static let repository = KubeAPITests.manifests.deletingLastPathComponent()

    /// The chart's manifests with these values over its defaults, in `namespace`.
    func render(_ overrides: String = "", namespace: String = "pylon-system") throws -> [JSON] {
        let scratch = try ScratchDirectory()
        let file = scratch.url.appendingPathComponent("values.yaml")
        try overrides.write(to: file, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = Self.repository.appendingPathComponent("scripts/render-chart.sh")
        process.arguments = [file.path]
        process.environment = ProcessInfo.processInfo.environment.merging(["NAMESPACE": namespace]) { $1 }
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw HarnessError("render-chart.sh failed (\(process.terminationStatus))") }
        return try JSON.documents(yaml: text).filter { $0 != .null }
    }

    func manifests(_ folders: [String]) throws -> [JSON] {
        try folders.flatMap { folder in
            try FileManager.default.contentsOfDirectory(atPath: KubeAPITests.manifests.appendingPathComponent(folder).path).filter { $0.hasSuffix(".yaml") }.sorted()
                .flatMap { try JSON.documents(yaml: String(contentsOf: KubeAPITests.manifests.appendingPathComponent("\(folder)/\($0)"), encoding: .utf8)) }
        }.filter { $0 != .null }
    }

    func kinds(_ documents: [JSON]) -> [String] { documents.compactMap { $0["kind"]?.string } }

    func operatorArguments(_ documents: [JSON]) -> [String] {
        documents.first { $0["kind"] == "Deployment" }?[path: "spec.template.spec.containers"]?.array?.first?["args"]?.array?.compactMap(\.string) ?? []
    }

    @Test func itsDefaultsAreTheManifestsAndItsCRDsTheSameFiles() throws {
        let rendered = try self.render("createNamespace: true")
        let byKindAndName = { (documents: [JSON]) in documents.map { "\($0["kind"]?.string ?? "")/\($0[path: "metadata.name"]?.string ?? "")" }.sorted() }
        let manifests = try self.manifests(["rbac", "operator", "webhook"])
        #expect(byKindAndName(rendered) == byKindAndName(manifests))
        for document in rendered {
            #expect(manifests.contains(document), "manifests/ differ from the chart for \(document["kind"] ?? "?") \(document[path: "metadata.name"] ?? "?"): run make manifests")
        }
        // Helm installs crds/ as they are: the chart's is manifests/crds itself.
        let crds = Self.repository.appendingPathComponent("charts/pylon/crds")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: crds.path) == "../../manifests/crds")
    }

    @Test func valuesChangeWhatItRenders() throws {
        let defaults = try self.render()
        #expect(!self.kinds(defaults).contains("Namespace"))  // helm install --create-namespace makes it
        #expect(self.operatorArguments(defaults).contains("--webhook-cert-secret=pylon-webhook-cert"))

        let elsewhere = try self.render("image: {tag: \"1.2.3\"}\nsidecarImage: registry.example/pylon-sidecar:1.2.3\nreplicas: 1\nleaderElection: {enabled: false}", namespace: "infra")
        let deployment = try #require(elsewhere.first { $0["kind"] == "Deployment" })
        #expect(deployment[path: "metadata.namespace"] == "infra" && deployment[path: "spec.replicas"] == 1)
        #expect(deployment[path: "spec.template.spec.containers"]?.array?.first?["image"] == "ghcr.io/pylon/pylon-operator:1.2.3")
        #expect(!self.operatorArguments(elsewhere).contains("--leader-elect"))
        #expect(self.operatorArguments(elsewhere).contains("--sidecar-image=registry.example/pylon-sidecar:1.2.3"))
        #expect(self.operatorArguments(elsewhere).contains("--webhook-hosts=pylon-webhook.infra.svc"))
        let webhook = try #require(elsewhere.first { $0["kind"] == "MutatingWebhookConfiguration" })
        #expect(webhook["webhooks"]?.array?.allSatisfy { $0[path: "clientConfig.service.namespace"] == "infra" } == true)

        let noWebhook = try self.render("webhook: {enabled: false}")
        #expect(!self.kinds(noWebhook).contains("MutatingWebhookConfiguration"))
        #expect(!self.operatorArguments(noWebhook).contains { $0.hasPrefix("--webhook") })
        let rules = noWebhook.flatMap { $0["rules"]?.array ?? [] }
        #expect(!rules.contains { $0["resources"]?.array?.contains("secrets") == true || $0["resources"]?.array?.contains("mutatingwebhookconfigurations") == true })

        let certManager = try self.render("webhook: {certManager: {enabled: true}}\nmetrics: {serviceMonitor: {enabled: true}}")
        #expect(self.kinds(certManager).contains("Certificate") && self.kinds(certManager).contains("ServiceMonitor"))
        #expect(self.operatorArguments(certManager).contains("--webhook-cert-dir=/etc/pylon/webhook-cert"))
        #expect(certManager.first { $0["kind"] == "MutatingWebhookConfiguration" }?[path: "metadata.annotations"]?["cert-manager.io/inject-ca-from"] == "pylon-system/pylon-webhook")
        #expect(!certManager.flatMap { $0["rules"]?.array ?? [] }.contains { $0["resources"]?.array?.contains("secrets") == true })
    }

    @Test func theAPIServerAcceptsWhatItRenders() async throws {
        let api = try await KubeAPIServer()
        defer { api.stop() }
        let client = try await api.client()
        try await KubeAPITests.installCRDs(client)
        _ = try await client.create(.namespaces, ["apiVersion": "v1", "kind": "Namespace", "metadata": ["name": "infra"]])
        for document in try self.render("replicas: 3", namespace: "infra") {
            let resource = try #require(KubeAPITests.resource(of: document))
            let name = document[path: "metadata.name"]?.string ?? ""
            _ = try await client.apply(resource, namespace: resource.namespaced ? "infra" : nil, name: name, document)
        }
        let deployment = try await client.get(KubeResource(group: "apps", version: "v1", plural: "deployments"), namespace: "infra", name: "pylon-operator")
        #expect(deployment[path: "spec.replicas"] == 3)
    }
}
