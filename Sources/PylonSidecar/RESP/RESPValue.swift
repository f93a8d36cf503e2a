import NIOCore

/// The RESP protocol versions a client may speak (`HELLO`).
public enum RESPVersion: Int, Sendable, CaseIterable {
    case resp2 = 2, resp3 = 3
}

/// A decoded RESP2 value, for the few replies Pylon reads itself (cluster slots, sentinel answers,
/// replies it assembles). Replies it only forwards stay raw bytes and are never decoded.
public enum RESPValue: Sendable, Equatable {
    case simpleString(ByteBuffer)
    case error(ByteBuffer)
    case integer(Int)
    case bulkString(ByteBuffer?)
    case array([RESPValue]?)
    /// Keys and values in turn: a RESP3 map, a flat array in RESP2 (the replies Pylon makes: HELLO).
    case map([RESPValue])
    /// A RESP3 double (a bulk string in RESP2), written as Redis formats it.
    case double(ByteBuffer)

    public static func bulk(_ string: String) -> RESPValue { .bulkString(ByteBuffer(string: string)) }
    public static func simple(_ string: String) -> RESPValue { .simpleString(ByteBuffer(string: string)) }
    public static func error(_ string: String) -> RESPValue { .error(ByteBuffer(string: string)) }
    public static let null = RESPValue.bulkString(nil)
    public static let ok = RESPValue.simple("OK")

    /// The value as text, for strings and errors.
    public var string: String? {
        switch self {
        case .simpleString(let b), .error(let b), .bulkString(.some(let b)): return String(buffer: b)
        case .integer(let i): return String(i)
        default: return nil
        }
    }

    public var int: Int? {
        switch self {
        case .integer(let i): return i
        case .bulkString(.some(let b)), .simpleString(let b): return Int(String(buffer: b))
        default: return nil
        }
    }

    public var array: [RESPValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    public var isError: Bool {
        if case .error = self { return true }
        return false
    }

    /// Encodes in `version`: RESP3 has its own null, map and double.
    public func encode(into buffer: inout ByteBuffer, version: RESPVersion) {
        guard version == .resp3 else { return self.encode(into: &buffer) }
        switch self {
        case .bulkString(nil), .array(nil):
            buffer.writeStaticString("_\r\n")
        case .array(.some(let elements)):
            buffer.writeString("*\(elements.count)\r\n")
            for element in elements { element.encode(into: &buffer, version: version) }
        case .map(let elements):
            buffer.writeString("%\(elements.count / 2)\r\n")
            for element in elements { element.encode(into: &buffer, version: version) }
        case .double(var b):
            buffer.writeInteger(UInt8(ascii: ","))
            buffer.writeBuffer(&b)
            buffer.writeInteger(crlf)
        default:
            self.encode(into: &buffer)
        }
    }

    public func encoded(_ version: RESPVersion) -> ByteBuffer {
        var buffer = ByteBuffer()
        self.encode(into: &buffer, version: version)
        return buffer
    }

    /// Encodes in RESP2.
    public func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .simpleString(var b):
            buffer.writeInteger(UInt8(ascii: "+"))
            buffer.writeBuffer(&b)
            buffer.writeInteger(crlf)
        case .error(var b):
            buffer.writeInteger(UInt8(ascii: "-"))
            buffer.writeBuffer(&b)
            buffer.writeInteger(crlf)
        case .integer(let i):
            buffer.writeString(":\(i)\r\n")
        case .bulkString(nil):
            buffer.writeStaticString("$-1\r\n")
        case .bulkString(.some(let b)):
            buffer.writeRESPBulkString(b)
        case .array(nil):
            buffer.writeStaticString("*-1\r\n")
        case .array(.some(let elements)), .map(let elements):
            buffer.writeString("*\(elements.count)\r\n")
            for element in elements { element.encode(into: &buffer) }
        case .double(let b):
            buffer.writeRESPBulkString(b)
        }
    }

    public var encoded: ByteBuffer {
        var buffer = ByteBuffer()
        self.encode(into: &buffer)
        return buffer
    }

    /// Decodes one complete value from the front of `buffer`, consuming it; nil if incomplete.
    public static func decode(from buffer: inout ByteBuffer, limits: RESPLimits = .default) throws -> RESPValue? {
        guard let length = try RESPReplyScanner(limits: limits).length(of: buffer, at: buffer.readerIndex) else { return nil }
        var slice = buffer.readSlice(length: length)!
        return try Self.parse(&slice)
    }

    /// Parses a value known to be complete (see `RESPReplyScanner`). RESP3 types are mapped to
    /// their RESP2 equivalents.
    private static func parse(_ buffer: inout ByteBuffer) throws -> RESPValue {
        let marker = buffer.readInteger(as: UInt8.self)!
        let cr = RESPRequestDecoder.firstIndex(of: UInt8(ascii: "\r"), in: buffer, from: buffer.readerIndex, limit: .max)!
        let line = buffer.readSlice(length: cr - buffer.readerIndex)!
        buffer.moveReaderIndex(forwardBy: 2)
        func number() throws -> Int {
            guard let n = RESPRequestDecoder.integer(line, line.readerIndex, line.writerIndex) else {
                throw RESPProtocolError("invalid length in reply")
            }
            return n
        }
        switch marker {
        case UInt8(ascii: "+"): return .simpleString(line)
        case UInt8(ascii: "-"), UInt8(ascii: "!"): return .error(line)
        case UInt8(ascii: ":"): return .integer(try number())
        case UInt8(ascii: "_"): return .null
        case UInt8(ascii: ","), UInt8(ascii: "("): return .bulkString(line)
        case UInt8(ascii: "#"): return .integer(line.getInteger(at: line.readerIndex, as: UInt8.self) == UInt8(ascii: "t") ? 1 : 0)
        case UInt8(ascii: "$"), UInt8(ascii: "="):
            let n = try number()
            if n < 0 { return .null }
            let body = buffer.readSlice(length: n)!
            buffer.moveReaderIndex(forwardBy: 2)
            return .bulkString(body)
        case UInt8(ascii: "*"), UInt8(ascii: "~"), UInt8(ascii: ">"), UInt8(ascii: "%"), UInt8(ascii: "|"):
            var n = try number()
            if n < 0 { return .array(nil) }
            if marker == UInt8(ascii: "%") || marker == UInt8(ascii: "|") { n *= 2 }
            var elements: [RESPValue] = []
            elements.reserveCapacity(n)
            for _ in 0..<n { elements.append(try parse(&buffer)) }
            if marker == UInt8(ascii: "|") { return try parse(&buffer) }
            return .array(elements)
        default:
            throw RESPProtocolError("unknown reply type '\(RESPRequestDecoder.printable(marker))'")
        }
    }
}

