import NIOCore
import Testing

@testable import PylonSidecar

/// Exactly-once application against real Redis: an op and its offset marker change together.
@Suite("Applied offsets against a live Redis", .serialized, .timeLimit(.minutes(3)))
struct AppliedOffsetsLiveTests {
    let topic = "pylon.test.ops"

    func op(_ arguments: String...) -> OpRecord {
        OpRecord(arguments: arguments.map { ByteBuffer(string: $0) }, originRack: "a", originSidecar: "a-0",
                 timestampMilliseconds: 0, slot: arguments.count > 1 ? HashSlot.of(arguments[1]) : OpRecord.noSlot)
    }

    func apply(_ op: OpRecord, offset: Int64, previous: Int64 = -1, partition: Int32 = 0, on client: RedisClient) async throws -> AppliedOffsets.Outcome {
        let outcomes = try await self.apply([.init(op: op, partition: partition, offset: offset, previousInSlot: previous)], on: client)
        #expect(outcomes.count == 1)
        return outcomes[0]
    }

    func apply(_ ops: [AppliedOffsets.PendingOp], on client: RedisClient) async throws -> [AppliedOffsets.Outcome] {
        var raw = ByteBuffer()
        AppliedOffsets.writeRequest(ops, topic: self.topic, sha: nil, into: &raw)
        return try AppliedOffsets.outcomes(of: try await client.sendRaw(raw, replies: 1)[0])
    }

    @Test func replaysAndZombiesApplyNothingTwice() async throws {
        let redis = try RedisServer()
        let applier = try await redis.client()
        let zombie = try await redis.client()
        for offset in Int64(0)..<10 {
            #expect(try await self.apply(self.op("INCR", "counter"), offset: offset, on: applier) == .applied(reply: .integer(Int(offset) + 1)))
        }
        // A replay after a crash, and a deposed applier still sending the same ops.
        for offset in Int64(0)..<10 {
            #expect(try await self.apply(self.op("INCR", "counter"), offset: offset, on: applier) == .alreadyApplied)
            #expect(try await self.apply(self.op("INCR", "counter"), offset: offset, on: zombie) == .alreadyApplied)
        }
        #expect(try await applier.send("GET", "counter") == .bulk("10"))
        let marker = AppliedOffsets.markerKey(topic: self.topic, partition: 0, slot: HashSlot.of("counter"))
        #expect(try await applier.send("GET", marker) == .bulk("9"))
    }

    @Test func aRejectedOpCountsAsAppliedAndDoesNotStall() async throws {
        let redis = try RedisServer()
        let client = try await redis.client()
        #expect(try await self.apply(self.op("RPUSH", "k", "x"), offset: 0, on: client) == .applied(reply: .integer(1)))
        let outcome = try await self.apply(self.op("INCR", "k"), offset: 1, on: client)
        guard case .rejected(let error) = outcome else {
            Issue.record("expected a rejection, got \(outcome)")
            return
        }
        #expect(error.hasPrefix("WRONGTYPE"))
        #expect(try await self.apply(self.op("INCR", "k"), offset: 1, on: client) == .alreadyApplied)
        #expect(try await self.apply(self.op("RPUSH", "k", "y"), offset: 2, on: client) == .applied(reply: .integer(2)))
        #expect(try await self.apply(self.op("SET", "s", "v"), offset: 3, on: client) == .applied(reply: .simple("OK")))
        #expect(try await self.apply(self.op("GETDEL", "nothing"), offset: 4, on: client) == .applied(reply: .null))
    }

    @Test func anOpWhosePredecessorInTheBatchDidNotApplyIsHeldBack() async throws {
        let redis = try RedisServer()
        let client = try await redis.client()
        #expect(try await self.apply(self.op("RPUSH", "l", "a"), offset: 3, on: client) == .applied(reply: .integer(1)))
        // Offset 5 of the same slot follows 4 in the batch, and 4 never arrived: hold it back.
        #expect(try await self.apply(self.op("RPUSH", "l", "c"), offset: 5, previous: 4, on: client) == .previousMissing)
        #expect(try await self.apply(self.op("RPUSH", "l", "b"), offset: 4, previous: 3, on: client) == .applied(reply: .integer(2)))
        #expect(try await self.apply(self.op("RPUSH", "l", "c"), offset: 5, previous: 4, on: client) == .applied(reply: .integer(3)))
        #expect(try await client.send("LRANGE", "l", "0", "-1") == .array([.bulk("a"), .bulk("b"), .bulk("c")]))
    }

    @Test func aRunOfOpsAppliesInOrderAndStopsAtAMissingPredecessor() async throws {
        let redis = try RedisServer()
        let client = try await redis.client()
        let ops: [AppliedOffsets.PendingOp] = [
            .init(op: self.op("SET", "a", "1"), partition: 0, offset: 10),
            .init(op: self.op("INCR", "a"), partition: 0, offset: 11, previousInSlot: 10),
            .init(op: self.op("LPUSH", "a", "x"), partition: 0, offset: 12, previousInSlot: 11),
            .init(op: self.op("SET", "b", "1"), partition: 1, offset: 3),
        ]
        #expect(try await self.apply(ops, on: client) == [
            .applied(reply: .simple("OK")), .applied(reply: .integer(2)), .rejected(error: "WRONGTYPE Operation against a key holding the wrong kind of value"),
            .applied(reply: .simple("OK")),
        ])
        #expect(try await self.apply(ops, on: client) == [.alreadyApplied, .alreadyApplied, .alreadyApplied, .alreadyApplied])
        // Offset 21 follows 20 in its slot, and 20 never applied: the run stops there.
        let gap: [AppliedOffsets.PendingOp] = [
            .init(op: self.op("INCR", "a"), partition: 0, offset: 21, previousInSlot: 20),
            .init(op: self.op("SET", "b", "2"), partition: 1, offset: 4),
        ]
        #expect(try await self.apply(gap, on: client) == [.previousMissing])
        #expect(try await client.send("GET", "a") == .bulk("2"))
        #expect(try await client.send("GET", "b") == .bulk("1"))
    }

    @Test func onRedisClusterTheMarkerLivesWithTheOpsKeys() async throws {
        let cluster = try await RedisClusterFixture()
        for key in ["alpha", "beta", "gamma", "{user7}.visits"] {
            let (owner, _) = try await cluster.owner(of: HashSlot.of(key))
            let client = try await owner.client()
            #expect(try await self.apply(self.op("INCR", key), offset: 0, partition: 2, on: client) == .applied(reply: .integer(1)))
            #expect(try await self.apply(self.op("INCR", key), offset: 0, partition: 2, on: client) == .alreadyApplied)
            await client.close()
        }
    }
}
