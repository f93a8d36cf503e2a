import Foundation
import NIOCore
import NIOPosix
import Shared
import Testing

@testable import PylonSidecar

/// The write path end to end: writes through any rack's sidecar go through a real broker and are
/// applied by every rack's applier, exactly once, in per-key order.
@Suite("Write path: a world of racks", .serialized, .timeLimit(.minutes(3)))
struct WritePathTests {
    @Test func aWriteThroughOneRackIsReadThroughTheOtherWithRedisReplies() async throws {
        let world = try await WorldFixture(racks: 2)
        defer { Task { await world.stop() } }
        let a = try await world.racks[0].sidecar.client()
        let b = try await world.racks[1].sidecar.client()
        // The default level answers what Redis answered when the rack applied the write.
        #expect(try await a.send("PYLON", "CONSISTENCY") == .bulk("applied"))
        #expect(try await a.send("SET", "greeting", "hello") == .simple("OK"))
        #expect(try await a.send("SETNX", "greeting", "other") == .integer(0))
        #expect(try await a.send("RPUSH", "list", "x", "y") == .integer(2))
        #expect(try await a.send("INCR", "counter") == .integer(1))
        #expect(try await a.send("INCRBYFLOAT", "float", "1.5") == .bulk("1.5"))
        #expect(try await a.send("ZADD", "z", "1", "m") == .integer(1))
        #expect(try await a.send("LPOP", "list") == .bulk("x"))
        #expect(try await a.send("ZPOPMIN", "z") == .array([.bulk("m"), .bulk("1")]))
        #expect(try await a.send("EXPIRE", "greeting", "100") == .integer(1))
        #expect(try await a.send("HSET", "list", "f", "v").string?.hasPrefix("WRONGTYPE") == true)
        // Integers beyond a double's 53 bits, exact (the applier's Lua sees them rounded).
        #expect(try await a.send("INCRBY", "huge", "9223372036854775806") == .integer(9_223_372_036_854_775_806))
        #expect(try await a.send("INCR", "huge") == .integer(.max))
        #expect(try await a.send("INCR", "huge") == .error("ERR increment or decrement would overflow"))
        #expect(try await a.send("HINCRBY", "h", "n", "-9223372036854775808") == .integer(.min))
        // LMPOP's nil is a null array, as Redis gives it.
        #expect(try await a.send("LMPOP", "1", "nothing", "LEFT") == .array(nil))
        // Read-modify-write commands, with their real replies.
        #expect(try await a.send("SET", "greeting", "hi", "GET") == .bulk("hello"))
        #expect(try await a.send("GETSET", "greeting", "hey") == .bulk("hi"))
        #expect(try await a.send("GETEX", "greeting", "PERSIST") == .bulk("hey"))
        #expect(try await a.send("GETDEL", "counter") == .bulk("1"))
        #expect(try await a.send("EXISTS", "counter") == .integer(0))
        #expect(try await eventually { try await b.send("GET", "greeting") == .bulk("hey") })
        #expect(try await eventually { try await b.send("LRANGE", "list", "0", "-1") == .array([.bulk("y")]) })
        // Rack B applies each partition on its own: wait for the others' last writes too.
        #expect(try await eventually { try await b.send("EXISTS", "counter") == .integer(0) })
        #expect(try await eventually { try await b.send("ZCARD", "z") == .integer(0) })
        #expect(try await eventually { try await b.send("PTTL", "greeting") == .integer(-1) })
        // At the log level: fire-and-forget placeholders, and the connection still reads its writes.
        #expect(try await a.send("PYLON", "CONSISTENCY", "log") == .simple("OK"))
        #expect(try await a.send("INCR", "counter") == .integer(0))
        #expect(try await a.send("GET", "counter") == .bulk("1"))
        #expect(try await a.send("EXPIRE", "greeting", "100") == .integer(0))
        #expect(try await a.send("PTTL", "greeting").int.map { $0 > 90_000 && $0 <= 100_000 } == true)
        #expect(try await eventually { try await b.send("PTTL", "greeting").int.map { $0 > 90_000 && $0 <= 100_000 } == true })
        // A write whose keys cannot be found is Redis's to refuse, in its words, at either level.
        #expect(try await a.send("LMPOP", "a", "list", "LEFT") == .error("ERR numkeys should be greater than 0"))
        #expect(try await a.send("ZUNIONSTORE", "d", "5", "z") == .error("ERR syntax error"))
        #expect(try await a.send("GEORADIUS", "points", "13.36", "38.11", "50", "km", "STORE") == .error("ERR syntax error"))
        // Wrong arities and cross-slot writes are answered without touching the log.
        #expect(try await a.send("SPOP").string == "ERR wrong number of arguments for 'spop' command")
        #expect(try await a.send("MSET", "a", "1", "b", "2") == .simple("OK"))
        #expect(try await a.send("RENAME", "a", "b").string?.hasPrefix("CROSSSLOT") == true)
        let info = try await a.send("PYLON", "INFO").string ?? ""
        #expect(info.contains("topic:\(world.topic)"))
        #expect(info.contains("consumer_group:pylon.\(world.name).rack0"))
        #expect(try await world.waitUntilApplied())
    }

