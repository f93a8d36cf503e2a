import Foundation
import NIOCore
import NIOPosix
import Shared
import Testing

@testable import PylonSidecar

/// A local world for one test: a real broker and racks, each a real redis-server with an
/// in-process sidecar that writes to the broker and applies its log.
final class WorldFixture: Sendable {
    let broker: KafkaBroker
    let name: String
    let partitions: Int
    let racks: [Rack]

    struct Rack: Sendable {
        let name: String
        let redis: RedisServer
        let sidecar: SidecarFixture
    }

    /// With `peers`, every rack's sidecar listens on a port chosen up front and lists the other
    /// racks' sidecars as its peers.
    init(
        racks count: Int, partitions: Int = 8, broker: KafkaBroker? = nil, peers: Bool = false,
        configure: @escaping @Sendable (inout SidecarConfiguration) -> Void = { _ in }
    ) async throws {
        let broker = try broker ?? KafkaBroker()
        let name = "w\(UUID().uuidString.prefix(6).lowercased())"
        let listens = try (0..<count).map { _ in HostPort(host: "127.0.0.1", port: peers ? try Ports.free() : 0) }
        var racks: [Rack] = []
        for index in 0..<count {
            let rackName = "rack\(index)"
            let redis = try RedisServer()
            let sidecar = try await SidecarFixture(redis: .standalone(redis.address)) { configuration in
                WorldFixture.join(&configuration, world: name, rack: rackName, broker: broker, partitions: partitions)
                configuration.listen = listens[index]
                if peers { configuration.peers = listens.enumerated().filter { $0.offset != index }.map(\.element) }
                configure(&configuration)
            }
            racks.append(Rack(name: rackName, redis: redis, sidecar: sidecar))
        }
        self.broker = broker
        self.name = name
        self.partitions = partitions
        self.racks = racks
    }

    /// The settings that make a sidecar part of this world.
    static func join(_ configuration: inout SidecarConfiguration, world: String, rack: String, broker: KafkaBroker, partitions: Int) {
        configuration.world = world
        configuration.rack = rack
        configuration.kafkaBrokers = broker.bootstrap
        configuration.partitions = partitions
        configuration.kafkaProperties = self.fastRebalances
    }

    /// Fast rebalances when a test stops a sidecar (6 s is the broker's least session timeout).
    static let fastRebalances = ["session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"]

    var topic: String { "pylon.\(self.name).ops" }

    func stop() async {
        for rack in self.racks { await rack.sidecar.stop() }
    }

    /// The log end of every partition, straight from the broker.
    func logEnds() throws -> [Int64] {
        let producer = try KafkaProducer(brokers: self.broker.bootstrap)
        defer { producer.close(timeout: .zero) }
        return try (0..<self.partitions).map { try producer.watermarks(topic: self.topic, partition: Int32($0)).high }
    }

    /// Waits until every rack applied the log up to its current end.
    /// On a timeout the issue recorded says where each lagging rack's partitions stand.
    func waitUntilApplied(timeout: Duration = .seconds(60)) async throws -> Bool {
        let ends = try self.logEnds()
        func lagging(_ rack: Rack) -> [Applier.PartitionStatus]? {
            guard let applier = rack.sidecar.sidecar.applier else { return [] }
            let partitions = applier.partitions
            let next = Dictionary(uniqueKeysWithValues: partitions.map { ($0.partition, $0.next) })
            let behind = ends.enumerated().contains { partition, end in end > 0 && (next[Int32(partition)] ?? -1) < end }
            return behind ? partitions : nil
        }
        let applied = try await eventually(timeout: timeout) { self.racks.allSatisfy { lagging($0) == nil } }
        if !applied {
            let behind = self.racks.compactMap { rack in lagging(rack).map { "\(rack.name): \($0.map { "\($0.partition)@\($0.next)\($0.deposed ? " deposed" : "")" })" } }
            Issue.record("the log (ends \(ends)) is not applied by \(behind.joined(separator: "; "))")
        }
        return applied
    }

    /// Every key of a Redis (Pylon's own bookkeeping aside) with its DUMP and absolute expiry.
    static func snapshot(_ redis: RedisServer) async throws -> [String: [RESPValue]] {
        let client = try await redis.client()
        defer { Task { await client.close() } }
        var snapshot: [String: [RESPValue]] = [:]
        var cursor = "0"
        repeat {
            let reply = try await client.send("SCAN", cursor, "COUNT", "1000")
            cursor = reply.array?[0].string ?? "0"
            for key in reply.array?[1].array?.compactMap(\.string) ?? [] where !key.hasPrefix("pylon:") {
                snapshot[key] = [try await client.send("DUMP", key), try await client.send("PEXPIRETIME", key)]
            }
        } while cursor != "0"
        return snapshot
    }
}
