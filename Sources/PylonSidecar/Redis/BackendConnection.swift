import Logging
import NIOCore
import NIOPosix

/// One pipelined connection from one event loop to one Redis node. Requests from every client
/// on the loop are written to it back to back; replies come back in the same order and are
/// handed to each request's sink. A dropped connection is re-made at once (reads in flight are
/// resent); failed connects back off exponentially, and while Redis is away each request is
/// answered at once with `-ERR pylon: local redis unavailable …`, never left hanging.
///
/// Loop-bound: every method must be called on `eventLoop`.
final class BackendConnection {
    struct Settings {
        var connectTimeout: TimeAmount = .seconds(1)
        /// A request with no reply for this long fails and the connection is re-established.
        var requestTimeout: TimeAmount = .seconds(2)
        var minBackoff: TimeAmount = .milliseconds(50)
        var maxBackoff: TimeAmount = .seconds(2)
        var limits = RESPLimits.default
        /// RESP3 connections open with `HELLO 3` (their replies are a RESP3 client's).
        var version = RESPVersion.resp2
    }

    private static let hello3 = RedisRequest(strings: ["HELLO", "3"]).raw

    private enum State {
        case idle
        case connecting
        case connected(Channel)
        case backingOff(until: NIODeadline, reason: String)
        case closed
    }

    let address: HostPort
    let eventLoop: EventLoop
    private let settings: Settings
    private let status: BackendStatus
    private let logger: Logger
    private var state: State = .idle
    private var inFlight = CircularBuffer<InFlightRequest>(initialCapacity: 64)
    /// Requests written while connecting, sent once connected.
    private var queued = ByteBuffer()
    private var failures = 0
    private var needsFlush = false
    private var sinksToFlush: [ReplySink] = []
    private var repliesReceived = 0
    private var repliesAtLastCheck = 0
    private var lastProgress = NIODeadline.now()
    private var timeoutTask: RepeatedTask?
    /// When set, offered every error reply first; returns true when it took care of the request
    /// (a cluster redirect).
    var redirectHandler: ((ByteBuffer, InFlightRequest) -> Bool)?

    init(address: HostPort, eventLoop: EventLoop, settings: Settings, status: BackendStatus, logger: Logger) {
        self.address = address
        self.eventLoop = eventLoop
        self.settings = settings
        self.status = status
        var logger = logger
        logger[metadataKey: "redis"] = "\(address)"
        self.logger = logger
    }

    var pendingCount: Int { self.inFlight.count }

    // MARK: - Sending

    /// Writes a request; it leaves at the end of the loop tick. `sink` nil drops the reply.
    func send(_ request: ByteBuffer, sink: ReplySink?, tag: Int, redirects: Int = 0) {
        self.send(InFlightRequest(request: request, sink: sink, tag: tag, redirects: redirects))
    }

    private func send(_ request: InFlightRequest) {
        self.eventLoop.preconditionInEventLoop()
        switch self.state {
        case .connected(let channel):
            self.inFlight.append(request)
            channel.write(request.request, promise: nil)
            self.markDirty()
        case .connecting:
            self.inFlight.append(request)
            var copy = request.request
            self.queued.writeBuffer(&copy)
        case .idle:
            self.connect()
            self.send(request)
        case .backingOff(let until, let reason):
            if NIODeadline.now() >= until {
                self.connect()
                self.send(request)
            } else {
                self.reject(sink: request.sink, tag: request.tag, reason: reason)
            }
        case .closed:
            self.reject(sink: request.sink, tag: request.tag, reason: "the sidecar is shutting down")
        }
    }

    private func flush() {
        guard self.needsFlush else { return }
        self.needsFlush = false
        if case .connected(let channel) = self.state { channel.flush() }
    }

    /// Flushes once per event-loop tick: tasks run after the tick's I/O, so requests from every
    /// client read in this tick leave in one write.
    private func markDirty() {
        if !self.needsFlush {
            self.needsFlush = true
            let this = NIOLoopBound(self, eventLoop: self.eventLoop)
            self.eventLoop.execute { this.value.flush() }
        }
    }