    @Test func pipelinedWritesAndReadsAreAnsweredInRequestOrder() async throws {
        let world = try await WorldFixture(racks: 1)
        defer { Task { await world.stop() } }
        let client = try await world.racks[0].sidecar.client()
        var request = ByteBuffer()
        for i in 0..<200 {
            request.writeRESPCommand(["SET", "p:\(i)", "\(i)"].map { ByteBuffer(string: $0) })
            request.writeRESPCommand(["PING", "\(i)"].map { ByteBuffer(string: $0) })
            request.writeRESPCommand(["INCR", "p:n"].map { ByteBuffer(string: $0) })
            request.writeRESPCommand(["EXISTS", "never:\(i)"].map { ByteBuffer(string: $0) })
        }
        let replies = try await client.sendRaw(request, replies: 800)
        for i in 0..<200 {
            #expect(replies[4 * i] == .simple("OK"))
            #expect(replies[4 * i + 1] == .bulk("\(i)"))
            #expect(replies[4 * i + 2] == .integer(i + 1))
            #expect(replies[4 * i + 3] == .integer(0))
        }
        #expect(try await eventually { try await world.racks[0].redis.client().send("GET", "p:n") == .bulk("200") })
    }

    @Test func aSidecarWhoseBrokerCannotBeReachedRefusesToStartAndNamesIt() async throws {
        var configuration = SidecarConfiguration()
        configuration.listen = HostPort(host: "127.0.0.1", port: 0)
        configuration.admin = HostPort(host: "127.0.0.1", port: 0)
        let port = try Ports.free()
        configuration.kafkaBrokers = "127.0.0.1:\(port)"
        configuration.world = "nowhere"
        configuration.rack = "a"
        do {
            _ = try await Sidecar(configuration: configuration)
            Issue.record("a sidecar started without its broker")
        } catch {
            #expect("\(error)".contains("127.0.0.1:\(port)"), "\(error)")
            #expect("\(error)".contains("pylon.nowhere.ops"), "\(error)")
        }
    }

