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
    let peerReplies: PeerReplies?
    /// The protocol this client chose with `HELLO` (its reads go over connections of that
    /// protocol; replies the sidecar makes are encoded in it).
    var version = RESPVersion.resp2
    var router: BackendRouter { self.routers[self.version] }
    private(set) var context: ChannelHandlerContext!
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
    var session = ReadYourWrites()
    /// A read held until this rack applied the connection's earlier writes to its partitions.
    /// Later requests wait behind it, so none can overtake it (a later write seen by an earlier read).
    var heldRead: HeldRead?
    struct HeldRead {
        var request: RedisRequest
        var command: Command
        var tag: Int
        var sink: ReplySink
        /// The partitions whose writes it must see (of the command the client sent).
        var partitions: Set<Int32>
    }
    /// The held read waits for this rack's markers (`AppliedWait`), not for a write's answer.
    var heldForMarkers = false
    var holdsRead: Bool { self.heldRead != nil }

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
            self.write(request, command: command, tag: tag)
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

    /// Flushes once the loop has run what is queued: acknowledgements arriving together (one
    /// Kafka batch) leave in one write.
    func flushSoon() {
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

    func complete(_ tag: Int, value: RESPValue) {
        self.deliver(value.encoded(self.version), tag: tag)
    }

    func complete(_ tag: Int, error: String) {
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

    func resumeReadingIfPossible() {
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
