import NIOCore
import Testing

@testable import PylonSidecar

/// Exactly-once application against real Redis: ops and their offset marker change together.
@Suite("Applied offsets against a live Redis", .serialized, .timeLimit(.minutes(3)))
struct AppliedOffsetsLiveTests {
    let topic = "pylon.test.ops"
    var marker: String { AppliedOffsets.markerKey(topic: self.topic, partition: 0) }

    func op(_ arguments: String...) -> OpRecord {
        OpRecord(arguments: arguments.map { ByteBuffer(string: $0) }, originRack: "a", originSidecar: "a-0",
                 timestampMilliseconds: 0, slot: arguments.count > 1 ? HashSlot.of(arguments[1]) : OpRecord.noSlot)
    }

    var ownerKey: String { AppliedOffsets.ownerKey(topic: self.topic, partition: 0) }

    /// Claims (or, with `keep`, re-asserts) partition 0 the way an applier does; returns the epoch stored now.
    func own(_ mode: String = "claim", _ value: Int = 1, key: String? = nil, on client: RedisClient) async throws -> Int {
        guard case .integer(let epoch) = try await client.send("EVAL", AppliedOffsets.ownerScript, "1", key ?? self.ownerKey, mode, String(value)) else {
            throw CancellationError()
        }
        return epoch
    }

    /// Applies a run of (offset, op) under `marker` (the partition's marker unless given) as the
    /// owner with `epoch` (claimed first unless given).
    func apply(
        _ run: [(Int64, OpRecord)], previous: Int64 = -1, marker: String? = nil, ownerKey: String? = nil, epoch: Int? = nil, on client: RedisClient
    ) async throws -> [AppliedOffsets.Outcome] {
        var raw = ByteBuffer()
        var owner = AppliedOffsets.Ownership(key: ownerKey ?? self.ownerKey, epoch: 1)
        if let epoch { owner.epoch = epoch } else { owner.epoch = try await self.own("keep", 1, key: owner.key, on: client) }
        AppliedOffsets.writeRequest(run.map { .init(op: $0.1, offset: $0.0) }, marker: marker ?? self.marker, owner: owner, previous: previous, sha: nil, into: &raw)
        return try AppliedOffsets.outcomes(of: try await client.sendRaw(raw, replies: 1)[0])
    }

    @Test func aDeposedApplierWritesNothing() async throws {
        let redis = try RedisServer()
        let (a, b) = (try await redis.client(), try await redis.client())
        let first = try await self.own(on: a)
        #expect(try await self.apply([(0, self.op("INCR", "n"))], epoch: first, on: a) == [.applied(reply: .integer(1))])
        // B is assigned the partition: its claim outranks A's, and A (a zombie) is refused.
        let second = try await self.own(on: b)
        #expect(second > first)
        #expect(try await self.apply([(1, self.op("INCR", "n"))], previous: 0, epoch: first, on: a) == [.deposed])
        #expect(try await self.apply([(1, self.op("INCR", "n"))], previous: 0, epoch: second, on: b) == [.applied(reply: .integer(2))])
        #expect(try await self.own("keep", first, on: a) == second)
        // Redis comes back empty: whoever re-asserts first, the newer claim wins, and a new
        // claimant's epoch (its clock) outranks both.
        _ = try await a.send("FLUSHALL")
        #expect(try await self.own("keep", first, on: a) == first)
        #expect(try await self.own("keep", second, on: b) == second)
        #expect(try await self.own("keep", first, on: a) == second)
        let clock = 1_800_000_000_000
        #expect(try await self.own("claim", clock, on: b) == clock)
        #expect(try await self.apply([(2, self.op("INCR", "n"))], epoch: second, on: b) == [.deposed])
        #expect(try await a.send("GET", "n") == .null)
    }

