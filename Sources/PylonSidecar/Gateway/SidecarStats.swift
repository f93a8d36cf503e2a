import Synchronization

/// Counters behind `PYLON INFO`: cheap atomics updated on the hot path.
public final class SidecarStats: Sendable {
    public let startedAt = ContinuousClock.now
    public let connectedClients = Atomic<Int>(0)
    public let totalConnections = Atomic<Int>(0)
    public let protocolErrors = Atomic<Int>(0)
    /// Requests read whose reply is not written yet, over all connections (graceful shutdown waits for 0).
    public let pendingReplies = Atomic<Int>(0)
    /// Commands by disposition class; `unknown` counts unknown commands and arity errors.
    public let reads = Atomic<Int>(0)
    public let writes = Atomic<Int>(0)
    public let refused = Atomic<Int>(0)
    public let ignored = Atomic<Int>(0)
    public let internalCommands = Atomic<Int>(0)
    public let unknown = Atomic<Int>(0)

    public init() {}

    func count(_ disposition: Disposition) {
        switch disposition {
        case .read: self.reads.add(1, ordering: .relaxed)
        case .write: self.writes.add(1, ordering: .relaxed)
        case .refused: self.refused.add(1, ordering: .relaxed)
        case .ignored: self.ignored.add(1, ordering: .relaxed)
        case .internal: self.internalCommands.add(1, ordering: .relaxed)
        }
    }

    public var uptimeSeconds: Int {
        Int((ContinuousClock.now - self.startedAt).components.seconds)
    }
}
