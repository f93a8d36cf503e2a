import Logging
import Synchronization
import Testing

@testable import PylonSidecar

/// The watchdog's two outcomes, without a process to end: a stuck stop cannot be made on
/// purpose, so `onStuck` records instead of exiting.
@Suite("ShutdownWatchdog")
struct ShutdownWatchdogTests {
    /// Log lines, kept for the test.
    final class Lines: Sendable {
        let lines = Mutex<[String]>([])
    }

    struct Recorder: LogHandler {
        let lines: Lines
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { self.metadata[key] }
            set { self.metadata[key] = newValue }
        }
        func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String, function: String, line: UInt) {
            let step = metadata?["step"].map { "\($0)" } ?? ""
            self.lines.lines.withLock { $0.append("\(level) \(message) \(step)") }
        }
    }

    @Test func aStopStillRunningAtTheLimitIsEndedNamingItsStep() async throws {
        let lines = Lines()
        let stuck = Atomic<Int>(0)
        let watchdog = ShutdownWatchdog(limit: .milliseconds(100), logger: Logger(label: "test") { _ in Recorder(lines: lines) }) {
            stuck.add(1, ordering: .relaxed)
        }
        watchdog.enter("stopping the applier")
        let start = ContinuousClock.now
        while stuck.load(ordering: .relaxed) == 0, ContinuousClock.now - start < .seconds(5) { try await Task.sleep(for: .milliseconds(10)) }
        #expect(stuck.load(ordering: .relaxed) == 1)
        #expect(lines.lines.withLock { $0 } == ["critical the sidecar did not stop in time: exiting stopping the applier"])
    }

    @Test func aStopThatFinishesInTimeIsLeftAlone() async throws {
        let stuck = Atomic<Int>(0)
        let watchdog = ShutdownWatchdog(limit: .milliseconds(200), logger: Logger(label: "test")) { stuck.add(1, ordering: .relaxed) }
        watchdog.enter("closing the listening socket")
        watchdog.finished()
        try await Task.sleep(for: .milliseconds(500))
        #expect(stuck.load(ordering: .relaxed) == 0)
    }
}