/// A shared empty buffer: what a connection holds between reads instead of the last receive buffer.
private let emptyBuffer = ByteBuffer()

extension ByteBuffer {
    /// Adds bytes just read to what is left of earlier reads; takes them as they are when
    /// nothing is left (no copy).
    mutating func accumulate(_ received: ByteBuffer) {
        if self.readableBytes == 0 {
            self = received
        } else {
            var received = received
            self.writeBuffer(&received)
        }
    }

    /// Once everything is decoded, lets go of the receive buffer so NIO can reuse it for the next
    /// read; a long-lived partial buffer drops the bytes already decoded.
    mutating func releaseIfConsumed() {
        if self.readableBytes == 0 {
            self = emptyBuffer
        } else if self.readerIndex > 64 * 1024 {
            self.discardReadBytes()
        }
    }
}

/// Finds where one complete reply ends without decoding it, so replies from Redis are forwarded
/// to clients as the bytes Redis sent. Understands RESP2 and RESP3; bounded nesting.
public struct RESPReplyScanner: Sendable {
    let limits: RESPLimits

    public init(limits: RESPLimits = .default) { self.limits = limits }

    /// The byte length of the complete value at `index`, or nil if more bytes are needed.
    public func length(of buffer: ByteBuffer, at index: Int) throws -> Int? {
        guard let end = try self.end(of: buffer, at: index, depth: 0) else { return nil }
        return end - index
    }

