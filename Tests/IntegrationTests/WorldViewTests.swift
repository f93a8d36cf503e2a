import Foundation
import NIOCore
import Testing

@testable import PylonSidecar

/// The world view: sidecars probe their peers, and a sidecar whose Redis is away keeps serving
/// reads from the fastest peer of another rack, keeps accepting writes, and heals when its Redis
/// returns — even empty.
@Suite("World view and read failover", .serialized, .timeLimit(.minutes(3)))
struct WorldViewTests {
    @Test func peersAreProbedAndShown() async throws {
        let world = try await WorldFixture(racks: 3, peers: true) { $0.peerProbeIntervalMilliseconds = 100 }
        defer { Task { await world.stop() } }
        let a = try await world.racks[0].sidecar.client()
        let ping = try await a.send("PYLON", "PING")
        #expect(ping.array?.count == 10)
        #expect(ping.array?[5] == .bulk(world.name))
        #expect(try await eventually {
            let peers = try await a.send("PYLON", "PEERS").string ?? ""
            return peers.split(separator: "\r\n").filter { $0.contains("state=up,redis=up") && $0.contains("reads=yes") }.count == 2
        })
        let peers = try await a.send("PYLON", "PEERS").string ?? ""
        #expect(peers.contains("rack=rack1") && peers.contains("rack=rack2"), "\(peers)")
        let info = try await a.send("PYLON", "INFO").string ?? ""
        #expect(info.contains("peers:2") && info.contains("peers_up:2") && info.contains("reads_from:local"), "\(info)")
        let (_, metrics) = try await world.racks[0].sidecar.admin("/metrics")
        #expect(metrics.contains("pylon_peer_up{peer=\"\(world.racks[1].sidecar.address)\"} 1"), "\(metrics)")
        #expect(metrics.contains("pylon_peer_rtt_seconds{peer=\"\(world.racks[2].sidecar.address)\"}"))
        // A peer that goes away is marked down, and reads may no longer go to it.
        await world.racks[2].sidecar.stop()
        #expect(try await eventually {
            let peers = try await a.send("PYLON", "PEERS").string ?? ""
            return peers.contains("rack=rack2,state=down")
        })
    }

    @Test func readsFailOverToAPeerWhileTheLocalRedisIsAwayAndTheRackHealsWhenItReturnsEmpty() async throws {
        let world = try await WorldFixture(racks: 2, peers: true) { $0.peerProbeIntervalMilliseconds = 100 }
        defer { Task { await world.stop() } }
        let a = try await world.racks[0].sidecar.client()
        for i in 0..<20 { #expect(try await a.send("SET", "k\(i)", "v\(i)") == .simple("OK")) }
        #expect(try await world.waitUntilApplied())
        #expect(try await eventually {
            (try await a.send("PYLON", "PEERS").string ?? "").contains("reads=yes")
        })
        // A reader on rack A's sidecar, one GET at a time, while rack A's Redis is killed.
        let port = world.racks[0].redis.port
        let reader = Task {
            var (answered, errors, wrong) = (0, [String](), 0)
            let started = ContinuousClock.now
            while ContinuousClock.now - started < .seconds(2) {
                let i = answered % 20
                let reply = try await a.send("GET", "k\(i)")
                if reply == .bulk("v\(i)") { answered += 1 } else if reply.isError { errors.append(reply.string ?? "\(reply)") } else { wrong += 1 }
            }
            return (answered, errors, wrong)
        }
        try await Task.sleep(for: .milliseconds(300))
        world.racks[0].redis.process.stop(signal: SIGKILL)
        let (answered, errors, wrong) = try await reader.value
        // Only reads in flight when Redis died may fail (the documented retry window).
        #expect(wrong == 0)
        #expect(errors.count <= 2, "\(errors.prefix(3))")
        #expect(answered > 100)
        let info = try await a.send("PYLON", "INFO").string ?? ""
        #expect(info.contains("reads_from:peer \(world.racks[1].sidecar.address)"), "\(info)")
        let (_, metrics) = try await world.racks[0].sidecar.admin("/metrics")
        #expect(metrics.contains("pylon_failover_reads_total{peer=\"\(world.racks[1].sidecar.address)\"}"))
        // Writes through rack A are still acknowledged (Kafka has them)…
        for i in 0..<10 { #expect(try await a.send("SET", "late\(i)", "x\(i)") == .simple("OK")) }
        #expect(try await eventually { try await a.send("GET", "late9") == .bulk("x9") })  // served by the peer
        // …and once rack A's Redis is back, empty, its applier replays the log and the racks converge.
        let restarted = try RedisServer(port: port)
        #expect(try await eventually(timeout: .seconds(30)) {
            try await restarted.client().send("GET", "late9") == .bulk("x9")
        })
        #expect(try await world.waitUntilApplied())
        #expect(try await WorldFixture.snapshot(restarted) == WorldFixture.snapshot(world.racks[1].redis))
        #expect(try await eventually { (try await a.send("PYLON", "INFO").string ?? "").contains("reads_from:local") })
    }

    /// A reply this rack never hands over (its applier stopped, its Redis up) is late after 2 s
    /// and then asked of another rack: the write still answers its real reply, well within
    /// `applied-timeout-ms`, and the watch that asked it ends with the write.
    @Test func aReplyThisRackNeverHandsOverIsAskedOfAnotherRackOnceLate() async throws {
        let world = try await WorldFixture(racks: 2, peers: true) { $0.peerProbeIntervalMilliseconds = 100 }
        defer { Task { await world.stop() } }
        let a = try await world.racks[0].sidecar.client()
        #expect(try await a.send("INCR", "n") == .integer(1))
        #expect(try await eventually { (try await a.send("PYLON", "PEERS").string ?? "").contains("reads=yes") })
        world.racks[0].sidecar.sidecar.applier?.stop()
        for expected in 2...3 {
            let started = ContinuousClock.now
            #expect(try await a.send("INCR", "n") == .integer(expected))
            let took = ContinuousClock.now - started
            #expect(took >= .seconds(2) && took < .seconds(5), "\(took)")
        }
        #expect(try await world.racks[1].redis.client().send("GET", "n") == .bulk("3"))
    }

    @Test func incrsThroughARackWhoseRedisIsKilledStillAnswerTheirRealValue() async throws {
        let world = try await WorldFixture(racks: 2, peers: true) { $0.peerProbeIntervalMilliseconds = 100 }
        defer { Task { await world.stop() } }
        let a = try await world.racks[0].sidecar.client()
        #expect(try await eventually { (try await a.send("PYLON", "PEERS").string ?? "").contains("reads=yes") })
        let port = world.racks[0].redis.port
        let writer = Task {
            var replies: [RESPValue] = []
            let started = ContinuousClock.now
            while ContinuousClock.now - started < .seconds(3) {
                var request = ByteBuffer()
                for _ in 0..<10 { request.writeRESPCommand([ByteBuffer(string: "INCR"), ByteBuffer(string: "hits")]) }
                replies += try await a.sendRaw(request, replies: 10)
            }
            return replies
        }
        try await Task.sleep(for: .milliseconds(800))
        world.racks[0].redis.process.stop(signal: SIGKILL)
        let replies = try await writer.value
        // Rack B applied every INCR in the log's order, and its replies are the real counts.
        #expect(replies == (1...replies.count).map { .integer($0) }, "\(replies.filter { $0.int == nil }.prefix(3))")
        let restarted = try RedisServer(port: port)
        #expect(try await eventually(timeout: .seconds(30)) { try await restarted.client().send("GET", "hits") == .bulk("\(replies.count)") })
        #expect(try await world.racks[1].redis.client().send("GET", "hits") == .bulk("\(replies.count)"))
    }
}
