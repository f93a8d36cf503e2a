import Foundation
import NIOCore
import Testing

@testable import PylonSidecar

/// Unmodified clients through a sidecar behave as against Redis: redis-py's current release with
/// its default settings (RESP3), redis-cli in RESP3, a client's reads of its own writes at every
/// level, FLUSHALL ordered in the log, SPOP the same on every rack, and Pylon's bookkeeping out of
/// every client's sight and reach.
@Suite("Client compatibility", .serialized, .timeLimit(.minutes(5)))
struct ClientCompatibilityTests {
    static let redisPyCheck = HelmChartTests.repository.appendingPathComponent("Tests/Compatibility/redis_py_check.py").path

    func pipeline(_ client: RedisClient, _ commands: [[String]]) async throws -> [RESPValue] {
        var request = ByteBuffer()
        for command in commands { request.writeRESPCommand(command.map { ByteBuffer(string: $0) }) }
        return try await client.sendRaw(request, replies: commands.count)
    }

    func redisCLI(_ port: Int, _ arguments: [String], resp3: Bool = true) throws -> String {
        try runToCompletion("redis-cli", ["-p", "\(port)", "--no-raw"] + (resp3 ? ["-3"] : []) + arguments).output
    }

    @Test func redisPyWithItsDefaultSettingsBehavesAsAgainstRedis() async throws {
        // The checks are Redis's own behaviour: they pass against a plain redis-server first.
        let plain = try RedisServer()
        let direct = try runToCompletion("python3", [Self.redisPyCheck, "\(plain.port)"])
        #expect(direct.status == 0, "against redis-server: \(direct.output)")
        let world = try await WorldFixture(racks: 2)
        defer { Task { await world.stop() } }
        for rack in world.racks {
            let through = try runToCompletion("python3", [Self.redisPyCheck, "\(rack.sidecar.address.port)"])
            #expect(through.status == 0, "through \(rack.name)'s sidecar: \(through.output)")
            #expect(through.output.contains("all checks passed"))
        }
    }

    @Test func resp3RepliesAreTheOnesRedisGives() async throws {
        let world = try await WorldFixture(racks: 1)
        defer { Task { await world.stop() } }
        let (sidecar, redis) = (world.racks[0].sidecar.address.port, world.racks[0].redis.port)
        let writes: [([String], String)] = [
            (["HSET", "h", "f", "v", "g", "w"], "(integer) 2"), (["SADD", "s", "a", "b"], "(integer) 2"),
            (["ZADD", "z", "1.5", "m", "2", "n"], "(integer) 2"), (["ZINCRBY", "z", "1", "m"], "(double) 2.5"),
            (["GETDEL", "missing"], "(nil)"), (["SET", "k", "v"], "OK"), (["RPUSH", "l", "x"], "(integer) 1"),
            (["ZPOPMAX", "z", "1"], "1) 1) \"m\"\n   2) (double) 2.5"), (["ZPOPMIN", "z"], "1) \"n\"\n2) (double) 2"),
        ]
        for (write, reply) in writes {
            #expect(try self.redisCLI(sidecar, write).trimmingCharacters(in: .newlines) == reply, "\(write)")
        }
        #expect(try await world.waitUntilApplied())
        _ = try await world.racks[0].redis.client().send("ZADD", "z", "3", "o")  // directly: only reads follow
        for read in [["HGETALL", "h"], ["SMEMBERS", "s"], ["ZSCORE", "z", "o"], ["ZRANGE", "z", "0", "-1", "WITHSCORES"], ["GET", "missing"],
                     ["LPOS", "l", "nope"], ["HSTRLEN", "h", "f"], ["TYPE", "h"], ["LRANGE", "l", "0", "-1"]] {
            for resp3 in [true, false] {
                #expect(try self.redisCLI(sidecar, read, resp3: resp3) == self.redisCLI(redis, read, resp3: resp3), "\(read) resp3=\(resp3)")
            }
        }
        let hello = try self.redisCLI(sidecar, ["HELLO"])
        #expect(hello.contains("3# \"proto\" => (integer) 3"), "\(hello)")
        #expect(try self.redisCLI(sidecar, ["HELLO", "4"]).contains("NOPROTO"))
        // One connection going back to RESP2: maps become flat arrays again, as Redis does it.
        let session = try runToCompletion("redis-cli", ["-p", "\(sidecar)", "--no-raw"], input: "HELLO 3\nHGETALL h\nHELLO 2\nHGETALL h\nCLIENT INFO\n").output
        #expect(session.contains("1# \"f\" => \"v\""), "\(session)")
        #expect(session.contains("1) \"f\"\n2) \"v\""), "\(session)")
        #expect(session.contains("resp=2"), "\(session)")
    }