    @Test func threeRacksConvergeUnderAConcurrentMixedWorkload() async throws {
        let world = try await WorldFixture(racks: 3)
        defer { Task { await world.stop() } }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, rack) in world.racks.enumerated() {
                group.addTask {
                    let client = try await rack.sidecar.client()
                    var random = SeededRandom(seed: UInt64(index + 1))
                    for _ in 0..<400 {
                        let command = Self.randomWrite(&random)
                        let reply = try await client.send(command)
                        #expect(!reply.isError || reply.string?.hasPrefix("ERR pylon") == false, "\(command) → \(reply)")
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(try await world.waitUntilApplied())
        let snapshots = try await world.racks.asyncMap { try await WorldFixture.snapshot($0.redis) }
        #expect(snapshots[0].count > 20)
        for snapshot in snapshots.dropFirst() {
            #expect(snapshot == snapshots[0])
        }
    }

    /// A random write over a few keys of every type, with expiries and deletes.
    static func randomWrite(_ random: inout SeededRandom) -> [String] {
        let key = "k\(random.next(12))"
        let value = "\(random.next(1000))"
        switch random.next(12) {
        case 0: return ["SET", "s:\(key)", value]
        case 1: return ["INCRBY", "n:\(key)", value]
        case 2: return ["HSET", "h:\(key)", "f\(random.next(4))", value]
        case 3: return ["RPUSH", "l:\(key)", value]
        case 4: return ["LPOP", "l:\(key)"]
        case 5: return ["SADD", "set:\(key)", value]
        case 6: return ["ZADD", "z:\(key)", value, "m\(random.next(5))"]
        case 7: return ["EXPIRE", "s:\(key)", "\(100 + random.next(100))"]
        case 8: return ["SET", "s:\(key)", value, "PX", "600000"]
        case 9: return ["DEL", "s:\(key)", "h:\(key)"]
        case 10: return ["APPEND", "s:\(key)", value]
        default: return ["ZINCRBY", "z:\(key)", "1", "m\(random.next(5))"]
        }
    }

    @Test func perKeyOrderHoldsWithEightPartitions() async throws {
        let world = try await WorldFixture(racks: 2, partitions: 8)
        defer { Task { await world.stop() } }
        let a = try await world.racks[0].sidecar.client()
        var request = ByteBuffer()
        for i in 0..<100 {
            for key in 0..<40 { request.writeRESPCommand(["RPUSH", "order:\(key)", "\(i)"].map { ByteBuffer(string: $0) }) }
        }
        let replies = try await a.sendRaw(request, replies: 4000)
        // Each RPUSH answers the list's length: the order the rack applied them in.
        #expect(replies == (0..<100).flatMap { i in (0..<40).map { _ in RESPValue.integer(i + 1) } })
        #expect(try await world.waitUntilApplied())
        let expected = RESPValue.array((0..<100).map { .bulk("\($0)") })
        for rack in world.racks {
            let client = try await rack.redis.client()
            for key in 0..<40 {
                #expect(try await client.send("LRANGE", "order:\(key)", "0", "-1") == expected, "order:\(key) on \(rack.name)")
            }
        }
    }

    @Test func anOpTooLargeForAKafkaMessageTravelsInChunksAndIsAppliedOnceAcrossARestart() async throws {
        let world = try await WorldFixture(racks: 1, partitions: 1)
        defer { Task { await world.stop() } }
        let client = try await world.racks[0].sidecar.client()
        // 2.5 MB: three chunks of Kafka's 1 MB messages, with small writes of another connection between.
        let big = String(repeating: "0123456789", count: 250_000)
        let other = try await world.racks[0].sidecar.client()
        async let smalls = Array(0..<20).asyncMap { i in try await other.send("INCR", "between\(i % 2)") }
        #expect(try await client.send("APPEND", "big", big) == .integer(big.utf8.count))
        _ = try await smalls
        #expect(try await client.send("GET", "big") == .bulk(big))
        // A second sidecar of the rack, started empty, replays the partition from its checkpoint:
        // the chunked APPEND is not applied twice.
        await world.racks[0].sidecar.stop()
        let again = try await SidecarFixture(redis: .standalone(world.racks[0].redis.address)) {
            WorldFixture.join(&$0, world: world.name, rack: "rack0", broker: world.broker, partitions: 1)
        }
        defer { Task { await again.stop() } }
        let reader = try await again.client()
        #expect(try await reader.send("INCR", "after") == .integer(1))
        #expect(try await reader.send("STRLEN", "big") == .integer(big.utf8.count))
        #expect(try await reader.send("MGET", "between0", "between1") == .array([.bulk("10"), .bulk("10")]))
    }

    @Test func anUnknownOpVersionIsSkippedLoudlyAndTheNextOpApplies() async throws {
        let world = try await WorldFixture(racks: 1, partitions: 1)
        defer { Task { await world.stop() } }
        let producer = try KafkaProducer(brokers: world.broker.bootstrap)
        defer { producer.close() }
        var future = OpRecord(arguments: [ByteBuffer(string: "SET"), ByteBuffer(string: "k"), ByteBuffer(string: "v9")], originRack: "x", originSidecar: "x", timestampMilliseconds: 0, slot: HashSlot.of("k")).encoded
        future.setInteger(UInt8(9), at: future.readerIndex + 2)  // a version from the future
        _ = try await producer.send(topic: world.topic, partition: 0, key: nil, value: future, on: MultiThreadedEventLoopGroup.singleton.any()).get()
        let client = try await world.racks[0].sidecar.client()
        #expect(try await client.send("SET", "k", "v1") == .simple("OK"))
        #expect(try await eventually { try await world.racks[0].redis.client().send("GET", "k") == .bulk("v1") })
        let info = try await client.send("PYLON", "INFO").string ?? ""
        #expect(info.contains("applier_undecodable:1"), "\(info)")
        let (_, metrics) = try await world.racks[0].sidecar.admin("/metrics")
        #expect(metrics.contains(#"pylon_applier_events_total{outcome="undecodable"} 1"#))
    }
}

/// A small deterministic generator, so a failing workload can be replayed.
struct SeededRandom {
    var state: UInt64
    init(seed: UInt64) { self.state = seed &* 0x9E37_79B9_7F4A_7C15 }
    mutating func next(_ bound: Int) -> Int {
        self.state = self.state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return Int((self.state >> 33) % UInt64(bound))
    }
}

extension Array where Element: Sendable {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}

/// A rack whose Redis is a Redis Cluster: the applier routes each op's script to the node of its
/// slot, with a marker per (partition, slot), and applies exactly once like any rack.
@Suite("Write path: a rack on Redis Cluster", .serialized, .timeLimit(.minutes(3)))
struct ClusterRackTests {
    @Test func aClusterRackAppliesTheLogExactlyOnceAndConverges() async throws {
        let world = try await WorldFixture(racks: 1)
        defer { Task { await world.stop() } }
        let cluster = try await RedisClusterFixture()
        let join: @Sendable (inout SidecarConfiguration) -> Void = {
            WorldFixture.join(&$0, world: world.name, rack: "cluster", broker: world.broker, partitions: world.partitions)
            $0.sidecarName = "cluster-0"
        }
        var clusterSidecar = try await SidecarFixture(redis: .cluster(cluster.seeds), configure: join)
        let a = try await world.racks[0].sidecar.client()
        // Counters and strings over many slots (and partitions), some sharing a hash tag.
        let counters = (0..<50).map { $0 % 5 == 0 ? "{tag}.n\($0)" : "n\($0)" }
        var request = ByteBuffer()
        for round in 0..<10 {
            for counter in counters { request.writeRESPCommand(["INCR", counter].map { ByteBuffer(string: $0) }) }
            request.writeRESPCommand(["SET", "s\(round)", "v\(round)"].map { ByteBuffer(string: $0) })
            request.writeRESPCommand(["HSET", "{tag}.h", "f\(round)", "\(round)"].map { ByteBuffer(string: $0) })
        }
        #expect(try await a.sendRaw(request, replies: 520).allSatisfy { !$0.isError })
        // The cluster rack's sidecar answers `applied` writes too (its applier's reply).
        let c = try await clusterSidecar.client()
        #expect(try await c.send("PYLON", "CONSISTENCY", "applied") == .simple("OK"))
        #expect(try await c.send("INCR", "n1") == .integer(11))
        #expect(try await c.send("SET", "s0", "again", "NX") == .null)
        // Restarted under its name, the rack's sidecar resumes from its checkpoints: nothing twice.
        await clusterSidecar.stop()
        clusterSidecar = try await SidecarFixture(redis: .cluster(cluster.seeds), configure: join)
        defer { Task { [clusterSidecar] in await clusterSidecar.stop() } }
        for counter in counters { _ = try await a.send("INCR", counter) }
        #expect(try await world.waitUntilApplied())
        let token = try await a.send("PYLON", "LASTWRITE").string ?? ""
        let reader = try await clusterSidecar.client()
        #expect(try await reader.send("PYLON", "WAIT", token, "10000") == .integer(1))
        for (index, counter) in counters.enumerated() {
            #expect(try await reader.send("GET", counter) == .bulk(index == 1 ? "12" : "11"), "\(counter)")
        }
        for round in 0..<10 { #expect(try await reader.send("GET", "s\(round)") == .bulk("v\(round)")) }
        #expect(try await reader.send("HLEN", "{tag}.h") == .integer(10))
        // Markers live with the ops' keys: in the slot of {tag}, on the node that owns it.
        let (owner, _) = try await cluster.owner(of: HashSlot.of("tag"))
        let partition = Int32(HashSlot.of("tag") % world.partitions)
        let marker = AppliedOffsets.markerKey(topic: world.topic, partition: partition, slot: HashSlot.of("tag"))
        #expect(try await owner.client().send("EXISTS", marker) == .integer(1))
        // The keyspace through the cluster rack's sidecar is every primary's user keys: KEYS,
        // DBSIZE, a whole SCAN, RANDOMKEY — none of Pylon's per-slot markers and owners.
        let userKeys = Set(counters + (0..<10).map { "s\($0)" } + ["{tag}.h"])
        #expect(Set(try await reader.send("KEYS", "*").array?.compactMap(\.string) ?? []) == userKeys)
        #expect(try await reader.send("DBSIZE") == .integer(userKeys.count))
        var scanned: [String] = []
        var cursor = "0"
        repeat {
            let page = try await reader.send("SCAN", cursor, "COUNT", "7").array ?? []
            cursor = page.first?.string ?? "0"
            scanned += page.last?.array?.compactMap(\.string) ?? []
        } while cursor != "0"
        #expect(Set(scanned) == userKeys)
        #expect(scanned.count >= userKeys.count)
        for _ in 0..<5 { #expect(userKeys.contains(try await reader.send("RANDOMKEY").string ?? "")) }
        // FLUSHALL empties every slot of the cluster rack, its bookkeeping kept: INCRs start again at 1.
        #expect(try await a.send("FLUSHALL") == .ok)
        let flushed = try await a.send("PYLON", "LASTWRITE").string ?? ""
        #expect(try await reader.send("PYLON", "WAIT", flushed, "30000") == .integer(1))
        for node in cluster.nodes {
            let keys = try await node.client().send("KEYS", "*").array?.compactMap(\.string) ?? []
            #expect(keys.allSatisfy { $0.hasPrefix("pylon:") }, "\(keys.filter { !$0.hasPrefix("pylon:") }.prefix(5))")
        }
        #expect(try await reader.send("DBSIZE") == .integer(0))
        #expect(try await reader.send("RANDOMKEY") == .null)
        #expect(try await reader.send("KEYS", "*") == .array([]))
        #expect(try await reader.send("INCR", "n1") == .integer(1))
        #expect(try await owner.client().send("EXISTS", marker) == .integer(1))
    }
}
