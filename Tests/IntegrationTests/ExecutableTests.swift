import Foundation
#if canImport(Glibc)
import Glibc
#endif
import PylonSidecar
import Testing

/// The `pylon-sidecar` executable as users run it: flags, a YAML file, logs, signals.
@Suite("pylon-sidecar executable", .serialized, .timeLimit(.minutes(3)))
struct ExecutableTests {
    /// The executable SwiftPM built beside the test bundle.
    static var executable: URL {
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while !FileManager.default.fileExists(atPath: directory.appendingPathComponent("pylon-sidecar").path), directory.path != "/" {
            directory = directory.deletingLastPathComponent()
        }
        return directory.appendingPathComponent("pylon-sidecar")
    }

    func run(_ arguments: [String]) throws -> (process: Process, stderr: Pipe) {
        let process = Process()
        process.executableURL = Self.executable
        process.arguments = arguments
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return (process, stderr)
    }

    @Test func servesFromAConfigFileLogsJSONAndStopsOnSIGTERM() async throws {
        let redis = try RedisServer()
        _ = try await redis.client().send("SET", "k", "from-redis")
        let scratch = try ScratchDirectory()
        let (port, admin) = (try Ports.free(), try Ports.free())
        let config = scratch.url.appendingPathComponent("sidecar.yml")
        try """
        listen: 127.0.0.1:1
        redis: redis://\(redis.address)
        admin: 127.0.0.1:\(admin)
        log-format: json
        rack: rack-from-file
        """.write(to: config, atomically: true, encoding: .utf8)
        // The flag wins over the file's `listen`.
        let (process, stderr) = try self.run(["--config", config.path, "--listen", "127.0.0.1:\(port)"])
        try Ports.waitUntilOpen(port)
        try Ports.waitUntilOpen(admin)
        let client = try await RedisClient.connect(to: HostPort(host: "127.0.0.1", port: port))
        #expect(try await client.send("GET", "k") == .bulk("from-redis"))
        #expect(try await client.send("PYLON", "INFO").string?.contains("rack:rack-from-file") == true)
        process.terminate()  // SIGTERM
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let logs = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let lines = logs.split(separator: "\n").filter { $0.hasPrefix("{") }
        #expect(lines.contains { $0.contains("\"msg\":\"pylon-sidecar listening\"") }, "\(logs)")
        #expect(lines.contains { $0.contains("\"msg\":\"pylon-sidecar stopped\"") }, "\(logs)")
        for line in lines {
            #expect((try? JSONSerialization.jsonObject(with: Data(line.utf8))) != nil, "not JSON: \(line)")
        }
    }

    /// The machine around a sidecar shutting down: its Redis is killed and its broker stops
    /// answering, then the sidecar gets SIGTERM. It still stops by itself, soon after its grace
    /// period (its applier is retrying Redis, its producer and consumer have no broker), with
    /// status 0 — not after `stop-timeout-ms`, whose watchdog would end it with status 1. The
    /// topic has 64 partitions: the rack-progress thread, once reading each partition's end
    /// with a call that waits out its socket timeout on such a broker, held the stop. With a bound
    /// shorter than any stop (1 ms, no grace), the watchdog ends it, naming the step it was in.
    @Test(arguments: [(timeout: "20000", bounded: false), (timeout: "1", bounded: true)])
    func stopsOnSIGTERMAfterItsRedisAndBrokerAreGone(timeout: String, bounded: Bool) async throws {
        let broker = try KafkaBroker()
        let redis = try RedisServer()
        let port = try Ports.free()
        let (process, stderr) = try self.run([
            "--listen", "127.0.0.1:\(port)", "--admin", "127.0.0.1:\(try Ports.free())", "--redis", "redis://\(redis.address)",
            "--kafka-brokers", broker.bootstrap, "--world", "gone", "--rack", "r1", "--partitions", "64", "--shutdown-grace-ms", bounded ? "0" : "1000", "--stop-timeout-ms", timeout,
        ])
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        try Ports.waitUntilOpen(port, timeout: 30)
        let client = try await RedisClient.connect(to: HostPort(host: "127.0.0.1", port: port))
        // Applied: the applier runs and has the partition of `k`.
        #expect(try await client.send("INCR", "k") == .integer(1))
        redis.process.stop(signal: SIGKILL)
        // A broker that stops answering (a network partition) rather than one that refuses
        // connections: every call to it takes its whole timeout.
        kill(broker.process.process.processIdentifier, SIGSTOP)
        defer { kill(broker.process.process.processIdentifier, SIGCONT) }
        try await Task.sleep(for: .seconds(2))  // a round of rack-progress readings is under way
        process.terminate()
        let signalled = ContinuousClock.now
        while process.isRunning, ContinuousClock.now - signalled < .seconds(30) { try await Task.sleep(for: .milliseconds(50)) }
        let took = ContinuousClock.now - signalled
        #expect(!process.isRunning, "still running 30 s after SIGTERM")
        #expect(took < .seconds(15), "took \(took)")
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        let logs = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        if bounded {
            #expect(process.terminationStatus == 1, "\(logs.suffix(3000))")
            #expect(logs.contains("the sidecar did not stop in time: exiting") && logs.contains("step="), "\(logs.suffix(3000))")
        } else {
            #expect(process.terminationStatus == 0, "\(logs.suffix(3000))")
            #expect(logs.contains("pylon-sidecar stopped"), "\(logs.suffix(3000))")
        }
    }

    @Test(arguments: [
        (["--listen", "nonsense"], "'listen': expected HOST:PORT, got 'nonsense'"),
        (["--redis", "http://x:1"], "'redis'"),
        (["--read-from", "closest"], "'read-from'"),
        (["--config", "/nonexistent.yml"], "cannot read '/nonexistent.yml'"),
    ])
    func refusesBadConfigurationNamingTheKey(arguments: [String], message: String) throws {
        let (process, stderr) = try self.run(arguments)
        process.waitUntilExit()
        #expect(process.terminationStatus != 0)
        let output = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(output.contains(message), "\(output)")
    }
}
