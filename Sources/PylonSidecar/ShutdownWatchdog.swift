import Dispatch
import Logging
import Shared
import Synchronization

/// Bounds a sidecar's graceful stop. A stop can wait on things that went away with the machine
/// around it (a blocking call into a Kafka or a Redis that is gone, or a bug of that kind); under
/// a supervisor that waits for the process (a script, a pod without a kill deadline) it would
/// then run forever. The watchdog runs on a thread of its own (a stuck stop may hold the Swift
/// tasks and the event loops); when the stop has not finished by `limit`, it logs the step the
/// stop is in and calls `onStuck` (the process exits with status 1).
final class ShutdownWatchdog: Sendable {
    private let step = Mutex("starting")
    private let done = DispatchSemaphore(value: 0)

    init(limit: Duration, logger: Logger, onStuck: @escaping @Sendable () -> Void) {
        Blocking.thread(named: "pylon-stop-watch") { [self] in
            guard self.done.wait(timeout: .now() + .milliseconds(Int(limit.milliseconds))) == .timedOut else { return }
            logger.critical("the sidecar did not stop in time: exiting", metadata: [
                "step": "\(self.step.withLock { $0 })", "limit-ms": "\(limit.milliseconds)",
            ])
            onStuck()
        }
    }

    /// The stop goes on with `step` (named if the watchdog fires).
    func enter(_ step: String) { self.step.withLock { $0 = step } }

    /// The stop is over: the watchdog ends.
    func finished() { self.done.signal() }
}
