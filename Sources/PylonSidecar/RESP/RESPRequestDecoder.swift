import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Decodes client requests: RESP arrays of bulk strings (what every client library sends) and
/// inline commands (what `redis-cli` in some modes and telnet send), with the limits of `RESPLimits`.
///
/// Arguments are slices of the input buffer, never copies. A partly received array keeps its
/// parse position between calls, so a huge request arriving in small pieces is scanned once.
public struct RESPRequestDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = RedisRequest

    private let limits: RESPLimits
    /// Progress through an array whose elements have not all arrived; offsets relative to readerIndex.
    private var partial: PartialArray?

    private struct PartialArray {
        var count: Int
        var arguments: [(offset: Int, length: Int)]
        var scanOffset: Int
    }

    public init(limits: RESPLimits = .default) {
        self.limits = limits
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> RedisRequest? {
        while let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) {
            let request: RedisRequest?
            let consumed: Bool
            if first == UInt8(ascii: "*") {
                (request, consumed) = try self.decodeArray(&buffer)
            } else {
                (request, consumed) = try self.decodeInline(&buffer)
            }
            if let request { return request }
            // An empty array or empty line is skipped, as Redis does; anything else needs more bytes.
            if !consumed { return nil }
        }
        return nil
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> RedisRequest? {
        try self.decode(buffer: &buffer)
    }

    // MARK: - Arrays

    private mutating func decodeArray(_ buffer: inout ByteBuffer) throws -> (RedisRequest?, consumed: Bool) {
        let base = buffer.readerIndex
        var state: PartialArray
        if let partial = self.partial {
            state = partial
        } else {
            guard let line = try Self.line(in: buffer, from: base + 1, limit: 32, tooLong: "too big mbulk count string") else {
                return (nil, false)
            }
            guard let count = Self.integer(buffer, line.start, line.end), count <= self.limits.maxArrayLength else {
                throw RESPProtocolError("invalid multibulk length")
            }
            if count <= 0 {
                buffer.moveReaderIndex(to: line.next)
                return (nil, true)
            }
            state = PartialArray(count: count, arguments: [], scanOffset: line.next - base)
            state.arguments.reserveCapacity(min(count, 1024))
        }
        defer { self.partial = state.arguments.count < state.count ? state : nil }

        while state.arguments.count < state.count {
            let at = base + state.scanOffset
            guard let marker = buffer.getInteger(at: at, as: UInt8.self) else { return (nil, false) }
            guard marker == UInt8(ascii: "$") else {
                throw RESPProtocolError("expected '$', got '\(Self.printable(marker))'")
            }
            guard let line = try Self.line(in: buffer, from: at + 1, limit: 32, tooLong: "too big bulk count string") else {
                return (nil, false)
            }
            guard let length = Self.integer(buffer, line.start, line.end), length >= 0, length <= self.limits.maxBulkLength else {
                throw RESPProtocolError("invalid bulk length")
            }
            let end = line.next + length
            guard end + 2 <= buffer.writerIndex else { return (nil, false) }
            guard buffer.getInteger(at: end, as: UInt16.self) == crlf else {
                throw RESPProtocolError("bulk string of declared length \(length) is not followed by CRLF")
            }
            state.arguments.append((line.next - base, length))
            state.scanOffset = end + 2 - base
        }

        var arguments = [ByteBuffer]()
        arguments.reserveCapacity(state.count)
        for argument in state.arguments {
            arguments.append(buffer.getSlice(at: base + argument.offset, length: argument.length)!)
        }
        let raw = buffer.readSlice(length: state.scanOffset)!
        return (RedisRequest(arguments: arguments, raw: raw), true)
    }

    // MARK: - Inline commands

    private func decodeInline(_ buffer: inout ByteBuffer) throws -> (RedisRequest?, consumed: Bool) {
        let start = buffer.readerIndex
        guard let newline = Self.firstIndex(of: UInt8(ascii: "\n"), in: buffer, from: start, limit: self.limits.maxInlineLength) else {
            if buffer.readableBytes > self.limits.maxInlineLength {
                throw RESPProtocolError("too big inline request")
            }
            return (nil, false)
        }
        var end = newline
        if end > start, buffer.getInteger(at: end - 1, as: UInt8.self) == UInt8(ascii: "\r") { end -= 1 }
        let line = buffer.getSlice(at: start, length: end - start)!
        buffer.moveReaderIndex(to: newline + 1)
        guard let arguments = InlineSplitter.split(line) else {
            throw RESPProtocolError("unbalanced quotes in request")
        }
        if arguments.isEmpty { return (nil, true) }
        return (RedisRequest(arguments), true)
    }

    // MARK: - Scanning helpers

    /// Finds the CRLF-terminated line starting at `from`. Throws if no CRLF appears within `limit` bytes.
    static func line(in buffer: ByteBuffer, from: Int, limit: Int, tooLong: String) throws -> (start: Int, end: Int, next: Int)? {
        guard let cr = firstIndex(of: UInt8(ascii: "\r"), in: buffer, from: from, limit: limit) else {
            if buffer.writerIndex - from > limit { throw RESPProtocolError(tooLong) }
            return nil
        }
        guard cr + 1 < buffer.writerIndex else { return nil }
        guard buffer.getInteger(at: cr + 1, as: UInt8.self) == UInt8(ascii: "\n") else {
            throw RESPProtocolError("expected CRLF after a length")
        }
        return (from, cr, cr + 2)
    }

    static func firstIndex(of byte: UInt8, in buffer: ByteBuffer, from: Int, limit: Int) -> Int? {
        let available = buffer.writerIndex - from
        guard available > 0 else { return nil }
        let length = limit >= available ? available : limit + 1
        let offset = from - buffer.readerIndex
        return buffer.withUnsafeReadableBytes { bytes -> Int? in
            let start = UnsafeRawPointer(bytes.baseAddress!) + offset
            guard let found = memchr(start, Int32(byte), length) else { return nil }
            return from + (UnsafeRawPointer(found) - start)
        }
    }

    /// Parses a signed decimal integer; nil when empty, not a number, or overflowing.
    static func integer(_ buffer: ByteBuffer, _ start: Int, _ end: Int) -> Int? {
        guard end > start else { return nil }
        var index = start
        var negative = false
        if buffer.getInteger(at: index, as: UInt8.self) == UInt8(ascii: "-") {
            negative = true
            index += 1
            guard end > index else { return nil }
        }
        // Accumulated negatively, so Int.min (a reply Redis can give) fits.
        var value = 0
        while index < end {
            let digit = Int(buffer.getInteger(at: index, as: UInt8.self)!) - 48
            guard digit >= 0, digit <= 9 else { return nil }
            let (times10, o1) = value.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times10.subtractingReportingOverflow(digit)
            guard !o1, !o2 else { return nil }
            value = sum
            index += 1
        }
        if negative { return value }
        let (positive, overflow) = (0).subtractingReportingOverflow(value)
        return overflow ? nil : positive
    }

    static func printable(_ byte: UInt8) -> String {
        (32..<127).contains(byte) ? String(UnicodeScalar(byte)) : "\\x" + String(byte, radix: 16)
    }
}

