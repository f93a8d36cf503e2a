import NIOCore
import PylonSidecar
import Testing

@testable import PylonSidecar

/// The command table must stay true to the real server.
@Suite("Command table against a live redis-server", .timeLimit(.minutes(3)))
struct CommandTableLiveTests {
    @Test func matchesTheServersCommandReply() async throws {
        let redis = try RedisServer()
        let client = try await redis.client()
        let live = try #require(try await client.send("COMMAND").array)
        var liveNames = Set<String>()
        func check(_ entry: RESPValue, expected: RedisCommandInfo?) {
            let fields = entry.array!
            let name = fields[0].string!
            guard let expected else {
                Issue.record("\(name) is missing from the command table")
                return
            }
            #expect(expected.arity == fields[1].int, "\(name) arity")
            #expect(Set(expected.flags) == Set(fields[2].array!.compactMap(\.string)), "\(name) flags")
            #expect(expected.legacyKeys.first == fields[3].int && expected.legacyKeys.last == fields[4].int && expected.legacyKeys.step == fields[5].int, "\(name) keys")
            #expect(expected.keySpecs.count == fields[8].array!.count, "\(name) key specs")
            let liveSubs = fields[9].array!
            #expect(expected.subcommands.count == liveSubs.count, "\(name) subcommands")
            for sub in liveSubs {
                check(sub, expected: expected.subcommands.first { $0.name == sub.array![0].string })
            }
        }
        for entry in live {
            let name = entry.array![0].string!
            liveNames.insert(name)
            check(entry, expected: RedisCommandInfo.all.first { $0.name == name })
        }
        #expect(liveNames == Set(RedisCommandInfo.all.map(\.name)))
    }

    @Test(arguments: [
        ["MGET", "a", "b", "c"], ["MSET", "a", "1", "b", "2"], ["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"],
        ["XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"], ["LMPOP", "2", "a", "b", "LEFT"],
        ["SINTERCARD", "3", "a", "b", "c"], ["ZDIFF", "2", "a", "b", "WITHSCORES"], ["GEOSEARCHSTORE", "d", "s", "FROMMEMBER", "m", "BYRADIUS", "1", "km"],
        ["BITOP", "AND", "d", "a", "b"], ["OBJECT", "ENCODING", "k"], ["XGROUP", "CREATE", "s", "g", "$"], ["RENAME", "a", "b"],
        ["EVAL", "return 1", "2", "k1", "k2"],
    ])
    func findsTheSameKeysAsTheServer(arguments: [String]) async throws {
        let redis = try RedisServer()
        let client = try await redis.client()
        let live = try await client.send(["COMMAND", "GETKEYS"] + arguments).array!.map { $0.string! }
        guard case .command(let command) = CommandTable.shared.lookup(arguments.map { ByteBuffer(string: $0) }) else {
            Issue.record("no command for \(arguments)")
            return
        }
        let ours = try #require(command.keyPositions(in: arguments.map { ByteBuffer(string: $0) })).map { arguments[$0] }
        #expect(ours == live)
    }
}
