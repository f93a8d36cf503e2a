import Foundation
import NIOCore
import Testing

@testable import PylonSidecar

/// The rewritten writes are valid Redis commands with the same effect as the originals.
@Suite("Write planner against a live redis-server", .timeLimit(.minutes(3)))
struct WritePlannerLiveTests {
    @Test(arguments: [
        ["SET", "KEY", "v", "EX", "100"], ["SET", "KEY", "v", "PX", "100000", "NX"], ["SETEX", "KEY", "100", "v"],
        ["PSETEX", "KEY", "100000", "v"], ["EXPIRE", "KEY", "100"], ["PEXPIRE", "KEY", "100000"],
        ["GETEX", "KEY", "EX", "100"], ["SET", "KEY", "v", "EXAT", "\(Int(Date().timeIntervalSince1970) + 100)"],
    ])
    func rewrittenWritesHaveTheSameEffect(template: [String]) async throws {
        let redis = try RedisServer()
        let client = try await redis.client()
        func arguments(_ key: String) -> [ByteBuffer] { template.map { ByteBuffer(string: $0 == "KEY" ? key : $0) } }
        _ = try await client.send("SET", "original", "old")
        _ = try await client.send("SET", "rewritten", "old")
        guard case .command(let command) = CommandTable.shared.lookup(arguments("rewritten")) else { throw CancellationError() }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let ops = try WritePlanner.plan(arguments("rewritten"), command: command, now: now)
        #expect(ops.count == 1)
        let originalReply = try await client.send(template.map { $0 == "KEY" ? "original" : $0 })
        let rewrittenReply = try await client.send(ops[0].arguments.map { String(buffer: $0) })
        #expect(originalReply.isError == false && rewrittenReply.isError == false, "\(rewrittenReply)")
        #expect(try await client.send("GET", "original") == client.send("GET", "rewritten"))
        let a = try #require(try await client.send("PTTL", "original").int)
        let b = try #require(try await client.send("PTTL", "rewritten").int)
        #expect(abs(a - b) < 1000, "PTTL \(a) vs \(b)")
    }

    @Test func xaddWithAGatewayTimestampIsAccepted() async throws {
        let redis = try RedisServer()
        let client = try await redis.client()
        let buffers = ["XADD", "s", "*", "f", "v"].map { ByteBuffer(string: $0) }
        guard case .command(let command) = CommandTable.shared.lookup(buffers) else { throw CancellationError() }
        let ops = try WritePlanner.plan(buffers, command: command, now: 1_764_000_000_000)
        #expect(try await client.send(ops[0].arguments.map { String(buffer: $0) }) == .bulk("1764000000000-0"))
        #expect(try await client.send(ops[0].arguments.map { String(buffer: $0) }) == .bulk("1764000000000-1"))
    }
}
