import Foundation
import NIOCore
import Synchronization
import Testing

@testable import PylonSidecar

/// Consistency levels on a real broker and real Redis: `applied` writes answer their real reply
/// (whichever sidecar of the rack applies the partition), contentious keys get one winner in the
/// whole world, `PYLON WAIT` gives read-your-writes across racks, and rebalances apply nothing twice.
@Suite("Consistency levels", .serialized, .timeLimit(.minutes(3)))
struct ConsistencyTests {
    /// Sends `arguments` once per element of `values`, pipelined.
    func pipeline(_ client: RedisClient, _ commands: [[String]]) async throws -> [RESPValue] {
        var request = ByteBuffer()
        for command in commands { request.writeRESPCommand(command.map { ByteBuffer(string: $0) }) }
        return try await client.sendRaw(request, replies: commands.count)
    }

    @Test func appliedWritesAnswerTheirRealReplyWhicheverSidecarAppliesThePartition() async throws {
        let world = try await WorldFixture(racks: 1)
        defer { Task { await world.stop() } }
        #expect(try await eventually { world.racks[0].sidecar.sidecar.applier?.partitions.count == world.partitions })
        // A second sidecar in the rack takes some partitions: its replies travel by pub/sub.
        let second = try await SidecarFixture(redis: .standalone(world.racks[0].redis.address)) {
            WorldFixture.join(&$0, world: world.name, rack: "rack0", broker: world.broker, partitions: world.partitions)
        }
        defer { Task { await second.stop() } }
        #expect(try await eventually(timeout: .seconds(30)) {
            let counts = [world.racks[0].sidecar, second].map { $0.sidecar.applier?.partitions.count ?? 0 }
            return counts.allSatisfy { $0 > 0 } && counts.reduce(0, +) == world.partitions
        })
        for sidecar in [world.racks[0].sidecar, second] {
            let client = try await sidecar.client()
            #expect(try await client.send("PYLON", "CONSISTENCY") == .bulk("applied"))  // the default
            let tag = sidecar === second ? "b" : "a"
            // 32 counters cover every partition, so both sidecars' appliers answer some.
            let increments = try await self.pipeline(client, (0..<32).flatMap { i in [["INCR", "n:\(tag):\(i)"], ["INCR", "n:\(tag):\(i)"]] })
            #expect(increments == (0..<32).flatMap { _ in [RESPValue.integer(1), .integer(2)] })
            #expect(try await client.send("SET", "once:\(tag)", "x", "NX") == .simple("OK"))
            #expect(try await client.send("SET", "once:\(tag)", "y", "NX") == .null)
            #expect(try await client.send("RPUSH", "l:\(tag)", "p", "q") == .integer(2))
            #expect(try await client.send("LPOP", "l:\(tag)") == .bulk("p"))
            #expect(try await client.send("INCR", "l:\(tag)").string?.hasPrefix("WRONGTYPE") == true)
            // A write split by slot: the sum of its parts.
            #expect(try await client.send("DEL", "n:\(tag):0", "n:\(tag):1", "n:\(tag):2", "missing") == .integer(3))
            // Back to log: the documented placeholder reply.
            #expect(try await client.send("PYLON", "CONSISTENCY", "log") == .simple("OK"))
            #expect(try await client.send("INCR", "n:\(tag):5") == .integer(0))
        }
    }

    @Test func contentiousKeysHaveOneWinnerInTheWholeWorld() async throws {
        let world = try await WorldFixture(racks: 2) { $0.contentiousKeys = ["lock:*"] }
        defer { Task { await world.stop() } }
        let a = try await world.racks[0].sidecar.client()
        let b = try await world.racks[1].sidecar.client()
        let rounds = 1000
        var winners: [String] = []
        for start in stride(from: 0, to: rounds, by: 100) {
            // Both racks race the same 100 locks at once, each through its own sidecar.
            async let fromA = self.pipeline(a, (start..<start + 100).map { ["SET", "lock:\($0)", "a", "NX"] })
            async let fromB = self.pipeline(b, (start..<start + 100).map { ["SET", "lock:\($0)", "b", "NX"] })
            let (repliesA, repliesB) = try await (fromA, fromB)
            for (ra, rb) in zip(repliesA, repliesB) {
                #expect([ra, rb].filter { $0 == .simple("OK") }.count == 1, "\(ra) \(rb)")
                #expect([ra, rb].filter { $0 == .null }.count == 1, "\(ra) \(rb)")
                winners.append(ra == .simple("OK") ? "a" : "b")
            }
        }
        // Not contentious: the log-level placeholder.
        #expect(try await a.send("SET", "free", "x", "NX") == .simple("OK"))
        #expect(try await world.waitUntilApplied())
        for rack in world.racks {
            let redis = try await rack.redis.client()
            let held = try await self.pipeline(redis, (0..<rounds).map { ["GET", "lock:\($0)"] })
            #expect(held == winners.map { .bulk($0) })
        }
    }

    @Test func waitGivesReadYourWritesAcrossRacks() async throws {
        let world = try await WorldFixture(racks: 2)
        defer { Task { await world.stop() } }
        let a = try await world.racks[0].sidecar.client()
        let b = try await world.racks[1].sidecar.client()
        #expect(try await a.send("PYLON", "LASTWRITE") == .null)
        for i in 0..<50 {
            #expect(try await a.send("SET", "ryw:\(i)", "v\(i)") == .simple("OK"))
            guard let token = try await a.send("PYLON", "LASTWRITE").string else {
                Issue.record("no token after a write")
                return
            }
            #expect(try await b.send("PYLON", "WAIT", token, "5000") == .integer(1))
            #expect(try await b.send("GET", "ryw:\(i)") == .bulk("v\(i)"))
        }
        // A position the log has not reached: the wait times out with 0.
        #expect(try await b.send("PYLON", "WAIT", "0:1000000", "50") == .integer(0))
        #expect(try await b.send("PYLON", "WAIT", "nonsense", "50").string?.contains("usage: PYLON WAIT") == true)
    }

    @Test func addingAndRemovingASidecarDuringALoadAppliesNothingTwice() async throws {
        let world = try await WorldFixture(racks: 2)
        defer { Task { await world.stop() } }
        #expect(try await eventually { world.racks.allSatisfy { $0.sidecar.sidecar.applier?.partitions.count == world.partitions } })
        let counters = (0..<10).map { "c:\($0)" }
        let acknowledged = Shared(0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                let client = try await world.racks[0].sidecar.client()
                for _ in 0..<40 {
                    let replies = try await self.pipeline(client, (0..<100).map { ["INCR", counters[$0 % counters.count]] })
                    acknowledged.withLock { $0 += replies.filter { $0.int != nil }.count }
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
            group.addTask {
                // Rack 1 gains a sidecar (a rebalance hands it partitions), then loses it again.
                try await Task.sleep(for: .milliseconds(300))
                let extra = try await SidecarFixture(redis: .standalone(world.racks[1].redis.address)) {
                    WorldFixture.join(&$0, world: world.name, rack: "rack1", broker: world.broker, partitions: world.partitions)
                }
                #expect(try await eventually(timeout: .seconds(20)) { (extra.sidecar.applier?.partitions.count ?? 0) > 0 })
                await extra.stop()
            }
            try await group.waitForAll()
        }
        #expect(acknowledged.withLock { $0 } == 4000)
        #expect(try await eventually(timeout: .seconds(60)) {
            for rack in world.racks {
                let redis = try await rack.redis.client()
                let values = try await self.pipeline(redis, counters.map { ["GET", $0] })
                guard values == counters.map({ _ in .bulk("400") }) else { return false }
            }
            return true
        })
    }
}
