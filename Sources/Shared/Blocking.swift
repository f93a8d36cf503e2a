import Foundation
import Glibc
import NIOPosix

/// The one way Pylon runs blocking calls — librdkafka's (admin requests, consumer polls, a
/// producer's delivery reports), libcurl's transfers, getaddrinfo, a blocking Redis socket —
/// never on Swift's cooperative pool (a blocked cooperative thread stalls every task behind it;
/// there are as many as cores) nor on an event loop (it stalls every connection of the loop).
///
/// - `run`: a call that returns (a request, a lookup) on a pool of threads kept for blocking
///   work, the caller suspended meanwhile.
/// - `thread`: a loop that blocks for as long as its part runs (the applier, a producer's
///   delivery-report poller, a watch) on a named thread of its own.
public enum Blocking {
    /// Threads for blocking calls that return. Sized for calls that wait on the network, not
    /// for CPU: an operator's reconcilers may each wait seconds on an unreachable Kafka while the
    /// others keep calling the API server.
    static let pool: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 16)
        pool.start()
        return pool
    }()

    /// Runs `work` on the blocking pool and answers its result; the caller suspends meanwhile.
    public static func run<Value: Sendable>(_ work: @escaping @Sendable () throws -> Value) async throws -> Value {
        try await self.pool.runIfActive(work)
    }

    /// Starts `body` on a thread of its own named `name` (as `top -H`, perf and debuggers show
    /// it; Linux keeps 15 characters).
    public static func thread(named name: String, _ body: @escaping @Sendable () -> Void) {
        // Named from the thread itself, for the system (top -H, perf): Foundation's
        // `Thread.name` stays Foundation's own, and Swift sees no pthread_setname_np.
        Thread {
            let fd = open("/proc/thread-self/comm", O_WRONLY)
            if fd >= 0 {
                _ = String(name.utf8.prefix(15))!.withCString { write(fd, $0, strlen($0)) }
                close(fd)
            }
            body()
        }.start()
    }
}