let crlf = UInt16(0x0D0A)

/// Splits an inline command line the way Redis's `sdssplitargs` does: whitespace separates
/// arguments; "double quotes" allow escapes (\n, \xHH, …); 'single quotes' allow only \'.
enum InlineSplitter {
    static func split(_ line: ByteBuffer) -> [ByteBuffer]? {
        let bytes = Array(line.readableBytesView)
        var arguments: [ByteBuffer] = []
        var i = 0
        func isSpace(_ b: UInt8) -> Bool { b == 32 || b == 9 || b == 10 || b == 13 || b == 11 || b == 12 }
        while true {
            while i < bytes.count, isSpace(bytes[i]) { i += 1 }
            if i == bytes.count { return arguments }
            var current: [UInt8] = []
            var inDouble = false
            var inSingle = false
            var done = false
            while !done {
                if inDouble {
                    guard i < bytes.count else { return nil }
                    let b = bytes[i]
                    if b == UInt8(ascii: "\\"), i + 3 < bytes.count, bytes[i + 1] == UInt8(ascii: "x"),
                       let h = hex(bytes[i + 2]), let l = hex(bytes[i + 3]) {
                        current.append(h << 4 | l)
                        i += 3
                    } else if b == UInt8(ascii: "\\"), i + 1 < bytes.count {
                        i += 1
                        switch bytes[i] {
                        case UInt8(ascii: "n"): current.append(10)
                        case UInt8(ascii: "r"): current.append(13)
                        case UInt8(ascii: "t"): current.append(9)
                        case UInt8(ascii: "b"): current.append(8)
                        case UInt8(ascii: "a"): current.append(7)
                        default: current.append(bytes[i])
                        }
                    } else if b == UInt8(ascii: "\"") {
                        // A closing quote must be followed by a space or the end.
                        if i + 1 < bytes.count, !isSpace(bytes[i + 1]) { return nil }
                        done = true
                    } else {
                        current.append(b)
                    }
                } else if inSingle {
                    guard i < bytes.count else { return nil }
                    let b = bytes[i]
                    if b == UInt8(ascii: "\\"), i + 1 < bytes.count, bytes[i + 1] == UInt8(ascii: "'") {
                        i += 1
                        current.append(UInt8(ascii: "'"))
                    } else if b == UInt8(ascii: "'") {
                        if i + 1 < bytes.count, !isSpace(bytes[i + 1]) { return nil }
                        done = true
                    } else {
                        current.append(b)
                    }
                } else {
                    if i == bytes.count { done = true; break }
                    let b = bytes[i]
                    if isSpace(b) {
                        done = true
                    } else if b == UInt8(ascii: "\"") {
                        inDouble = true
                    } else if b == UInt8(ascii: "'") {
                        inSingle = true
                    } else {
                        current.append(b)
                    }
                }
                if i < bytes.count { i += 1 }
            }
            arguments.append(ByteBuffer(bytes: current))
        }
    }

    private static func hex(_ b: UInt8) -> UInt8? {
        switch b {
        case 48...57: return b - 48
        case 97...102: return b - 87
        case 65...70: return b - 55
        default: return nil
        }
    }
}
