import Foundation
import Glibc
import Shared
import Synchronization
import Testing

/// Blocking C calls run on Pylon's own threads: many may wait at once, and none holds Swift's
/// cooperative pool (two threads on this machine) while it waits.
@Suite("Blocking calls", .timeLimit(.minutes(1)))
struct BlockingTests {
    final class Gate: Sendable {
        let arrived = Atomic<Int>(0)
        let open = DispatchSemaphore(value: 0)
    }

    @Test func manyBlockingCallsWaitAtOnceWithoutHoldingTheCooperativePool() async throws {
        let gate = Gate()
        let callers = 12
        // Each call blocks until all have started: on the cooperative pool, or on a pool as small
        // as it, this never finishes.
        let results = try await withThrowingTaskGroup(of: Int.self) { group in
            for index in 0..<callers {
                group.addTask {
                    try await Blocking.run {
                        if gate.arrived.add(1, ordering: .acquiringAndReleasing).newValue == callers {
                            for _ in 0..<callers { gate.open.signal() }
                        }
                        gate.open.wait()
                        return index
                    }
                }
            }
            // Meanwhile the cooperative pool still runs other work.
            group.addTask { await Task.yield(); return -1 }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(results.sorted() == [-1] + Array(0..<callers))
    }

    @Test func aLoopRunsOnANamedThreadOfItsOwn() async {
        // The system keeps 15 characters of a thread's name.
        // Read back as the system has it.
        let name = await withCheckedContinuation { continuation in
            Blocking.thread(named: "pylon-test-loop-long") {
                let comm = try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)
                continuation.resume(returning: comm?.trimmingCharacters(in: .newlines))
            }
        }
        #expect(name == "pylon-test-loop")
    }
}
