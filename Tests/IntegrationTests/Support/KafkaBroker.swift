import Foundation

/// A real Kafka-protocol broker (noida-db, from PyPI) on a free loopback port, for one test.
final class KafkaBroker: Sendable {
    let port: Int
    let directory: ScratchDirectory
    let process: LocalProcess
    var bootstrap: String { "127.0.0.1:\(self.port)" }

    init() throws {
        self.port = try Ports.free()
        self.directory = try ScratchDirectory()
        self.process = try LocalProcess(
            try Self.executable(), ["start", "--only", "kafka", "--kafka-port", "\(self.port)", "--data-dir", self.directory.url.path],
            name: "noida-db:\(self.port)", log: self.directory.url.appendingPathComponent("broker.log")
        )
        try Ports.waitUntilOpen(self.port)
    }

    /// pip installs `noida-db` next to the Python that `make deps` used.
    static func executable() throws -> String {
        let candidates = [ProcessInfo.processInfo.environment["NOIDA_DB"], "/usr/local/bin/noida-db", "/root/.pyenv/shims/noida-db"]
            + (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { "\($0)/noida-db" }
        for case let path? in candidates where FileManager.default.isExecutableFile(atPath: path) { return path }
        throw HarnessError("noida-db is not installed; run `make deps` (pip install noida-db==0.2.3)")
    }
}
