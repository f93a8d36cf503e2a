import Foundation
import Logging
import PylonOperator
import Synchronization
import Testing

/// The operator's Kubernetes client and Pylon's CRDs against a real kube-apiserver and etcd.
@Suite("Kubernetes API: client and CRDs", .serialized, .timeLimit(.minutes(5)))
struct KubeAPITests {
    static let manifests = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("manifests")

    static func manifest(_ path: String) throws -> JSON {
        try JSON(yaml: String(contentsOf: self.manifests.appendingPathComponent(path), encoding: .utf8))
    }

    static let worlds = KubeResource(group: "pylon.io", version: "v1alpha1", plural: "pylonworlds")
    static let racks = KubeResource(group: "pylon.io", version: "v1alpha1", plural: "pylonracks")

    /// Where each kind of the install manifests lives.
    static func resource(of object: JSON) -> KubeResource? {
        switch (object["apiVersion"]?.string ?? "", object["kind"]?.string ?? "") {
        case ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): .customResourceDefinitions
        case ("v1", "Namespace"): .namespaces
        case ("v1", "ServiceAccount"): KubeResource(group: "", version: "v1", plural: "serviceaccounts")
        case ("v1", "Service"): .services
        case ("rbac.authorization.k8s.io/v1", "ClusterRole"): KubeResource(group: "rbac.authorization.k8s.io", version: "v1", plural: "clusterroles", namespaced: false)
        case ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): KubeResource(group: "rbac.authorization.k8s.io", version: "v1", plural: "clusterrolebindings", namespaced: false)
        case ("rbac.authorization.k8s.io/v1", "Role"): KubeResource(group: "rbac.authorization.k8s.io", version: "v1", plural: "roles")
        case ("rbac.authorization.k8s.io/v1", "RoleBinding"): KubeResource(group: "rbac.authorization.k8s.io", version: "v1", plural: "rolebindings")
        case ("apps/v1", "Deployment"): KubeResource(group: "apps", version: "v1", plural: "deployments")
        case ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"): WebhookTests.mutatingWebhookConfigurations
        default: nil
        }
    }

    /// What `kubectl apply --server-side -f FILE` does: every document applied, in order.
    static func apply(file: String, _ client: KubeClient) async throws {
        for object in try JSON.documents(yaml: String(contentsOf: self.manifests.appendingPathComponent(file), encoding: .utf8)) where object != .null {
            guard let resource = self.resource(of: object) else { throw HarnessError("\(file): no resource known for \(object["kind"] ?? "?")") }
            _ = try await client.apply(resource, namespace: resource.namespaced ? object[path: "metadata.namespace"]?.string ?? "default" : nil, name: object[path: "metadata.name"]?.string ?? "", object)
        }
    }

    /// Installs Pylon as a user does (`kubectl apply -f manifests/`: CRDs, RBAC, the operator's
    /// Deployment) and waits until the API server serves the CRDs.
    static func install(_ client: KubeClient) async throws {
        try await self.apply(file: "pylon.yaml", client)
        try await self.waitForCRDs(client)
    }

    /// Installs the CRDs alone and waits until the API server serves them.
    static func installCRDs(_ client: KubeClient) async throws {
        for file in ["crds/pylonworlds.yaml", "crds/pylonracks.yaml"] { try await self.apply(file: file, client) }
        try await self.waitForCRDs(client)
    }

    static func waitForCRDs(_ client: KubeClient) async throws {
        for name in ["pylonworlds.pylon.io", "pylonracks.pylon.io"] {
            #expect(try await eventually(timeout: .seconds(30)) {
                let crd = try await client.get(.customResourceDefinitions, name: name)
                return crd[path: "status.conditions"]?.array?.contains { $0["type"] == "Established" && $0["status"] == "True" } == true
            })
        }
    }

    /// The API server's refusal of `object`, or nil if it accepted it.
    func refusal(_ client: KubeClient, _ resource: KubeResource, _ object: JSON) async -> KubeError? {
        do {
            _ = try await client.create(resource, namespace: "default", object)
            return nil
        } catch {
            return error as? KubeError
        }
    }

    @Test func theCRDsAcceptTheSamplesWithDefaultsAndRefuseBadSpecsWithClearMessages() async throws {
        let api = try await KubeAPIServer()
        defer { api.stop() }
        let client = try await api.client()
        try await Self.installCRDs(client)
        let world = try await client.create(Self.worlds, namespace: "default", try Self.manifest("samples/world.yaml"))
        #expect(world[path: "spec.consistency"] == "applied")  // a default
        let rack = try await client.create(Self.racks, namespace: "default", try Self.manifest("samples/rack-standalone.yaml"))
        #expect(rack[path: "spec.redis.image"] == "redis:7.0")
        #expect(rack[path: "spec.redis.shards"] == 3)
        _ = try await client.create(Self.racks, namespace: "default", try Self.manifest("samples/rack-cluster.yaml"))
        let sentinel = try await client.create(Self.racks, namespace: "default", try Self.manifest("samples/rack-sentinel.yaml"))
        #expect(sentinel[path: "spec.catchUp.offsets"]?["3"] == 14990)
        // What `kubectl get pylonracks` shows: the server's table of the printer columns.
        let table = try await client.call("GET", Self.racks.path(namespace: "default"), accept: "application/json;as=Table;v=v1;g=meta.k8s.io")
        #expect(table["columnDefinitions"]?.array?.compactMap { $0["name"]?.string } == ["Name", "World", "Topology", "Phase", "Lag", "Ready", "Age"])
        #expect(table["rows"]?.array?.count == 3)

        func rackObject(_ name: String, _ spec: JSON) -> JSON {
            ["apiVersion": "pylon.io/v1alpha1", "kind": "PylonRack", "metadata": ["name": .string(name)], "spec": spec]
        }
        let badTopology = await self.refusal(client, Self.racks, rackObject("bad-1", ["world": "shop", "redis": ["topology": "mesh"]]))
        #expect(badTopology?.status == 422)
        #expect(badTopology?.message.contains("spec.redis.topology") == true && badTopology?.message.contains("standalone") == true, "\(String(describing: badTopology))")
        let noWorld = await self.refusal(client, Self.racks, rackObject("bad-2", ["redis": ["topology": "standalone"]]))
        #expect(noWorld?.message.contains("spec.world: Required value") == true, "\(String(describing: noWorld))")
        let fewShards = await self.refusal(client, Self.racks, rackObject("bad-3", ["world": "shop", "redis": ["topology": "cluster", "shards": 2]]))
        #expect(fewShards?.message.contains("spec.redis.shards") == true, "\(String(describing: fewShards))")
        let badWorld: JSON = ["apiVersion": "pylon.io/v1alpha1", "kind": "PylonWorld", "metadata": ["name": "bad"], "spec": ["kafka": ["bootstrapServers": "nohost"], "partitions": 0]]
        let refused = await self.refusal(client, Self.worlds, badWorld)
        #expect(refused?.message.contains("spec.kafka.bootstrapServers") == true && refused?.message.contains("spec.partitions") == true, "\(String(describing: refused))")
    }

    @Test func serverSideApplyIsIdempotentAndStatusIsItsOwnSubresource() async throws {
        let api = try await KubeAPIServer()
        defer { api.stop() }
        let client = try await api.client()
        try await Self.installCRDs(client)
        let config: JSON = ["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "sidecar"], "data": ["listen": "0.0.0.0:6380"]]
        let first = try await client.apply(.configMaps, namespace: "default", name: "sidecar", config)
        let second = try await client.apply(.configMaps, namespace: "default", name: "sidecar", config)
        #expect(first[path: "metadata.resourceVersion"] == second[path: "metadata.resourceVersion"])
        #expect(second[path: "metadata.managedFields"]?.array?.first?["manager"] == "pylon-operator")

        _ = try await client.create(Self.racks, namespace: "default", try Self.manifest("samples/rack-standalone.yaml"))
        let status: JSON = ["apiVersion": "pylon.io/v1alpha1", "kind": "PylonRack", "metadata": ["name": "shop-eu-1"], "status": ["phase": "Pending", "observedGeneration": 1, "lag": 7]]
        let updated = try await client.apply(Self.racks, namespace: "default", name: "shop-eu-1", status, subresource: "status")
        #expect(updated[path: "status.lag"] == 7)
        #expect(updated[path: "metadata.generation"] == 1)  // status changes do not bump the generation
        #expect(updated[path: "spec.redis.topology"] == "standalone")
        #expect(try await client.delete(.configMaps, namespace: "default", name: "sidecar") != nil)
        #expect(try await client.delete(.configMaps, namespace: "default", name: "sidecar") == nil)  // already gone: fine
    }

    @Test func aWatchMissesNothingAcrossAnAPIServerRestart() async throws {
        let api = try await KubeAPIServer()
        defer { api.stop() }
        let client = try await api.client()
        let informer = Informer(client: client, resource: .configMaps, namespace: "default", logger: Logger(label: "test")) { _ in }
        _ = try await client.create(.configMaps, namespace: "default", ["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "before"]])
        informer.start()
        defer { informer.stop() }
        #expect(try await eventually { informer.get(namespace: "default", name: "before") != nil })
        _ = try await client.create(.configMaps, namespace: "default", ["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "a"]])
        #expect(try await eventually { informer.get(namespace: "default", name: "a") != nil })
        // The watch drops with the server; the restarted server's watch cache starts afresh, so
        // the old resourceVersion may be gone (410): either way the view must catch up.
        try await api.restart()
        _ = try await client.patch(.configMaps, namespace: "default", name: "a", merge: ["data": ["k": "v"]])
        _ = try await client.create(.configMaps, namespace: "default", ["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "b"]])
        try await client.delete(.configMaps, namespace: "default", name: "before")
        #expect(try await eventually(timeout: .seconds(60)) {
            informer.get(namespace: "default", name: "a")?[path: "data.k"] == "v" && informer.get(namespace: "default", name: "b") != nil
                && informer.get(namespace: "default", name: "before") == nil
        }, "\(informer.objects.compactMap { $0[path: "metadata.name"]?.string }.sorted())")
        #expect(informer.lists >= 1)
    }

    @Test func aWatchWhoseResourceVersionExpiredListsAgainAndMissesNothing() async throws {
        // Two apiservers on one etcd: the watch goes through `flaky`, changes through `api`.
        let api = try await KubeAPIServer()
        defer { api.stop() }
        let flaky = try await KubeAPIServer(sharing: api)
        defer { flaky.stop() }
        let client = try await api.client()
        let informer = Informer(client: try await flaky.client(), resource: .configMaps, namespace: "default", logger: Logger(label: "test")) { _ in }
        _ = try await client.create(.configMaps, namespace: "default", ["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "before"]])
        _ = try await client.create(.configMaps, namespace: "default", ["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "doomed"]])
        informer.start()
        defer { informer.stop() }
        #expect(try await eventually { informer.get(namespace: "default", name: "before") != nil && informer.get(namespace: "default", name: "doomed") != nil })
        #expect(informer.lists == 1)
        // While the watch's server is down, things change and etcd forgets the history: the
        // version the watch resumes from is gone (410), and only a new list can tell it what
        // happened — including the deletion it never saw an event for.
        flaky.stopServer()
        _ = try await client.patch(.configMaps, namespace: "default", name: "before", merge: ["data": ["k": "v"]])
        _ = try await client.create(.configMaps, namespace: "default", ["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "after"]])
        try await client.delete(.configMaps, namespace: "default", name: "doomed")
        try await api.compactEtcd()
        try await flaky.restart()
        #expect(try await eventually(timeout: .seconds(60)) {
            informer.get(namespace: "default", name: "before")?[path: "data.k"] == "v" && informer.get(namespace: "default", name: "after") != nil
                && informer.get(namespace: "default", name: "doomed") == nil
        }, "\(informer.objects.compactMap { $0[path: "metadata.name"]?.string }.sorted())")
        #expect(informer.lists == 2)
        // And it watches on from the new list.
        _ = try await client.create(.configMaps, namespace: "default", ["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "later"]])
        #expect(try await eventually { informer.get(namespace: "default", name: "later") != nil })
    }

    @Test func kubectlApplyOfTheManifestsFolderInstallsPylon() async throws {
        // pylon.yaml is its parts, in order (scripts/manifests.sh writes it; `make manifests`).
        func documents(_ files: [String]) throws -> [JSON] {
            try files.flatMap { try JSON.documents(yaml: String(contentsOf: Self.manifests.appendingPathComponent($0), encoding: .utf8)) }.filter { $0 != .null }
        }
        let parts = try ["crds", "rbac", "operator", "webhook"].flatMap { folder in
            try FileManager.default.contentsOfDirectory(atPath: Self.manifests.appendingPathComponent(folder).path).filter { $0.hasSuffix(".yaml") }.sorted().map { "\(folder)/\($0)" }
        }
        #expect(try documents(["pylon.yaml"]) == documents(parts), "manifests/pylon.yaml is stale: run make manifests")
        // The top level holds nothing else kubectl would apply.
        #expect(try FileManager.default.contentsOfDirectory(atPath: Self.manifests.path).filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".json") } == ["pylon.yaml"])

        let api = try await KubeAPIServer()
        defer { api.stop() }
        let client = try await api.client()
        try await Self.install(client)
        let deployment = try await client.get(KubeResource(group: "apps", version: "v1", plural: "deployments"), namespace: "pylon-system", name: "pylon-operator")
        #expect(deployment[path: "spec.template.spec.serviceAccountName"] == "pylon-operator")
        #expect(deployment[path: "spec.template.spec.securityContext.runAsNonRoot"] == true)
        #expect(deployment[path: "spec.template.spec.containers"]?.array?.first?["securityContext"]?["readOnlyRootFilesystem"] == true)
        // Applying again changes nothing (the same resourceVersions).
        let before = deployment[path: "metadata.resourceVersion"]
        try await Self.install(client)
        #expect(try await client.get(KubeResource(group: "apps", version: "v1", plural: "deployments"), namespace: "pylon-system", name: "pylon-operator")[path: "metadata.resourceVersion"] == before)
        // Every sample's world and racks are accepted (the sample pod is the webhook test's).
        var samples = 0
        for file in try FileManager.default.contentsOfDirectory(atPath: Self.manifests.appendingPathComponent("samples").path).sorted() {
            for document in try JSON.documents(yaml: String(contentsOf: Self.manifests.appendingPathComponent("samples/\(file)"), encoding: .utf8)) {
                let resource: KubeResource? = switch document["kind"]?.string { case "PylonWorld": Self.worlds; case "PylonRack": Self.racks; default: nil }
                guard let resource else { continue }
                _ = try await client.create(resource, namespace: "default", document)
                samples += 1
            }
        }
        #expect(samples == 6)
        // The CRD keeps what a rack from a snapshot names (an unknown field would be pruned).
        #expect(try await client.get(Self.racks, namespace: "default", name: "shop-eu-3")[path: "spec.catchUp.rack"] == "shop-eu-1")
        // The operator's identity may do what it needs, and not more.
        let asOperator = try await api.client(token: api.operatorToken)
        _ = try await asOperator.list(Pylon.racks)
        _ = try await asOperator.list(.statefulSets)
        func status(_ request: () async throws -> Any) async -> Int {
            do { _ = try await request() } catch let error as KubeError { return error.status } catch { return -1 }
            return 200
        }
        #expect(await status { try await asOperator.list(.secrets, namespace: "default") } == 403)
        #expect(await status { try await asOperator.list(.leases, namespace: "default") } == 403)  // Leases only in its own namespace
        #expect(await status { try await asOperator.get(.leases, namespace: "pylon-system", name: "absent") } == 404)
    }
}
