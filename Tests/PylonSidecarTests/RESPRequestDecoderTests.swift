import NIOCore
import NIOTestUtils
import Testing

@testable import PylonSidecar

@Suite("RESP request decoder")
struct RESPRequestDecoderTests {
    func decodeAll(_ text: String, limits: RESPLimits = .default) throws -> [[String]] {
        var decoder = RESPRequestDecoder(limits: limits)
        var buffer = ByteBuffer(string: text)
        var out: [[String]] = []
        while let request = try decoder.decode(buffer: &buffer) {
            out.append(request.arguments.map { String(buffer: $0) })
        }
        return out
    }

    @Test func decodesArraysOfBulkStrings() throws {
        #expect(try self.decodeAll("*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n*1\r\n$4\r\nPING\r\n") == [["GET", "key"], ["PING"]])
    }

    @Test func keepsBinaryArgumentsIntact() throws {
        #expect(try self.decodeAll("*2\r\n$4\r\nECHO\r\n$6\r\na\r\nb\0c\r\n") == [["ECHO", "a\r\nb\0c"]])
    }

    @Test func rawIsTheExactRequest() throws {
        var decoder = RESPRequestDecoder()
        let text = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        var buffer = ByteBuffer(string: text + "*1\r\n$4\r\nPING\r\n")
        let request = try #require(try decoder.decode(buffer: &buffer))
        #expect(String(buffer: request.raw) == text)
    }

    @Test func skipsEmptyArraysAndLines() throws {
        #expect(try self.decodeAll("*0\r\n\r\n*-1\r\n*1\r\n$4\r\nPING\r\n") == [["PING"]])
    }

    @Test func decodesInlineCommandsWithQuotes() throws {
        #expect(try self.decodeAll("SET k \"a b\\x41\\n\" 'c\\'d'\r\nPING\n") == [["SET", "k", "a bA\n", "c'd"], ["PING"]])
    }

    @Test func rejectsUnbalancedQuotes() {
        #expect(throws: RESPProtocolError("unbalanced quotes in request")) { try self.decodeAll("SET k \"abc\r\n") }
    }

    @Test func waitsForMoreBytesAtEveryBoundary() throws {
        let requests = "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\nGET k\r\n*1\r\n$4\r\nPING\r\n"
        let bytes = Array(requests.utf8)
        for split in 0...bytes.count {
            var decoder = RESPRequestDecoder()
            var buffer = ByteBuffer(bytes: bytes[..<split])
            var out: [[String]] = []
            while let r = try decoder.decode(buffer: &buffer) { out.append(r.arguments.map { String(buffer: $0) }) }
            buffer.writeBytes(bytes[split...])
            while let r = try decoder.decode(buffer: &buffer) { out.append(r.arguments.map { String(buffer: $0) }) }
            #expect(out == [["SET", "key", "value"], ["GET", "k"], ["PING"]], "split at \(split)")
        }
    }

    @Test func verifiesWithNIOsDecoderVerifier() throws {
        let input = ByteBuffer(string: "*2\r\n$3\r\nGET\r\n$3\r\nkey\r\nPING\r\n")
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: [(input, [RedisRequest("GET", "key"), RedisRequest("PING")])],
            decoderFactory: { RESPRequestDecoder() }
        )
    }

    @Test(arguments: [
        ("*abc\r\n", "invalid multibulk length"),
        ("*2\r\n$3\r\nGET\r\n:1\r\n", "expected '$', got ':'"),
        ("*1\r\n$-5\r\n", "invalid bulk length"),
        ("*1\r\n$3\r\nGETX\r\n", "bulk string of declared length 3 is not followed by CRLF"),
        ("*1\r\n*1\r\n$1\r\na\r\n", "expected '$', got '*'"),
    ])
    func rejectsMalformedInput(input: String, reason: String) {
        #expect(throws: RESPProtocolError(reason)) { try self.decodeAll(input) }
    }

    @Test func enforcesLimits() throws {
        let limits = RESPLimits(maxBulkLength: 10, maxArrayLength: 4, maxInlineLength: 16)
        #expect(throws: RESPProtocolError("invalid bulk length")) { try self.decodeAll("*1\r\n$11\r\n", limits: limits) }
        #expect(throws: RESPProtocolError("invalid multibulk length")) { try self.decodeAll("*5\r\n", limits: limits) }
        #expect(throws: RESPProtocolError("too big inline request")) { try self.decodeAll(String(repeating: "a", count: 17), limits: limits) }
        #expect(throws: RESPProtocolError("too big mbulk count string")) { try self.decodeAll("*" + String(repeating: "1", count: 40), limits: limits) }
        // A declared length within limits waits for its bytes instead of failing.
        #expect(try self.decodeAll("*1\r\n$10\r\n0123", limits: limits) == [])
    }

    @Test func hugeDeclaredLengthsDoNotAllocate() throws {
        // Redis's default limit accepts 512 MB; the decoder must wait, not reserve memory up front.
        #expect(try self.decodeAll("*1\r\n$536870912\r\nabc") == [])
        #expect(throws: RESPProtocolError("invalid bulk length")) { try self.decodeAll("*1\r\n$536870913\r\n") }
        #expect(throws: RESPProtocolError("invalid multibulk length")) { try self.decodeAll("*99999999999999999999\r\n") }
    }
}

@Suite("RESP replies")
struct RESPReplyTests {
    @Test func scansCompleteRepliesOnly() throws {
        let scanner = RESPReplyScanner()
        let reply = "*3\r\n$3\r\nfoo\r\n$-1\r\n*2\r\n:1\r\n+OK\r\n"
        let bytes = Array(reply.utf8)
        for split in 0..<bytes.count {
            #expect(try scanner.length(of: ByteBuffer(bytes: bytes[..<split]), at: 0) == nil, "split at \(split)")
        }
        #expect(try scanner.length(of: ByteBuffer(string: reply + "+extra\r\n"), at: 0) == bytes.count)
    }

    @Test func understandsRESP3Types() throws {
        let scanner = RESPReplyScanner()
        for reply in ["%1\r\n+a\r\n:1\r\n", "_\r\n", ",1.5\r\n", "#t\r\n", "~2\r\n+a\r\n+b\r\n", "=7\r\ntxt:abc\r\n", "(123\r\n", "|1\r\n+k\r\n+v\r\n+real\r\n"] {
            #expect(try scanner.length(of: ByteBuffer(string: reply), at: 0) == reply.utf8.count, "\(reply)")
        }
    }

    @Test func guardsNestingDepth() {
        let scanner = RESPReplyScanner(limits: RESPLimits(maxNestingDepth: 3))
        #expect(throws: RESPProtocolError("reply nested too deeply")) {
            try scanner.length(of: ByteBuffer(string: "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"), at: 0)
        }
    }

    @Test func roundTripsValues() throws {
        let value = RESPValue.array([.bulk("a"), .integer(-3), .null, .simple("OK"), .error("ERR x"), .array(nil), .array([])])
        var buffer = value.encoded
        #expect(try RESPValue.decode(from: &buffer) == value)
        #expect(buffer.readableBytes == 0)
    }

    @Test func errorRepliesCannotCarryNewlines() {
        var buffer = ByteBuffer()
        buffer.writeRESPError("ERR a\r\nb")
        #expect(String(buffer: buffer) == "-ERR a  b\r\n")
    }
}
