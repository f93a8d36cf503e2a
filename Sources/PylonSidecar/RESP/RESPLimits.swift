/// Hard limits on what a client may send. Exceeding one is a protocol error: the client gets a
/// Redis-style `-ERR Protocol error: …` and only its own connection is closed.
public struct RESPLimits: Sendable, Equatable {
    /// Largest bulk string a request may carry (Redis's `proto-max-bulk-len`, 512 MB by default).
    public var maxBulkLength: Int
    /// Most arguments one request may have (Redis allows 1024 * 1024).
    public var maxArrayLength: Int
    /// Longest inline command line (Redis's `PROTO_INLINE_MAX_SIZE`, 64 KB).
    public var maxInlineLength: Int
    /// Deepest nesting of aggregate values accepted in replies from Redis.
    public var maxNestingDepth: Int

    public init(
        maxBulkLength: Int = 512 * 1024 * 1024,
        maxArrayLength: Int = 1024 * 1024,
        maxInlineLength: Int = 64 * 1024,
        maxNestingDepth: Int = 64
    ) {
        self.maxBulkLength = maxBulkLength
        self.maxArrayLength = maxArrayLength
        self.maxInlineLength = maxInlineLength
        self.maxNestingDepth = maxNestingDepth
    }

    public static let `default` = RESPLimits()
}

/// A violation of the RESP protocol. `description` is what Redis itself would answer.
public struct RESPProtocolError: Error, Equatable, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { "Protocol error: \(reason)" }
}