    private func reject(sink: ReplySink?, tag: Int, reason: String) {
        self.answerUnavailable(sink, tag: tag, reason: reason)
        self.flushSinks()
    }

    /// Answers a request that Redis will not: the error goes out with the next `flushSinks`.
    private func answerUnavailable(_ sink: ReplySink?, tag: Int, reason: String) {
        guard let sink else { return }
        sink.deliver(.respError("ERR pylon: local redis unavailable (\(self.address): \(reason)); retry shortly"), tag: tag)
        self.requestFlush(of: sink)
    }

    // MARK: - Connection lifecycle

    /// Connects now, unless connected or connecting.
    func connect() {
        switch self.state {
        case .connected, .connecting, .closed: return
        case .idle, .backingOff: break
        }
        self.state = .connecting
        if self.settings.version == .resp3 {
            // Ahead of every request on the new connection; its reply (the server's map) is dropped.
            self.inFlight.append(InFlightRequest(request: Self.hello3, sink: nil, tag: 0, handshake: true))
            self.queued.writeImmutableBuffer(Self.hello3)
        }
        let limits = self.settings.limits
        let this = NIOLoopBound(self, eventLoop: self.eventLoop)
        let bootstrap = ClientBootstrap(group: self.eventLoop)
            .connectTimeout(self.settings.connectTimeout)
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(BackendReplyHandler(connection: this, limits: limits))
                }
            }
        bootstrap.connect(host: self.address.host, port: self.address.port).whenComplete { result in
            switch result {
            case .success(let channel): this.value.connected(channel)
            case .failure(let error): this.value.lost(reason: Self.describe(error))
            }
        }
    }

    private func connected(_ channel: Channel) {
        guard case .connecting = self.state else {
            channel.close(promise: nil)
            return
        }
        self.state = .connected(channel)
        if self.failures > 0 { self.logger.info("reconnected to redis") }
        self.failures = 0
        self.status.connected(self.address)
        if self.queued.readableBytes > 0 {
            channel.writeAndFlush(self.queued, promise: nil)
            self.queued = ByteBuffer()
        }
        self.startTimeoutChecks()
    }

    /// The connection failed or dropped. An established connection that drops (Redis restarted,
    /// a failover killed its clients) is re-made at once and the reads in flight on it are sent
    /// again, once: reads are idempotent. A failed connect backs off before the next attempt, and
    /// requests meanwhile get an immediate error. `channel` names the connection that ended;
    /// news from an older one is ignored. `resend` is false when Redis hung (resending would hang too).
    fileprivate func lost(reason: String, channel: Channel? = nil, resend: Bool = true) {
        switch self.state {
        case .closed, .idle, .backingOff:
            return
        case .connecting:
            if channel != nil { return }
        case .connected(let current):
            if let channel, channel !== current { return }
            self.state = .idle
            current.close(promise: nil)
            self.status.disconnected(self.address)
            self.timeoutTask?.cancel()
            self.timeoutTask = nil
            self.logger.warning("redis connection lost; reconnecting", metadata: ["reason": "\(reason)"])
            let interrupted = self.inFlight
            self.inFlight.removeAll()
            self.connect()
            for var request in interrupted where !request.handshake {
                if resend, !request.resent {
                    request.resent = true
                    self.send(request)
                } else {
                    self.answerUnavailable(request.sink, tag: request.tag, reason: reason)
                }
            }
            self.flushSinks()
            return
        }
        self.queued.clear()
        self.failures += 1
        let backoff = min(self.settings.minBackoff.nanoseconds << min(self.failures - 1, 16), self.settings.maxBackoff.nanoseconds)
        self.state = .backingOff(until: .now() + .nanoseconds(backoff), reason: reason)
        if self.failures == 1 || self.failures % 20 == 0 {
            self.logger.warning("redis unavailable", metadata: ["reason": "\(reason)", "attempt": "\(self.failures)"])
        }
        self.failAll(reason: reason)
        // Keep trying in the background so health reflects reality and recovery needs no request.
        let this = NIOLoopBound(self, eventLoop: self.eventLoop)
        self.eventLoop.scheduleTask(in: .nanoseconds(backoff)) {
            if case .backingOff = this.value.state { this.value.connect() }
        }
    }

    private func failAll(reason: String) {
        let failed = self.inFlight
        self.inFlight.removeAll()
        for request in failed {
            self.answerUnavailable(request.sink, tag: request.tag, reason: reason)
        }
        self.flushSinks()
    }

    /// Detects a Redis that accepts bytes but stops answering (paused, overloaded, partitioned).
    private func startTimeoutChecks() {
        let timeout = self.settings.requestTimeout
        let tick = TimeAmount.nanoseconds(timeout.nanoseconds / 4)
        let this = NIOLoopBound(self, eventLoop: self.eventLoop)
        self.lastProgress = .now()
        self.timeoutTask = self.eventLoop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { _ in
            this.value.checkProgress(timeout: timeout)
        }
    }

    private func checkProgress(timeout: TimeAmount) {
        let now = NIODeadline.now()
        if self.inFlight.isEmpty || self.repliesReceived != self.repliesAtLastCheck {
            self.repliesAtLastCheck = self.repliesReceived
            self.lastProgress = now
        } else if now - self.lastProgress >= timeout {
            self.lost(reason: "no reply within \(timeout.nanoseconds / 1_000_000) ms", resend: false)
        }
    }

    /// Stops for good: in-flight requests fail, nothing reconnects.
    func close() {
        let previous = self.state
        self.state = .closed
        self.timeoutTask?.cancel()
        if case .connected(let channel) = previous {
            channel.close(promise: nil)
            self.status.disconnected(self.address)
        }
        self.failAll(reason: "the sidecar is shutting down")
    }

    // MARK: - Replies

    fileprivate func received(_ reply: ByteBuffer) {
        // A RESP3 push is no request's reply (none is asked for: pub/sub and tracking are refused).
        if reply.getInteger(at: reply.readerIndex, as: UInt8.self) == UInt8(ascii: ">") { return }
        self.repliesReceived &+= 1
        guard let request = self.inFlight.popFirst() else {
            self.lost(reason: "redis sent a reply nobody asked for", resend: false)
            return
        }
        if let handler = self.redirectHandler, reply.getInteger(at: reply.readerIndex, as: UInt8.self) == UInt8(ascii: "-"),
           handler(reply, request) {
            return
        }
        guard let sink = request.sink else { return }
        sink.deliver(reply, tag: request.tag)
        self.requestFlush(of: sink)
    }

    func requestFlush(of sink: ReplySink) {
        if !sink.flushRequested {
            sink.flushRequested = true
            self.sinksToFlush.append(sink)
        }
    }

    fileprivate func flushSinks() {
        guard !self.sinksToFlush.isEmpty else { return }
        let sinks = self.sinksToFlush
        self.sinksToFlush.removeAll(keepingCapacity: true)
        for sink in sinks {
            sink.flushRequested = false
            sink.flushReplies()
        }
    }

    static func describe(_ error: Error) -> String {
        if let error = error as? IOError { return error.description }
        if error is ChannelError, case ChannelError.connectTimeout = error { return "connect timed out" }
        return "\(error)"
    }
}

/// Splits Redis's byte stream into replies (zero-copy slices) and feeds them to the connection;
/// reports when the connection ends.
private final class BackendReplyHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let connection: NIOLoopBound<BackendConnection>
    let scanner: RESPReplyScanner
    private var inbound = ByteBuffer()

    init(connection: NIOLoopBound<BackendConnection>, limits: RESPLimits) {
        self.connection = connection
        self.scanner = RESPReplyScanner(limits: limits)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.inbound.accumulate(self.unwrapInboundIn(data))
        let connection = self.connection.value
        do {
            while let length = try self.scanner.length(of: self.inbound, at: self.inbound.readerIndex) {
                connection.received(self.inbound.readSlice(length: length)!)
            }
            self.inbound.releaseIfConsumed()
        } catch {
            connection.lost(reason: "redis sent an invalid reply (\(error))", channel: context.channel, resend: false)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.connection.value.flushSinks()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.connection.value.lost(reason: "connection closed", channel: context.channel)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.connection.value.lost(reason: BackendConnection.describe(error), channel: context.channel)
    }
}