    @Test func replaysAndZombiesApplyNothingTwice() async throws {
        let redis = try RedisServer()
        let applier = try await redis.client()
        let zombie = try await redis.client()
        for offset in Int64(0)..<10 {
            #expect(try await self.apply([(offset, self.op("INCR", "counter"))], previous: offset - 1, on: applier) == [.applied(reply: .integer(Int(offset) + 1))])
        }
        // A replay after a crash, and a deposed applier still sending the same ops.
        let replay = (Int64(0)..<10).map { ($0, self.op("INCR", "counter")) }
        #expect(try await self.apply(replay, on: applier) == Array(repeating: .alreadyApplied, count: 10))
        #expect(try await self.apply(Array(replay[4...]), previous: 3, on: zombie) == Array(repeating: .alreadyApplied, count: 6))
        // A run that straddles the marker: the applied prefix is skipped, the rest applies.
        #expect(try await self.apply([(8, self.op("INCR", "counter")), (9, self.op("INCR", "counter")), (10, self.op("INCR", "counter"))], on: zombie) == [
            .alreadyApplied, .alreadyApplied, .applied(reply: .integer(11)),
        ])
        #expect(try await applier.send("GET", "counter") == .bulk("11"))
        #expect(try await applier.send("GET", self.marker) == .bulk("10"))
    }

    @Test func aRejectedOpCountsAsAppliedAndDoesNotStall() async throws {
        let redis = try RedisServer()
        let client = try await redis.client()
        let outcomes = try await self.apply([
            (0, self.op("RPUSH", "k", "x")), (1, self.op("INCR", "k")), (2, self.op("RPUSH", "k", "y")),
            (3, self.op("SET", "s", "v")), (4, self.op("GETDEL", "nothing")),
        ], on: client)
        #expect(outcomes == [
            .applied(reply: .integer(1)), .rejected(error: "WRONGTYPE Operation against a key holding the wrong kind of value"),
            .applied(reply: .integer(2)), .applied(reply: .simple("OK")), .applied(reply: .null),
        ])
        #expect(try await self.apply([(1, self.op("INCR", "k"))], on: client) == [.alreadyApplied])
        #expect(try await client.send("LRANGE", "k", "0", "-1") == .array([.bulk("x"), .bulk("y")]))
    }

    @Test func aRunWhosePredecessorDidNotApplyIsHeldBack() async throws {
        let redis = try RedisServer()
        let client = try await redis.client()
        #expect(try await self.apply([(3, self.op("RPUSH", "l", "a"))], on: client) == [.applied(reply: .integer(1))])
        // The run 5…6 follows offset 4, which never arrived: nothing of it applies.
        let later = [(Int64(5), self.op("RPUSH", "l", "c")), (6, self.op("RPUSH", "other", "z"))]
        #expect(try await self.apply(later, previous: 4, on: client) == [.previousMissing])
        #expect(try await client.send("EXISTS", "other") == .integer(0))
        #expect(try await self.apply([(4, self.op("RPUSH", "l", "b"))], previous: 3, on: client) == [.applied(reply: .integer(2))])
        #expect(try await self.apply(later, previous: 4, on: client) == [.applied(reply: .integer(3)), .applied(reply: .integer(1))])
        #expect(try await client.send("LRANGE", "l", "0", "-1") == .array([.bulk("a"), .bulk("b"), .bulk("c")]))
    }

    @Test func aRedisOutOfMemoryChangesNothing() async throws {
        // The marker is the script's first write: refused for memory, the script stops before
        // any op ran, so marker and ops stay together.
        let redis = try RedisServer()
        let client = try await redis.client()
        #expect(try await self.apply([(0, self.op("SET", "a", "1"))], on: client) == [.applied(reply: .simple("OK"))])
        _ = try await client.send("CONFIG", "SET", "maxmemory", "1")
        var raw = ByteBuffer()
        AppliedOffsets.writeRequest([.init(op: self.op("SET", "a", "2"), offset: 1), .init(op: self.op("SET", "b", "2"), offset: 2)],
                                    marker: self.marker, owner: .init(key: self.ownerKey, epoch: 1), previous: 0, sha: nil, into: &raw)
        guard case .error(let message) = try await client.sendRaw(raw, replies: 1)[0] else {
            Issue.record("the script ran out of memory without an error")
            return
        }
        #expect(String(buffer: message).hasPrefix("OOM"))
        _ = try await client.send("CONFIG", "SET", "maxmemory", "0")
        #expect(try await client.send("MGET", "a", "b", self.marker) == .array([.bulk("1"), .null, .bulk("0")]))
    }

    @Test func onRedisClusterTheMarkerLivesWithTheOpsKeys() async throws {
        let cluster = try await RedisClusterFixture()
        for key in ["alpha", "beta", "gamma", "{user7}.visits"] {
            let (node, _) = try await cluster.owner(of: HashSlot.of(key))
            let client = try await node.client()
            let marker = AppliedOffsets.markerKey(topic: self.topic, partition: 2, slot: HashSlot.of(key))
            let owner = AppliedOffsets.ownerKey(topic: self.topic, partition: 2, slot: HashSlot.of(key))
            #expect(try await self.apply([(0, self.op("INCR", key))], marker: marker, ownerKey: owner, on: client) == [.applied(reply: .integer(1))])
            #expect(try await self.apply([(0, self.op("INCR", key))], marker: marker, ownerKey: owner, on: client) == [.alreadyApplied])
            await client.close()
        }
    }
}
