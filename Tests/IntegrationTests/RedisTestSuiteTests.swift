import Foundation
import Testing

/// A fast subset of Redis's own Tcl test suite (`make compat` runs the rest) through a sidecar of
/// a running world at the default consistency level: every test of these units passes, as it
/// does against redis-server.
@Suite("Redis's own test suite through a sidecar", .serialized, .timeLimit(.minutes(5)))
struct RedisTestSuiteTests {
    static let units = ["unit/type/incr", "unit/keyspace", "unit/expire"]

    @Test(arguments: Self.units)
    func everyTestOfTheUnitPasses(unit: String) async throws {
        let install = try runToCompletion(HelmChartTests.repository.appendingPathComponent("scripts/install-redis-tests.sh").path, [])
        try #require(install.status == 0, "\(install.output)")
        let suite = install.output.split(separator: "\n").last.map(String.init) ?? ""
        let world = try await WorldFixture(racks: 2)
        defer { Task { await world.stop() } }
        let tclsh = try LocalProcess.which("tclsh")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tclsh)
        process.currentDirectoryURL = URL(fileURLWithPath: suite)
        process.arguments = [
            // --baseport: the suite's test server takes a port below it (and checks port + 10000).
            "tests/test_helper.tcl", "--host", "127.0.0.1", "--port", "\(world.racks[0].sidecar.address.port)", "--singledb", "--durable",
            "--ignore-encoding", "--baseport", "\(Int.random(in: 20_000...40_000))", "--tags", "-needs:debug", "--tags", "-needs:repl", "--single", unit,
        ]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .replacingOccurrences(of: "\u{1B}\\[[0-9;]*m", with: "", options: .regularExpression)
        process.waitUntilExit()
        let lines = text.split(separator: "\n")
        let passed = lines.filter { $0.hasPrefix("[ok]") }.count
        let failed = lines.filter { $0.hasPrefix("[err]") || $0.hasPrefix("[exception]") || $0.hasPrefix("[TIMEOUT]") }
        #expect(lines.contains { $0.contains("All tests passed") }, "\(unit): \(failed.prefix(5)) \(lines.suffix(15).joined(separator: "\n"))")
        #expect(failed.isEmpty && passed >= 9, "\(unit): \(passed) passed; \(failed.prefix(5))")
        // Nothing of Pylon's bookkeeping was lost to the suite's FLUSHALLs and DELs.
        #expect(try await world.waitUntilApplied())
        #expect(try await WorldFixture.snapshot(world.racks[0].redis) == WorldFixture.snapshot(world.racks[1].redis))
    }
}
