import Foundation
import Logging
import PylonOperator
import Testing

/// The sidecar-injection webhook registered with a real kube-apiserver: pods are created through
/// the API server, which calls the webhook over HTTPS (trusting the CA the operator published)
/// and stores what it answered.
@Suite("Webhook: sidecar injection", .serialized, .timeLimit(.minutes(5)))
struct WebhookTests {
    static let mutatingWebhookConfigurations = KubeResource(group: "admissionregistration.k8s.io", version: "v1", plural: "mutatingwebhookconfigurations", namespaced: false)
    static let serviceAccounts = KubeResource(group: "", version: "v1", plural: "serviceaccounts")

    /// The webhook configuration of manifests/webhook, sent to `port` on loopback instead of the
    /// in-cluster Service (the test's apiserver is outside any cluster network).
    static func registerWebhook(_ client: KubeClient, port: Int) async throws {
        var configuration = try JSON.documents(yaml: String(contentsOf: KubeAPITests.manifests.appendingPathComponent("webhook/webhook.yaml"), encoding: .utf8))
            .first { $0["kind"] == "MutatingWebhookConfiguration" }!
        configuration["webhooks"] = .array((configuration["webhooks"]?.array ?? []).map { webhook in
            var webhook = webhook
            webhook["clientConfig"] = ["url": .string("https://127.0.0.1:\(port)/mutate-pods")]
            return webhook
        })
        _ = try await client.apply(Self.mutatingWebhookConfigurations, name: "pylon-sidecar-injector", configuration)
    }

    /// A namespace of the user's, `apps`, with a world and the sample rack whose pods are the
    /// user's own (samples/pod-injected.yaml); answers the sample's pod, not created yet.
    static func userNamespace(_ admin: KubeClient) async throws -> JSON {
        _ = try await admin.create(.namespaces, ["apiVersion": "v1", "kind": "Namespace", "metadata": ["name": "apps"]])
        // Made by kube-controller-manager in a real cluster; pods cannot be created without it.
        _ = try await admin.create(Self.serviceAccounts, namespace: "apps", ["apiVersion": "v1", "kind": "ServiceAccount", "metadata": ["name": "default"]])
        var world = try KubeAPITests.manifest("samples/world.yaml")
        world["metadata"]?["namespace"] = "apps"
        _ = try await admin.create(Pylon.worlds, namespace: "apps", world)
        let sample = try JSON.documents(yaml: String(contentsOf: KubeAPITests.manifests.appendingPathComponent("samples/pod-injected.yaml"), encoding: .utf8))
        _ = try await admin.create(Pylon.racks, namespace: "apps", sample[0])
        return sample[1]
    }

    func pod(_ name: String, labels: JSON = [:], annotations: JSON = [:], containers: [String] = ["redis"]) -> JSON {
        [
            "apiVersion": "v1", "kind": "Pod", "metadata": ["name": .string(name), "labels": labels, "annotations": annotations],
            "spec": ["automountServiceAccountToken": false, "containers": .array(containers.map { ["name": .string($0), "image": "redis:7.0"] })],
        ]
    }

    func containers(_ pod: JSON) -> [String] { pod[path: "spec.containers"]?.array?.compactMap { $0["name"]?.string } ?? [] }

    /// One informer per kind per process: the reconcilers of the leading replica and the
    /// webhook read the same ones, so racks and worlds are listed and watched once.
    @Test func theReconcilersAndTheWebhookShareOneInformerPerKind() async throws {
        let api = try await KubeAPIServer()
        defer { api.stop() }
        try await KubeAPITests.install(try await api.client())
        let client = try await api.client(token: api.operatorToken)
        let informers = SharedInformers(client: client, namespace: nil, logger: Logger(label: "test"))
        defer { informers.stop() }
        let service = PylonOperatorService(client: client, settings: .init(resync: .seconds(1)), informers: informers, logger: Logger(label: "test"))
        service.start()
        let webhook = try await WebhookService.start(
            client: client, renderer: RackRenderer(settings: .init(sidecarImage: "pylon/sidecar:test")),
            settings: .init(host: "127.0.0.1", port: 0, certificates: .secret(namespace: "pylon-system", name: "pylon-webhook-cert", hosts: ["127.0.0.1"], validity: 3600)),
            informers: informers, logger: Logger(label: "test")
        )
        #expect(try await eventually { PylonOperatorService.kinds.allSatisfy { informers.informer($0).hasSynced } })
        try await Task.sleep(for: .seconds(1))
        #expect(Set(informers.watched) == Set(PylonOperatorService.kinds))
        // Each kind watched by one informer (the webhook's racks and worlds are the reconcilers'):
        // one watch per list of the shared informers — a kind listed again (the apiserver may
        // answer a new CRD's first watch 410 Gone) watches again, a second informer would too.
        let lists = PylonOperatorService.kinds.map { informers.informer($0).lists }
        #expect(lists.allSatisfy { $0 >= 1 })
        #expect(client.requests.withLock { $0["WATCH"] } == lists.reduce(0, +))
        await webhook.stop()
        await service.stop()
        // Stopping the reconcilers leaves the shared informers to the others.
        #expect(informers.informer(Pylon.racks).hasSynced)
    }

