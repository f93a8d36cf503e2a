import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Logging
import NIOCore
import NIOPosix
import PylonOperator
import Shared
import Testing

/// The operator against a real kube-apiserver (and a real broker for retiring racks): worlds and
/// racks become owned objects with truthful status; spec changes roll; deletion retires.
@Suite("Operator: worlds and racks", .serialized, .timeLimit(.minutes(5)))
struct OperatorTests {
    @Test func aRackBecomesItsObjectsAndIsRetiredWhenDeleted() async throws {
        let api = try await KubeAPIServer()
        defer { api.stop() }
        let broker = try KafkaBroker()
        let client = try await api.client()
        // Installed as users install it; the operator runs as its ServiceAccount, with only the
        // rights manifests/rbac grants it: anything more it needs fails this test.
        try await KubeAPITests.install(client)
        let operatorClient = try await api.client(token: api.operatorToken)
        let service = PylonOperatorService(
            client: operatorClient, settings: .init(namespace: "default", renderer: .init(sidecarImage: "pylon/sidecar:test"), caughtUpLag: 10, resync: .seconds(1)),
            logger: Logger(label: "test")
        )
        service.start()
        defer { Task { await service.stop() } }

        var worldObject = try KubeAPITests.manifest("samples/world.yaml")
        worldObject["spec"]?["kafka"]?["bootstrapServers"] = .string(broker.bootstrap)
        _ = try await client.create(Pylon.worlds, namespace: "default", worldObject)
        let rack = try await client.create(Pylon.racks, namespace: "default", try KubeAPITests.manifest("samples/rack-standalone.yaml"))
        let uid = rack[path: "metadata.uid"]
        // The rack's consumer group exists in Kafka (a sidecar committed progress).
        let topic = "pylon.shop.ops"
        let admin = try KafkaProducer(brokers: broker.bootstrap)
        try admin.createTopic(topic, partitions: 8, replicationFactor: 1)
        admin.close()
        let member = try KafkaConsumer(brokers: broker.bootstrap, groupID: "pylon.shop.shop-eu-1")
        try member.commit([(topic, 0, 5)])
        member.close()

        #expect(try await eventually(timeout: .seconds(30)) {
            (try? await client.get(.statefulSets, namespace: "default", name: "shop-eu-1")) != nil
        })
        let statefulSet = try await client.get(.statefulSets, namespace: "default", name: "shop-eu-1")
        #expect(statefulSet[path: "metadata.ownerReferences"]?.array?.first?["uid"] == uid)
        #expect(statefulSet[path: "metadata.labels"]?["pylon.io/world"] == "shop")
        let containers = statefulSet[path: "spec.template.spec.containers"]?.array ?? []
        #expect(containers.map { $0["image"] } == ["redis:7.0", "pylon/sidecar:test"])
        let config = try await client.get(.configMaps, namespace: "default", name: "shop-eu-1-sidecar")
        let sidecarYAML = config[path: "data"]?["sidecar.yml"]?.string ?? ""
        #expect(sidecarYAML.contains("kafka-brokers: \(broker.bootstrap)") && sidecarYAML.contains("rack: shop-eu-1") && sidecarYAML.contains("world: shop"), "\(sidecarYAML)")
        #expect(sidecarYAML.contains("contentious-keys:\n- lock:*\n"), "\(sidecarYAML)")
        for (resource, name) in [(KubeResource.services, "shop-eu-1"), (.services, "shop-eu-1-headless"), (.podDisruptionBudgets, "shop-eu-1")] {
            #expect(try await client.get(resource, namespace: "default", name: name)[path: "metadata.ownerReferences"]?.array?.first?["uid"] == uid)
        }
        // The PodDisruptionBudget at the version this API server serves (1.20: policy/v1beta1;
        // policy/v1 from 1.21), found by discovery.
        #expect(client.servedVersions.versions["policy"] == "v1beta1")
        let budget = try await client.get(.podDisruptionBudgets, namespace: "default", name: "shop-eu-1")
        #expect(budget["apiVersion"] == "policy/v1beta1" && budget[path: "spec.maxUnavailable"] == 1)
        // Truthful status: reconciled, not ready (no pods run on this test control plane).
        #expect(try await eventually(timeout: .seconds(30)) {
            let status = try await client.get(Pylon.racks, namespace: "default", name: "shop-eu-1")["status"]
            let conditions = status?["conditions"]?.array ?? []
            return status?["observedGeneration"] == 1 && status?["ready"] == "0/1"
                && conditions.contains { $0["type"] == "Reconciled" && $0["status"] == "True" }
                && conditions.contains { $0["type"] == "Ready" && $0["status"] == "False" && $0["reason"] == "PodsNotReady" }
        })
        #expect(try await eventually(timeout: .seconds(30)) {
            try await client.get(Pylon.worlds, namespace: "default", name: "shop")[path: "status.racks"] == 1
        })
        // Lag read from Kafka: 20 ops in partition 1 that the rack's group has not committed
        // make it Behind; once committed, it is CaughtUp again (threshold 10).
        let producer = try KafkaProducer(brokers: broker.bootstrap)
        for _ in 0..<20 {
            _ = try await producer.send(topic: topic, partition: 1, key: nil, value: ByteBuffer(string: "op"), on: MultiThreadedEventLoopGroup.singleton.any()).get()
        }
        producer.close()
        func caughtUp(_ expected: String, lag: Int) async throws -> Bool {
            let status = try await client.get(Pylon.racks, namespace: "default", name: "shop-eu-1")["status"]
            return status?["lag"] == .number(Double(lag)) && status?["conditions"]?.array?.contains { $0["type"] == "CaughtUp" && $0["status"] == .string(expected) } == true
        }
        #expect(try await eventually(timeout: .seconds(30)) { try await caughtUp("False", lag: 20) })
        let rackStatus = try await client.get(Pylon.racks, namespace: "default", name: "shop-eu-1")
        #expect(rackStatus[path: "status.partitions"]?.array?[1]["lag"] == 20)
        let progress = try KafkaConsumer(brokers: broker.bootstrap, groupID: "pylon.shop.shop-eu-1")
        try progress.commit([(topic, 1, 20)])
        progress.close()
        #expect(try await eventually(timeout: .seconds(30)) { try await caughtUp("True", lag: 0) })
        // A second rack starts from a snapshot of the first: its sidecars are told where to take
        // it, and its status says it loads one until it is CaughtUp.
        var second = try KubeAPITests.manifest("samples/rack-standalone.yaml")
        second["metadata"]?["name"] = "shop-eu-2"
        second["spec"]?["catchUp"] = ["from": "snapshot", "rack": "shop-eu-1"]
        _ = try await client.create(Pylon.racks, namespace: "default", second)
        func snapshotCondition(_ status: String, _ reason: String) async throws -> Bool {
            let conditions = try await client.get(Pylon.racks, namespace: "default", name: "shop-eu-2")[path: "status.conditions"]?.array ?? []
            return conditions.contains { $0["type"] == "SnapshotCatchUp" && $0["status"] == .string(status) && $0["reason"] == .string(reason) }
        }
        #expect(try await eventually(timeout: .seconds(30)) { try await snapshotCondition("False", "Loading") })
        let secondYAML = try await client.get(.configMaps, namespace: "default", name: "shop-eu-2-sidecar")[path: "data"]?["sidecar.yml"]?.string ?? ""
        #expect(secondYAML.contains("snapshot-from: redis://shop-eu-1-0.shop-eu-1-headless.default.svc:6379"), "\(secondYAML)")
        let secondGroup = try KafkaConsumer(brokers: broker.bootstrap, groupID: "pylon.shop.shop-eu-2")
        try secondGroup.commit((0..<8).map { (topic, Int32($0), $0 == 1 ? 20 : 0) })
        secondGroup.close()
        #expect(try await eventually(timeout: .seconds(30)) { try await snapshotCondition("True", "CaughtUp") })
        _ = try await client.delete(Pylon.racks, namespace: "default", name: "shop-eu-2")
        // Settled, the rack is reconciled every second (its resync here) and the API server is
        // not asked anything: the rack, its world and its objects are read from the informers
        // and found as the operator left them, and the status is unchanged.
        func requests() -> Int { operatorClient.requests.withLock { $0.filter { $0.key != "WATCH" }.values.reduce(0, +) } }
        func rackReconciles() -> Int { Self.metric(service.metrics.render(), #"pylon_operator_reconciles_total{kind="PylonRack"}"#) }
        try await Task.sleep(for: .seconds(1))
        let (requestsBefore, reconcilesBefore) = (requests(), rackReconciles())
        #expect(try await eventually(timeout: .seconds(30)) { rackReconciles() >= reconcilesBefore + 2 })
        #expect(requests() == requestsBefore, "\(operatorClient.requests.withLock { $0 })")
        #expect(service.metrics.render().contains(#"pylon_operator_reconcile_duration_seconds_bucket{kind="PylonRack",le="0.05"}"#))
        // Someone edits what the operator made: set right at once (its informer hears of it).
        _ = try await client.patch(.configMaps, namespace: "default", name: "shop-eu-1-sidecar", merge: ["data": ["sidecar.yml": "redis: redis://elsewhere:6379\n"]])
        #expect(try await eventually(timeout: .seconds(10)) {
            try await client.get(.configMaps, namespace: "default", name: "shop-eu-1-sidecar")[path: "data"]?["sidecar.yml"]?.string == sidecarYAML
        })
        // Events tell what the operator did.
        let events = try await client.list(.events, namespace: "default").items
        #expect(events.contains { $0["reason"] == "Reconciled" && $0[path: "involvedObject.name"] == "shop-eu-1" })

        // A spec change rolls the pods (a new config hash in the template) and is observed.
        let hash = statefulSet[path: "spec.template.metadata.annotations"]?["pylon.io/config-hash"]
        _ = try await client.patch(Pylon.racks, namespace: "default", name: "shop-eu-1", merge: ["spec": ["sidecar": ["settings": ["max-ready-lag": "100"]]]])
        #expect(try await eventually(timeout: .seconds(30)) {
            let rolled = try await client.get(.statefulSets, namespace: "default", name: "shop-eu-1")
            let observed = try await client.get(Pylon.racks, namespace: "default", name: "shop-eu-1")[path: "status.observedGeneration"]
            return rolled[path: "spec.template.metadata.annotations"]?["pylon.io/config-hash"] != hash && observed == 2
        })
        // Peers: every sidecar of the world behind one headless Service, owned by the world.
        #expect(sidecarYAML.contains("peers: shop-sidecars.default.svc:6380"), "\(sidecarYAML)")
        let peers = try await client.get(.services, namespace: "default", name: "shop-sidecars")
        #expect(peers[path: "spec.selector"]?["pylon.io/world"] == "shop" && peers[path: "spec.clusterIP"] == "None")
        #expect(peers[path: "metadata.ownerReferences"]?.array?.first?["kind"] == "PylonWorld")
        // A second rack of the world, a Redis Cluster.
        _ = try await client.create(Pylon.racks, namespace: "default", try KubeAPITests.manifest("samples/rack-cluster.yaml"))
        #expect(try await eventually(timeout: .seconds(30)) {  // 3 shards × (1 master + 1 replica)
            try await client.get(.statefulSets, namespace: "default", name: "shop-eu-2")[path: "spec.replicas"] == 6
        })
        // …and the Job that makes its six pods one Redis Cluster once they answer (applied last).
        var bootstrap: JSON?
        #expect(try await eventually(timeout: .seconds(30)) {
            let jobs = try await client.list(.jobs, namespace: "default").items
            bootstrap = jobs.first { $0[path: "metadata.name"]?.string?.hasPrefix("shop-eu-2-bootstrap-") == true }
            return bootstrap != nil
        })
        let script = bootstrap?[path: "spec.template.spec.containers"]?.array?.first?["command"]?.array?.last?.string ?? ""
        #expect(script.contains("--cluster-replicas 1") && script.contains("shop-eu-2-5.shop-eu-2-headless.default.svc"), "\(script)")
        #expect(bootstrap?[path: "metadata.ownerReferences"]?.array?.first?["name"] == "shop-eu-2")
        // A third, Sentinel-managed: three pods of Redis + Sentinel, starting at its catch-up offsets.
        _ = try await client.create(Pylon.racks, namespace: "default", try KubeAPITests.manifest("samples/rack-sentinel.yaml"))
        #expect(try await eventually(timeout: .seconds(30)) {
            let pods = try? await client.get(.statefulSets, namespace: "default", name: "shop-us-1")[path: "spec.template.spec.containers"]?.array
            return pods?.compactMap { $0["name"]?.string } == ["redis", "sentinel", "pylon-sidecar"]
        })
        let sentinelConfig = try await client.get(.configMaps, namespace: "default", name: "shop-us-1-sidecar")[path: "data"]?["sidecar.yml"]?.string ?? ""
        #expect(sentinelConfig.contains("redis: redis-sentinel://shop-us-1-0.shop-us-1-headless.default.svc:26379,") && sentinelConfig.contains("- 3=14990\n"), "\(sentinelConfig)")

        // Deleting the world while racks remain is refused with a clear condition.
        try await client.delete(Pylon.worlds, namespace: "default", name: "shop")
        #expect(try await eventually(timeout: .seconds(30)) {
            let world = try await client.get(Pylon.worlds, namespace: "default", name: "shop")
            return world[path: "status.conditions"]?.array?.contains { $0["type"] == "DeletionBlocked" && $0["message"]?.string?.contains("shop-eu-1") == true } == true
        })
        // Deleting the racks retires them: objects gone, consumer group gone; then the world goes.
        try await client.delete(Pylon.racks, namespace: "default", name: "shop-eu-1")
        _ = try await client.delete(Pylon.racks, namespace: "default", name: "shop-eu-2")
        try await client.delete(Pylon.racks, namespace: "default", name: "shop-us-1")
        #expect(try await eventually(timeout: .seconds(60)) {
            let racks = try await client.list(Pylon.racks, namespace: "default").items
            let worlds = try await client.list(Pylon.worlds, namespace: "default").items
            return racks.isEmpty && worlds.isEmpty
        })
        for (resource, name) in [(KubeResource.statefulSets, "shop-eu-1"), (.configMaps, "shop-eu-1-sidecar"), (.services, "shop-eu-1-headless")] {
            await #expect(throws: KubeError.self) { _ = try await client.get(resource, namespace: "default", name: name) }
        }
        #expect(try await client.list(.jobs, namespace: "default").items.isEmpty)
        let probe = try KafkaProducer(brokers: broker.bootstrap)
        #expect(try probe.committedOffsets(group: "pylon.shop.shop-eu-1", topic: topic, partitions: [0]) == [nil])
        probe.close()
    }

    /// Retiring a rack deletes what the rack owns (by owner reference) and nothing else, though
    /// a rack named like its world shares the world's labels; and with the world's Kafka down the
    /// deletion says why it waits, retries, and completes once the rack is annotated to skip the
    /// Kafka clean-up.
    @Test func retiringTouchesOnlyTheRacksObjectsAndSaysWhyItWaitsWhileKafkaIsDown() async throws {
        let api = try await KubeAPIServer()
        defer { api.stop() }
        let broker = try KafkaBroker()
        let client = try await api.client()
        try await KubeAPITests.install(client)
        let service = PylonOperatorService(
            client: try await api.client(token: api.operatorToken), settings: .init(namespace: "default", resync: .seconds(1)), logger: Logger(label: "test")
        )
        service.start()
        defer { Task { await service.stop() } }
        func world(_ name: String, kafka: String) throws -> JSON {
            var world = try KubeAPITests.manifest("samples/world.yaml")
            world["metadata"]?["name"] = .string(name)
            world["spec"]?["kafka"]?["bootstrapServers"] = .string(kafka)
            return world
        }
        func rack(_ name: String, world: String) throws -> JSON {
            var rack = try KubeAPITests.manifest("samples/rack-standalone.yaml")
            rack["metadata"]?["name"] = .string(name)
            rack["spec"]?["world"] = .string(world)
            return rack
        }
        func exists(_ resource: KubeResource, _ name: String) async -> Bool { (try? await client.get(resource, namespace: "default", name: name)) != nil }

        // A rack named like its world: its objects and the world's (the headless Service
        // `twin-sidecars`) carry the same instance label.
        _ = try await client.create(Pylon.worlds, namespace: "default", try world("twin", kafka: broker.bootstrap))
        _ = try await client.create(Pylon.racks, namespace: "default", try rack("twin", world: "twin"))
        #expect(try await eventually(timeout: .seconds(30)) {
            let (rackObjects, worldObjects) = (await exists(.statefulSets, "twin"), await exists(.services, "twin-sidecars"))
            return rackObjects && worldObjects
        })
        // Its uid: a Service the world's reconcile made again would have another.
        let worldService = try await client.get(.services, namespace: "default", name: "twin-sidecars")[path: "metadata.uid"]
        try await client.delete(Pylon.racks, namespace: "default", name: "twin")
        #expect(try await eventually(timeout: .seconds(30)) { await !exists(Pylon.racks, "twin") })
        for (resource, name) in [(KubeResource.statefulSets, "twin"), (.configMaps, "twin-sidecar"), (.services, "twin-headless"), (.podDisruptionBudgets, "twin")] {
            #expect(await !exists(resource, name), "\(resource.plural)/\(name)")
        }
        #expect(try await client.get(.services, namespace: "default", name: "twin-sidecars")[path: "metadata.uid"] == worldService, "the world's Service must survive its namesake rack")
        #expect(try await client.get(Pylon.worlds, namespace: "default", name: "twin")[path: "metadata.deletionTimestamp"] == nil)

        // A world whose Kafka is down: the deleted rack waits, and says why.
        let nowhere = "127.0.0.1:\(try Ports.free())"
        _ = try await client.create(Pylon.worlds, namespace: "default", try world("dark", kafka: nowhere))
        _ = try await client.create(Pylon.racks, namespace: "default", try rack("dark-1", world: "dark"))
        #expect(try await eventually(timeout: .seconds(30)) { await exists(.statefulSets, "dark-1") })
        try await client.delete(Pylon.racks, namespace: "default", name: "dark-1")
        var retiring: JSON?
        #expect(try await eventually(timeout: .seconds(60)) {
            let rack = try await client.get(Pylon.racks, namespace: "default", name: "dark-1")
            retiring = rack[path: "status.conditions"]?.array?.first { $0["type"] == "Retiring" }
            return retiring?["status"] == "False" && retiring?["reason"] == "KafkaUnreachable"
        })
        #expect(retiring?["message"]?.string?.contains(nowhere) == true && retiring?["message"]?.string?.contains(Pylon.skipKafkaCleanup) == true)
        let events = { try await client.list(.events, namespace: "default").items.filter { $0[path: "involvedObject.name"] == "dark-1" }.compactMap { $0["reason"]?.string } }
        #expect(try await events().contains("RetireBlocked"))
        #expect(await exists(.statefulSets, "dark-1"), "nothing is deleted while the consumer group cannot be")
        // The way out: retired without the Kafka clean-up, which an Event names.
        _ = try await client.patch(Pylon.racks, namespace: "default", name: "dark-1", merge: ["metadata": ["annotations": [.init(Pylon.skipKafkaCleanup): "true"]]])
        #expect(try await eventually(timeout: .seconds(60)) { await !exists(Pylon.racks, "dark-1") })
        #expect(await !exists(.statefulSets, "dark-1"))
        #expect(try await events().contains("KafkaCleanupSkipped"))
    }

    /// A sample's value in Prometheus text (0 when absent).
    static func metric(_ text: String, _ sample: String) -> Int {
        text.split(separator: "\n").first { $0.hasPrefix(sample + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }.map { Int($0) } ?? 0
    }

    @Test func ownerReferencesAloneLetTheGarbageCollectorDeleteARacksObjects() async throws {
        let api = try await KubeAPIServer()
        defer { api.stop() }
        let broker = try KafkaBroker()
        let client = try await api.client()
        try await KubeAPITests.install(client)
        try api.startGarbageCollector()
        let service = PylonOperatorService(client: try await api.client(token: api.operatorToken), settings: .init(namespace: "default", resync: .seconds(1)), logger: Logger(label: "test"))
        service.start()
        var worldObject = try KubeAPITests.manifest("samples/world.yaml")
        worldObject["spec"]?["kafka"]?["bootstrapServers"] = .string(broker.bootstrap)
        _ = try await client.create(Pylon.worlds, namespace: "default", worldObject)
        _ = try await client.create(Pylon.racks, namespace: "default", try KubeAPITests.manifest("samples/rack-standalone.yaml"))
        let objects: [(KubeResource, String)] = [
            (.statefulSets, "shop-eu-1"), (.configMaps, "shop-eu-1-sidecar"), (.services, "shop-eu-1"), (.services, "shop-eu-1-headless"),
            (.podDisruptionBudgets, "shop-eu-1"), (.services, "shop-sidecars"),
        ]
        func existing() async -> [String] {
            var names: [String] = []
            for (resource, name) in objects where (try? await client.get(resource, namespace: "default", name: name)) != nil { names.append("\(resource.plural)/\(name)") }
            return names
        }
        #expect(try await eventually(timeout: .seconds(30)) { await existing().count == objects.count })
        // The operator is gone (no finalizer work, no label-based clean-up): deleting the rack and
        // the world leaves their objects to the garbage collector, through their owner references.
        await service.stop()
        for resource in [Pylon.racks, Pylon.worlds] {
            let name = resource == Pylon.racks ? "shop-eu-1" : "shop"
            _ = try await client.patch(resource, namespace: "default", name: name, merge: ["metadata": ["finalizers": nil]])
            try await client.delete(resource, namespace: "default", name: name)
        }
        var left: [String] = []
        #expect(try await eventually(timeout: .seconds(90)) {
            left = await existing()
            return left.isEmpty
        }, "left: \(left)")
    }
}

