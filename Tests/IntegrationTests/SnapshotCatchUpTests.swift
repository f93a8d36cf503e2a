import Foundation
import NIOCore
import Shared
import Synchronization
import Testing

@testable import PylonSidecar

/// Racks that catch up from a snapshot of another rack (`SnapshotCatchUp`) instead of replaying
/// the log: a real broker, real Redis (standalone and Cluster), writes going on throughout.
@Suite("Catch-up from a snapshot", .serialized, .timeLimit(.minutes(4)))
struct SnapshotCatchUpTests {
    /// Keys written straight into the source rack's Redis before its world's log existed: only a
    /// snapshot can bring them to a new rack.
    static func preload(_ redis: RedisServer, keys: Int, prefix: String = "old") throws {
        try SnapshotTests.run((0..<keys).map { ["SET", "\(prefix):\($0)", "value-\($0)-" + String(repeating: "x", count: $0 % 50)] }, on: redis)
    }

    /// Writes through `sidecar` until stopped: INCRs on ten counters (counted when acknowledged),
    /// SETs with and without expiry, hashes, lists, sets.
    final class Writer: Sendable {
        let counts = Mutex([Int](repeating: 0, count: 10))
        let errors = Mutex<[String]>([])
        let running = Atomic(true)

        func run(through sidecar: SidecarFixture) async throws {
            let client = try await sidecar.client()
            var round = 0
            while self.running.load(ordering: .relaxed) {
                var request = ByteBuffer()
                let n = round % 997
                let commands: [[String]] = (0..<10).map { ["INCR", "counter:\($0)"] } + [
                    ["SET", "new:\(n)", "v\(round)"], ["SET", "ttl:\(n)", "t\(round)", "EX", "3600"], ["HSET", "hash:\(n % 50)", "f\(n)", "\(round)"],
                    ["RPUSH", "list:\(n % 20)", "\(round)"], ["SADD", "set:\(n % 20)", "\(n)"], ["DEL", "new:\((n + 500) % 997)"],
                ]
                for command in commands { request.writeRESPCommand(command.map { ByteBuffer(string: $0) }) }
                let replies = try await client.sendRaw(request, replies: commands.count)
                for (index, reply) in replies.prefix(10).enumerated() {
                    if case .integer = reply { self.counts.withLock { $0[index] += 1 } }
                }
                let failed = replies.filter(\.isError).map { $0.string ?? "" }
                if !failed.isEmpty { self.errors.withLock { $0 += failed } }
                round += 1
            }
        }
    }

    /// Rack 1 of `world`, in front of `redis`, catching up from a snapshot of `source` (a
    /// rack's Redis; its files in `directory`).
    static func rackFromSnapshot(of source: RedisEndpoint, in world: WorldFixture, redis: RedisEndpoint, directory: ScratchDirectory) async throws -> SidecarFixture {
        try await SidecarFixture(redis: redis) {
            WorldFixture.join(&$0, world: world.name, rack: "rack1", broker: world.broker, partitions: world.partitions)
            $0.snapshotFrom = source
            $0.snapshotDirectory = directory.url.path
        }
    }

    /// Keys written straight into a Redis Cluster's nodes (each to the node of its slot), before
    /// the world's log existed.
    static func preload(_ cluster: RedisClusterFixture, keys: Int) async throws {
        let client = try await cluster.nodes[0].client()
        let topology = ClusterTopology(slotsReply: try await client.send("CLUSTER", "SLOTS"), fallbackHost: "127.0.0.1", version: 0)!
        await client.close()
        var commands: [HostPort: [[String]]] = [:]
        for index in 0..<keys {
            let key = "old:\(index)"
            commands[topology.owner(of: HashSlot.of(key))!, default: []].append(["SET", key, "value-\(index)"])
        }
        for node in cluster.nodes { try SnapshotTests.run(commands[node.address] ?? [], on: node) }
    }

    static func contents(_ servers: [RedisServer]) async throws -> [String: [RESPValue]] {
        var all: [String: [RESPValue]] = [:]
        for server in servers { all.merge(try await SnapshotTests.contents(server)) { $1 } }
        return all
    }