    @Test func optedInPodsGetTheSidecarAndNothingElseIsTouched() async throws {
        let api = try await KubeAPIServer()
        defer { api.stop() }
        let admin = try await api.client()
        try await KubeAPITests.install(admin)
        // The webhook runs as the operator, with the rights manifests/rbac gives it; its
        // certificate lives 8 s here, so it is renewed (at 2/3) while the test runs.
        let webhook = try await WebhookService.start(
            client: try await api.client(token: api.operatorToken), renderer: RackRenderer(settings: .init(sidecarImage: "pylon/sidecar:test")),
            settings: .init(host: "127.0.0.1", port: 0, certificates: .secret(namespace: "pylon-system", name: "pylon-webhook-cert", hosts: ["127.0.0.1"], validity: 8)),
            logger: Logger(label: "test")
        )
        var stopped = false
        defer { if !stopped { Task { await webhook.stop() } } }
        #expect(webhook.admission.injector.nativeSidecars == false)  // a 1.20 API server: a plain container
        try await Self.registerWebhook(admin, port: try #require(webhook.port))
        // The operator puts its CA into the configuration.
        #expect(try await eventually(timeout: .seconds(20)) {
            let webhooks = try await admin.get(Self.mutatingWebhookConfigurations, name: "pylon-sidecar-injector")["webhooks"]?.array ?? []
            return webhooks.count == 2 && webhooks.allSatisfy { $0[path: "clientConfig.caBundle"]?.string?.isEmpty == false }
        })
        // The sample pod: injected, as stored by the API server.
        let injected = try await admin.create(.pods, namespace: "apps", try await Self.userNamespace(admin))
        #expect(self.containers(injected) == ["redis", "pylon-sidecar"])
        let sidecar = injected[path: "spec.containers"]?.array?.last
        #expect(sidecar?["image"] == "pylon/sidecar:test")
        #expect(injected[path: "spec.volumes"]?.array?.contains { $0[path: "configMap.name"] == "shop-app-1-sidecar" } == true)
        #expect(injected[path: "metadata.labels"]?["pylon.io/world"] == "shop" && injected[path: "metadata.labels"]?["pylon.io/sidecar"] == "injected")
        // Not opted in; already injected; opted out: stored as sent.
        #expect(self.containers(try await admin.create(.pods, namespace: "apps", self.pod("plain"))) == ["redis"])
        let optIn: JSON = ["pylon.io/inject": "true", "pylon.io/rack": "shop-app-1"]
        #expect(self.containers(try await admin.create(.pods, namespace: "apps", self.pod("twice", labels: optIn, containers: ["redis", "pylon-sidecar"]))) == ["redis", "pylon-sidecar"])
        #expect(self.containers(try await admin.create(.pods, namespace: "apps", self.pod("out", labels: optIn, annotations: ["pylon.io/inject": "false"]))) == ["redis"])
        // A rack that does not exist: refused, saying what to do.
        do {
            _ = try await admin.create(.pods, namespace: "apps", self.pod("lost", labels: ["pylon.io/inject": "true", "pylon.io/rack": "nope"]))
            Issue.record("a pod naming a missing rack was admitted")
        } catch let error as KubeError {
            #expect(error.message.contains("PylonRack nope does not exist in namespace apps"), "\(error)")
        }
        // A whole namespace opted in: its pods that name a rack get the sidecar without a label of their own.
        _ = try await admin.patch(.namespaces, name: "apps", merge: ["metadata": ["labels": ["pylon.io/inject": "true"]]])
        #expect(self.containers(try await admin.create(.pods, namespace: "apps", self.pod("by-namespace", labels: ["pylon.io/rack": "shop-app-1"]))) == ["redis", "pylon-sidecar"])
        _ = try await admin.patch(.namespaces, name: "apps", merge: ["metadata": ["labels": ["pylon.io/inject": nil]]])

