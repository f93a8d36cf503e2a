import Foundation
import Testing
import Yams

@testable import PylonOperator

@Suite("Rack renderer")
struct RackRendererTests {
    func rack(_ spec: String) throws -> PylonRack {
        try PylonRack(json: JSON(yaml: """
        apiVersion: pylon.io/v1alpha1
        kind: PylonRack
        metadata: {name: eu-1, namespace: shop, uid: u-1}
        spec:
        \(spec.split(separator: "\n").map { "  \($0)" }.joined(separator: "\n"))
        """))
    }

    func world(_ kafka: JSON) throws -> PylonWorld {
        try PylonWorld(json: ["apiVersion": "pylon.io/v1alpha1", "kind": "PylonWorld", "metadata": ["name": "w", "namespace": "shop", "uid": "w-1"], "spec": ["kafka": kafka, "partitions": 4]])
    }

    func sidecarYAML(_ objects: [any KubeObject]) -> String {
        objects.compactMap { $0 as? ConfigMap }.first?.data?["sidecar.yml"] ?? ""
    }

    /// The sidecar's configuration, parsed back.
    func sidecarSettings(_ objects: [any KubeObject]) throws -> [String: Any] {
        try #require(try Yams.load(yaml: self.sidecarYAML(objects)) as? [String: Any])
    }

    @Test func mountsTheWorldsKafkaSecretsAndKeepsCredentialsOutOfTheConfigMap() throws {
        let objects = try RackRenderer().render(rack: self.rack("world: w\nredis: {topology: standalone}\nsidecar: {settings: {max-ready-lag: '5'}}"), world: self.world([
            "bootstrapServers": "k:9093", "tls": ["secretName": "kafka-ca", "clientCertificate": true],
            "sasl": ["mechanism": "SCRAM-SHA-512", "secretName": "kafka-user"],
        ]))
        let config = try self.sidecarSettings(objects)
        let properties = try #require(config["kafka-properties"] as? [String: String])
        #expect(properties["security.protocol"] == "SASL_SSL" && properties["sasl.mechanism"] == "SCRAM-SHA-512")
        #expect(properties["ssl.ca.location"] == "/etc/pylon/kafka-tls/ca.crt" && properties["ssl.key.location"] == "/etc/pylon/kafka-tls/tls.key")
        #expect(config["kafka-property-file"] as? [String] == ["sasl.username=/etc/pylon/kafka-sasl/username", "sasl.password=/etc/pylon/kafka-sasl/password"])
        #expect(config["max-ready-lag"] as? String == "5" && config["partitions"] as? String == "4" && config["peers"] as? String == "w-sidecars.shop.svc:6380")
        let pod = try #require(objects.compactMap { $0 as? StatefulSet }.first).spec.template.spec
        #expect(pod.volumes?.compactMap(\.secret?.secretName) == ["kafka-ca", "kafka-user"])
        #expect(pod.containers.last?.volumeMounts?.map(\.mountPath) == ["/etc/pylon/config", "/etc/pylon/kafka-tls", "/etc/pylon/kafka-sasl"])
        // Everything is the rack's.
        #expect(objects.allSatisfy { $0.metadata.ownerReferences == [OwnerReference(apiVersion: "pylon.io/v1alpha1", kind: "PylonRack", name: "eu-1", uid: "u-1", controller: true, blockOwnerDeletion: true)] })
    }

