import Foundation
import Logging
import NIOCore
import Shared

/// One client connection: decodes its requests, answers each (locally or through the Redis
/// layer) and writes the replies back in request order, however many are pipelined and in
/// whatever order Redis nodes answer.
///
/// Backpressure: at most `maxPendingReplies` requests are decoded and unanswered at a time; the
/// rest stay as bytes, and the socket is not read while the limit is reached or the client is
/// not reading its replies (the channel is not writable).
final class GatewayConnection: ChannelDuplexHandler, ReplySink {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// A reply slot: filled when the reply is known, written once every earlier slot was.
    private struct Slot {
        var reply: ByteBuffer?
        var commandClass: CommandClass
        var started: NIODeadline
    }

    let gateway: Gateway
    private let routers: ProtocolRouters<BackendRouter>
    /// Where `applied` writes get their reply while this rack's Redis is away (nil without peers).
    private let peerReplies: PeerReplies?
    /// The protocol this client chose with `HELLO` (its reads go over connections of that
    /// protocol; replies the sidecar makes are encoded in it).
    var version = RESPVersion.resp2
    private var router: BackendRouter { self.routers[self.version] }
    private var context: ChannelHandlerContext!
    private var slots = CircularBuffer<Slot>(initialCapacity: 4)
    /// Tag (sequence number) of `slots.first`.
    private var firstTag = 0
    private var decoder: RESPRequestDecoder
    /// Received bytes not decoded yet.
    private var inbound = ByteBuffer()
    private var decoding = false
    /// When the bytes being decoded arrived: the start of each request's latency (one clock read per batch).
    private var readAt = NIODeadline.now()
    private var readDeferred = false
    private var closeWhenAnswered = false
    private var unflushed = false
    var flushRequested = false
    private(set) var clientID = 0
    var name = ""
    /// The consistency this connection chose (`PYLON CONSISTENCY`); the sidecar's default if nil.
    var consistency: Consistency?
    /// This connection's writes its reads must see (and `PYLON LASTWRITE`'s token).
    private(set) var session = ReadYourWrites()
    /// A read held until this rack applied the connection's earlier writes to its partitions.
    /// Later requests wait behind it, so none can overtake it (a later write seen by an earlier read).
    private var heldRead: HeldRead?
    private struct HeldRead {
        var request: RedisRequest
        var command: Command
        var tag: Int
        var sink: ReplySink
        /// The partitions whose writes it must see (of the command the client sent).
        var partitions: Set<Int32>
    }
    /// The held read waits for this rack's markers (`AppliedWait`), not for a write's answer.
    private var heldForMarkers = false
    private var holdsRead: Bool { self.heldRead != nil }

    init(gateway: Gateway, routers: ProtocolRouters<BackendRouter>, peerReplies: PeerReplies?, limits: RESPLimits) {
        self.gateway = gateway
        self.routers = routers
        self.peerReplies = peerReplies
        self.decoder = RESPRequestDecoder(limits: limits)
    }

    // MARK: - Lifecycle

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelActive(context: ChannelHandlerContext) {
        self.clientID = self.gateway.clients.register(
            address: context.remoteAddress.map(Self.format) ?? "?", localAddress: context.localAddress.map(Self.format) ?? "?", channel: context.channel
        )
        self.gateway.stats.connectedClients.add(1, ordering: .relaxed)
        self.gateway.stats.totalConnections.add(1, ordering: .relaxed)
        self.gateway.metrics.connections.record(self.gateway.stats.connectedClients.load(ordering: .relaxed))
        self.gateway.metrics.connectionsTotal.increment()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.gateway.clients.remove(self.clientID)
        let now = self.gateway.stats.connectedClients.subtract(1, ordering: .relaxed).newValue
        self.gateway.metrics.connections.record(now)
        self.gateway.stats.pendingReplies.subtract(self.slots.count, ordering: .relaxed)
        self.slots.removeAll()
        context.fireChannelInactive()
    }