        // Renewal: a new certificate (and CA) is made, served and trusted without a restart.
        let first = webhook.certificate
        #expect(try await eventually(timeout: .seconds(30)) { webhook.certificate != first })
        let renewed = webhook.certificate
        #expect(try renewed.caCertificates().count == 2)  // the new CA, and the old one until it expires
        #expect(try await eventually(timeout: .seconds(20)) {
            let webhooks = try await admin.get(Self.mutatingWebhookConfigurations, name: "pylon-sidecar-injector")["webhooks"]?.array ?? []
            return webhooks.allSatisfy { $0[path: "clientConfig.caBundle"]?.string == Data(renewed.caBundlePEM.utf8).base64EncodedString() }
        })
        #expect(self.containers(try await admin.create(.pods, namespace: "apps", self.pod("after-renewal", labels: optIn))) == ["redis", "pylon-sidecar"])

        // The webhook down: pods that did not opt in are created as ever; opted-in ones are
        // refused (failurePolicy Fail) rather than started without their sidecar.
        await webhook.stop()
        stopped = true
        #expect(self.containers(try await admin.create(.pods, namespace: "apps", self.pod("unrelated"))) == ["redis"])
        await #expect(throws: KubeError.self) { _ = try await admin.create(.pods, namespace: "apps", self.pod("waits", labels: optIn)) }
    }

    @Test func theHTTPSServerAnswersBadRequestsAndKeepsServing() async throws {
        // A certificate from files (as cert-manager's Secret, mounted), no API server needed.
        let scratch = try ScratchDirectory()
        let certificate = try WebhookCertificate.issue(hosts: ["127.0.0.1"], validity: 3600)
        for (file, text) in [("tls.crt", certificate.certificatePEM), ("tls.key", certificate.privateKeyPEM), ("ca.crt", certificate.caBundlePEM)] {
            try text.write(to: scratch.url.appendingPathComponent(file), atomically: true, encoding: .utf8)
        }
        let nowhere = KubeClient(config: KubeConfig(server: "https://127.0.0.1:\(try Ports.free())", caPEM: nil, token: nil), timeoutSeconds: 2)
        let webhook = try await WebhookService.start(
            client: nowhere, renderer: RackRenderer(),
            settings: .init(host: "127.0.0.1", port: 0, certificates: .directory(scratch.url.path), nativeSidecars: true),
            logger: Logger(label: "test")
        )
        defer { Task { await webhook.stop() } }
        #expect(webhook.certificate.certificatePEM == certificate.certificatePEM && webhook.certificate.caKeyPEM == nil)
        // A client that trusts the CA, as the API server does with the caBundle.
        let client = KubeClient(config: KubeConfig(server: "https://127.0.0.1:\(try #require(webhook.port))", caPEM: Data(certificate.caBundlePEM.utf8), token: nil))
        let garbage = try await client.call("POST", "/mutate-pods", body: .string("{not a review"), contentType: "application/json")
        #expect(garbage[path: "response.allowed"] == false && garbage[path: "response.status.code"] == 400)
        #expect(garbage[path: "response.status.message"]?.string?.contains("not an admission.k8s.io/v1 AdmissionReview") == true)
        await #expect(throws: KubeError.self) { _ = try await client.call("GET", "/mutate-pods") }  // 405: POST only
        await #expect(throws: KubeError.self) { _ = try await client.call("POST", "/elsewhere", body: [:]) }  // 404
        // The rack cannot be read (no API server): the opted-in pod is refused, saying so; the
        // server still answers the next request.
        let review: JSON = [
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": ["uid": "u-9", "kind": ["group": "", "version": "v1", "kind": "Pod"], "namespace": "apps", "operation": "CREATE", "object": self.pod("p", labels: ["pylon.io/inject": "true", "pylon.io/rack": "r"])],
        ]
        let answer = try await client.call("POST", "/mutate-pods", body: review, contentType: "application/json")
        #expect(answer[path: "response.uid"] == "u-9" && answer[path: "response.allowed"] == false)
        #expect(answer[path: "response.status.message"]?.string?.contains("cannot read PylonRack r from the API server") == true)
    }
}