    @Test func aConnectionReadsItsOwnWritesAtEveryLevel() async throws {
        let world = try await WorldFixture(racks: 2)
        defer { Task { await world.stop() } }
        for level in ["applied", "log"] {
            let client = try await world.racks[0].sidecar.client()
            #expect(try await client.send("PYLON", "CONSISTENCY", level) == .ok)
            // Pipelined: each GET follows its SET on the wire, and sees it.
            let replies = try await self.pipeline(client, (0..<200).flatMap { i in [["SET", "ryw:\(level):\(i % 7)", "\(i)"], ["GET", "ryw:\(level):\(i % 7)"]] })
            #expect((0..<200).allSatisfy { replies[2 * $0 + 1] == .bulk("\($0)") }, "\(level): \(replies.prefix(20))")
            // A keyless read of the data sees them too.
            let keys = try await client.send("KEYS", "ryw:\(level):*").array?.count
            #expect(keys == 7)
            await client.close()
        }
    }

    @Test func spopPopsTheSameMembersOnEveryRackWhateverOrderItsSetKeeps() async throws {
        let world = try await WorldFixture(racks: 2)
        defer { Task { await world.stop() } }
        let members = (0..<300).map { "member-\($0)" }
        // The same set built in opposite orders (with a detour) straight in each rack's Redis:
        // equal contents, different insertion histories.
        let a = try await world.racks[0].redis.client()
        let b = try await world.racks[1].redis.client()
        _ = try await a.send(["SADD", "s"] + members)
        _ = try await b.send(["SADD", "s"] + (0..<3000).map { "extra-\($0)" })
        _ = try await b.send(["SADD", "s"] + members.reversed())
        _ = try await b.send(["SREM", "s"] + (0..<3000).map { "extra-\($0)" })
        let client = try await world.racks[0].sidecar.client()
        let popped = try #require(try await client.send("SPOP", "s", "25").array?.compactMap(\.string))
        #expect(popped.count == 25 && Set(popped).isSubset(of: members))
        let one = try #require(try await world.racks[1].sidecar.client().send("SPOP", "s").string)
        #expect(members.contains(one) && !popped.contains(one))
        #expect(try await client.send("SPOP", "nothing") == .null)
        #expect(try await client.send("SPOP", "nothing", "3") == .array([]))
        #expect(try await client.send("SPOP", "s", "-1") == .error("ERR value is out of range, must be positive"))
        #expect(try await world.waitUntilApplied())
        let left = Set(members).subtracting(popped + [one])
        for redis in [a, b] {
            #expect(Set(try await redis.send("SMEMBERS", "s").array?.compactMap(\.string) ?? []) == left)
        }
    }

    @Test func flushallKeepsEveryWriteAcknowledgedAfterItOnEveryRack() async throws {
        let world = try await WorldFixture(racks: 2)
        defer { Task { await world.stop() } }
        struct Write: Sendable {
            var key: String
            var sent: ContinuousClock.Instant
            var acknowledged: ContinuousClock.Instant
        }
        let writes = Shared<[Write]>([])
        let flush = Shared<[ContinuousClock.Instant]>([])
        try await withThrowingTaskGroup(of: Void.self) { group in
            for rack in world.racks {
                group.addTask {
                    let client = try await rack.sidecar.client()
                    let started = ContinuousClock.now
                    var i = 0
                    while ContinuousClock.now - started < .seconds(3) {
                        let key = "w:\(rack.name):\(i)"
                        let sent = ContinuousClock.now
                        #expect(try await client.send("SET", key, "\(i)") == .ok)
                        writes.withLock { $0.append(Write(key: key, sent: sent, acknowledged: .now)) }
                        i += 1
                    }
                }
            }
            group.addTask {
                try await Task.sleep(for: .milliseconds(1500))
                let client = try await world.racks[0].sidecar.client()
                let sent = ContinuousClock.now
                #expect(try await client.send("FLUSHALL") == .ok)
                flush.withLock { $0 = [sent, .now] }
            }
            try await group.waitForAll()
        }
        let times = flush.withLock { $0 }
        try #require(times.count == 2)
        let (flushSent, flushAcknowledged) = (times[0], times[1])
        #expect(try await world.waitUntilApplied())
        let all = writes.withLock { $0 }
        let before = all.filter { $0.acknowledged < flushSent }
        let after = all.filter { $0.sent > flushAcknowledged }
        #expect(before.count > 50 && after.count > 50, "\(before.count) before, \(after.count) after")
        let snapshots = try await world.racks.asyncMap { try await WorldFixture.snapshot($0.redis) }
        #expect(snapshots[0] == snapshots[1])
        let kept = Set(snapshots[0].keys)
        #expect(after.allSatisfy { kept.contains($0.key) }, "a write acknowledged after FLUSHALL is missing")
        #expect(!before.contains { kept.contains($0.key) }, "a write acknowledged before FLUSHALL survived")
        // The bookkeeping survived the flush: both racks still apply exactly once.
        let client = try await world.racks[1].sidecar.client()
        #expect(try await self.pipeline(client, (0..<50).map { _ in ["INCR", "after-flush"] }) == (1...50).map { .integer($0) })
        #expect(try await world.racks[0].sidecar.client().send("FLUSHDB", "ASYNC") == .ok)
        #expect(try await world.racks[0].sidecar.client().send("DBSIZE") == .integer(0))
    }

