/// How the applier (and this rack's lag measurement) reaches the rack's Redis for writes: the
/// node that takes writes for a slot, every such node, and whether markers are per hash slot
/// (Redis Cluster, where a script may only touch one slot) or per partition.
struct RackRedis: Sendable {
    /// The node that takes writes for a slot (nil while unknown).
    var node: @Sendable (Int) -> HostPort?
    /// Every node that takes writes.
    var nodes: @Sendable () -> [HostPort]
    var perSlot: Bool
    /// A node answered MOVED or ASK: the slot map is stale.
    var slotsMoved: @Sendable () -> Void
}

extension RackRedis {
    /// The nodes of the backend's current map.
    init(_ backend: RedisBackend) {
        self.node = { backend.writeNode(forSlot: $0) }
        self.nodes = { backend.writeNodes }
        self.perSlot = backend is ClusterBackend
        self.slotsMoved = { (backend as? ClusterBackend)?.requestRefresh() }
    }
}