    @Test func aSentinelRackIsRedisAndASentinelInEachOfItsPods() throws {
        let objects = try RackRenderer().render(rack: self.rack("world: w\nredis: {topology: sentinel, replicas: 2}"), world: self.world(["bootstrapServers": "k:9092"]))
        let statefulSet = try #require(objects.compactMap { $0 as? StatefulSet }.first)
        #expect(statefulSet.spec.replicas == 3)
        #expect(statefulSet.spec.template.spec.containers.map(\.name) == ["redis", "sentinel", "pylon-sidecar"])
        let sentinel = try #require(statefulSet.spec.template.spec.containers.first { $0.name == "sentinel" })
        #expect(sentinel.command?.last?.contains("sentinel monitor eu-1 eu-1-0.eu-1-headless.shop.svc 6379 2") == true)
        let redis = try #require(statefulSet.spec.template.spec.containers.first)
        #expect(redis.command?.last?.contains("sentinel get-master-addr-by-name eu-1") == true && redis.command?.last?.contains("--replicaof") == true)
        let headless = try #require(objects.compactMap { $0 as? Service }.first { $0.metadata.name == "eu-1-headless" })
        #expect(headless.spec.ports.map(\.port) == [6380, 6379, 26379])
        #expect(try self.sidecarSettings(objects)["redis"] as? String ==
            "redis-sentinel://eu-1-0.eu-1-headless.shop.svc:26379,eu-1-1.eu-1-headless.shop.svc:26379,eu-1-2.eu-1-headless.shop.svc:26379/eu-1"
        )
        // Two Sentinels cannot outvote a partition: refused, naming the field.
        let error = #expect(throws: RackRenderer.RenderError.self) {
            try RackRenderer().render(rack: self.rack("world: w\nredis: {topology: sentinel, replicas: 1}"), world: self.world(["bootstrapServers": "k:9092"]))
        }
        #expect(error?.description.contains("spec.redis.replicas") == true)
    }

    @Test func catchUpOffsetsReachTheSidecar() throws {
        let world = try self.world(["bootstrapServers": "k:9092"])
        let objects = try RackRenderer().render(rack: self.rack("world: w\nredis: {topology: standalone}\ncatchUp: {from: offsets, offsets: {'0': 120, '3': 7}}"), world: world)
        #expect(try self.sidecarSettings(objects)["catch-up-offsets"] as? [String] == ["0=120", "3=7"])
        #expect(!self.sidecarYAML(try RackRenderer().render(rack: self.rack("world: w\nredis: {topology: standalone}"), world: world)).contains("catch-up"))
        for (spec, names) in [
            ("catchUp: {from: offsets, offsets: {'4': 1}}", "'4' is not a partition"),
            ("catchUp: {from: offsets}", "spec.catchUp.offsets"),
        ] {
            let error = #expect(throws: RackRenderer.RenderError.self) { try RackRenderer().render(rack: self.rack("world: w\nredis: {topology: standalone}\n\(spec)"), world: world) }
            #expect(error?.description.contains(names) == true, "\(String(describing: error))")
        }
    }

    func source(_ name: String, _ spec: String) throws -> PylonRack {
        var rack = try self.rack(spec)
        rack.metadata.name = name
        return rack
    }

    @Test func aRackFromASnapshotNamesItsSourcesRedisAndKeepsTheFileInAVolume() throws {
        let world = try self.world(["bootstrapServers": "k:9092"])
        let rack = try self.rack("world: w\nredis: {topology: cluster}\ncatchUp: {from: snapshot, rack: eu-0}")
        for (source, expected) in [
            (try self.source("eu-0", "world: w\nredis: {topology: standalone}"), "redis://eu-0-0.eu-0-headless.shop.svc:6379"),
            (try self.source("eu-0", "world: w\nredis: {topology: sentinel, replicas: 2}"), "redis://eu-0-0.eu-0-headless.shop.svc:6379"),
            (try self.source("eu-0", "world: w\nredis: {topology: external, external: {url: 'redis://legacy.db:6379'}}"), "redis://legacy.db:6379"),
            // A Redis Cluster's snapshot, into this Cluster rack: every primary's file.
            (try self.source("eu-0", "world: w\nredis: {topology: cluster}"), "redis-cluster://eu-0-headless.shop.svc:6379"),
            (try self.source("eu-0", "world: w\nredis: {topology: external, external: {url: 'redis-cluster://a.db:6379,b.db:6379'}}"), "redis-cluster://a.db:6379,b.db:6379"),
        ] {
            let objects = try RackRenderer().render(rack: rack, world: world, snapshotSource: source)
            let settings = try self.sidecarSettings(objects)
            #expect(settings["snapshot-from"] as? String == expected)
            #expect(settings["snapshot-dir"] as? String == "/var/lib/pylon/snapshots")
            let pod = try #require(objects.compactMap { $0 as? StatefulSet }.first?.spec.template.spec)
            #expect(pod.volumes?.contains { $0.name == "pylon-snapshots" && $0.emptyDir != nil } == true)
            #expect(pod.containers.first { $0.name == RackRenderer.sidecarName }?.volumeMounts?.contains { $0.mountPath == "/var/lib/pylon/snapshots" } == true)
        }
        for (spec, source, names) in [
            ("catchUp: {from: snapshot}", nil, "spec.catchUp.rack: name the rack"),
            ("catchUp: {from: snapshot, rack: eu-0}", nil, "PylonRack eu-0 does not exist in shop"),
            ("catchUp: {from: snapshot, rack: eu-0}", try self.source("eu-0", "world: other\nredis: {topology: standalone}"), "a rack of world other"),
            ("catchUp: {from: snapshot, rack: eu-0}", try self.source("eu-0", "world: w\nredis: {topology: cluster}"), "only a Redis Cluster rack can load"),
            ("catchUp: {from: snapshot, rack: eu-0}", try self.source("eu-0", "world: w\nredis: {topology: external, external: {url: 'redis-cluster://a.db:6379'}}"), "only a Redis Cluster rack can load"),
            ("catchUp: {from: snapshot, rack: eu-0}", try self.source("eu-0", "world: w\nredis: {topology: external, external: {url: 'redis-sentinel://s:26379/m'}}"), "not a redis:// or redis-cluster:// URL"),
            ("catchUp: {from: snapshot, rack: eu-0}", try self.source("eu-0", "world: w\nredis: {topology: injected}"), "is an injected rack"),
        ] {
            let error = #expect(throws: RackRenderer.RenderError.self) {
                try RackRenderer().render(rack: self.rack("world: w\nredis: {topology: standalone}\n\(spec)"), world: world, snapshotSource: source)
            }
            #expect(error?.description.contains(names) == true, "\(String(describing: error))")
        }
        // Once caught up, a retired source no longer matters.
        var caughtUp = rack
        caughtUp.status = .init(conditions: [Condition(type: "CaughtUp", status: true, reason: "LagBelowThreshold", message: "")])
        #expect(try self.sidecarSettings(RackRenderer().render(rack: caughtUp, world: world))["snapshot-from"] == nil)
        // Plain racks keep their pod template: no snapshot volume.
        let plain = try RackRenderer().render(rack: self.rack("world: w\nredis: {topology: standalone}"), world: world)
        #expect(plain.compactMap { $0 as? StatefulSet }.first?.spec.template.spec.volumes?.contains { $0.name == "pylon-snapshots" } == false)
    }

    @Test func theSamplesAreReadAsTypedObjects() throws {
        let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../manifests/samples").standardized
        var kinds: [String] = []
        for file in try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted() {
            for document in try JSON.documents(yaml: String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)) {
                switch document["kind"]?.string {
                case "PylonWorld": kinds.append(try PylonWorld(json: document).kind)
                case "PylonRack": kinds.append(try PylonRack(json: document).kind)
                default: continue
                }
            }
        }
        #expect(kinds.contains("PylonWorld") && kinds.contains("PylonRack"))
    }
}
