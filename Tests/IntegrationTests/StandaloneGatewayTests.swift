import Foundation
import NIOCore
import PylonSidecar
import Testing

/// The read path against a real redis-server: what a client sees through the sidecar.
@Suite("Gateway in front of a standalone Redis", .timeLimit(.minutes(3)))
struct StandaloneGatewayTests {
    @Test func readsAreServedByTheLocalRedis() async throws {
        let redis = try RedisServer()
        let sidecar = try await SidecarFixture(redis: .standalone(redis.address))
        let direct = try await redis.client()
        _ = try await direct.send("SET", "greeting", "hello")
        _ = try await direct.send("RPUSH", "list", "a", "b", "c")
        let client = try await sidecar.client()
        #expect(try await client.send("GET", "greeting") == .bulk("hello"))
        #expect(try await client.send("get", "missing") == .null)
        #expect(try await client.send("MGET", "greeting", "missing") == .array([.bulk("hello"), .null]))
        #expect(try await client.send("LRANGE", "list", "0", "-1") == .array([.bulk("a"), .bulk("b"), .bulk("c")]))
        #expect(try await client.send("GET", "list").string?.hasPrefix("WRONGTYPE") == true)
        await sidecar.stop()
    }

    @Test func writesAreRefusedUntilAWorldIsConfigured() async throws {
        let redis = try RedisServer()
        let sidecar = try await SidecarFixture(redis: .standalone(redis.address))
        let client = try await sidecar.client()
        let reply = try await client.send("SET", "k", "v")
        #expect(reply.isError)
        #expect(reply.string?.contains("no world configured") == true)
        // Never a silent success: the key did not reach Redis.
        #expect(try await redis.client().send("EXISTS", "k") == .integer(0))
        await sidecar.stop()
    }

    @Test func answersConnectionCommandsLikeRedis() async throws {
        let redis = try RedisServer()
        let sidecar = try await SidecarFixture(redis: .standalone(redis.address))
        let client = try await sidecar.client()
        #expect(try await client.send("PING") == .simple("PONG"))
        #expect(try await client.send("PING", "hi") == .bulk("hi"))
        #expect(try await client.send("PING", "x", "y") == .error("ERR wrong number of arguments for 'ping' command"))
        #expect(try await client.send("ECHO", "x y") == .bulk("x y"))
        #expect(try await client.send("CLIENT", "GETNAME") == .null)
        #expect(try await client.send("CLIENT", "SETNAME", "worker-1") == .ok)
        #expect(try await client.send("CLIENT", "GETNAME") == .bulk("worker-1"))
        #expect(try await client.send("CLIENT", "SETNAME", "bad name").isError)
        let id = try #require(try await client.send("CLIENT", "ID").int)
        #expect(try await client.send("CLIENT", "INFO").string?.contains("id=\(id) ") == true)
        #expect(try await client.send("CLIENT", "LIST").string?.contains("name=worker-1") == true)
        #expect(try await client.send("SELECT", "5") == .ok)
        let hello = try #require(try await client.send("HELLO", "2").array)
        #expect(hello[0] == .bulk("server") && hello[5] == .integer(2))
        #expect(try await client.send("HELLO", "4").string == "NOPROTO unsupported protocol version")
        let hello3 = try #require(try await client.send("HELLO", "3").array)  // a map, decoded as pairs
        #expect(hello3[4] == .bulk("proto") && hello3[5] == .integer(3))
        #expect(try await client.send("CLIENT", "INFO").string?.contains("resp=3") == true)
        #expect(try await client.send("CLIENT", "GETNAME") == .bulk("worker-1"))
        #expect(try await client.send("HELLO", "2").array?[5] == .integer(2))
        #expect(try await client.send("COMMAND", "COUNT").int == 240)
        let docs = try #require(try await client.send("COMMAND", "DOCS", "get").array)
        #expect(docs.first == .bulk("get"))
        #expect(try await client.send("NOSUCHCMD", "a").string == "ERR unknown command 'NOSUCHCMD', with args beginning with: 'a' ")
        #expect(try await client.send("BLPOP", "l", "0").string?.hasPrefix("ERR pylon: blocking commands are not supported") == true)
        #expect(try await client.send("QUIT") == .ok)
        let closed = try await eventually { !client.channel.isActive }
        #expect(closed)
        await sidecar.stop()
    }

    @Test func pylonInfoDescribesTheSidecar() async throws {
        let redis = try RedisServer()
        let sidecar = try await SidecarFixture(redis: .standalone(redis.address)) { $0.rack = "rack-a"; $0.world = "earth" }
        let client = try await sidecar.client()
        _ = try await client.send("GET", "k")
        _ = try await client.send("SUBSCRIBE", "c")
        let info = try #require(try await client.send("PYLON", "INFO").string)
        for line in ["pylon_version:", "rack:rack-a", "world:earth", "topology:standalone", "backend_ready:1",
                     "node0:address=\(redis.address),role=master,state=up", "connected_clients:1", "commands_read:1", "commands_refused:1"] {
            #expect(info.contains(line), "missing \(line) in \(info)")
        }
        #expect(try await client.send("PYLON", "HELP").array?.isEmpty == false)
        #expect(try await client.send("PYLON", "NOPE").string == "ERR unknown subcommand 'NOPE'. Try PYLON HELP.")
        await sidecar.stop()
    }

    @Test func pipelinedRepliesKeepRequestOrder() async throws {
        let redis = try RedisServer()
        let sidecar = try await SidecarFixture(redis: .standalone(redis.address))
        let direct = try await redis.client()
        for i in 0..<50 { _ = try await direct.send("SET", "k\(i)", "v\(i)") }
        let client = try await sidecar.client()
        // Local answers (PING, errors) interleave with Redis's: the order must hold anyway.
        var batch = ByteBuffer()
        var expected: [RESPValue] = []
        for i in 0..<3000 {
            switch i % 4 {
            case 0: batch.writeRESPCommand(["GET", "k\(i % 50)"].map { ByteBuffer(string: $0) }); expected.append(.bulk("v\(i % 50)"))
            case 1: batch.writeRESPCommand(["ECHO", "e\(i)"].map { ByteBuffer(string: $0) }); expected.append(.bulk("e\(i)"))
            case 2: batch.writeString("PING \(i)\r\n"); expected.append(.bulk("\(i)"))
            default: batch.writeRESPCommand(["STRLEN", "k\(i % 50)"].map { ByteBuffer(string: $0) }); expected.append(.integer("v\(i % 50)".count))
            }
        }
        let replies = try await client.sendRaw(batch, replies: expected.count)
        #expect(replies == expected)
        await sidecar.stop()
    }

    @Test func manyConcurrentClients() async throws {
        let redis = try RedisServer()
        let sidecar = try await SidecarFixture(redis: .standalone(redis.address))
        _ = try await redis.client().send("SET", "shared", "yes")
        try await withThrowingTaskGroup(of: Void.self) { group in
            for n in 0..<200 {
                group.addTask {
                    let client = try await sidecar.client()
                    for _ in 0..<20 {
                        #expect(try await client.send("GET", "shared") == .bulk("yes"))
                    }
                    #expect(try await client.send("ECHO", "\(n)") == .bulk("\(n)"))
                    await client.close()
                }
            }
            try await group.waitForAll()
        }
        #expect(sidecar.sidecar.stats.totalConnections.load(ordering: .relaxed) == 200)
        await sidecar.stop()
    }
}
