import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A server process started for a test and stopped (SIGKILL if it must) when the test is done.
final class LocalProcess: @unchecked Sendable {
    // @unchecked: `process` is only touched from start() and stop(), which tests call in sequence.
    let process = Process()
    let name: String

    init(_ executable: String, _ arguments: [String], name: String, log: URL? = nil) throws {
        self.name = name
        self.process.executableURL = URL(fileURLWithPath: executable.hasPrefix("/") ? executable : try Self.which(executable))
        self.process.arguments = arguments
        if let log {
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
            let handle = try FileHandle(forWritingTo: log)
            self.process.standardOutput = handle
            self.process.standardError = handle
        } else {
            self.process.standardOutput = FileHandle.nullDevice
            self.process.standardError = FileHandle.nullDevice
        }
        try self.process.run()
        Self.register(self.process.processIdentifier)
    }

    // MARK: - No server outlives the test process

    private static let live = Mutex<Set<Int32>>([])
    private static let atExit: Void = { atexit { LocalProcess.killAll() } }()

    private static func register(_ pid: Int32) {
        _ = Self.atExit
        Self.live.withLock { _ = $0.insert(pid) }
    }

    /// Kills every server still running when the test process exits (a test that failed half-way
    /// may leave its fixtures referenced until then).
    static func killAll() {
        for pid in Self.live.withLock({ $0 }) { kill(pid, SIGKILL) }
    }

    var isRunning: Bool { self.process.isRunning }

    func stop(signal: Int32 = SIGTERM) {
        guard self.process.isRunning else { return }
        kill(self.process.processIdentifier, signal)
        let deadline = Date().addingTimeInterval(5)
        while self.process.isRunning, Date() < deadline { usleep(10_000) }
        if self.process.isRunning { kill(self.process.processIdentifier, SIGKILL) }
        self.process.waitUntilExit()
        Self.live.withLock { _ = $0.remove(self.process.processIdentifier) }
    }

    /// Suspends or resumes the process (a Redis that accepts bytes but never answers).
    /// `pause` returns once every thread has stopped: SIGSTOP stops the others only when the
    /// thread it woke gets a CPU, and on a loaded machine they would answer a request sent
    /// meanwhile (in CI a broker answered a ListOffsets sent after kill had returned).
    func pause() {
        let pid = self.process.processIdentifier
        kill(pid, SIGSTOP)
        let deadline = Date().addingTimeInterval(5)
        while !Self.allThreadsStopped(pid), Date() < deadline { usleep(1_000) }
    }
    func resume() { kill(self.process.processIdentifier, SIGCONT) }

    /// Whether /proc shows every thread of `pid` stopped (state T).
    private static func allThreadsStopped(_ pid: Int32) -> Bool {
        guard let threads = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") else { return true }
        return threads.allSatisfy { thread in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(thread)/stat", encoding: .utf8),
                  let end = stat.lastIndex(of: ")") else { return true }
            // The state follows the command name, which is in parentheses and may hold spaces.
            return stat[stat.index(after: end)...].trimmingCharacters(in: .whitespaces).first == "T"
        }
    }

    deinit { self.stop(signal: SIGKILL) }

    /// The executable `name` as the shell would find it (PATH first: `python3` is the one
    /// `make deps` installed packages for), else in the system's folders.
    static func which(_ name: String) throws -> String {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        for directory in path + ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin"] {
            let path = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        throw HarnessError("\(name) is not installed; run `make deps`")
    }
}

struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

enum Ports {
    /// A loopback port nobody listens on now (the kernel picks it; we release it for the server).
    static func free() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else { throw HarnessError("cannot find a free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// Waits until something accepts connections on the port.
    static func waitUntilOpen(_ port: Int, timeout: TimeInterval = 10) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            close(fd)
            if connected { return }
            usleep(20_000)
        }
        throw HarnessError("nothing listens on port \(port) after \(timeout) s")
    }
}

/// A scratch directory removed when the test is done.
final class ScratchDirectory: Sendable {
    let url: URL
    init() throws {
        self.url = FileManager.default.temporaryDirectory.appendingPathComponent("pylon-test-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: self.url, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(at: self.url) }
}

/// Polls `condition` until it holds or the timeout passes.
func eventually(timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if (try? await condition()) == true { return true }
        try await Task.sleep(for: .milliseconds(50))
    }
    return try await condition()
}

/// Runs a command to completion: its exit status and what it printed (stdout and stderr).
func runToCompletion(_ executable: String, _ arguments: [String], input: String? = nil) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable.hasPrefix("/") ? executable : try LocalProcess.which(executable))
    process.arguments = arguments
    let output = Pipe()
    process.standardOutput = output
    process.standardError = output
    let stdin = Pipe()
    process.standardInput = stdin
    try process.run()
    if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
    try stdin.fileHandleForWriting.close()
    let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    return (process.terminationStatus, text)
}
