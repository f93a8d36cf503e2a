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
    private let router: BackendRouter
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
    /// The highest offset of this connection's acknowledged writes, per partition
    /// (`PYLON LASTWRITE`, for `PYLON WAIT` on any rack).
    var written: [Int32: Int64] = [:]

    init(gateway: Gateway, router: BackendRouter, limits: RESPLimits) {
        self.gateway = gateway
        self.router = router
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
        while !self.closeWhenAnswered, self.slots.count < self.gateway.maxPendingReplies, self.inbound.readableBytes > 0 {
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
            self.router.send(request, command: command, sink: self, tag: tag)
        case .write:
            self.write(request, command: command, tag: tag)
        case .refused(let reason):
            self.complete(tag, error: reason)
        case .ignored:
            self.complete(tag, value: .ok)
        case .internal where command.name == "pylon" && request.arguments[1].equalsIgnoringASCIICase("WAIT"):
            self.waitApplied(request.arguments, tag: tag)
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
            ops = try WritePlanner.plan(request.arguments, command: command, now: now)
        } catch {
            self.complete(tag, error: "\(error)")
            return
        }
        let applied = self.gateway.writes.level(of: request.arguments, command: command, chosen: self.consistency) == .applied
        let loop = self.context.eventLoop
        log.append(ops, now: now, wantsReply: applied, on: loop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let deliveries):
                for delivery in deliveries { self.written[delivery.partition] = max(self.written[delivery.partition] ?? -1, delivery.offset) }
                if applied {
                    self.awaitApplied(deliveries, replies: replies, tag: tag)
                    return
                }
                self.deliver(WriteReply.of(command, arguments: request.arguments).encoded, tag: tag)
            case .failure(let error):
                self.complete(tag, error: WorldLog.errorReply(for: error))
            }
            self.flushSoon()
        }
    }

    /// Answers an `applied` write with its real reply once this rack's applier handed it over.
    private func awaitApplied(_ deliveries: [KafkaDelivery], replies: AppliedReplies, tag: Int) {
        let timeout = self.gateway.writes.appliedTimeout
        let positions = deliveries.map { AppliedReplies.Position(partition: $0.partition, offset: $0.offset) }
        let waits = positions.map { replies.reply(for: $0, on: self.context.eventLoop, timeout: timeout) }
        EventLoopFuture.whenAllSucceed(waits, on: self.context.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let replies):
                self.deliver(WriteReply.applied(replies), tag: tag)
            case .failure:
                let token = positions.map(\.description).joined(separator: ",")
                self.complete(tag, error: "ERR pylon: the write is in the world's log (\(token)) but this rack has not applied it within \(timeout.nanoseconds / 1_000_000) ms (applied-timeout-ms); it will be: PYLON WAIT \(token) <ms>, then read the key")
            }
            self.flushSoon()
        }
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
        AppliedWait(positions: positions, topic: log.topic, deadline: .now() + .milliseconds(milliseconds), gateway: self.gateway, router: self.router, eventLoop: self.context.eventLoop) { result in
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
        self.deliver(value.encoded, tag: tag)
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
        if self.slots.count >= self.gateway.maxPendingReplies || !context.channel.isWritable {
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
        guard self.slots.count < self.gateway.maxPendingReplies, self.context.channel.isWritable else { return }
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
