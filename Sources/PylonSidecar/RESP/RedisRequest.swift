import NIOCore

/// One command as a client sent it: its arguments as zero-copy slices of the input, and the
/// whole request as RESP (the bytes forwarded to Redis untouched).
public struct RedisRequest: Sendable, Equatable {
    public var arguments: [ByteBuffer]
    /// The request encoded as a RESP array of bulk strings.
    public var raw: ByteBuffer

    public init(arguments: [ByteBuffer], raw: ByteBuffer) {
        self.arguments = arguments
        self.raw = raw
    }

    /// Builds a request from arguments, encoding it as RESP.
    public init(_ arguments: [ByteBuffer]) {
        var raw = ByteBuffer()
        raw.writeRESPCommand(arguments)
        self.init(arguments: arguments, raw: raw)
    }

    public init(_ arguments: String...) {
        self.init(arguments.map { ByteBuffer(string: $0) })
    }

    public init(strings arguments: [String]) {
        self.init(arguments.map { ByteBuffer(string: $0) })
    }
}
