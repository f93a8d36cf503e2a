import Foundation
import NIOCore
import Testing

@testable import PylonSidecar

/// The read path in front of a real 3-master Redis Cluster.
@Suite("Gateway in front of a Redis Cluster", .serialized, .timeLimit(.minutes(3)))
struct ClusterTests {
    /// Writes straight to the node owning the key (tests set data up without going through Pylon).
    func set(_ cluster: RedisClusterFixture, _ key: String, _ value: String) async throws {
        let (owner, _) = try await cluster.owner(of: HashSlot.of(key))
        let client = try await owner.client()
        #expect(try await client.send("SET", key, value) == .ok)
        await client.close()
    }

    @Test func slotsMatchTheServer() async throws {
        let cluster = try await RedisClusterFixture()
        let client = try await cluster.nodes[0].client()
        for key in ["foo", "bar", "{user1000}.following", "{user1000}.followers", "a{}b", "{}x", "x{y", "日本", "", "key:000000001234"] {
            #expect(try await client.send("CLUSTER", "KEYSLOT", key).int == HashSlot.of(key), "\(key)")
        }
    }

    @Test func readsMultiKeyReadsAndCrossSlotErrors() async throws {
        let cluster = try await RedisClusterFixture()
        let keys = (0..<30).map { "key-\($0)" }
        for key in keys { try await self.set(cluster, key, "value-\(key)") }
        let sidecar = try await SidecarFixture(redis: .cluster([cluster.seeds[0]]))
        let client = try await sidecar.client()
        #expect(try await eventually { sidecar.sidecar.isReady })
        for key in keys {
            #expect(try await client.send("GET", key) == .bulk("value-\(key)"))
        }
        // MGET across every node, with missing keys in between: split by slot, reassembled in order.
        let asked = keys.flatMap { [$0, "missing-\($0)"] }
        let expected = keys.flatMap { [RESPValue.bulk("value-\($0)"), .null] }
        #expect(try await client.send(["MGET"] + asked) == .array(expected))
        #expect(try await client.send(["EXISTS"] + keys + ["nope", keys[0]]) == .integer(31))
        // Multi-key reads within one slot (hash tags) work; across slots they get Redis Cluster's error.
        try await self.set(cluster, "{tag}.a", "1")
        #expect(try await client.send("MGET", "{tag}.a", "{tag}.b") == .array([.bulk("1"), .null]))
        let crossSlot = try await client.send("SUNION", "key-1", "key-2")
        #expect(crossSlot.string?.hasPrefix("CROSSSLOT") == true, "\(crossSlot)")
        // Keyless reads are answered by some node; so are requests whose keys cannot be found, in
        // Redis's words (a numkeys past the arguments), as Redis Cluster itself does.
        #expect(try await client.send("DBSIZE").int != nil)
        #expect(try await client.send("SINTERCARD", "5", "key-1") == .error("ERR Number of keys can't be greater than number of args"))
        #expect(try await client.send("ZUNION", "x", "key-1") == .error("ERR value is not an integer or out of range"))
        let info = try #require(try await client.send("PYLON", "INFO").string)
        #expect(info.contains("topology:cluster"))
        #expect(info.contains("cluster_slots_covered:16384"))
        await sidecar.stop()
    }

    @Test func followsAskAndMovedWhileASlotMigrates() async throws {
        let cluster = try await RedisClusterFixture()
        let key = "migrating-key"
        let slot = HashSlot.of(key)
        try await self.set(cluster, key, "v1")
        try await self.set(cluster, "{migrating-key}.stays", "v2")
        let (source, sourceID) = try await cluster.owner(of: slot)
        let target = cluster.nodes.first { $0.port != source.port }!
        let targetID = try await cluster.nodeID(target)

        let sidecar = try await SidecarFixture(redis: .cluster(cluster.seeds))
        let client = try await sidecar.client()
        #expect(try await client.send("GET", key) == .bulk("v1"))

        let sourceClient = try await source.client()
        let targetClient = try await target.client()
        #expect(try await targetClient.send("CLUSTER", "SETSLOT", "\(slot)", "IMPORTING", sourceID) == .ok)
        #expect(try await sourceClient.send("CLUSTER", "SETSLOT", "\(slot)", "MIGRATING", targetID) == .ok)
        // Move one key: the source now answers ASK for it, and still serves the other.
        #expect(try await sourceClient.send("MIGRATE", "127.0.0.1", "\(target.port)", key, "0", "5000") == .ok)
        #expect(try await sourceClient.send("GET", key).string?.hasPrefix("ASK") == true)
        #expect(try await client.send("GET", key) == .bulk("v1"))
        #expect(try await client.send("GET", "{migrating-key}.stays") == .bulk("v2"))
        #expect(try await client.send("MGET", key, "{migrating-key}.stays").isError == false)

        // Finish the migration: the source now answers MOVED, and the sidecar refreshes its map.
        #expect(try await sourceClient.send("MIGRATE", "127.0.0.1", "\(target.port)", "{migrating-key}.stays", "0", "5000") == .ok)
        for node in cluster.nodes {
            let c = try await node.client()
            #expect(try await c.send("CLUSTER", "SETSLOT", "\(slot)", "NODE", targetID) == .ok)
            await c.close()
        }
        #expect(try await sourceClient.send("GET", key).string?.hasPrefix("MOVED") == true)
        let versionBefore = (sidecar.sidecar as Sidecar).infoValue("cluster_topology_version")
        for _ in 0..<20 {
            #expect(try await client.send("GET", key) == .bulk("v1"))
            #expect(try await client.send("GET", "{migrating-key}.stays") == .bulk("v2"))
        }
        #expect(try await eventually { (sidecar.sidecar as Sidecar).infoValue("cluster_topology_version") != versionBefore })
        await sidecar.stop()
    }
}

extension Sidecar {
    /// One `key:value` line of PYLON INFO.
    func infoValue(_ key: String) -> String? {
        self.info.split(separator: "\r\n").first { $0.hasPrefix("\(key):") }.map { String($0.dropFirst(key.count + 1)) }
    }
}
