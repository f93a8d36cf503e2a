import NIOCore

/// Receives the replies to requests sent to Redis. Implemented by a client connection (and by
/// the assemblers that merge split requests); always called on the sink's event loop.
protocol ReplySink: AnyObject {
    /// One complete reply, as Redis sent it, for the request that carried `tag`.
    func deliver(_ reply: ByteBuffer, tag: Int)
    /// Flushes what `deliver` wrote; called once per batch of replies read from Redis.
    func flushReplies()
    /// Set while the sink waits in a backend's list of sinks to flush, so it is listed once.
    var flushRequested: Bool { get set }
}

/// Hands one reply to a closure (the sidecar's own requests).
final class ReplyCallback: ReplySink {
    private let body: (ByteBuffer) -> Void
    var flushRequested = false

    init(_ body: @escaping (ByteBuffer) -> Void) { self.body = body }

    func deliver(_ reply: ByteBuffer, tag: Int) { self.body(reply) }

    func flushReplies() {}
}

/// A request written to Redis whose reply has not arrived yet.
struct InFlightRequest {
    /// The request bytes, kept so a cluster redirect can send them again.
    var request: ByteBuffer
    /// Nil for requests whose reply is dropped (the ASKING before a redirected request).
    var sink: ReplySink?
    var tag: Int
    var redirects: Int = 0
    /// Set once the request was sent again after its connection dropped (reads are idempotent).
    var resent = false
    /// The `HELLO 3` that opens a RESP3 connection: sent again by every new connection itself.
    var handshake = false
}

/// The per-event-loop face of the Redis layer: client connections on a loop send through the
/// router of the same loop, so the read path never changes threads.
protocol BackendRouter: AnyObject {
    /// Sends a read; the reply (or a `-ERR pylon: …` when Redis is unavailable) goes to `sink`.
    func send(_ request: RedisRequest, command: Command, sink: ReplySink, tag: Int)
}

/// One router per protocol version of one event loop. A RESP3 client's reads go over
/// connections that opened with `HELLO 3`, so Redis itself gives them RESP3 replies (maps,
/// sets, doubles, nulls) — no reply is ever converted by the sidecar.
struct ProtocolRouters<Router> {
    let resp2: Router
    let resp3: Router

    /// Makes the RESP2 router and the RESP3 one.
    init(_ make: (RESPVersion) -> Router) {
        self.resp2 = make(.resp2)
        self.resp3 = make(.resp3)
    }

    subscript(_ version: RESPVersion) -> Router { version == .resp3 ? self.resp3 : self.resp2 }

    func forBoth(_ body: (Router) -> Void) {
        body(self.resp2)
        body(self.resp3)
    }
}