    static func format(_ address: SocketAddress) -> String {
        "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
    }

    // MARK: - Requests

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.inbound.accumulate(self.unwrapInboundIn(data))
        self.readAt = .now()
        self.decodeRequests()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.flushReplies()
        context.fireChannelReadComplete()
    }

    /// Decodes and dispatches requests while the pending-reply budget allows.
    private func decodeRequests() {
        guard !self.decoding else { return }
        self.decoding = true
        defer { self.decoding = false }
        while !self.closeWhenAnswered, !self.holdsRead, self.slots.count < self.gateway.maxPendingReplies, self.inbound.readableBytes > 0 {
            let request: RedisRequest
            do {
                guard let decoded = try self.decoder.decode(buffer: &self.inbound) else { break }
                request = decoded
            } catch let error as RESPProtocolError {
                self.protocolError(error)
                return
            } catch {
                self.context.close(promise: nil)
                return
            }
            self.dispatch(request, tag: self.openSlot(started: self.readAt))
        }
        self.inbound.releaseIfConsumed()
    }

    /// Reserves the reply slot of the next request; returns its tag.
    private func openSlot(started: NIODeadline) -> Int {
        self.slots.append(Slot(reply: nil, commandClass: .error, started: started))
        self.gateway.stats.pendingReplies.add(1, ordering: .relaxed)
        return self.firstTag + self.slots.count - 1
    }

    private func dispatch(_ request: RedisRequest, tag: Int) {
        let command: Command
        switch self.gateway.table.lookup(request.arguments) {
        case .error(let message):
            self.gateway.stats.unknown.add(1, ordering: .relaxed)
            self.gateway.metrics.counted(nil)
            self.complete(tag, error: message)
            return
        case .command(let found):
            command = found
        }
        let disposition = command.disposition(for: request.arguments)
        self.gateway.stats.count(disposition)
        self.gateway.metrics.counted(command)
        self.slots[offset: tag - self.firstTag].commandClass = disposition.commandClass
        switch disposition {
        case .read:
            switch Bookkeeping.treatment(of: request.arguments, command: command, bookkeepingKeys: { self.gateway.bookkeepingKeys }) {
            case .unchanged: self.read(request, command: command, tag: tag, sink: self, partitionsOf: command)
            case .refused(let reason): self.complete(tag, error: reason)
            case .filtered(let filter): self.read(request, command: command, tag: tag, sink: BookkeepingFilter(filter, target: self), partitionsOf: command)
            case .replaced(let replacement): self.read(replacement, command: self.gateway.eval, tag: tag, sink: self, partitionsOf: command, original: request)
            }
        case .write:
            if case .refused(let reason) = Bookkeeping.treatment(of: request.arguments, command: command, bookkeepingKeys: { nil }) {
                self.complete(tag, error: reason)
            } else {
                self.write(request, command: command, tag: tag)
            }
        case .refused(let reason):
            self.complete(tag, error: reason)
        case .ignored:
            self.complete(tag, value: .ok)
        case .internal where command.name == "pylon" && request.arguments[1].equalsIgnoringASCIICase("WAIT"):
            self.waitApplied(request.arguments, tag: tag)
        case .internal where command.name == "pylon" && request.arguments[1].equalsIgnoringASCIICase("REPLY"):
            self.replyForPeer(request.arguments, tag: tag)
        case .internal:
            let reply = LocalCommands.answer(request.arguments, command: command, connection: self)
            self.complete(tag, value: reply)
        }
    }

    /// Appends a write to the world's log. Its reply comes when Kafka acknowledged it (`log`), or
    /// when this rack applied it, with the real reply (`applied`).
    private func write(_ request: RedisRequest, command: Command, tag: Int) {
        guard let log = self.gateway.log, let replies = self.gateway.writes.replies else {
            self.complete(tag, error: Gateway.noWorldError)
            return
        }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let ops: [WritePlanner.PlannedOp]
        do {
            ops = try WritePlanner.plan(request.arguments, command: command, now: now, partitions: log.partitions, maxWriteBytes: self.gateway.writes.maxWriteBytes)
        } catch {
            self.complete(tag, error: "\(error)")
            return
        }
        let applied = self.gateway.writes.level(of: request.arguments, command: command, chosen: self.consistency) == .applied
        let partitions = ops.map { OpRecord.partition(ofSlot: $0.slot, count: log.partitions) }
        self.session.sent(to: partitions)
        let loop = self.context.eventLoop
        log.append(ops, now: now, wantsReply: applied, on: loop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let deliveries):
                let positions = deliveries.map { AppliedReplies.Position(partition: $0.partition, offset: $0.offset) }
                if applied {
                    self.awaitApplied(positions, partitions: partitions, replies: replies, command: command, arguments: request.arguments, tag: tag)
                    return
                }
                self.deliver(self.forClient(WriteReply.of(command, arguments: request.arguments).encoded, command: command, arguments: request.arguments), tag: tag)
                self.answered(partitions, positions: positions, appliedHere: false)
            case .failure(let error):
                self.complete(tag, error: WorldLog.errorReply(for: error))
                self.answered(partitions, positions: [], appliedHere: false)
            }
            self.flushSoon()
        }
    }

    /// A write was answered: a read held behind it may go.
    private func answered(_ partitions: [Int32], positions: [AppliedReplies.Position], appliedHere: Bool) {
        self.session.answered(partitions, positions: positions, appliedHere: appliedHere)
        self.releaseHeldRead()
    }

    /// Answers an `applied` write with its real reply once this rack's applier handed it over.
    private func awaitApplied(
        _ positions: [AppliedReplies.Position], partitions: [Int32], replies: AppliedReplies, command: Command, arguments: [ByteBuffer], tag: Int
    ) {
        let timeout = self.gateway.writes.appliedTimeout
        let deadline = NIODeadline.now() + timeout
        let askedPeers = NIOLoopBoundBox(false, eventLoop: self.context.eventLoop)
        let waits = positions.map { position in
            let local = replies.reply(for: position, on: self.context.eventLoop, timeout: timeout)
            if let peerReplies = self.peerReplies {
                self.askPeersWhileRedisIsAway(position, replies: replies, peerReplies: peerReplies, until: deadline, pending: local, asked: askedPeers)
            }
            return local
        }
        EventLoopFuture.whenAllSucceed(waits, on: self.context.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let replies):
                self.deliver(self.forClient(WriteReply.applied(replies), command: command, arguments: arguments), tag: tag)
                self.answered(partitions, positions: positions, appliedHere: !askedPeers.value)
            case .failure:
                let token = positions.map(\.description).joined(separator: ",")
                self.complete(tag, error: "ERR pylon: the write is in the world's log (\(token)) but this rack has not applied it within \(timeout.nanoseconds / 1_000_000) ms (applied-timeout-ms); it will be: PYLON WAIT \(token) <ms>, then read the key")
                self.answered(partitions, positions: positions, appliedHere: false)
            }
            self.flushSoon()
        }
    }

    /// While this rack's Redis is away, asks the other racks for the reply of the op at
    /// `position` (`PeerReplies`) and hands it over as if this rack's applier had: checked now
    /// and every half second until the reply came or `deadline` passed.
    private func askPeersWhileRedisIsAway(
        _ position: AppliedReplies.Position, replies: AppliedReplies, peerReplies: PeerReplies, until deadline: NIODeadline,
        pending: EventLoopFuture<ByteBuffer>, asked: NIOLoopBoundBox<Bool>
    ) {
        let loop = self.context.eventLoop
        let done = NIOLoopBoundBox(false, eventLoop: loop)
        pending.whenComplete { _ in done.value = true }
        func attempt() {
            guard !done.value, NIODeadline.now() < deadline else { return }
            guard !self.gateway.backend.isReady else {
                let next = loop.assumeIsolated().scheduleTask(in: .milliseconds(500)) { attempt() }
                pending.whenComplete { _ in next.cancel() }
                return
            }
            asked.value = true
            // Each ask waits below the connection's request timeout, and is made again until the deadline.
            let wait = TimeAmount.nanoseconds(min((deadline - .now()).nanoseconds, 1_000_000_000))
            peerReplies.reply(for: position, wait: wait).assumeIsolated().whenComplete { result in
                if case .success(let reply) = result {
                    replies.deliver(reply, for: position)
                } else {
                    loop.assumeIsolated().scheduleTask(in: .milliseconds(100)) { attempt() }
                }
            }
        }
        attempt()
    }

    /// `PYLON REPLY <partition:offset> <timeout-ms>`, asked by a sidecar of another rack whose
    /// Redis is away (`PeerReplies`): the reply this rack gave that op, as a bulk string holding
    /// it raw, once this sidecar's applier applied it; an error when it does not apply the
    /// partition or the time ran out.
    private func replyForPeer(_ arguments: [ByteBuffer], tag: Int) {
        guard let applier = self.gateway.applier, arguments.count == 4, let positions = AppliedWait.positions(String(buffer: arguments[2])),
              positions.count == 1, let milliseconds = Int64(String(buffer: arguments[3])), milliseconds >= 0 else {
            self.complete(tag, error: "ERR pylon: usage: PYLON REPLY <partition:offset> <timeout-ms> (asked by the sidecars of other racks)")
            return
        }
        let position = positions[0]
        guard applier.partitions.contains(where: { $0.partition == position.partition && !$0.deposed }) else {
            self.complete(tag, error: "ERR pylon: this sidecar does not apply partition \(position.partition)")
            return
        }
        applier.recent.reply(for: position, on: self.context.eventLoop, timeout: .milliseconds(milliseconds)).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let reply): self.complete(tag, value: .bulkString(reply))
            case .failure: self.complete(tag, error: "ERR pylon: this rack has not applied \(position) within \(milliseconds) ms")
            }
            self.flushSoon()
        }
    }

    /// A write's reply in this client's protocol.
    private func forClient(_ reply: ByteBuffer, command: Command, arguments: [ByteBuffer]) -> ByteBuffer {
        self.version == .resp3 ? WriteReply.resp3(reply, command: command, arguments: arguments) : reply
    }

    // MARK: - Read-your-writes

    /// Sends a read now, or holds it until this rack applied the connection's earlier writes to
    /// the partitions it reads (those of `original`, the request the client sent).
    private func read(
        _ request: RedisRequest, command: Command, tag: Int, sink: ReplySink, partitionsOf clientCommand: Command, original: RedisRequest? = nil
    ) {
        guard !self.session.isEmpty, let log = self.gateway.log else {
            return self.router.send(request, command: command, sink: sink, tag: tag)
        }
        let partitions = self.partitions(readBy: (original ?? request).arguments, command: clientCommand, count: log.partitions)
        self.heldRead = HeldRead(request: request, command: command, tag: tag, sink: sink, partitions: partitions)
        self.releaseHeldRead()
    }

    /// The partitions a read sees: those of its keys; every one for a keyless read of the data
    /// (KEYS, SCAN, DBSIZE…); none for other keyless reads (INFO, TIME).
    private func partitions(readBy arguments: [ByteBuffer], command: Command, count: Int) -> Set<Int32> {
        let keys = command.keyPositions(in: arguments) ?? []
        if keys.isEmpty { return command.readsData ? Set(0..<Int32(count)) : [] }
        return Set(keys.map { OpRecord.partition(ofSlot: HashSlot.of(arguments[$0]), count: count) })
    }

    /// Sends the held read once nothing of this connection's earlier writes to its partitions is
    /// in flight and this rack applied them (its markers, read for at most `applied-timeout-ms`);
    /// then the requests behind it go on.
    private func releaseHeldRead() {
        guard let held = self.heldRead, !self.heldForMarkers, let log = self.gateway.log else { return }
        if let applier = self.gateway.applier {
            // This sidecar's own applier tells at no cost where it is.
            for status in applier.partitions { self.session.applied(below: status.next, in: status.partition) }
        }
        switch self.session.wait(forReading: held.partitions) {
        case .inFlight:
            return  // asked again when the write is answered
        case .nothing:
            self.sendHeldRead()
        case .applied(let positions):
            let timeout = self.gateway.writes.appliedTimeout
            let token = positions.map(\.description).joined(separator: ",")
            let loop = self.context.eventLoop
            let local = self.gateway.backend.isReady
            self.heldForMarkers = true
            let finished = { (result: Result<Bool, Error>) in
                self.heldForMarkers = false
                switch result {
                case .success(true):
                    if local { for position in positions { self.session.applied(below: position.offset + 1, in: position.partition) } }
                    self.sendHeldRead()
                case .success(false):
                    self.failHeldRead("ERR pylon: this connection's write (\(token)) is in the world's log but the rack serving this read has not applied it within \(timeout.nanoseconds / 1_000_000) ms (applied-timeout-ms), so the read could miss it; retry, or use PYLON WAIT \(token) <ms>")
                case .failure(let error):
                    self.failHeldRead("ERR pylon: cannot tell whether the rack serving this read applied this connection's write (\(token)), so the read could miss it: \(error); retry shortly")
                }
            }
            if local {
                AppliedWait(
                    positions: positions, topic: log.topic, deadline: .now() + timeout, gateway: self.gateway, router: self.gateway.backend.router(on: loop),
                    eventLoop: loop, completion: finished
                ).poll()
            } else {
                // This rack's Redis is away, so the read goes to a peer (`FailoverRouter`): that
                // peer's rack is the one that must have applied the writes — it is asked first.
                let wait = RedisRequest(strings: ["PYLON", "WAIT", token, String(timeout.nanoseconds / 1_000_000)])
                self.router.send(wait, command: self.gateway.pylon, sink: ReplyCallback { reply in
                    var bytes = reply
                    switch try? RESPValue.decode(from: &bytes) {
                    case .integer(let done)?: finished(.success(done == 1))
                    default: finished(.failure(AppliedWait.Failure(description: String(buffer: reply).trimmingCharacters(in: .whitespacesAndNewlines))))
                    }
                }, tag: 0)
            }
        }
    }

    private func sendHeldRead() {
        guard let held = self.heldRead.take() else { return }
        self.router.send(held.request, command: held.command, sink: held.sink, tag: held.tag)
        self.resumeReadingIfPossible()
    }

    private func failHeldRead(_ error: String) {
        guard let held = self.heldRead.take() else { return }
        self.complete(held.tag, error: error)
        self.flushSoon()
        self.resumeReadingIfPossible()
    }

    /// `PYLON WAIT <partition:offset[,…]> <timeout-ms>`: answers 1 once this rack applied every
    /// position (a token from `PYLON LASTWRITE` on any rack), 0 when the time ran out.
    private func waitApplied(_ arguments: [ByteBuffer], tag: Int) {
        guard let log = self.gateway.log else {
            self.complete(tag, error: Gateway.noWorldError)
            return
        }
        guard arguments.count == 4, let positions = AppliedWait.positions(String(buffer: arguments[2])),
              let milliseconds = Int64(String(buffer: arguments[3])), milliseconds >= 0 else {
            self.complete(tag, error: "ERR pylon: usage: PYLON WAIT <partition:offset[,partition:offset…]> <timeout-ms> (the token PYLON LASTWRITE gives)")
            return
        }
        let loop = self.context.eventLoop
        AppliedWait(positions: positions, topic: log.topic, deadline: .now() + .milliseconds(milliseconds), gateway: self.gateway, router: self.gateway.backend.router(on: loop), eventLoop: loop) { result in
            switch result {
            case .success(let done): self.complete(tag, value: .integer(done ? 1 : 0))
            case .failure(let error): self.complete(tag, error: "ERR pylon: cannot read this rack's applied offsets: \(error)")
            }
            self.flushSoon()
        }.poll()
    }

    /// Flushes once the loop has run what is queued: acknowledgements arriving together (one
    /// Kafka batch) leave in one write.
    private func flushSoon() {
        guard !self.flushRequested else { return }
        self.flushRequested = true
        self.context.eventLoop.assumeIsolated().execute {
            self.flushRequested = false
            self.flushReplies()
        }
    }

    // MARK: - Replies

    func deliver(_ reply: ByteBuffer, tag: Int) {
        let index = tag - self.firstTag
        guard index >= 0, index < self.slots.count else { return }  // the connection is gone
        self.slots[offset: index].reply = reply
        if index == 0 { self.writeAnsweredReplies() }
    }

    private func complete(_ tag: Int, value: RESPValue) {
        self.deliver(value.encoded(self.version), tag: tag)
    }

    private func complete(_ tag: Int, error: String) {
        self.deliver(.respError(error), tag: tag)
    }

    /// Writes every reply at the head of the queue whose answer is known.
    private func writeAnsweredReplies() {
        let now = NIODeadline.now()
        let before = self.slots.count
        while let first = self.slots.first, let reply = first.reply {
            self.slots.removeFirst()
            self.firstTag += 1
            self.context.write(self.wrapOutboundOut(reply), promise: nil)
            self.unflushed = true
            self.gateway.metrics.recordLatency(first.commandClass, nanoseconds: (now - first.started).nanoseconds)
        }
        if before > self.slots.count { self.gateway.stats.pendingReplies.subtract(before - self.slots.count, ordering: .relaxed) }
        if self.closeWhenAnswered, self.slots.isEmpty {
            self.flushReplies()
            self.context.close(promise: nil)
            return
        }
        self.resumeReadingIfPossible()
    }

    func flushReplies() {
        guard self.unflushed else { return }
        self.unflushed = false
        self.context.flush()
    }

    /// After this request's reply, close (QUIT, protocol errors).
    func closeAfterReplies() {
        self.closeWhenAnswered = true
    }

    // MARK: - Backpressure

    func read(context: ChannelHandlerContext) {
        if self.slots.count >= self.gateway.maxPendingReplies || self.holdsRead || !context.channel.isWritable {
            self.readDeferred = true
        } else {
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.resumeReadingIfPossible()
        context.fireChannelWritabilityChanged()
    }

    private func resumeReadingIfPossible() {
        guard self.slots.count < self.gateway.maxPendingReplies, !self.holdsRead, self.context.channel.isWritable else { return }
        if self.inbound.readableBytes > 0, !self.decoding {
            // Requests held back by the budget: decode them now.
            self.decodeRequests()
        }
        if self.readDeferred, self.slots.count < self.gateway.maxPendingReplies {
            self.readDeferred = false
            self.context.read()
        }
    }

    // MARK: - Errors

    /// As Redis does: answer the error after the replies already owed, then close this connection only.
    private func protocolError(_ error: RESPProtocolError) {
        self.gateway.stats.protocolErrors.add(1, ordering: .relaxed)
        self.gateway.metrics.protocolErrors.increment()
        self.gateway.logger.info("protocol error, closing client", metadata: ["error": "\(error)", "client": "\(self.clientID)"])
        self.inbound.clear()
        let tag = self.openSlot(started: .now())
        self.closeWhenAnswered = true
        self.complete(tag, error: "ERR \(error)")
        self.flushReplies()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.gateway.logger.debug("client connection error", metadata: ["error": "\(error)", "client": "\(self.clientID)"])
        context.close(promise: nil)
    }
}
