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
}

/// The per-event-loop face of the Redis layer: client connections on a loop send through the
/// router of the same loop, so the read path never changes threads.
protocol BackendRouter: AnyObject {
    /// Sends a read; the reply (or a `-ERR pylon: …` when Redis is unavailable) goes to `sink`.
    func send(_ request: RedisRequest, command: Command, sink: ReplySink, tag: Int)
}
