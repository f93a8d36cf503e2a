import NIOCore

/// Sends reads to the local Redis while it can serve them, and to the fastest peer sidecar of
/// another rack (within `max-peer-lag`) while it cannot: while the local Redis is unreachable,
/// or — with `max-local-lag` — while this rack is further behind the log than that. The local
/// connection keeps reconnecting in the background, so reads come back as soon as it is up.
/// One per event loop; peer connections are made on first use and kept.
final class FailoverRouter: BackendRouter {
    private let local: BackendRouter
    private let localServes: () -> Bool
    private let peers: Peers
    private let context: RedisLayerContext
    private let eventLoop: EventLoop
    private let metrics: SidecarMetrics
    /// The peers' sidecars speak both protocols too.
    private let version: RESPVersion
    private var connections: [HostPort: BackendConnection] = [:]

    init(
        local: BackendRouter, version: RESPVersion, localServes: @escaping () -> Bool, peers: Peers, context: RedisLayerContext, eventLoop: EventLoop,
        metrics: SidecarMetrics
    ) {
        self.local = local
        self.version = version
        self.localServes = localServes
        self.peers = peers
        self.context = context
        self.eventLoop = eventLoop
        self.metrics = metrics
    }

    func send(_ request: RedisRequest, command: Command, sink: ReplySink, tag: Int) {
        guard !self.localServes(), let peer = self.peers.bestForReads else {
            // Local, or no peer may serve: the local path answers (with its error when down).
            return self.local.send(request, command: command, sink: sink, tag: tag)
        }
        self.connection(to: peer).send(request.raw, sink: sink, tag: tag)
        self.metrics.failoverRead(to: peer)
    }

    private func connection(to peer: HostPort) -> BackendConnection {
        if let connection = self.connections[peer] { return connection }
        let connection = self.context.connection(to: peer, on: self.eventLoop, version: self.version)
        self.connections[peer] = connection
        return connection
    }

    func close() {
        for connection in self.connections.values { connection.close() }
        self.connections.removeAll()
    }
}