    /// Every key of the source equal in the loaded rack, and no other.
    static func expectSame(_ expected: [String: [RESPValue]], _ restored: [String: [RESPValue]], sourceLocation: SourceLocation = #_sourceLocation) {
        let differing = Set(expected.keys).union(restored.keys).filter { expected[$0] != restored[$0] }
        #expect(differing.isEmpty, "\(differing.count) keys differ, e.g. \(differing.sorted().prefix(5))", sourceLocation: sourceLocation)
    }

    /// Waits until `appliers` (a rack's) applied every partition up to the log's end now.
    static func caughtUp(_ appliers: Applier..., in world: WorldFixture) async throws -> Bool {
        let ends = try world.logEnds()
        return try await eventually(timeout: .seconds(90)) {
            let next = Dictionary(appliers.flatMap(\.partitions).map { ($0.partition, $0.next) }) { max($0, $1) }
            return ends.enumerated().allSatisfy { partition, end in end == 0 || (next[Int32(partition)] ?? -1) >= end }
        }
    }

    @Test func aClusterRackCatchesUpFromAStandaloneRacksSnapshotUnderWrites() async throws {
        let world = try await WorldFixture(racks: 1)
        defer { Task { await world.stop() } }
        let source = world.racks[0]
        try Self.preload(source.redis, keys: 10_000)
        let writer = Writer()
        let scratch = try ScratchDirectory()
        let cluster = try await RedisClusterFixture()
        let (rack1, total) = try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await writer.run(through: source.sidecar) }
            try await Task.sleep(for: .seconds(1))
            let rack1 = try await Self.rackFromSnapshot(of: .standalone(source.redis.address), in: world, redis: .cluster(cluster.seeds), directory: scratch)
            let loaded = try await eventually(timeout: .seconds(60)) { rack1.sidecar.applier?.snapshot.current.phase == .loaded }
            #expect(loaded, "snapshot: \(String(describing: rack1.sidecar.applier?.snapshot.current))")
            try await Task.sleep(for: .seconds(1))  // writes keep coming once the new rack applies the log
            writer.running.store(false, ordering: .relaxed)
            try await group.waitForAll()
            return (rack1, try world.logEnds().reduce(0, +))
        }
        defer { Task { await rack1.stop() } }
        #expect(writer.errors.withLock { $0 } == [])
        #expect(try await Self.caughtUp(source.sidecar.sidecar.applier!, in: world))
        #expect(try await Self.caughtUp(rack1.sidecar.applier!, in: world))
        let expected = try await SnapshotTests.contents(source.redis)
        #expect(expected.count > 10_000)
        let restored = try await Self.contents(cluster.nodes)
        #expect(restored.count == expected.count)
        Self.expectSame(expected, restored)
        let counts = writer.counts.withLock { $0 }
        #expect(counts.allSatisfy { $0 > 0 })
        for (index, count) in counts.enumerated() {
            #expect(restored["counter:\(index)"]?[0] == expected["counter:\(index)"]?[0])
            let client = try await rack1.client()
            #expect(try await client.send("GET", "counter:\(index)").int == count)
        }
        // The new rack applied only the log after the snapshot: no replay from the start.
        let applier = rack1.sidecar.applier!
        #expect(applier.stats[.replay] == 0)
        #expect(applier.stats[.applied] < total)
        let info = try await rack1.client().send("PYLON", "INFO").string ?? ""
        #expect(info.contains("snapshot_phase:loaded"))
        #expect(info.contains("snapshot_keys_loaded:"))
        let (_, metrics) = try await rack1.admin("/metrics")
        #expect(metrics.contains("pylon_snapshot_keys_loaded"))
        #expect((try? FileManager.default.contentsOfDirectory(atPath: scratch.url.path)) == [])  // the file goes once loaded
    }

    /// A Redis Cluster rack's snapshot is a file per primary, each of its own instant; loaded into
    /// another Cluster of another shape, every slot continues from its own marker.
    @Test func aClusterRackCatchesUpFromAnotherClusterRacksSnapshotUnderWrites() async throws {
        let world = try await WorldFixture(racks: 0)
        let sourceCluster = try await RedisClusterFixture(masters: 3)
        try await Self.preload(sourceCluster, keys: 5_000)
        let source = try await SidecarFixture(redis: .cluster(sourceCluster.seeds)) {
            WorldFixture.join(&$0, world: world.name, rack: "rack0", broker: world.broker, partitions: world.partitions)
        }
        defer { Task { await source.stop() } }
        let writer = Writer()
        let scratch = try ScratchDirectory()
        let targetCluster = try await RedisClusterFixture(masters: 4)
        let (rack1, total) = try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await writer.run(through: source) }
            try await Task.sleep(for: .seconds(1))
            let rack1 = try await Self.rackFromSnapshot(of: .cluster(sourceCluster.seeds), in: world, redis: .cluster(targetCluster.seeds), directory: scratch)
            let loaded = try await eventually(timeout: .seconds(60)) { rack1.sidecar.applier?.snapshot.current.phase == .loaded }
            #expect(loaded, "snapshot: \(String(describing: rack1.sidecar.applier?.snapshot.current))")
            try await Task.sleep(for: .seconds(1))
            writer.running.store(false, ordering: .relaxed)
            try await group.waitForAll()
            return (rack1, try world.logEnds().reduce(0, +))
        }
        defer { Task { await rack1.stop() } }
        #expect(writer.errors.withLock { $0 } == [])
        #expect(try await Self.caughtUp(source.sidecar.applier!, in: world))
        #expect(try await Self.caughtUp(rack1.sidecar.applier!, in: world))
        let expected = try await Self.contents(sourceCluster.nodes)
        #expect(expected.count > 5_000)
        let restored = try await Self.contents(targetCluster.nodes)
        #expect(restored.count == expected.count)
        Self.expectSame(expected, restored)
        for (index, count) in writer.counts.withLock({ $0 }).enumerated() {
            #expect(count > 0)
            #expect(try await rack1.client().send("GET", "counter:\(index)").int == count)
        }
        let applier = rack1.sidecar.applier!
        #expect(applier.stats[.replay] == 0)
        #expect(applier.stats[.applied] < total)
        #expect(applier.snapshot.current.keys >= 5_000)
        #expect((try? FileManager.default.contentsOfDirectory(atPath: scratch.url.path)) == [])
    }

    /// A load runs beside the applier, which keeps serving the group: a second sidecar of the
    /// new rack joining mid-load takes half the partitions at once; the first stops its load and
    /// loads what it keeps, the second loads the rest; the rack is exact.
    @Test func aSidecarJoiningMidLoadTakesHalfThePartitionsAndTheRackIsExact() async throws {
        let world = try await WorldFixture(racks: 1)
        defer { Task { await world.stop() } }
        let source = world.racks[0]
        try Self.preload(source.redis, keys: 20_000)
        let writer = Writer()
        let redisB = try RedisServer()
        let (first, second) = (try ScratchDirectory(), try ScratchDirectory())
        let (a, b) = try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await writer.run(through: source.sidecar) }
            try await Task.sleep(for: .seconds(1))
            let a = try await Self.rackFromSnapshot(of: .standalone(source.redis.address), in: world, redis: .standalone(redisB.address), directory: first)
            // The source waits repl-diskless-sync-delay (5 s) before it sends the file: the load is under way.
            let fetching = try await eventually(timeout: .seconds(30)) { a.sidecar.applier?.snapshot.current.phase == .fetching }
            #expect(fetching)
            let b = try await Self.rackFromSnapshot(of: .standalone(source.redis.address), in: world, redis: .standalone(redisB.address), directory: second)
            let split = try await eventually(timeout: .seconds(30)) {
                let (mine, theirs) = (a.sidecar.applier!.partitions.count, b.sidecar.applier!.partitions.count)
                return mine > 0 && theirs > 0 && mine + theirs == world.partitions
            }
            #expect(split, "partitions: \(a.sidecar.applier!.partitions.map(\.partition)) and \(b.sidecar.applier!.partitions.map(\.partition))")
            let loaded = try await eventually(timeout: .seconds(60)) {
                a.sidecar.applier!.snapshot.current.phase == .loaded && b.sidecar.applier!.snapshot.current.phase == .loaded
            }
            #expect(loaded, "\(String(describing: a.sidecar.applier!.snapshot.current)) / \(String(describing: b.sidecar.applier!.snapshot.current))")
            try await Task.sleep(for: .seconds(1))
            writer.running.store(false, ordering: .relaxed)
            try await group.waitForAll()
            return (a, b)
        }
        defer { Task { await a.stop(); await b.stop() } }
        #expect(writer.errors.withLock { $0 } == [])
        #expect(try await Self.caughtUp(source.sidecar.sidecar.applier!, in: world))
        #expect(try await Self.caughtUp(a.sidecar.applier!, b.sidecar.applier!, in: world))
        let expected = try await SnapshotTests.contents(source.redis)
        let restored = try await SnapshotTests.contents(redisB)
        #expect(expected.count > 20_000)
        Self.expectSame(expected, restored)
        for (index, count) in writer.counts.withLock({ $0 }).enumerated() {
            #expect(try await a.client().send("GET", "counter:\(index)").int == count)
        }
        #expect(a.sidecar.applier!.stats[.replay] == 0 && b.sidecar.applier!.stats[.replay] == 0)
    }

    @Test func aLoaderKilledMidCopyResumesFromItsChunkAndTheRackIsExact() async throws {
        let world = try await WorldFixture(racks: 1)
        defer { Task { await world.stop() } }
        let source = world.racks[0]
        try Self.preload(source.redis, keys: 60_000)
        let client = try await source.sidecar.client()
        for i in 0..<200 { _ = try await client.send("INCR", "counter:\(i % 4)") }
        let redisB = try RedisServer()
        let scratch = try ScratchDirectory()
        let snapshots = scratch.url.appendingPathComponent("snapshots").path
        let start = { try Self.sidecarProcess(of: world, redis: redisB, snapshotOf: source.redis, into: snapshots, log: scratch.url.appendingPathComponent("rack1.log")) }
        let target = try await redisB.client()
        let first = try start().0
        // Killed once the load recorded its first chunks in the target, before it is done.
        let progressKeys = (0..<world.partitions).map { SnapshotCatchUp.progressKey(topic: world.topic, partition: Int32($0)) }
        let midCopy = try await Self.midCopy(target, progressKey: progressKeys[0])
        first.stop(signal: SIGKILL)
        #expect(midCopy)
        let recorded = try await target.send("GET", progressKeys[0]).string ?? ""
        let doneBefore = Int(recorded.split(separator: " ").last ?? "") ?? 0
        #expect(doneBefore > 0 && doneBefore < 60_000, "progress when killed: \(recorded)")
        #expect(try await target.send("DBSIZE").int ?? 0 < 60_000)
        #expect(try FileManager.default.contentsOfDirectory(atPath: snapshots).filter { $0.hasSuffix(".rdb") }.count == 1)

        let (second, port) = try start()
        defer { second.stop() }
        let sidecarB = try await eventually(timeout: .seconds(60)) {
            let info = try await RedisClient.connect(to: HostPort(host: "127.0.0.1", port: port)).send("PYLON", "INFO").string ?? ""
            return info.contains("snapshot_phase:loaded")
        }
        #expect(sidecarB)
        let info = try await RedisClient.connect(to: HostPort(host: "127.0.0.1", port: port)).send("PYLON", "INFO").string ?? ""
        // The second run restored what the first had not: fewer keys than the snapshot holds.
        let keysLoaded = info.split(separator: "\r\n").first { $0.hasPrefix("snapshot_keys_loaded:") }.flatMap { Int($0.split(separator: ":")[1]) } ?? 0
        #expect(keysLoaded > 0 && keysLoaded <= 60_000 - doneBefore + 1000, "keys loaded after the restart: \(keysLoaded), done before: \(doneBefore)")
        #expect(info.contains("applier_replay:0"))
        for i in 0..<4 { _ = try await client.send("INCR", "counter:\(i)") }
        #expect(try await eventually(timeout: .seconds(30)) { try await target.send("GET", "counter:3").int == 51 })
        let expected = try await SnapshotTests.contents(source.redis)
        let restored = try await SnapshotTests.contents(redisB)
        #expect(restored.count == expected.count)
        #expect(restored == expected)
        for key in progressKeys { #expect(try await target.send("EXISTS", key).int == 0) }
    }

    /// A sidecar process of rack 1 of `world`, in front of `redis`, catching up from a snapshot of
    /// `source` (files in `snapshots`), and the port it serves on.
    static func sidecarProcess(of world: WorldFixture, redis: RedisServer, snapshotOf source: RedisServer, into snapshots: String, log: URL) throws -> (LocalProcess, Int) {
        let port = try Ports.free()
        return (try LocalProcess(ExecutableTests.executable.path, [
            "--listen", "127.0.0.1:\(port)", "--admin", "127.0.0.1:\(try Ports.free())",
            "--redis", "redis://\(redis.address)", "--kafka-brokers", world.broker.bootstrap, "--world", world.name, "--rack", "rack1",
            "--sidecar-name", "rack1-sidecar0", "--snapshot-from", "redis://\(source.address)", "--snapshot-dir", snapshots,
        ] + WorldFixture.fastRebalances.sorted { $0.key < $1.key }.flatMap { ["--kafka-property", "\($0.key)=\($0.value)"] }, name: "pylon-sidecar rack1", log: log), port)
    }

    /// Waits until a load into `target` recorded its first chunks (`progressKey`).
    static func midCopy(_ target: RedisClient, progressKey: String) async throws -> Bool {
        try await eventually(timeout: .seconds(60)) {
            guard let recorded = try await target.send("GET", progressKey).string, let done = Int(recorded.split(separator: " ").last ?? "") else { return false }
            return done > 0
        }
    }

    /// The zombie: a sidecar paused mid-load (as one cut off from Kafka, or stopped by its host)
    /// while another sidecar of the rack claims its partitions and writes there — here the test
    /// does what that sidecar would: it claims every partition as an applier does
    /// (`RackPipelines.own`, which closes the loaders' connections) and deletes the keys loaded
    /// so far. When the zombie runs again, nothing it had sent or sends runs (`LoadFence`), its
    /// loader finds its claims taken and stops: no key comes back. (The pause is shorter than
    /// the session timeout: the broker keeps the zombie in the group, so only the fence can stop it.)
    @Test func aLoaderWhoseClaimWasTakenWhilePausedWritesNothingWhenItResumes() async throws {
        let world = try await WorldFixture(racks: 1)
        defer { Task { await world.stop() } }
        let source = world.racks[0]
        try Self.preload(source.redis, keys: 60_000)
        let redisB = try RedisServer()
        let target = try await redisB.client()
        let scratch = try ScratchDirectory()
        let log = scratch.url.appendingPathComponent("rack1.log")
        let (zombie, port) = try Self.sidecarProcess(of: world, redis: redisB, snapshotOf: source.redis, into: scratch.url.appendingPathComponent("snapshots").path, log: log)
        defer { zombie.stop() }
        let midCopy = try await Self.midCopy(target, progressKey: SnapshotCatchUp.progressKey(topic: world.topic, partition: 0))
        zombie.pause()
        #expect(midCopy)
        let claimed = Int(Date().timeIntervalSince1970 * 1000) + 1
        let address = redisB.address
        let rival = RackPipelines(rack: RackRedis(node: { _ in address }, nodes: { [address] }, perSlot: false, slotsMoved: {}), timeout: .seconds(5))
        defer { rival.dropConnections() }
        try rival.connectAll()
        let epochs = try rival.own((0..<Int32(world.partitions)).map { (.init(partition: $0, slot: -1), "claim", claimed) }, topic: world.topic)
        #expect(epochs.count == world.partitions && epochs.allSatisfy { $0.epoch >= claimed })
        let loadedBefore = try await target.send("KEYS", "old:*").array ?? []
        #expect(!loadedBefore.isEmpty && loadedBefore.count < 60_000)
        for key in loadedBefore { _ = try await target.send(["UNLINK", key.string!]) }
        zombie.resume()

        let refused = try await eventually(timeout: .seconds(30)) {
            (try? String(contentsOf: log, encoding: .utf8))?.contains("another sidecar of the rack claimed its partitions") == true
        }
        #expect(refused)
        try await Task.sleep(for: .seconds(1))
        #expect(try await target.send("KEYS", "old:*").array?.count == 0)
        let info = try await RedisClient.connect(to: HostPort(host: "127.0.0.1", port: port)).send("PYLON", "INFO").string ?? ""
        #expect(info.contains("snapshot_phase:stopped") && info.contains("deposed=1"), "\(info)")
    }

    @Test func aRackWhoseRedisComesBackEmptyHealsFromASnapshotNotAReplay() async throws {
        let world = try await WorldFixture(racks: 1)
        defer { Task { await world.stop() } }
        let source = world.racks[0]
        let redisB = try RedisServer()
        let scratch = try ScratchDirectory()
        let rack1 = try await Self.rackFromSnapshot(of: .standalone(source.redis.address), in: world, redis: .standalone(redisB.address), directory: scratch)
        defer { Task { await rack1.stop() } }
        let client = try await rack1.client()
        for i in 0..<500 { _ = try await client.send("INCR", "counter:\(i % 5)") }
        #expect(try await Self.caughtUp(rack1.sidecar.applier!, in: world))
        #expect(rack1.sidecar.applier!.snapshot.current.phase == .loaded)  // a new rack: an empty snapshot
        // Its Redis restarts empty (no persistence), on the same port.
        redisB.stop()
        let restarted = try RedisServer(port: redisB.port)
        let applier = rack1.sidecar.applier!
        let appliedBefore = applier.stats[.applied]
        for i in 0..<50 { _ = try await source.sidecar.client().send("INCR", "counter:\(i % 5)") }
        let healed = try await eventually(timeout: .seconds(60)) {
            try await restarted.client().send("GET", "counter:4").int == 110
        }
        #expect(healed)
        #expect(applier.stats[.replay] == 0)
        #expect(applier.stats[.applied] - appliedBefore < 100)  // not the whole log (550 ops) again
        #expect(try await SnapshotTests.contents(restarted) == SnapshotTests.contents(source.redis))
    }
}

