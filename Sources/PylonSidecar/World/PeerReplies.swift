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
    /// Where the replies other racks give are handed over, as if this rack's applier had.
    private let replies: AppliedReplies
    /// Whether this rack's Redis is reachable (its applier can apply).
    private let localReady: @Sendable () -> Bool
    /// The waits watched (`watch`), oldest first; finished ones leave lazily.
    private var watches = CircularBuffer<Watch>()
    private var checkScheduled = false

    struct Unavailable: Error {}

    /// An `applied` write's wait for the reply of its op at `position`, until `deadline`.
    final class Watch {
        let position: AppliedReplies.Position
        let deadline: NIODeadline
        /// When the reply counts as late although this rack's Redis is up.
        let late: NIODeadline
        /// The reply came, or the write stopped waiting for it: nothing more to ask.
        var done = false
        /// Another rack was asked: the reply may be theirs.
        fileprivate(set) var asked = false
        fileprivate var asking = false

        fileprivate init(position: AppliedReplies.Position, deadline: NIODeadline) {
            self.position = position
            self.deadline = deadline
            self.late = .now() + PeerReplies.lateReply
        }
    }

    /// How long a reply may take from this rack before the other racks are asked for it although
    /// this rack's Redis is up (a reply lost with an applier that stopped between applying and
    /// handing it over).
    static let lateReply = TimeAmount.seconds(2)
    /// How often the watched waits are looked at: one timer for all of them, not one per write
    /// (a timer scheduled and cancelled per write cost more than the write's hand-offs).
    static let checkInterval = TimeAmount.milliseconds(500)

    init(peers: Peers, context: RedisLayerContext, eventLoop: EventLoop, replies: AppliedReplies, localReady: @escaping @Sendable () -> Bool) {
        self.peers = peers
        self.context = context
        self.eventLoop = eventLoop
        self.replies = replies
        self.localReady = localReady
    }

    /// Watches an `applied` write's wait: its reply is asked of the other racks at once while
    /// this rack's Redis is away, else once Redis goes away or the reply is late, and again
    /// until it came (`done`) or `deadline`.
    func watch(_ position: AppliedReplies.Position, until deadline: NIODeadline) -> Watch {
        while let oldest = self.watches.first, oldest.done { self.watches.removeFirst() }
        let watch = Watch(position: position, deadline: deadline)
        self.watches.append(watch)
        if !self.localReady() { self.ask(watch) }
        if !self.checkScheduled { self.scheduleCheck() }
        return watch
    }

    private func scheduleCheck() {
        self.checkScheduled = true
        self.eventLoop.assumeIsolated().scheduleTask(in: Self.checkInterval) { self.check() }
    }

    /// Asks for the replies that are late, or for all while this rack's Redis is away, and
    /// forgets the waits that ended.
    private func check() {
        let now = NIODeadline.now()
        let localReady = self.localReady()
        self.watches.removeAll { $0.done || $0.deadline <= now }
        for watch in self.watches where !watch.asking && (!localReady || watch.late <= now) { self.ask(watch) }
        if self.watches.isEmpty { self.checkScheduled = false } else { self.scheduleCheck() }
    }

    /// Asks the other racks for a watched wait's reply and hands it over; after a failure, again
    /// shortly (its client is waiting), until the wait ends.
    private func ask(_ watch: Watch) {
        guard !watch.done, NIODeadline.now() < watch.deadline else { return }
        watch.asking = true
        watch.asked = true
        // Each ask waits below the connection's request timeout.
        let wait = TimeAmount.nanoseconds(min((watch.deadline - .now()).nanoseconds, 1_000_000_000))
        self.reply(for: watch.position, wait: wait).assumeIsolated().whenComplete { result in
            if case .success(let reply) = result {
                self.replies.deliver(reply, for: watch.position)
            } else {
                self.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(100)) { self.ask(watch) }
            }
        }
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
