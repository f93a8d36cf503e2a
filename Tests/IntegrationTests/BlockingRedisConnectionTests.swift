import NIOCore
import Testing

@testable import PylonSidecar

/// The applier's connection to its Redis: blocking calls on the applier's own thread.
@Suite("Blocking Redis connection against a live Redis", .serialized, .timeLimit(.minutes(1)))
struct BlockingRedisConnectionTests {
    func request(_ commands: [String]...) -> ByteBuffer {
        var bytes = ByteBuffer()
        for command in commands { bytes.writeRESPCommand(command.map { ByteBuffer(string: $0) }) }
        return bytes
    }

    @Test func eachPipelineGetsItsOwnRepliesWhateverOrderTheyAreRead() throws {
        let redis = try RedisServer()
        let connection = try BlockingRedisConnection(to: redis.address, timeout: .seconds(2))
        let first = try connection.send(self.request(["SET", "k", "1"], ["INCR", "k"]), replies: 2)
        let second = try connection.send(self.request(["INCRBY", "k", "10"]), replies: 1)
        // The later pipeline is read first (the applier claims a partition while a batch is in
        // flight): the earlier one's replies are kept for it.
        #expect(try connection.receive(second) == [.integer(12)])
        #expect(try connection.receive(first) == [.ok, .integer(2)])
        #expect(try connection.exchange(self.request(["GET", "k"]), replies: 1) == [.bulkString(ByteBuffer(string: "12"))])
        // A large pipeline, larger than one read, comes back whole.
        let value = String(repeating: "v", count: 300_000)
        #expect(try connection.exchange(self.request(["SET", "big", value], ["GET", "big"]), replies: 2) == [.ok, .bulkString(ByteBuffer(string: value))])
        #expect(connection.isOpen)
    }

    @Test func aRedisThatGoesAwayIsNoticedAndATimeoutClosesTheConnection() throws {
        let redis = try RedisServer()
        let connection = try BlockingRedisConnection(to: redis.address, timeout: .milliseconds(300))
        // No reply within the timeout: a clear error, and the connection is closed so that a late
        // reply is never taken for a later request's.
        #expect(throws: BlockingRedisConnection.Failure.self) { _ = try connection.exchange(self.request(["BLPOP", "nothing", "2"]), replies: 1) }
        #expect(!connection.isOpen)

        let second = try BlockingRedisConnection(to: redis.address, timeout: .seconds(2))
        #expect(second.isOpen)
        redis.stop()
        #expect(throws: BlockingRedisConnection.Failure.self) { _ = try second.exchange(self.request(["PING"]), replies: 1) }
        #expect(!second.isOpen)
        #expect(throws: BlockingRedisConnection.Failure.self) { _ = try BlockingRedisConnection(to: redis.address, timeout: .seconds(1)) }
    }
}