    private func end(of buffer: ByteBuffer, at index: Int, depth: Int) throws -> Int? {
        guard depth <= self.limits.maxNestingDepth else { throw RESPProtocolError("reply nested too deeply") }
        guard let marker = buffer.getInteger(at: index, as: UInt8.self) else { return nil }
        guard let line = try RESPRequestDecoder.line(in: buffer, from: index + 1, limit: .max, tooLong: "") else { return nil }
        switch marker {
        case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: ":"), UInt8(ascii: "_"), UInt8(ascii: ","),
             UInt8(ascii: "#"), UInt8(ascii: "("):
            return line.next
        case UInt8(ascii: "$"), UInt8(ascii: "!"), UInt8(ascii: "="):
            guard let n = RESPRequestDecoder.integer(buffer, line.start, line.end), n >= -1, n <= self.limits.maxBulkLength else {
                throw RESPProtocolError("invalid bulk length in reply")
            }
            if n == -1 { return line.next }
            let end = line.next + n + 2
            return end <= buffer.writerIndex ? end : nil
        case UInt8(ascii: "*"), UInt8(ascii: "~"), UInt8(ascii: ">"), UInt8(ascii: "%"), UInt8(ascii: "|"):
            guard var n = RESPRequestDecoder.integer(buffer, line.start, line.end), n >= -1 else {
                throw RESPProtocolError("invalid aggregate length in reply")
            }
            if marker == UInt8(ascii: "%") || marker == UInt8(ascii: "|") { n *= 2 }
            if marker == UInt8(ascii: "|") { n += 1 }  // attributes precede the value they describe
            var position = line.next
            var remaining = n
            while remaining > 0 {
                guard let next = try self.end(of: buffer, at: position, depth: depth + 1) else { return nil }
                position = next
                remaining -= 1
            }
            return position
        default:
            throw RESPProtocolError("unknown reply type '\(RESPRequestDecoder.printable(marker))'")
        }
    }
}

/// Splits Redis's reply stream into complete replies, each a zero-copy slice.
public struct RESPReplyDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = ByteBuffer
    private let scanner: RESPReplyScanner

    public init(limits: RESPLimits = .default) { self.scanner = RESPReplyScanner(limits: limits) }

    public mutating func decode(buffer: inout ByteBuffer) throws -> ByteBuffer? {
        guard let length = try self.scanner.length(of: buffer, at: buffer.readerIndex) else { return nil }
        return buffer.readSlice(length: length)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> ByteBuffer? {
        try self.decode(buffer: &buffer)
    }
}

extension ByteBuffer {
    /// Writes a command as a RESP array of bulk strings.
    public mutating func writeRESPCommand(_ arguments: [ByteBuffer]) {
        self.writeRESPArrayHeader(arguments.count)
        for argument in arguments { self.writeRESPBulkString(argument) }
    }

    /// Writes `*count\r\n`, the start of a command written element by element.
    public mutating func writeRESPArrayHeader(_ count: Int) {
        self.writeRESPLine(UInt8(ascii: "*"), count)
    }

    /// Writes one RESP bulk string (an element of a command being written by hand).
    public mutating func writeRESPBulkString(_ bytes: ByteBuffer) {
        self.writeRESPLine(UInt8(ascii: "$"), bytes.readableBytes)
        self.writeImmutableBuffer(bytes)
        self.writeInteger(crlf)
    }

    public mutating func writeRESPBulkString(_ text: String) {
        self.writeRESPLine(UInt8(ascii: "$"), text.utf8.count)
        self.writeString(text)
        self.writeInteger(crlf)
    }

    /// Writes an integer as a bulk string of its decimal digits.
    public mutating func writeRESPBulkString(_ integer: Int) {
        self.writeRESPLine(UInt8(ascii: "$"), (integer < 0 ? 1 : 0) + Self.digitCount(integer.magnitude))
        self.writeDecimal(integer)
        self.writeInteger(crlf)
    }

    /// `type` + decimal `n` + CRLF, without building a String (the encoders' hot path).
    mutating func writeRESPLine(_ type: UInt8, _ n: Int) {
        self.writeInteger(type)
        self.writeDecimal(n)
        self.writeInteger(crlf)
    }

    private mutating func writeDecimal(_ n: Int) {
        if n < 0 { self.writeInteger(UInt8(ascii: "-")) }
        var value = n.magnitude
        let width = Self.digitCount(value)
        self.writeWithUnsafeMutableBytes(minimumWritableBytes: width) { bytes in
            for index in stride(from: width - 1, through: 0, by: -1) {
                bytes[index] = UInt8(ascii: "0") + UInt8(value % 10)
                value /= 10
            }
            return width
        }
    }

    private static func digitCount(_ value: UInt) -> Int {
        var value = value
        var count = 1
        while value >= 10 {
            value /= 10
            count += 1
        }
        return count
    }

    /// A RESP error reply; `message` must include its prefix (`ERR …`, `WRONGTYPE …`).
    public static func respError(_ message: String) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeRESPError(message)
        return buffer
    }

    /// Writes a RESP error; `message` must include its prefix (`ERR …`, `WRONGTYPE …`).
    public mutating func writeRESPError(_ message: String) {
        self.writeInteger(UInt8(ascii: "-"))
        // An error line cannot hold CR or LF.
        for byte in message.utf8 { self.writeInteger(byte == 13 || byte == 10 ? UInt8(ascii: " ") : byte) }
        self.writeInteger(crlf)
    }
}
