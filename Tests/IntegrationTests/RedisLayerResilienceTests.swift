import Foundation
import NIOCore
import PylonSidecar
import Synchronization
import Testing

/// A local Redis that goes away, hangs or comes back.
@Suite("Redis layer resilience", .timeLimit(.minutes(3)))
struct RedisLayerResilienceTests {
    @Test func aDownRedisGivesAQuickClearErrorAndRecoveryIsAutomatic() async throws {
        let port = try Ports.free()
        var redis: RedisServer? = try RedisServer(port: port)
        let sidecar = try await SidecarFixture(redis: .standalone(HostPort(host: "127.0.0.1", port: port)))
        let client = try await sidecar.client()
        #expect(try await client.send("GET", "k") == .null)
        redis?.stop()
        redis = nil
        let started = ContinuousClock.now
        let reply = try await client.send("GET", "k")
        #expect(ContinuousClock.now - started < .seconds(1))
        #expect(reply.string?.hasPrefix("ERR pylon: local redis unavailable") == true, "\(reply)")
        #expect(try await sidecar.admin("/readyz").0 == 503)
        #expect(try await client.send("PING") == .simple("PONG"))  // local commands still work

        redis = try RedisServer(port: port)
        _ = try await redis!.client().send("SET", "k", "back")
        let recovered = try await eventually { try await client.send("GET", "k") == .bulk("back") }
        #expect(recovered)
        #expect(try await sidecar.admin("/readyz").0 == 200)
        await sidecar.stop()
    }

    @Test func droppedConnectionsAreRemadeAndReadsInFlightResent() async throws {
        let redis = try RedisServer()
        _ = try await redis.client().send("SET", "k", "v")
        let sidecar = try await SidecarFixture(redis: .standalone(redis.address))
        final class Outcome: Sendable {
            let reads = Atomic<Int>(0)
            let failures = Mutex<[String]>([])
        }
        let outcome = Outcome()
        let readers = (0..<4).map { _ in
            Task { [outcome] in
                let client = try await sidecar.client()
                while !Task.isCancelled {
                    var batch = ByteBuffer()
                    for _ in 0..<50 { batch.writeRESPCommand([ByteBuffer(string: "GET"), ByteBuffer(string: "k")]) }
                    for reply in try await client.sendRaw(batch, replies: 50) where reply != .bulk("v") {
                        outcome.failures.withLock { $0.append(reply.string ?? "nil") }
                    }
                    outcome.reads.add(50, ordering: .relaxed)
                }
            }
        }
        // What Sentinel does to every instance it reconfigures: kill its clients (the sidecar's connections).
        let admin = try await redis.client()
        for _ in 0..<10 {
            try await Task.sleep(for: .milliseconds(30))
            #expect(try await admin.send("CLIENT", "KILL", "TYPE", "normal").int != nil)
        }
        try await Task.sleep(for: .milliseconds(100))
        for reader in readers { reader.cancel() }
        for reader in readers { _ = await reader.result }
        #expect(outcome.reads.load(ordering: .relaxed) > 1000)
        let failures = outcome.failures.withLock { $0 }
        #expect(failures.count == 0, "first failures: \(failures.prefix(3))")
        await sidecar.stop()
    }

    @Test func aHungRedisTimesOutInsteadOfHanging() async throws {
        let redis = try RedisServer()
        let sidecar = try await SidecarFixture(redis: .standalone(redis.address)) { $0.redisTimeoutMilliseconds = 300 }
        let client = try await sidecar.client()
        #expect(try await client.send("GET", "k") == .null)
        redis.process.pause()
        defer { redis.process.resume() }
        let started = ContinuousClock.now
        let reply = try await client.send("GET", "k")
        #expect(ContinuousClock.now - started < .seconds(2))
        #expect(reply.string?.contains("no reply within 300 ms") == true, "\(reply)")
        redis.process.resume()
        #expect(try await eventually { try await client.send("GET", "k") == .null })
        await sidecar.stop()
    }

    @Test func adminEndpointsReportHealthAndMetrics() async throws {
        let redis = try RedisServer()
        let sidecar = try await SidecarFixture(redis: .standalone(redis.address))
        let client = try await sidecar.client()
        _ = try await client.send("GET", "a")
        _ = try await client.send("SET", "a", "b")
        _ = try await client.send("NOPE")
        #expect(try await sidecar.admin("/healthz") == (200, "ok\n"))
        #expect(try await sidecar.admin("/readyz").0 == 200)
        let (status, metrics) = try await sidecar.admin("/metrics")
        #expect(status == 200)
        for line in [
            "pylon_commands_total{command=\"get\",class=\"read\"} 1",
            "pylon_commands_total{command=\"set\",class=\"write\"} 1",
            "pylon_commands_total{command=\"unknown\",class=\"error\"} 1",
            "pylon_client_connections 1",
            "pylon_backend_up{node=\"\(redis.address)\"} 1",
            "pylon_command_duration_seconds_count{class=\"read\"} 1",
        ] {
            #expect(metrics.contains(line), "missing \(line)")
        }
        #expect(try await sidecar.admin("/nope").0 == 404)
        await sidecar.stop()
    }

    @Test func gracefulShutdownFinishesInFlightReplies() async throws {
        let redis = try RedisServer()
        _ = try await redis.client().send("SET", "k", "v")
        let sidecar = try await SidecarFixture(redis: .standalone(redis.address))
        let client = try await sidecar.client()
        // Hold the replies in Redis while the sidecar is asked to stop.
        redis.process.pause()
        var batch = ByteBuffer()
        for _ in 0..<500 { batch.writeRESPCommand([ByteBuffer(string: "GET"), ByteBuffer(string: "k")]) }
        async let replies = client.sendRaw(batch, replies: 500)
        #expect(try await eventually { sidecar.sidecar.stats.pendingReplies.load(ordering: .relaxed) == 500 })
        async let stopped: Void = sidecar.stop()
        try await Task.sleep(for: .milliseconds(200))
        redis.process.resume()
        await stopped
        #expect(try await replies.allSatisfy { $0 == .bulk("v") })
        // No longer accepting.
        await #expect(throws: (any Error).self) { try await sidecar.client() }
    }
}