extension SnapshotCatchUpTests {
    @Test func aRackBootstrapsFromASnapshotWhenTheLogsEarlyRecordsAreDeleted() async throws {
        let world = try await WorldFixture(racks: 1)
        defer { Task { await world.stop() } }
        let source = world.racks[0]
        let client = try await source.sidecar.client()
        for i in 0..<400 { _ = try await client.send("INCR", "counter:\(i % 4)") }
        #expect(try await world.waitUntilApplied())
        // Retention: every record written so far is gone from the log.
        let ends = try world.logEnds()
        let producer = try KafkaProducer(brokers: world.broker.bootstrap)
        defer { producer.close(timeout: .zero) }
        try producer.deleteRecords(topic: world.topic, before: Dictionary(uniqueKeysWithValues: ends.enumerated().map { (Int32($0.offset), $0.element) }))
        #expect(try (0..<Int32(world.partitions)).map { try producer.watermarks(topic: world.topic, partition: $0).low } == ends)
        for i in 0..<100 { _ = try await client.send("INCR", "counter:\(i % 4)") }

        let redisB = try RedisServer()
        let scratch = try ScratchDirectory()
        let rack1 = try await Self.rackFromSnapshot(of: .standalone(source.redis.address), in: world, redis: .standalone(redisB.address), directory: scratch)
        defer { Task { await rack1.stop() } }
        #expect(try await Self.caughtUp(rack1.sidecar.applier!, in: world))
        let target = try await redisB.client()
        for i in 0..<4 { #expect(try await target.send("GET", "counter:\(i)").int == 125) }
        #expect(rack1.sidecar.applier!.stats[.replay] == 0)
    }
}
