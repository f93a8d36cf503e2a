import Foundation
import NIOCore
import Testing

@testable import PylonSidecar

/// The snapshot loader's fence (`LoadFence`) against real Redis: a loader writes while its claims
/// hold; another sidecar's claim closes the connections of the loaders of the claimed partitions
/// on the node claimed on (and only those), so nothing the old loader sends afterwards runs; and
/// a loader reconnecting finds its claim taken.
@Suite("The snapshot loader's fence", .serialized, .timeLimit(.minutes(2)))
struct LoadFenceTests {
    static func pipelines(_ rack: RackRedis, loading partitions: [Int32]? = nil, topic: String = "t") -> RackPipelines {
        RackPipelines(rack: rack, timeout: .seconds(5), name: partitions.map { LoadFence.connectionName(topic: topic, partitions: $0) })
    }

    /// The names of the named client connections `server` has.
    static func names(on server: RedisServer) async throws -> [String] {
        let list = try await server.client().send("CLIENT", "LIST", "TYPE", "normal").string ?? ""
        return list.split(whereSeparator: \.isNewline).compactMap { line in
            line.split(separator: " ").first { $0.hasPrefix("name=") }.map { String($0.dropFirst(5)) }
        }.filter { !$0.isEmpty }.sorted()
    }

    @Test func aStandaloneLoadWritesWhileItsClaimsHoldAndNothingOnceAnotherSidecarClaimed() async throws {
        let server = try RedisServer()
        let address = server.address
        let rack = RackRedis(node: { _ in address }, nodes: { [address] }, perSlot: false, slotsMoved: {})
        let loader = Self.pipelines(rack, loading: [0, 1])
        defer { loader.dropConnections() }
        try loader.connectAll()
        var fence = LoadFence(partitions: [0, 1], topic: "t", perSlot: false, partitionCount: 3)
        #expect(fence.units.map(\.slot) == [-1, -1])
        try fence.claim(through: loader)
        func writes(_ value: String) -> RackPipelines.Requests {
            var writes = RackPipelines.Requests()
            for key in ["a", "b"] { writes.add(["SET", key, value], to: address, as: .ownTurn) }
            return writes
        }
        #expect(try loader.exchange(writes("1")).map(\.1) == [.ok, .ok])
        let client = try await server.client()

        // A Redis that came back empty: asserting the claims again writes them back.
        _ = try await client.send("FLUSHALL")
        try fence.claim(through: loader)
        #expect(try await client.send("GET", AppliedOffsets.ownerKey(topic: "t", partition: 1)).int == fence.epochs[.init(partition: 1, slot: -1)])

        // Bystanders: a loader of partition 2, one of another topic's partition 1.
        let others = [Self.pipelines(rack, loading: [2]), Self.pipelines(rack, loading: [1], topic: "u")]
        defer { for other in others { other.dropConnections() } }
        for other in others { try other.connectAll() }
        #expect(try await Self.names(on: server) == ["pylon-load:t:0,1", "pylon-load:t:2", "pylon-load:u:1"])

        // Another sidecar's applier claims partition 1: the loader's connection is closed, what it
        // sends afterwards does not run, and on a new connection its claim is found taken.
        let applier = Self.pipelines(rack)
        defer { applier.dropConnections() }
        try applier.connectAll()
        #expect(try applier.own([(.init(partition: 1, slot: -1), "claim", Int(Date().timeIntervalSince1970 * 1000) + 1000)], topic: "t").count == 1)
        #expect(try await Self.names(on: server) == ["pylon-load:t:2", "pylon-load:u:1"])
        #expect(throws: (any Error).self) { try loader.exchange(writes("2")) }
        #expect(try await client.send("MGET", "a", "b") == .array([.null, .null]))
        try loader.connectAll()
        #expect(throws: LoadFence.Deposed.self) { try fence.claim(through: loader) }
    }

    @Test func aClusterClaimClosesTheLoadersConnectionOnTheClaimedSlotsNodeOnly() async throws {
        let cluster = try await RedisClusterFixture(masters: 3)
        let topology = ClusterTopology(slotsReply: try await cluster.nodes[0].client().send("CLUSTER", "SLOTS"), fallbackHost: "127.0.0.1", version: 0)!
        let nodes = cluster.nodes.map(\.address)
        let rack = RackRedis(node: { topology.owner(of: $0) }, nodes: { nodes }, perSlot: true, slotsMoved: {})
        let loader = Self.pipelines(rack, loading: [0, 1, 2, 3])
        defer { loader.dropConnections() }
        try loader.connectAll()
        var fence = LoadFence(partitions: [0, 1, 2, 3], topic: "t", perSlot: true, partitionCount: 4)
        #expect(fence.units.count >= HashSlot.count)  // every slot, and the slots of the bookkeeping keys
        try fence.claim(through: loader)
        // The loader's own claims closed none of its connections.
        for node in cluster.nodes { #expect(try await Self.names(on: node).contains("pylon-load:t:0,1,2,3")) }

        // Another sidecar claims the slot of "other:0": only that node's connection of the loader closes.
        let claimedSlot = HashSlot.of("other:0")
        let owner = try #require(topology.owner(of: claimedSlot))
        let applier = Self.pipelines(rack)
        defer { applier.dropConnections() }
        try applier.connectAll()
        _ = try applier.own([(.init(partition: OpRecord.partition(ofSlot: claimedSlot, count: 4), slot: claimedSlot), "claim", Int(Date().timeIntervalSince1970 * 1000) + 1000)], topic: "t")
        for node in cluster.nodes {
            #expect(try await Self.names(on: node).contains("pylon-load:t:0,1,2,3") == (node.address != owner), "\(node.address)")
        }
        try loader.connectAll()
        #expect(throws: LoadFence.Deposed.self) { try fence.claim(through: loader) }
    }
}
