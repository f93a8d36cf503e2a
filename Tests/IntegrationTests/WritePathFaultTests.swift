import Foundation
import NIOCore
import Synchronization
import Testing

@testable import PylonSidecar

/// The write path when things fail: appliers killed, a broker restarted, a Redis that comes
/// back empty or stalls. Nothing acknowledged is lost, nothing is applied twice, and nothing
/// refused appears later.
@Suite("Write path under failures", .serialized, .timeLimit(.minutes(3)))
struct WritePathFaultTests {
    @Test func everyAcknowledgedIncrIsAppliedExactlyOnceWhileAnApplierIsKilledRepeatedly() async throws {
        let broker = try KafkaBroker()
        let world = try await WorldFixture(racks: 1, broker: broker)
        defer { Task { await world.stop() } }
        // A second sidecar in rack 0 (joining once the first applies every partition, so a
        // rebalance moves some to it), and rack 1 served by the executable, which gets SIGKILLed.
        #expect(try await eventually { world.racks[0].sidecar.sidecar.applier?.partitions.count == world.partitions })
        let second = try await SidecarFixture(redis: .standalone(world.racks[0].redis.address)) {
            WorldFixture.join(&$0, world: world.name, rack: "rack0", broker: broker, partitions: world.partitions)
        }
        defer { Task { await second.stop() } }
        let redisB = try RedisServer()
        let scratch = try ScratchDirectory()
        let startRackB: @Sendable () throws -> LocalProcess = {
            try LocalProcess(ExecutableTests.executable.path, [
                "--listen", "127.0.0.1:\(try Ports.free())", "--admin", "127.0.0.1:\(try Ports.free())",
                "--redis", "redis://\(redisB.address)", "--kafka-brokers", broker.bootstrap, "--world", world.name, "--rack", "rack1",
                "--sidecar-name", "rack1-sidecar0",
            ] + WorldFixture.fastRebalances.sorted { $0.key < $1.key }.flatMap { ["--kafka-property", "\($0.key)=\($0.value)"] }, name: "pylon-sidecar rack1", log: scratch.url.appendingPathComponent("rack1.log"))
        }
        let rackB = Shared(try startRackB())
        let counters = (0..<4).map { "counter:\($0)" }
        let acknowledged = Shared(0)
        let errors = Shared(0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, sidecar) in [world.racks[0].sidecar, second, world.racks[0].sidecar, second].enumerated() {
                group.addTask {
                    let client = try await sidecar.client()
                    for _ in 0..<25 {  // 4 writers × 25 pipelines × 100 INCRs = 10,000
                        var request = ByteBuffer()
                        for i in 0..<100 { request.writeRESPCommand([ByteBuffer(string: "INCR"), ByteBuffer(string: counters[(i + index) % 4])]) }
                        for reply in try await client.sendRaw(request, replies: 100) {
                            if case .integer = reply { acknowledged.withLock { $0 += 1 } } else { errors.withLock { $0 += 1 } }
                        }
                    }
                }
            }
            group.addTask {
                for _ in 0..<3 {
                    try await Task.sleep(for: .milliseconds(600))
                    let old = rackB.withLock { $0 }
                    old.stop(signal: SIGKILL)
                    let fresh = try startRackB()
                    rackB.withLock { $0 = fresh }
                }
            }
            try await group.waitForAll()
        }
        #expect(errors.withLock { $0 } == 0)
        #expect(acknowledged.withLock { $0 } == 10_000)
        for redis in [world.racks[0].redis, redisB] {
            let client = try await redis.client()
            let converged = try await eventually(timeout: .seconds(90)) {
                var sum = 0
                for counter in counters { sum += try await client.send("GET", counter).int ?? 0 }
                return sum == 10_000
            }
            var values: [Int] = []
            for counter in counters { values.append(try await client.send("GET", counter).int ?? 0) }
            #expect(converged, "counters on \(redis.address): \(values), expected a sum of 10000")
            #expect(values == [2500, 2500, 2500, 2500])
        }
        rackB.withLock { $0.stop() }
        // Rack 0's two sidecars split the partitions; each exports the lag of its own only.
        var exported: [[String]] = []
        for sidecar in [world.racks[0].sidecar, second] {
            let (_, metrics) = try await sidecar.admin("/metrics")
            exported.append(metrics.split(separator: "\n").filter { $0.hasPrefix("pylon_applier_lag_ops{") }.map { String($0.split(separator: " ")[0]) })
        }
        #expect(exported[0].count + exported[1].count == world.partitions, "\(exported)")
        #expect(Set(exported[0]).isDisjoint(with: exported[1]), "\(exported)")
    }

    @Test func writesRefusedWhileTheBrokerIsDownNeverAppearAndNothingAcknowledgedIsLost() async throws {
        let broker = try KafkaBroker()
        let world = try await WorldFixture(racks: 2, broker: broker) { $0.writeTimeoutMilliseconds = 1000 }
        defer { Task { await world.stop() } }
        let client = try await world.racks[0].sidecar.client()
        for i in 0..<50 { #expect(try await client.send("SET", "before:\(i)", "\(i)") == .simple("OK")) }
        broker.process.stop()
        for i in 0..<5 {
            let started = ContinuousClock.now
            let reply = try await client.send("SET", "refused:\(i)", "x")
            #expect(reply.isError && reply.string?.contains("not applied anywhere") == true, "\(reply)")
            #expect(ContinuousClock.now - started < .seconds(5))
        }
        #expect(try await client.send("GET", "before:1") == .bulk("1"), "reads go on while the log is away")
        let restarted = try KafkaBroker(port: broker.port, directory: broker.directory)
        #expect(try await eventually(timeout: .seconds(30)) { try await client.send("SET", "after:0", "0") == .simple("OK") })
        for i in 1..<50 { #expect(try await client.send("SET", "after:\(i)", "\(i)") == .simple("OK")) }
        #expect(try await world.waitUntilApplied())
        for rack in world.racks {
            let redis = try await rack.redis.client()
            for i in 0..<50 {
                #expect(try await redis.send("GET", "before:\(i)") == .bulk("\(i)"))
                #expect(try await redis.send("GET", "after:\(i)") == .bulk("\(i)"))
            }
            #expect(try await redis.send("KEYS", "refused:*") == .array([]))
        }
        withExtendedLifetime(restarted) {}
    }

    /// A broker blip shorter than the group session: the restarted broker makes every member
    /// rejoin at once, while answers to requests sent before are still late. Each rack restarts
    /// its partitions at its checkpoints and applies every op after them (before the fix, one
    /// of eight runs left a rack's partitions at the log's end, the ops between never applied).
    @Test func aBrokerBackWithinTheSessionTimeoutLeavesNoRackBehind() async throws {
        let broker = try KafkaBroker()
        let world = try await WorldFixture(racks: 2, broker: broker)
        defer { Task { await world.stop() } }
        let client = try await world.racks[0].sidecar.client()
        for i in 0..<50 { #expect(try await client.send("SET", "before:\(i)", "\(i)") == .simple("OK")) }
        broker.process.stop()
        try await Task.sleep(for: .seconds(3))
        let restarted = try KafkaBroker(port: broker.port, directory: broker.directory)
        #expect(try await eventually(timeout: .seconds(30)) { try await client.send("SET", "after:0", "0") == .simple("OK") })
        for i in 1..<50 { #expect(try await client.send("SET", "after:\(i)", "\(i)") == .simple("OK")) }
        #expect(try await world.waitUntilApplied(timeout: .seconds(30)))
        for rack in world.racks {
            let redis = try await rack.redis.client()
            for i in 0..<50 { #expect(try await redis.send("GET", "after:\(i)") == .bulk("\(i)"), "\(rack.name)") }
        }
        withExtendedLifetime(restarted) {}
    }

    @Test func aRackWhoseRedisComesBackEmptyReplaysTheLogAndSaysSo() async throws {
        let world = try await WorldFixture(racks: 2)
        defer { Task { await world.stop() } }
        let client = try await world.racks[0].sidecar.client()
        for i in 0..<100 { _ = try await client.send("RPUSH", "list:\(i % 10)", "\(i)") }
        #expect(try await world.waitUntilApplied())
        let rack = world.racks[1]
        let replaysBefore = rack.sidecar.sidecar.applier!.stats[.replay]
        rack.redis.stop()
        let empty = try RedisServer(port: rack.redis.port)
        for i in 100..<120 { _ = try await client.send("RPUSH", "list:\(i % 10)", "\(i)") }
        #expect(try await world.waitUntilApplied())
        let a = try await WorldFixture.snapshot(world.racks[0].redis)
        let b = try await WorldFixture.snapshot(empty)
        #expect(a.count == 10)
        #expect(a == b)
        #expect(rack.sidecar.sidecar.applier!.stats[.replay] >= replaysBefore + 1)
        let (_, metrics) = try await rack.sidecar.admin("/metrics")
        // Every outcome's counter is exported from the start: the replay must be counted.
        let replays = metrics.split(separator: "\n").first { $0.hasPrefix(#"pylon_applier_events_total{outcome="replay"}"#) }
            .flatMap { Double($0.split(separator: " ").last ?? "") }
        #expect((replays ?? 0) >= 1, "\(metrics)")
    }

    @Test func aRackLoadedUpToItsCatchUpOffsetsAppliesOnlyWhatFollows() async throws {
        let world = try await WorldFixture(racks: 1, partitions: 1)
        defer { Task { await world.stop() } }
        let client = try await world.racks[0].sidecar.client()
        for _ in 0..<10 { _ = try await client.send("INCR", "counter") }  // offsets 0…9
        #expect(try await world.waitUntilApplied())
        // A new rack whose Redis was loaded by other means with the first 6 ops (counter = 6):
        // it starts applying at offset 6, not at the log's start.
        let loaded = try RedisServer()
        _ = try await loaded.client().send("SET", "counter", "6")
        let late = try await SidecarFixture(redis: .standalone(loaded.address)) { configuration in
            WorldFixture.join(&configuration, world: world.name, rack: "late", broker: world.broker, partitions: 1)
            configuration.catchUpOffsets = [0: 6]
        }
        defer { Task { await late.stop() } }
        #expect(try await eventually { try await loaded.client().send("GET", "counter") == .bulk("10") })
        _ = try await client.send("INCR", "counter")
        #expect(try await eventually { try await loaded.client().send("GET", "counter") == .bulk("11") })
        #expect(try await world.racks[0].redis.client().send("GET", "counter") == .bulk("11"))
        #expect(late.sidecar.applier!.stats[.replay] == 0)
        // Restarted, the rack resumes from its own checkpoint: nothing is applied twice.
        await late.stop()
        let again = try await SidecarFixture(redis: .standalone(loaded.address)) { configuration in
            WorldFixture.join(&configuration, world: world.name, rack: "late", broker: world.broker, partitions: 1)
            configuration.catchUpOffsets = [0: 6]
        }
        defer { Task { await again.stop() } }
        _ = try await client.send("INCR", "counter")
        #expect(try await eventually { try await loaded.client().send("GET", "counter") == .bulk("12") })
        try await Task.sleep(for: .milliseconds(300))
        #expect(try await loaded.client().send("GET", "counter") == .bulk("12"))
    }

    @Test func lagIsReportedAndReadinessCanRequireIt() async throws {
        let world = try await WorldFixture(racks: 2) { $0.maxReadyLag = 0; $0.redisTimeoutMilliseconds = 500 }
        defer { Task { await world.stop() } }
        let rack = world.racks[1]
        #expect(try await eventually { rack.sidecar.sidecar.applier?.partitions.count == world.partitions })
        #expect(try await eventually { try await rack.sidecar.admin("/readyz").0 == 200 })
        rack.redis.process.pause()
        let client = try await world.racks[0].sidecar.client()
        for i in 0..<20 { _ = try await client.send("SET", "lagging:\(i)", "x") }
        #expect(try await eventually {
            let (status, body) = try await rack.sidecar.admin("/readyz")
            return status == 503 && body.contains("lags")
        })
        let info = try await rack.sidecar.client().send("PYLON", "INFO").string ?? ""
        #expect(info.contains(",lag=") && !info.split(separator: "\r\n").filter { $0.hasPrefix("partition") }.allSatisfy { $0.hasSuffix("lag=0") }, "\(info)")
        let (_, metrics) = try await rack.sidecar.admin("/metrics")
        #expect(metrics.contains("pylon_applier_lag_ops{partition="))
        rack.redis.process.resume()
        #expect(try await world.waitUntilApplied())
        #expect(try await rack.sidecar.admin("/readyz").0 == 200)
        #expect(try await rack.redis.client().send("GET", "lagging:19") == .bulk("x"))
    }
}

/// A value tasks of a test share.
final class Shared<Value: Sendable>: Sendable {
    private let storage: Mutex<Value>
    init(_ value: Value) { self.storage = Mutex(value) }
    func withLock<Result>(_ body: (inout Value) -> Result) -> Result { self.storage.withLock { body(&$0) } }
}
