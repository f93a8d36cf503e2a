import Foundation
import Testing

@testable import PylonSidecar

@Suite("Configuration")
struct ConfigurationTests {
    @Test func readsYAMLAndLetsFlagsWin() throws {
        var configuration = SidecarConfiguration()
        try configuration.apply(yaml: """
        listen: 0.0.0.0:7000
        redis: redis-cluster://10.0.0.1:7000,10.0.0.2:7000
        admin: 127.0.0.1:9999
        read-from: nearest
        log-format: json
        rack: eu-1
        redis-timeout-ms: 250
        """)
        try configuration.set("listen", "127.0.0.1:7001")
        #expect(configuration.listen == HostPort(host: "127.0.0.1", port: 7001))
        #expect(configuration.redis == .cluster([HostPort(host: "10.0.0.1", port: 7000), HostPort(host: "10.0.0.2", port: 7000)]))
        #expect(configuration.admin.port == 9999)
        #expect(configuration.readFrom == .nearest)
        #expect(configuration.logFormat == .json)
        #expect(configuration.rack == "eu-1")
        #expect(configuration.redisTimeoutMilliseconds == 250)
    }

    @Test func parsesEveryRedisURLForm() throws {
        #expect(try RedisEndpoint(url: "redis://localhost:6379") == .standalone(HostPort(host: "localhost", port: 6379)))
        #expect(try RedisEndpoint(url: "redis-sentinel://a:26379,b:26379/mymaster") ==
            .sentinel([HostPort(host: "a", port: 26379), HostPort(host: "b", port: 26379)], masterName: "mymaster"))
        #expect(try RedisEndpoint(url: "redis://[::1]:6379") == .standalone(HostPort(host: "::1", port: 6379)))
    }

    @Test(arguments: [
        ("listen: nonsense", "'listen'", "HOST:PORT"),
        ("redis: http://x:1", "'redis'", "unsupported scheme 'http'"),
        ("redis: redis-sentinel://a:1", "'redis'", "names no master"),
        ("read-from: closest", "'read-from'", "master, replica, nearest"),
        ("lisen: 1.2.3.4:5", "'lisen'", "unknown key"),
        ("redis-timeout-ms: -1", "'redis-timeout-ms'", "an integer"),
        ("listen: [1, 2]", "'listen'", "a single value"),
        ("- a\n- b", "'config'", "a mapping"),
        ("listen: \"unterminated", "'config'", "not valid YAML"),
        ("catch-up-offsets: [\"0:5\"]", "'catch-up-offsets'", "PARTITION=OFFSET"),
        ("catch-up-offsets: [\"0=-5\"]", "'catch-up-offsets'", "PARTITION=OFFSET"),
    ])
    func namesTheKeyAtFault(yaml: String, key: String, problem: String) {
        var configuration = SidecarConfiguration()
        do {
            try configuration.apply(yaml: yaml)
            Issue.record("accepted \(yaml)")
        } catch {
            let message = "\(error)"
            #expect(message.contains(key), "\(message)")
            #expect(message.contains(problem), "\(message)")
        }
    }

    @Test func readsCatchUpOffsetsWithinTheTopicsPartitions() throws {
        var configuration = SidecarConfiguration()
        try configuration.apply(yaml: "partitions: 4\ncatch-up-offsets: [\"0=100\", \"3=7\"]")
        #expect(configuration.catchUpOffsets == [0: 100, 3: 7])
        try configuration.set("catch-up-offsets", "4=1")
        #expect(throws: SidecarConfiguration.Error(key: "catch-up-offsets", problem: "partition 4 is not one of the topic's 4")) { try configuration.validated() }
    }

    @Test func readsTheSnapshotKeys() throws {
        var configuration = SidecarConfiguration()
        try configuration.apply(yaml: "snapshot-from: redis://eu-1-0.eu-1-headless.shop.svc:6379\nsnapshot-dir: /var/lib/pylon/snapshots")
        #expect(configuration.snapshotFrom == .standalone(HostPort(host: "eu-1-0.eu-1-headless.shop.svc", port: 6379)))
        #expect(configuration.snapshotDirectory == "/var/lib/pylon/snapshots")
        #expect(SidecarConfiguration().snapshotDirectory == "/tmp/pylon-snapshots")
        let refused = #expect(throws: SidecarConfiguration.Error.self) { try configuration.set("snapshot-from", "redis-sentinel://a:26379/main") }
        #expect(refused?.description.contains("not through the Sentinels") == true)
        #expect(throws: SidecarConfiguration.Error.self) { try configuration.set("snapshot-dir", "") }
        // A Redis Cluster's snapshot stands at another offset in each slot: only a Cluster rack loads it.
        try configuration.set("snapshot-from", "redis-cluster://a:6379,b:6379")
        #expect(configuration.snapshotFrom == .cluster([HostPort(host: "a", port: 6379), HostPort(host: "b", port: 6379)]))
        let standalone = #expect(throws: SidecarConfiguration.Error.self) { try configuration.validated() }
        #expect(standalone?.description.contains("only a Redis Cluster rack") == true)
        try configuration.set("redis", "redis-cluster://c:6379")
        _ = try configuration.validated()
        try configuration.set("catch-up-offsets", "0=5")
        #expect(throws: SidecarConfiguration.Error(key: "snapshot-from", problem: "a rack catches up either from a snapshot or from catch-up-offsets, not both")) { try configuration.validated() }
    }

    @Test func readsTheWritePathKeys() throws {
        var configuration = SidecarConfiguration()
        try configuration.apply(yaml: """
        world: earth
        rack: eu-1
        kafka-brokers: 10.0.0.1:9092,10.0.0.2:9092
        partitions: 16
        kafka-properties:
          security.protocol: ssl
          linger.ms: 2
        """)
        try configuration.set("kafka-property", "ssl.ca.location=/etc/ca=1.pem")
        #expect(configuration.kafkaBrokers == "10.0.0.1:9092,10.0.0.2:9092")
        #expect(configuration.topic == "pylon.earth.ops")
        #expect(configuration.partitions == 16)
        #expect(configuration.kafkaProperties == ["security.protocol": "ssl", "linger.ms": "2", "ssl.ca.location": "/etc/ca=1.pem"])
        try configuration.set("topic", "custom.ops")
        #expect(configuration.topic == "custom.ops")
        #expect(throws: SidecarConfiguration.Error(key: "kafka-property", problem: "expected KEY=VALUE, got 'nonsense'")) {
            try configuration.set("kafka-property", "nonsense")
        }
        #expect(throws: SidecarConfiguration.Error.self) { try configuration.set("kafka-brokers", "no-port") }
    }

    @Test func aWritePathNeedsAWorldAndARack() throws {
        var configuration = SidecarConfiguration()
        try configuration.set("kafka-brokers", "127.0.0.1:9092")
        #expect(throws: SidecarConfiguration.Error.self) { try configuration.validated() }
        try configuration.set("world", "earth")
        do {
            _ = try configuration.validated()
            Issue.record("a write path without a rack was accepted")
        } catch let error as SidecarConfiguration.Error {
            #expect(error.key == "rack")
        }
        #expect(configuration.membership == nil)
        try configuration.set("rack", "a")
        #expect(try configuration.validated().topic == "pylon.earth.ops")
        #expect(configuration.membership == .init(brokers: "127.0.0.1:9092", world: "earth", rack: "a", topic: "pylon.earth.ops"))
        #expect(configuration.membership?.consumerGroup == "pylon.earth.a")
    }

    @Test func readsTheConsistencyKeys() throws {
        var configuration = SidecarConfiguration()
        #expect(configuration.consistency == .applied)
        try configuration.apply(yaml: """
        consistency: log
        contentious-keys:
          - lock:*
          - "leader:{eu}*"
        applied-timeout-ms: 2500
        """)
        try configuration.set("contentious-keys", "seat:[0-9]*")
        #expect(configuration.consistency == .log)
        #expect(configuration.contentiousKeys == ["lock:*", "leader:{eu}*", "seat:[0-9]*"])
        #expect(configuration.appliedTimeoutMilliseconds == 2500)
        #expect(throws: SidecarConfiguration.Error(key: "consistency", problem: "expected log or applied, got 'quorum'")) {
            try configuration.set("consistency", "quorum")
        }
        #expect(throws: SidecarConfiguration.Error.self) { try configuration.set("applied-timeout-ms", "5") }
        #expect(throws: SidecarConfiguration.Error.self) { try configuration.apply(yaml: "listen: [a, b]") }
    }

    @Test func aStableNameMakesAStaticGroupMember() throws {
        var configuration = SidecarConfiguration()
        #expect(configuration.hasStableName)
        configuration.listen = HostPort(host: "127.0.0.1", port: 0)
        #expect(!configuration.hasStableName)
        try configuration.set("sidecar-name", "rack-a-0")
        #expect(configuration.hasStableName)
    }

    @Test func readsThePeerKeys() throws {
        var configuration = SidecarConfiguration()
        try configuration.apply(yaml: """
        kafka-brokers: 127.0.0.1:9092
        world: earth
        rack: a
        peers:
          - pylon-rack-b.shop.svc:6380
          - 10.0.0.7:6380,10.0.0.8:6380
        peer-probe-interval-ms: 250
        max-peer-lag: 50
        max-local-lag: 5000
        """)
        try configuration.set("peers", "[::1]:6390")
        #expect(configuration.peers.map(\.description) == ["pylon-rack-b.shop.svc:6380", "10.0.0.7:6380", "10.0.0.8:6380", "[::1]:6390"])
        #expect(configuration.peerProbeIntervalMilliseconds == 250)
        #expect(configuration.maxPeerLag == 50)
        #expect(configuration.maxLocalLag == 5000)
        #expect(throws: SidecarConfiguration.Error(key: "peers", problem: "expected HOST:PORT[,HOST:PORT…], got 'b:x'")) {
            try configuration.set("peers", "b:x")
        }
        var alone = SidecarConfiguration()
        try alone.set("peers", "10.0.0.7:6380")
        #expect(throws: SidecarConfiguration.Error.self) { try alone.validated() }
    }

    @Test func readsSecretKafkaPropertiesFromFiles() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("pylon-password-\(UUID().uuidString)")
        try "s3cret\n".write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        var configuration = SidecarConfiguration()
        try configuration.apply(yaml: "kafka-property-file: [\"sasl.password=\(file.path)\"]")
        #expect(configuration.kafkaProperties["sasl.password"] == "s3cret")
        #expect(throws: SidecarConfiguration.Error.self) { try configuration.set("kafka-property-file", "sasl.username=/nonexistent/file") }
    }
}
