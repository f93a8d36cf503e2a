import Synchronization

/// What every connection to Redis reports about its node: the Sendable view of the Redis layer
/// for `/readyz`, `PYLON INFO` and `/metrics`.
public final class BackendStatus: Sendable {
    /// Live connections per node, over all event loops.
    private let connections = Mutex<[HostPort: Int]>([:])
    private let onChange: @Sendable (HostPort, Bool) -> Void

    public init(onChange: @escaping @Sendable (HostPort, Bool) -> Void = { _, _ in }) {
        self.onChange = onChange
    }

    func connected(_ address: HostPort) { self.change(address, by: 1) }
    func disconnected(_ address: HostPort) { self.change(address, by: -1) }

    private func change(_ address: HostPort, by delta: Int) {
        let up = self.connections.withLock { connections -> Bool in
            connections[address, default: 0] += delta
            return connections[address]! > 0
        }
        self.onChange(address, up)
    }

    /// A node counts as up when at least one event loop holds a live connection to it.
    public func isUp(_ address: HostPort) -> Bool {
        self.connections.withLock { ($0[address] ?? 0) > 0 }
    }
}
