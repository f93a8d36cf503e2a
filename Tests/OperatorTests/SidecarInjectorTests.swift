import Foundation
import Testing

@testable import PylonOperator

@Suite("Sidecar injection")
struct SidecarInjectorTests {
    let world = try! PylonWorld(json: JSON(yaml: """
    apiVersion: pylon.io/v1alpha1
    kind: PylonWorld
    metadata: {name: shop, namespace: apps}
    spec: {kafka: {bootstrapServers: "k:9093", tls: {secretName: kafka-ca}}}
    """))

    func rack(_ topology: String = "injected") throws -> PylonRack {
        try PylonRack(json: JSON(yaml: """
        apiVersion: pylon.io/v1alpha1
        kind: PylonRack
        metadata: {name: app-1, namespace: apps, uid: r-1}
        spec: {world: shop, redis: {topology: \(topology)}, sidecar: {image: "pylon/sidecar:9"}}
        """))
    }

    func pod(labels: String = "{pylon.io/inject: \"true\", pylon.io/rack: app-1, app: cache}", annotations: String = "{}", extra: String = "") throws -> JSON {
        try JSON(yaml: """
        apiVersion: v1
        kind: Pod
        metadata: {name: cache-0, labels: \(labels), annotations: \(annotations)}
        spec:
          containers: [{name: redis, image: "redis:7.0"}\(extra)]
        """)
    }

    let injector = SidecarInjector(renderer: RackRenderer(), nativeSidecars: false)

    @Test func anOptedInPodGetsTheRacksSidecarItsVolumesAndLabels() throws {
        guard case .inject(let patch) = self.injector.outcome(pod: try self.pod(), namespace: "apps", rack: try self.rack(), world: self.world) else {
            Issue.record("not injected")
            return
        }
        let paths = patch.compactMap { $0["path"]?.string }
        #expect(paths == ["/spec/containers/-", "/spec/volumes", "/metadata/labels/pylon.io~1sidecar", "/metadata/labels/pylon.io~1world"], "\(paths)")
        let sidecar = try #require(patch.first?["value"]).decode(Container.self)
        #expect(sidecar.name == "pylon-sidecar" && sidecar.image == "pylon/sidecar:9" && sidecar.restartPolicy == nil)
        #expect(sidecar.args == ["--config", "/etc/pylon/config/sidecar.yml", "--sidecar-name", "$(POD_NAME)"])
        #expect(sidecar.volumeMounts?.map(\.mountPath) == ["/etc/pylon/config", "/etc/pylon/kafka-tls"])
        let volumes = try #require(patch[1]["value"]).decode([Volume].self)
        #expect(volumes.map(\.name) == ["pylon-sidecar-config", "pylon-kafka-tls"] && volumes.first?.configMap?.name == "app-1-sidecar")
        #expect(patch[3]["value"] == "shop")
    }

    @Test func onNewClustersItIsANativeSidecar() throws {
        let native = SidecarInjector(renderer: RackRenderer(), nativeSidecars: true)
        guard case .inject(let patch) = native.outcome(pod: try self.pod(), namespace: "apps", rack: try self.rack(), world: self.world) else {
            Issue.record("not injected")
            return
        }
        #expect(patch.first?["path"] == "/spec/initContainers")
        #expect(try #require(patch.first?["value"]?.array?.first).decode(Container.self).restartPolicy == "Always")
    }

    @Test func whatIsLeftAloneAndWhatIsRefusedSaysWhy() throws {
        func outcome(_ pod: JSON, rack: PylonRack?, world: PylonWorld?) -> SidecarInjector.Outcome {
            self.injector.outcome(pod: pod, namespace: "apps", rack: rack, world: world)
        }
        let rack = try self.rack()
        #expect(outcome(try self.pod(annotations: "{pylon.io/inject: \"false\"}"), rack: rack, world: self.world) == .unchanged("opted out by the annotation pylon.io/inject: \"false\""))
        #expect(outcome(try self.pod(extra: ", {name: pylon-sidecar, image: x}"), rack: rack, world: self.world) == .unchanged("the pod already has the pylon-sidecar container"))
        func refusal(_ outcome: SidecarInjector.Outcome) -> String { if case .refused(let message) = outcome { message } else { "" } }
        #expect(refusal(outcome(try self.pod(labels: "{pylon.io/inject: \"true\"}"), rack: rack, world: self.world)).contains("label it pylon.io/rack: <PylonRack name>"))
        #expect(refusal(outcome(try self.pod(), rack: nil, world: nil)).contains("PylonRack app-1 does not exist in namespace apps"))
        #expect(refusal(outcome(try self.pod(), rack: try self.rack("standalone"), world: self.world)).contains("needs topology: injected"))
        #expect(refusal(outcome(try self.pod(), rack: rack, world: nil)).contains("PylonWorld shop"))
    }

