import Foundation
import NIOCore
import Testing

@testable import PylonSidecar

/// The snapshot loader's fence (`LoadFence`) against real Redis: its writes run only while its
/// claims hold, are refused whole once another sidecar claimed a unit they write, and reach
/// keys of many slots of a Redis Cluster node in one call.
@Suite("The snapshot loader's fence", .serialized, .timeLimit(.minutes(2)))
struct LoadFenceTests {
    static func rival(claims key: String, on server: RedisServer) async throws {
        let epoch = try await server.client().send("EVAL", AppliedOffsets.ownerScript, "1", key, "claim", String(Int(Date().timeIntervalSince1970 * 1000) + 1000))
        #expect(epoch.int != nil)
    }

    @Test func aStandaloneLoadWritesWhileItsClaimsHoldAndNothingOnceAnotherSidecarClaimed() async throws {
        let server = try RedisServer()
        let address = server.address
        let redis = RackPipelines(rack: RackRedis(node: { _ in address }, nodes: { [address] }, perSlot: false, slotsMoved: {}), timeout: .seconds(5))
        defer { redis.dropConnections() }
        try redis.connectAll()
        var fence = LoadFence(partitions: [0, 1], topic: "t", perSlot: false, partitionCount: 2)
        #expect(fence.units.map(\.slot) == [-1, -1])
        try fence.claim(through: redis)
        // "a" and "b" are in different partitions of two.
        #expect(Set(["a", "b"].map { OpRecord.partition(ofSlot: HashSlot.of($0), count: 2) }) == [0, 1])
        func writes(_ value: String) -> LoadFence.Writes {
            var writes = LoadFence.Writes()
            for key in ["a", "b"] {
                let slot = HashSlot.of(key)
                writes.add(["SET", key, value], unit: fence.unit(ofSlot: slot, partition: OpRecord.partition(ofSlot: slot, count: 2)), to: address)
            }
            return writes
        }
        #expect(try redis.exchange(writes("1").requests(fence: fence)).map(\.1) == [.integer(2)])
        let client = try await server.client()
        #expect(try await client.send("MGET", "a", "b") == .array([.bulkString(ByteBuffer(string: "1")), .bulkString(ByteBuffer(string: "1"))]))

        // A Redis that came back empty: asserting the claims again writes them back.
        _ = try await client.send("FLUSHALL")
        try fence.claim(through: redis)
        #expect(try redis.exchange(writes("2").requests(fence: fence)).map(\.1) == [.integer(2)])

        // Another sidecar claims partition 1: the whole call is refused, partition 0's write too.
        try await Self.rival(claims: AppliedOffsets.ownerKey(topic: "t", partition: 1), on: server)
        let reply = try redis.exchange(writes("3").requests(fence: fence))[0].1
        #expect(reply.string?.hasPrefix("DEPOSED pylon:owner:t:1") == true, "\(reply)")
        #expect(throws: LoadFence.Deposed.self) { try LoadFence.check(reply, doing: "writing") }
        #expect(try await client.send("MGET", "a", "b") == .array([.bulkString(ByteBuffer(string: "2")), .bulkString(ByteBuffer(string: "2"))]))
        #expect(throws: LoadFence.Deposed.self) { try fence.claim(through: redis) }
    }

    @Test func aClusterLoadWritesKeysOfManySlotsPerNodeAndOnlyTheNodeOfAClaimedSlotRefuses() async throws {
        let cluster = try await RedisClusterFixture(masters: 3)
        let topology = ClusterTopology(slotsReply: try await cluster.nodes[0].client().send("CLUSTER", "SLOTS"), fallbackHost: "127.0.0.1", version: 0)!
        let nodes = cluster.nodes.map(\.address)
        let redis = RackPipelines(rack: RackRedis(node: { topology.owner(of: $0) }, nodes: { nodes }, perSlot: true, slotsMoved: {}), timeout: .seconds(5))
        defer { redis.dropConnections() }
        try redis.connectAll()
        var fence = LoadFence(partitions: [0, 1, 2, 3], topic: "t", perSlot: true, partitionCount: 4)
        #expect(fence.units.count >= HashSlot.count)  // every slot, and the slots of the bookkeeping keys
        try fence.claim(through: redis)
        func writes(_ keys: [String]) throws -> LoadFence.Writes {
            var writes = LoadFence.Writes()
            for key in keys {
                let slot = HashSlot.of(key)
                try writes.add(["SET", key, "v"], unit: fence.unit(ofSlot: slot, partition: OpRecord.partition(ofSlot: slot, count: 4)), to: redis.node(forKey: key))
            }
            return writes
        }
        let keys = (0..<300).map { "key:\($0)" }
        let replies = try redis.exchange(writes(keys).requests(fence: fence)).map(\.1)
        #expect(replies.count == 3 && replies.compactMap(\.int).reduce(0, +) == 300, "\(replies)")
        // Another sidecar claims the slot of "other:0": only its node refuses.
        let refusedSlot = HashSlot.of("other:0")
        let owner = try #require(topology.owner(of: refusedSlot))
        let server = try #require(cluster.nodes.first { $0.address == owner })
        try await Self.rival(claims: AppliedOffsets.ownerKey(topic: "t", partition: OpRecord.partition(ofSlot: refusedSlot, count: 4), slot: refusedSlot), on: server)
        let more = (0..<300).map { "other:\($0)" }
        for (_, reply) in try redis.exchange(writes(more).requests(fence: fence)) {
            #expect(reply.isError == (reply.string?.hasPrefix("DEPOSED") == true), "\(reply)")
        }
        let written = more.filter { topology.owner(of: HashSlot.of($0)) != owner }
        for node in cluster.nodes {
            let client = try await node.client()
            let onNode = more.filter { topology.owner(of: HashSlot.of($0)) == node.address }
            for key in onNode { #expect(try await client.send("EXISTS", key).int == (node.address == owner ? 0 : 1)) }
        }
        #expect(!written.isEmpty && written.count < more.count)
    }
}
