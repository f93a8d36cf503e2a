import Foundation

/// A real Kafka-protocol broker (noida-db, from PyPI) on a free loopback port, for one test.
final class KafkaBroker: Sendable {
    let port: Int
    let directory: ScratchDirectory
    let process: LocalProcess
    var bootstrap: String { "127.0.0.1:\(self.port)" }

    /// A broker on a free port, or — to restart one — on the port and data of a stopped one.
    init(port: Int? = nil, directory: ScratchDirectory? = nil) throws {
        self.port = try port ?? Ports.free()
        self.directory = try directory ?? ScratchDirectory()
        self.process = try LocalProcess(
            try Self.executable(), ["start", "--only", "kafka", "--kafka-port", "\(self.port)", "--data-dir", self.directory.url.path],
            name: "noida-db:\(self.port)", log: self.directory.url.appendingPathComponent("broker.log")
        )
        try Ports.waitUntilOpen(self.port)
    }

    /// The broker binary inside the `noida_db` Python package. Started directly: its `noida-db`
    /// console script is a Python wrapper (behind a pyenv shim, a shell script too) whose broker
    /// child would outlive a stopped wrapper.
    static func executable() throws -> String {
        if let path = ProcessInfo.processInfo.environment["NOIDA_DB"] { return path }
        let python = Process()
        python.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        python.arguments = ["python3", "-c", "import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), 'noida-db'))"]
        let output = Pipe()
        python.standardOutput = output
        python.standardError = FileHandle.nullDevice
        try python.run()
        python.waitUntilExit()
        let path = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard python.terminationStatus == 0, FileManager.default.isExecutableFile(atPath: path) else {
            throw HarnessError("noida-db is not installed; run `make deps` (pip install noida-db==0.2.3)")
        }
        return path
    }
}
