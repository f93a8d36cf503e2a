import Foundation
import NIOCore
import PylonSidecar
import Testing

/// Hostile or broken clients: the offending connection gets a Redis-style error and is closed;
/// the sidecar keeps serving everyone else.
@Suite("Bad input", .timeLimit(.minutes(3)))
struct BadInputTests {
    @Test(arguments: [
        ("*2\r\n$3\r\nGET\r\n:5\r\n", "ERR Protocol error: expected '$', got ':'"),
        ("*1\r\n$999999999999\r\n", "ERR Protocol error: invalid bulk length"),
        ("*99999999\r\n", "ERR Protocol error: invalid multibulk length"),
        ("SET \"unbalanced\r\n", "ERR Protocol error: unbalanced quotes in request"),
        ("*1\r\n$3\r\nGETXX\r\n", "ERR Protocol error: bulk string of declared length 3 is not followed by CRLF"),
    ])
    func protocolErrorsCloseOnlyTheOffender(garbage: String, error: String) async throws {
        let redis = try RedisServer()
        _ = try await redis.client().send("SET", "k", "v")
        let sidecar = try await SidecarFixture(redis: .standalone(redis.address))
        let bystander = try await sidecar.client()
        let offender = try await sidecar.client()
        // A valid request first: its reply comes before the error, as with Redis.
        var bytes = ByteBuffer(string: "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        bytes.writeString(garbage)
        let replies = try await offender.sendRaw(bytes, replies: 2)
        #expect(replies == [.bulk("v"), .error(error)])
        #expect(try await eventually { !offender.channel.isActive })
        #expect(try await bystander.send("GET", "k") == .bulk("v"))
        let info = try #require(try await bystander.send("PYLON", "INFO").string)
        #expect(info.contains("protocol_errors:1"))
        await sidecar.stop()
    }

    @Test func tooBigInlineRequestIsRefused() async throws {
        let redis = try RedisServer()
        let sidecar = try await SidecarFixture(redis: .standalone(redis.address))
        let client = try await sidecar.client()
        let replies = try await client.sendRaw(ByteBuffer(string: String(repeating: "x", count: 70_000)), replies: 1)
        #expect(replies == [.error("ERR Protocol error: too big inline request")])
        #expect(try await sidecar.client().send("PING") == .simple("PONG"))
        await sidecar.stop()
    }

    @Test func oversizedValuesHitTheConfiguredLimit() async throws {
        let redis = try RedisServer()
        let sidecar = try await SidecarFixture(redis: .standalone(redis.address)) { $0.limits.maxBulkLength = 1024 }
        let client = try await sidecar.client()
        var request = ByteBuffer()
        request.writeRESPCommand([ByteBuffer(string: "ECHO"), ByteBuffer(repeating: 0x61, count: 2048)])
        let replies = try await client.sendRaw(request, replies: 1)
        #expect(replies == [.error("ERR Protocol error: invalid bulk length")])
        #expect(try await sidecar.client().send("ECHO", String(repeating: "a", count: 1024)).string?.count == 1024)
        await sidecar.stop()
    }

    @Test func randomGarbageNeverTakesTheSidecarDown() async throws {
        let redis = try RedisServer()
        let sidecar = try await SidecarFixture(redis: .standalone(redis.address))
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<50 {
            let client = try await sidecar.client()
            let garbage = (0..<Int.random(in: 1...4096, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            _ = try? await client.sendRaw(ByteBuffer(bytes: garbage), replies: 0)
            await client.close()
        }
        #expect(try await sidecar.client().send("PING") == .simple("PONG"))
        await sidecar.stop()
    }

    @Test func aClientThatNeverReadsIsThrottledNotFatal() async throws {
        let redis = try RedisServer()
        _ = try await redis.client().send("SET", "big", String(repeating: "x", count: 64 * 1024))
        let sidecar = try await SidecarFixture(redis: .standalone(redis.address)) { $0.maxPendingReplies = 64 }
        // A raw socket that writes a flood of GETs and reads nothing.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(sidecar.address.port).bigEndian)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(connected == 0)
        var flags = fcntl(fd, F_GETFL)
        flags |= O_NONBLOCK
        _ = fcntl(fd, F_SETFL, flags)
        let request = Array("*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".utf8)
        var sent = 0
        for _ in 0..<200_000 {
            let n = request.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            sent += 1
        }
        // The sidecar stopped reading from this client long before it sent everything.
        #expect(sent < 200_000)
        // Its own buffers stay bounded: the requests it holds are bounded by max-pending-replies.
        #expect(sidecar.sidecar.stats.pendingReplies.load(ordering: .relaxed) <= 64 + 1)
        // Everyone else is served.
        let other = try await sidecar.client()
        #expect(try await other.send("STRLEN", "big") == .integer(64 * 1024))
        await sidecar.stop()
    }
}
