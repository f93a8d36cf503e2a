import NIOCore

/// Asks the sidecars of the world's other racks for the reply to a write while this rack's
/// Redis is away and cannot apply it: the log gives every rack the same order, so another rack's
/// reply is the reply this one would give (the seed's "a Pylon that can't talk to its local
/// Redis can still write for the world"). Each asked sidecar answers `PYLON REPLY` when its
/// applier applies the op's partition, and refuses otherwise; the first answer wins.
/// One per event loop (loop-bound); connections are made on first use and kept.
final class PeerReplies {
    private let peers: Peers
    private let context: RedisLayerContext
    private let eventLoop: EventLoop
    private var connections: [HostPort: BackendConnection] = [:]

    struct Unavailable: Error {}

    init(peers: Peers, context: RedisLayerContext, eventLoop: EventLoop) {
        self.peers = peers
        self.context = context
        self.eventLoop = eventLoop
    }

    /// The reply another rack gave the op at `position`, waiting at most `wait` for it there
    /// (kept below the connection's request timeout); fails when no sidecar of another rack
    /// that applies the partition answers.
    func reply(for position: AppliedReplies.Position, wait: TimeAmount) -> EventLoopFuture<ByteBuffer> {
        let candidates = self.peers.all.filter { $0.up && $0.redisReady && $0.rack != nil && $0.rack != self.peers.identity.rack }.map(\.address)
        guard !candidates.isEmpty else { return self.eventLoop.makeFailedFuture(Unavailable()) }
        let request = RedisRequest(strings: ["PYLON", "REPLY", position.description, String(wait.nanoseconds / 1_000_000)]).raw
        let first = FirstReply(asked: candidates.count, promise: self.eventLoop.makePromise())
        for (index, peer) in candidates.enumerated() { self.connection(to: peer).send(request, sink: first, tag: index) }
        return first.promise.futureResult
    }

    private func connection(to peer: HostPort) -> BackendConnection {
        if let connection = self.connections[peer] { return connection }
        let connection = self.context.connection(to: peer, on: self.eventLoop)
        self.connections[peer] = connection
        return connection
    }

    func close() {
        for connection in self.connections.values { connection.close() }
        self.connections.removeAll()
    }
}

/// Takes the first `PYLON REPLY` answer that carries a reply (a bulk string holding it, raw).
private final class FirstReply: ReplySink {
    private var remaining: Int
    private var answered = false
    let promise: EventLoopPromise<ByteBuffer>
    var flushRequested = false

    init(asked: Int, promise: EventLoopPromise<ByteBuffer>) {
        self.remaining = asked
        self.promise = promise
    }

    func deliver(_ reply: ByteBuffer, tag: Int) {
        self.remaining -= 1
        var bytes = reply
        if !self.answered, case .bulkString(let carried?) = try? RESPValue.decode(from: &bytes) {
            self.answered = true
            self.promise.succeed(carried)
        } else if !self.answered, self.remaining == 0 {
            self.answered = true
            self.promise.fail(PeerReplies.Unavailable())
        }
    }

    func flushReplies() {}
}