    @Test func anInjectedRackHasConfigurationAndServicesButNoPodsOfItsOwn() throws {
        let objects = try RackRenderer().render(rack: try self.rack(), world: self.world)
        #expect(objects.map(\.kind) == ["ConfigMap", "Service", "Service"])
        let services = objects.compactMap { $0 as? Service }
        #expect(services.allSatisfy { $0.spec.selector == ["pylon.io/rack": "app-1", "pylon.io/sidecar": "injected"] })
        #expect((objects.first as? ConfigMap)?.data?["sidecar.yml"]?.contains("redis: redis://127.0.0.1:6379") == true)
    }

    @Test func admissionReviewsAreAnsweredWhateverArrives() async throws {
        let admission = PodAdmission(injector: self.injector) { _, _ in (try self.rack(), self.world) }
        func review(_ request: JSON) async -> AdmissionReview.Response? {
            await admission.review((["apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request] as JSON).data).response
        }
        let pod = try self.pod()
        let injected = await review(["uid": "u-1", "kind": ["group": "", "version": "v1", "kind": "Pod"], "namespace": "apps", "operation": "CREATE", "object": pod])
        #expect(injected?.uid == "u-1" && injected?.allowed == true && injected?.patchType == "JSONPatch")
        let patch = try JSON(data: Data(base64Encoded: injected?.patch ?? "") ?? Data())
        #expect(patch.array?.first?["path"] == "/spec/containers/-")
        // Not a pod, not a creation: admitted unchanged.
        let service = await review(["uid": "u-2", "kind": ["group": "", "version": "v1", "kind": "Service"], "operation": "CREATE", "object": [:]])
        #expect(service?.allowed == true && service?.patch == nil && service?.status?.message.contains("only pods") == true)
        let update = await review(["uid": "u-3", "kind": ["group": "", "version": "v1", "kind": "Pod"], "operation": "UPDATE", "object": pod])
        #expect(update?.allowed == true && update?.patch == nil)
        // Malformed: an answer that says what is wrong, with the uid when it can be read.
        let garbage = await admission.review(Data("{not json".utf8)).response
        #expect(garbage?.allowed == false && garbage?.status?.code == 400 && garbage?.status?.message.contains("not an admission.k8s.io/v1 AdmissionReview") == true)
        let noKind = await review(["uid": "u-4", "operation": "CREATE"])
        #expect(noKind?.uid == "u-4" && noKind?.allowed == false && noKind?.status?.message.contains("missing request.kind") == true, "\(String(describing: noKind?.status?.message))")
    }

    @Test func madeCertificatesNameTheirHostsAndRenewTwoThirdsIn() throws {
        let first = try WebhookCertificate.issue(hosts: ["pylon-webhook.pylon-system.svc", "127.0.0.1"], validity: 3000)
        let certificate = try first.certificate()
        let names = try #require(try certificate.extensions.subjectAlternativeNames).map { "\($0)" }
        #expect(names.contains { $0.contains("pylon-webhook.pylon-system.svc") } && names.count == 2)
        let life = certificate.notValidAfter.timeIntervalSince(certificate.notValidBefore)
        #expect(abs(try first.renewalDate().timeIntervalSince(certificate.notValidBefore) - life * 2 / 3) < 1)
        #expect(try first.caCertificates().count == 1 && first.caKeyPEM != nil)
        // A renewal trusts the new CA and, until it expires, the previous one.
        let second = try WebhookCertificate.issue(hosts: ["127.0.0.1"], validity: 3000, previous: first)
        #expect(try second.caCertificates().count == 2)
        #expect(try second.caCertificates().last == first.caCertificates().first)
        #expect(throws: WebhookCertificate.Invalid.self) { try WebhookCertificate.issue(hosts: [], validity: 10) }
    }
}