/// The `pylon-operator` executable with leader election: two replicas, one leader.
@Suite("Operator: the executable and leader election", .serialized, .timeLimit(.minutes(5)))
struct OperatorExecutableTests {
    static var executable: URL { ExecutableTests.executable.deletingLastPathComponent().appendingPathComponent("pylon-operator") }

    func leaderGauge(_ port: Int) async -> Int? {
        guard let (data, _) = try? await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)/metrics")!) else { return nil }
        let line = String(decoding: data, as: UTF8.self).split(separator: "\n").first { $0.hasPrefix("pylon_operator_leader ") }
        return line.flatMap { Int($0.split(separator: " ")[1]) }
    }

    @Test func onlyTheLeaseHolderReconcilesAndAnotherTakesOverWhenItDies() async throws {
        let api = try await KubeAPIServer()
        defer { api.stop() }
        let client = try await api.client()
        try await KubeAPITests.install(client)
        let kubeconfig = try api.kubeconfig(token: api.operatorToken)
        let scratch = try ScratchDirectory()
        let ports = try [Ports.free(), Ports.free()]
        let replicas = try (0..<2).map { index in
            try LocalProcess(Self.executable.path, [
                "--kubeconfig", kubeconfig, "--namespace", "default", "--leader-elect", "--lease-namespace", "pylon-system", "--identity", "replica-\(index)",
                "--lease-duration-s", "3", "--admin", "127.0.0.1:\(ports[index])", "--sidecar-image", "pylon/sidecar:test",
            ], name: "pylon-operator \(index)", log: scratch.url.appendingPathComponent("operator-\(index).log"))
        }
        defer { for replica in replicas { replica.stop() } }
        var gauges: [Int?] = []
        #expect(try await eventually(timeout: .seconds(20)) {
            gauges = [await self.leaderGauge(ports[0]), await self.leaderGauge(ports[1])]
            return gauges.compactMap { $0 }.sorted() == [0, 1]
        }, "\(gauges)")
        let leader = gauges[0] == 1 ? 0 : 1
        let lease = try await client.get(.leases, namespace: "pylon-system", name: "pylon-operator")
        #expect(lease[path: "spec.holderIdentity"] == .string("replica-\(leader)"))
        // The leader reconciles.
        _ = try await client.create(Pylon.worlds, namespace: "default", try KubeAPITests.manifest("samples/world.yaml"))
        _ = try await client.create(Pylon.racks, namespace: "default", try KubeAPITests.manifest("samples/rack-standalone.yaml"))
        #expect(try await eventually(timeout: .seconds(30)) {
            (try? await client.get(.statefulSets, namespace: "default", name: "shop-eu-1")) != nil
        })
        // Killed, it is replaced once its Lease expires; the new leader reconciles what changes.
        replicas[leader].stop(signal: SIGKILL)
        #expect(try await eventually(timeout: .seconds(20)) { await self.leaderGauge(ports[1 - leader]) == 1 })
        #expect(try await client.get(.leases, namespace: "pylon-system", name: "pylon-operator")[path: "spec.holderIdentity"] == .string("replica-\(1 - leader)"))
        _ = try await client.create(Pylon.racks, namespace: "default", try KubeAPITests.manifest("samples/rack-cluster.yaml"))
        #expect(try await eventually(timeout: .seconds(30)) {
            (try? await client.get(.statefulSets, namespace: "default", name: "shop-eu-2")) != nil
        })
        // An API server that stops answering: the leader cannot renew and steps down by the renew
        // deadline (2 of the lease's 3 s), before the Lease can expire for anyone else; leads
        // again once it answers.
        api.pauseServer()
        let frozen = ContinuousClock.now
        #expect(try await eventually(timeout: .seconds(10)) { await self.leaderGauge(ports[1 - leader]) == 0 })
        let steppedDown = ContinuousClock.now - frozen
        api.resumeServer()
        #expect(steppedDown < .seconds(3) + .milliseconds(800), "stepped down after \(steppedDown), the lease lasts 3 s")
        #expect(try await eventually(timeout: .seconds(20)) { await self.leaderGauge(ports[1 - leader]) == 1 })
        // SIGTERM: its parts stop in order (reconcilers first), the Lease is handed back, and it
        // exits by itself, successfully.
        replicas[1 - leader].stop()
        #expect(replicas[1 - leader].process.terminationReason == .exit && replicas[1 - leader].process.terminationStatus == 0)
        let log = (try? String(contentsOf: scratch.url.appendingPathComponent("operator-\(1 - leader).log"), encoding: .utf8)) ?? ""
        #expect(try await client.get(.leases, namespace: "pylon-system", name: "pylon-operator")[path: "spec.holderIdentity"] == "", "\(log.suffix(3000))")
    }

    @Test func theExecutableServesTheSidecarInjectionWebhook() async throws {
        let api = try await KubeAPIServer()
        defer { api.stop() }
        let admin = try await api.client()
        try await KubeAPITests.install(admin)
        let scratch = try ScratchDirectory()
        let (port, webhookPort) = (try Ports.free(), try Ports.free())
        // As manifests/operator runs it (its ServiceAccount's rights, a certificate it makes),
        // with the certificate for the loopback address the test's API server calls.
        let process = try LocalProcess(Self.executable.path, [
            "--kubeconfig", try api.kubeconfig(token: api.operatorToken), "--namespace", "apps", "--lease-namespace", "pylon-system",
            "--admin", "127.0.0.1:\(port)", "--sidecar-image", "pylon/sidecar:test",
            "--webhook", "127.0.0.1:\(webhookPort)", "--webhook-hosts", "127.0.0.1",
        ], name: "pylon-operator", log: scratch.url.appendingPathComponent("operator.log"))
        defer { process.stop() }
        try Ports.waitUntilOpen(webhookPort)
        try await WebhookTests.registerWebhook(admin, port: webhookPort)
        #expect(try await eventually(timeout: .seconds(20)) {
            let webhooks = try await admin.get(WebhookTests.mutatingWebhookConfigurations, name: "pylon-sidecar-injector")["webhooks"]?.array ?? []
            return webhooks.allSatisfy { $0[path: "clientConfig.caBundle"]?.string?.isEmpty == false }
        })
        #expect(try await admin.get(.secrets, namespace: "pylon-system", name: "pylon-webhook-cert")["type"] == "kubernetes.io/tls")
        let pod = try await admin.create(.pods, namespace: "apps", try await WebhookTests.userNamespace(admin))
        #expect(pod[path: "spec.containers"]?.array?.compactMap { $0["name"]?.string } == ["redis", "pylon-sidecar"])
        // The injected rack: its configuration and Services, no StatefulSet; its pod counted.
        #expect(try await eventually(timeout: .seconds(30)) {
            let status = try await admin.get(Pylon.racks, namespace: "apps", name: "shop-app-1")["status"]
            return status?["ready"] == "0/1" && status?["observedGeneration"] == 1
        })
        let service = try await admin.get(.services, namespace: "apps", name: "shop-app-1")
        #expect(service[path: "spec.selector"] == ["pylon.io/rack": "shop-app-1", "pylon.io/sidecar": "injected"])
        _ = try await admin.get(.configMaps, namespace: "apps", name: "shop-app-1-sidecar")
        await #expect(throws: KubeError.self) { _ = try await admin.get(.statefulSets, namespace: "apps", name: "shop-app-1") }
    }
}
