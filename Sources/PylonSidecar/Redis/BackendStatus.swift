import Synchronization

/// What every connection to Redis reports about its node: the Sendable view of the Redis layer
/// for `/readyz`, `PYLON INFO` and `/metrics`.
public final class BackendStatus: Sendable {
    public struct Node: Sendable, Equatable {
        public var connections: Int = 0
        public var lastError: String?
    }

    private let nodes = Mutex<[HostPort: Node]>([:])
    private let onChange: @Sendable (HostPort, Bool) -> Void

    public init(onChange: @escaping @Sendable (HostPort, Bool) -> Void = { _, _ in }) {
        self.onChange = onChange
    }

    func connected(_ address: HostPort) { self.change(address, by: 1, error: nil) }
    func disconnected(_ address: HostPort, error: String?) { self.change(address, by: -1, error: error) }
    func connectFailed(_ address: HostPort, error: String) { self.change(address, by: 0, error: error) }

    private func change(_ address: HostPort, by delta: Int, error: String?) {
        let up = self.nodes.withLock { nodes -> Bool in
            var node = nodes[address] ?? Node()
            node.connections += delta
            if let error { node.lastError = error }
            nodes[address] = node
            return node.connections > 0
        }
        self.onChange(address, up)
    }

    /// A node counts as up when at least one event loop holds a live connection to it.
    public func isUp(_ address: HostPort) -> Bool {
        self.nodes.withLock { ($0[address]?.connections ?? 0) > 0 }
    }

    public var snapshot: [HostPort: Node] { self.nodes.withLock { $0 } }
}
