import Foundation
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
