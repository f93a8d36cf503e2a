import NIOCore
import NIOPosix

/// A small request/response Redis client: for the Redis layer's control queries (cluster slots,
/// Sentinel) and for tests. Replies come back decoded. Messages nobody asked for (pub/sub
/// pushes) go to `onPush`.
public final class RedisClient: Sendable {
    public let channel: Channel

    public struct Error: Swift.Error, CustomStringConvertible {
        public let description: String
    }

    private init(channel: Channel) { self.channel = channel }

    public static func connect(
        to address: HostPort, on eventLoop: EventLoop = MultiThreadedEventLoopGroup.singleton.any(),
        timeout: TimeAmount = .seconds(2), onPush: (@Sendable (RESPValue) -> Void)? = nil
    ) async throws -> RedisClient {
        try await self.connecting(to: address, on: eventLoop, timeout: timeout, onPush: onPush).get()
    }

    /// `connect`, as a future (for threads outside Swift concurrency).
    public static func connecting(
        to address: HostPort, on eventLoop: EventLoop, timeout: TimeAmount, onPush: (@Sendable (RESPValue) -> Void)? = nil
    ) -> EventLoopFuture<RedisClient> {
        ClientBootstrap(group: eventLoop)
            .connectTimeout(timeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RESPReplyDecoder()))
                    try channel.pipeline.syncOperations.addHandler(RedisClientHandler(onPush: onPush))
                }
            }
            .connect(host: address.host, port: address.port)
            .map { RedisClient(channel: $0) }
    }

    /// Sends one command and waits for its reply.
    public func send(_ arguments: [String]) async throws -> RESPValue {
        try await self.sendRaw(RedisRequest(strings: arguments).raw, replies: 1)[0]
    }

    public func send(_ arguments: String...) async throws -> RESPValue {
        try await self.send(arguments)
    }

    /// Writes raw bytes and waits for `replies` replies (0: fire and forget).
    public func sendRaw(_ bytes: ByteBuffer, replies: Int) async throws -> [RESPValue] {
        try await self.pipeline(bytes, replies: replies).get()
    }

    /// Writes raw bytes (any number of pipelined commands); the future holds their `replies`
    /// replies, in order, or the first failure (the connection closing fails them all). With a
    /// `timeout`, a Redis that has not answered them all by then (stopped, or cut off) has the
    /// connection closed, which fails them.
    public func pipeline(_ bytes: ByteBuffer, replies: Int, timeout: TimeAmount? = nil) -> EventLoopFuture<[RESPValue]> {
        let channel = self.channel
        let loop = channel.eventLoop
        let promises = (0..<replies).map { _ in loop.makePromise(of: RESPValue.self) }
        channel.writeAndFlush(RedisClientHandler.Outgoing(bytes: bytes, promises: promises)).whenFailure { error in
            // The connection is gone: no reply will come (failing a promise twice is harmless).
            for promise in promises { promise.fail(error) }
        }
        let all = EventLoopFuture.whenAllSucceed(promises.map(\.futureResult), on: loop)
        if let timeout {
            let giveUp = loop.scheduleTask(in: timeout) { channel.close(promise: nil) }
            all.whenComplete { _ in giveUp.cancel() }
        }
        return all
    }

    public func close() async {
        try? await self.channel.close()
    }
}

private final class RedisClientHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = Outgoing
    typealias OutboundOut = ByteBuffer

    struct Outgoing {
        var bytes: ByteBuffer
        var promises: [EventLoopPromise<RESPValue>]
    }

    private var waiting = CircularBuffer<EventLoopPromise<RESPValue>>()
    private let onPush: (@Sendable (RESPValue) -> Void)?

    init(onPush: (@Sendable (RESPValue) -> Void)?) { self.onPush = onPush }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let outgoing = self.unwrapOutboundIn(data)
        self.waiting.append(contentsOf: outgoing.promises)
        context.write(self.wrapOutboundOut(outgoing.bytes), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = self.unwrapInboundIn(data)
        do {
            guard let value = try RESPValue.decode(from: &buffer) else { return }
            if let promise = self.waiting.popFirst() {
                promise.succeed(value)
            } else {
                self.onPush?(value)
            }
        } catch {
            context.fireErrorCaught(error)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let error = RedisClient.Error(description: "connection closed")
        while let promise = self.waiting.popFirst() { promise.fail(error) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Swift.Error) {
        while let promise = self.waiting.popFirst() { promise.fail(error) }
        context.close(promise: nil)
    }
}