    @Test func aClientThatDeletesEveryKeyItSeesLeavesReplicationIntact() async throws {
        let world = try await WorldFixture(racks: 2)
        defer { Task { await world.stop() } }
        let sidecar = try await world.racks[0].sidecar.client()
        #expect(try await sidecar.send("SET", "user", "x") == .ok)
        // Pylon's keys exist in Redis, yet no command through a sidecar sees, counts or touches them.
        let inRedis = try await world.racks[0].redis.client().send("KEYS", "pylon:*").array?.count ?? 0
        #expect(inRedis > 0)
        #expect(try await sidecar.send("KEYS", "*") == .array([.bulk("user")]))
        #expect(try await sidecar.send("DBSIZE") == .integer(1))
        #expect(try await sidecar.send("SCAN", "0", "COUNT", "1000") == .array([.bulk("0"), .array([.bulk("user")])]))
        for _ in 0..<20 { #expect(try await sidecar.send("RANDOMKEY") == .bulk("user")) }
        let marker = AppliedOffsets.markerKey(topic: world.topic, partition: 0)
        let owner = AppliedOffsets.ownerKey(topic: world.topic, partition: 0)
        for command in [["GET", marker], ["SET", owner, "1"], ["DEL", marker, "user"], ["EXPIRE", owner, "1"], ["RENAME", "user", "pylon:x"],
                        ["COPY", "user", "pylon:x"], ["EXISTS", marker], ["TYPE", owner], ["DUMP", marker], ["OBJECT", "ENCODING", marker],
                        ["SORT", "l", "BY", "pylon:*"], ["SORT", "l", "GET", "*"]] {
            #expect(try await sidecar.send(command).string?.hasPrefix("ERR pylon:") == true, "\(command)")
        }
        // A cleaner deletes every key it can see, again and again, while 10,000 INCRs go through
        // both racks and rack 1's sidecar is restarted.
        let counters = (0..<10).map { "counter:\($0)" }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, rack) in world.racks.enumerated() {
                group.addTask {
                    let client = try await rack.sidecar.client()
                    for round in 0..<50 {
                        let replies = try await self.pipeline(client, (0..<100).map { i in ["INCR", counters[(i + index + round) % 10]] })
                        #expect(replies.allSatisfy { $0.int != nil }, "\(replies.first { $0.int == nil }!)")
                    }
                }
            }
            group.addTask {
                // An applier restarted: a second sidecar joins rack 1, takes partitions, and stops.
                let extra = try await SidecarFixture(redis: .standalone(world.racks[1].redis.address)) {
                    WorldFixture.join(&$0, world: world.name, rack: "rack1", broker: world.broker, partitions: world.partitions)
                }
                _ = try await eventually(timeout: .seconds(20)) { (extra.sidecar.applier?.partitions.count ?? 0) > 0 }
                await extra.stop()
            }
            group.addTask {
                let cleaner = try await world.racks[0].sidecar.client()
                for _ in 0..<30 {
                    for key in try await cleaner.send("KEYS", "*").array?.compactMap(\.string) ?? [] where !key.hasPrefix("counter:") {
                        _ = try await cleaner.send("DEL", key)
                    }
                    _ = try await cleaner.send("SET", "junk:\(UUID().uuidString)", "x")
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
            try await group.waitForAll()
        }
        #expect(try await world.waitUntilApplied())
        for rack in world.racks {
            let redis = try await rack.redis.client()
            var values: [Int] = []
            for counter in counters { values.append(try await redis.send("GET", counter).int ?? 0) }
            #expect(values == Array(repeating: 1000, count: 10), "\(rack.name): \(values)")
            #expect(try await redis.send("KEYS", "pylon:owner:*").array?.count == world.partitions)
        }
        for rack in world.racks {
            #expect(rack.sidecar.sidecar.applier?.partitions.allSatisfy { !$0.deposed } == true)
        }
    }

    @Test func aDeposedPartitionWhoseClaimVanishedIsAppliedAgain() async throws {
        let world = try await WorldFixture(racks: 1)
        defer { Task { await world.stop() } }
        let client = try await world.racks[0].sidecar.client()
        #expect(try await self.pipeline(client, (0..<8).map { ["INCR", "n:\($0)"] }) == Array(repeating: .integer(1), count: 8))
        // Someone deletes the owner keys straight in Redis (as a client once could through a sidecar).
        let redis = try await world.racks[0].redis.client()
        for key in try await redis.send("KEYS", "pylon:owner:*").array?.compactMap(\.string) ?? [] { _ = try await redis.send("DEL", key) }
        // The next scripts find the claim gone: the applier is deposed, finds the claim vanished,
        // claims again and applies — every INCR still answered with its real value.
        #expect(try await self.pipeline(client, (0..<8).map { ["INCR", "n:\($0)"] }) == Array(repeating: .integer(2), count: 8))
        let applier = try #require(world.racks[0].sidecar.sidecar.applier)
        #expect(applier.stats[.deposed] > 0)
        #expect(applier.partitions.allSatisfy { !$0.deposed })
        for i in 0..<8 { #expect(try await redis.send("GET", "n:\(i)") == .bulk("2")) }
    }

    @Test func writesUpTo64MBAndWithAnyArgumentCountAreAppliedOnEveryRack() async throws {
        let world = try await WorldFixture(racks: 2)
        defer { Task { await world.stop() } }
        let a = try await world.racks[0].sidecar.client()
        let b = try await world.racks[1].sidecar.client()
        // SET big <value>: the arguments together are exactly the limit (64 MiB).
        let limit = 64 << 20
        let value = String(repeating: "0123456789abcdef", count: (limit - 6) / 16) + String(repeating: "x", count: (limit - 6) % 16)
        #expect(try await a.send("SET", "big", value) == .ok)
        #expect(try await a.send("STRLEN", "big") == .integer(value.utf8.count))  // its own write, at once
        #expect(try await eventually(timeout: .seconds(30)) { try await b.send("STRLEN", "big") == .integer(value.utf8.count) })
        #expect(try await b.send("GET", "big") == .bulk(value))
        // One byte over: refused, nothing in the log, nothing applied.
        let reply = try await a.send("SET", "over", value + "y")
        #expect(reply.string?.contains("max-write-bytes") == true, "\(reply.string?.prefix(200) ?? "")")
        // More arguments than a script can pass on: applied in a transaction, with Redis's reply.
        let members = (0..<20_000).map { "m\($0)" }
        #expect(try await a.send(["SADD", "many"] + members) == .integer(20_000))
        #expect(try await a.send(["SREM", "many"] + members.prefix(10_000)) == .integer(10_000))
        #expect(try await a.send(["DEL"] + (0..<9000).map { "{t}\($0)" } + ["many"]) == .integer(1))
        #expect(try await a.send(["RPUSH", "list"] + members) == .integer(20_000))
        #expect(try await a.send(["HSET", "list"] + members).string?.hasPrefix("WRONGTYPE") == true)
        #expect(try await world.waitUntilApplied())
        for rack in world.racks {
            let redis = try await rack.redis.client()
            #expect(try await redis.send("EXISTS", "over", "many") == .integer(0), "\(rack.name)")
            #expect(try await redis.send("LLEN", "list") == .integer(20_000), "\(rack.name)")
            #expect(try await redis.send("STRLEN", "big") == .integer(value.utf8.count), "\(rack.name)")
        }
        #expect(try await a.send("INCR", "after") == .integer(1))
    }
}
