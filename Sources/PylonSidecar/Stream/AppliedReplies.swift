import Logging
import NIOCore
import Synchronization

/// Where writes with `applied` consistency wait for their real reply (INCR's new value, SET NX's
/// OK or nil). The rack's applier of the op's partition hands each reply an origin asked for
/// over: in-process when the origin is this sidecar, otherwise by `PUBLISH` on the origin's
/// channel in the rack's Redis, which every sidecar with a world subscribes to.
///
/// A reply may arrive before its waiter (the applier can be quicker than Kafka's acknowledgement
/// reaching the gateway): it is kept for `keepEarly`.
final class AppliedReplies: Sendable {
    /// Where an op is in the log.
    struct Position: Hashable, Sendable, CustomStringConvertible {
        var partition: Int32
        var offset: Int64
        var description: String { "\(self.partition):\(self.offset)" }
    }

    /// The reply did not come in time.
    struct Timeout: Error {}

    /// The channel a sidecar's replies are published on.
    static func channel(for sidecar: String) -> String { "pylon:replies:\(sidecar)" }

    private struct State {
        var waiting: [Position: EventLoopPromise<ByteBuffer>] = [:]
        /// Every waiter's deadline, oldest first: one timeout for all keeps them in order, so one
        /// timer at the oldest deadline serves them all (a timer per write, scheduled and
        /// cancelled, cost more than the write's own hand-offs). Answered waiters leave lazily.
        var deadlines = CircularBuffer<(position: Position, deadline: NIODeadline)>()
        var sweepScheduled = false
        var early: [Position: (reply: ByteBuffer, at: ContinuousClock.Instant)] = [:]
    }

    private let state = Mutex(State())
    /// How long a waiter waits for its reply (`applied-timeout-ms`).
    let timeout: TimeAmount
    private let keepEarly = Duration.seconds(30)
    private let subscription = Mutex<(task: Task<Void, Never>?, client: RedisClient?)>((nil, nil))

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    /// The reply of the op at `position`, or `Timeout` after `timeout`.
    func reply(for position: Position, on eventLoop: EventLoop) -> EventLoopFuture<ByteBuffer> {
        let promise = eventLoop.makePromise(of: ByteBuffer.self)
        let deadline = NIODeadline.now() + self.timeout
        let (early, startSweep) = self.state.withLock { state -> (ByteBuffer?, Bool) in
            if let early = state.early.removeValue(forKey: position) { return (early.reply, false) }
            state.waiting[position] = promise
            while let oldest = state.deadlines.first, state.waiting[oldest.position] == nil { state.deadlines.removeFirst() }
            state.deadlines.append((position, deadline))
            let startSweep = !state.sweepScheduled
            state.sweepScheduled = true
            return (nil, startSweep)
        }
        if let early {
            promise.succeed(early)
        } else if startSweep {
            eventLoop.scheduleTask(deadline: deadline) { self.sweep(on: eventLoop, at: deadline) }
        }
        return promise.futureResult
    }

    /// Fails the waiters whose deadline passed (`deadline`, the one this sweep was scheduled
    /// for, at least); then waits for the oldest left, if any.
    private func sweep(on eventLoop: EventLoop, at deadline: NIODeadline) {
        let now = max(NIODeadline.now(), deadline)
        let (expired, next) = self.state.withLock { state -> ([EventLoopPromise<ByteBuffer>], NIODeadline?) in
            var expired: [EventLoopPromise<ByteBuffer>] = []
            while let oldest = state.deadlines.first, oldest.deadline <= now || state.waiting[oldest.position] == nil {
                state.deadlines.removeFirst()
                if let waiter = state.waiting.removeValue(forKey: oldest.position) { expired.append(waiter) }
            }
            state.sweepScheduled = !state.deadlines.isEmpty
            return (expired, state.deadlines.first?.deadline)
        }
        for waiter in expired { waiter.fail(Timeout()) }
        if let next { eventLoop.scheduleTask(deadline: next) { self.sweep(on: eventLoop, at: next) } }
    }

    /// Hands over the reply of the op at `position` (a RESP reply, raw).
    func deliver(_ reply: ByteBuffer, for position: Position) {
        self.deliver(CollectionOfOne((reply: reply, position: position)))
    }

    /// Hands over replies together: the waiters of one event loop get theirs in one task on it
    /// (`EventLoopPromise.complete`), not one task each (an applier's batch answers many writes).
    func deliver(_ replies: some Collection<(reply: ByteBuffer, position: Position)>) {
        guard !replies.isEmpty else { return }
        let now = ContinuousClock.now
        let waiters = self.state.withLock { state -> [(promise: EventLoopPromise<ByteBuffer>, result: Result<ByteBuffer, any Error>)] in
            var waiters: [(promise: EventLoopPromise<ByteBuffer>, result: Result<ByteBuffer, any Error>)] = []
            for (reply, position) in replies {
                if let waiter = state.waiting.removeValue(forKey: position) {
                    waiters.append((waiter, .success(reply)))
                } else {
                    state.early[position] = (reply, now)
                }
            }
            if state.early.count > 1024 { state.early = state.early.filter { now - $0.value.at < self.keepEarly } }
            return waiters
        }
        EventLoopPromise.complete(waiters)
    }

    // MARK: - Between sidecars

    /// The message published for an origin: `partition:offset:` then the raw RESP reply.
    static func message(_ reply: ByteBuffer, for position: Position) -> ByteBuffer {
        var message = ByteBuffer(string: "\(position.partition):\(position.offset):")
        message.writeImmutableBuffer(reply)
        return message
    }

    func receive(_ message: ByteBuffer) {
        var message = message
        guard let header = message.readableBytesView.firstIndex(of: UInt8(ascii: ":")).flatMap({ first in
            message.readableBytesView[(first + 1)...].firstIndex(of: UInt8(ascii: ":"))
        }) else { return }
        let fields = message.readString(length: header - message.readerIndex)!.split(separator: ":")
        message.moveReaderIndex(forwardBy: 1)
        guard fields.count == 2, let partition = Int32(fields[0]), let offset = Int64(fields[1]) else { return }
        self.deliver(message, for: Position(partition: partition, offset: offset))
    }

    /// Subscribes to `sidecar`'s channel on the rack's Redis (`node`, which a Sentinel failover
    /// may move), resubscribing whenever the connection drops.
    func subscribe(sidecar: String, node: @escaping @Sendable () -> HostPort?, eventLoop: EventLoop, logger: Logger) {
        let task = Task { [self] in
            var backoff = Duration.milliseconds(50)
            while !Task.isCancelled {
                do {
                    guard let address = node() else { throw RedisClient.Error(description: "the rack's redis master is not known yet") }
                    let client = try await RedisClient.connect(to: address, on: eventLoop) { [self] push in
                        // ["message", channel, payload]
                        if let fields = push.array, fields.count == 3, case .bulkString(let payload?) = fields[2] { self.receive(payload) }
                    }
                    self.subscription.withLock { $0.client = client }
                    _ = try await client.send("SUBSCRIBE", Self.channel(for: sidecar))
                    backoff = .milliseconds(50)
                    if Task.isCancelled { client.channel.close(promise: nil) }
                    try? await client.channel.closeFuture.get()
                } catch {
                    logger.debug("cannot subscribe to this sidecar's applied replies yet", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(2))
            }
        }
        self.subscription.withLock { $0.task = task }
    }

    func stop() {
        self.subscription.withLock {
            $0.task?.cancel()
            $0.client?.channel.close(promise: nil)
        }
    }
}
