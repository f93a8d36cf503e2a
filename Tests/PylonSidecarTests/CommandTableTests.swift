import NIOCore
import Testing

@testable import PylonSidecar

@Suite("Command table")
struct CommandTableTests {
    let table = CommandTable.shared

    func command(_ arguments: String...) throws -> Command {
        guard case .command(let command) = self.table.lookup(arguments.map { ByteBuffer(string: $0) }) else {
            Issue.record("no command for \(arguments)")
            throw CancellationError()
        }
        return command
    }

    func error(_ arguments: String...) -> String? {
        if case .error(let message) = self.table.lookup(arguments.map { ByteBuffer(string: $0) }) { return message }
        return nil
    }

    @Test func classifiesEveryCommandOfRedis70() {
        // 240 top-level commands in Redis 7.0, plus PYLON.
        #expect(self.table.commands.names.count == 241)
        for command in self.table.all {
            if case .refused(let reason) = command.disposition {
                #expect(reason.hasPrefix("ERR pylon: "), "\(command.name): \(reason)")
            }
        }
    }

    @Test(arguments: [
        (["GET", "k"], Disposition.read), (["get", "k"], .read), (["MGET", "a", "b"], .read),
        (["SET", "k", "v"], .write), (["INCR", "k"], .write), (["DEL", "a", "b"], .write), (["LPOP", "l"], .write),
        (["FLUSHALL"], .write), (["XADD", "s", "*", "f", "v"], .write),
        (["SCAN", "0"], .read), (["INFO"], .read), (["TTL", "k"], .read), (["OBJECT", "ENCODING", "k"], .read),
        (["MEMORY", "USAGE", "k"], .read), (["COMMAND"], .read), (["COMMAND", "DOCS", "get"], .read),
        (["SELECT", "3"], .ignored), (["CONFIG", "GET", "maxmemory"], .read), (["GETSET", "k", "v"], .write), (["SPOP", "s"], .write),
        (["FUNCTION", "FLUSH"], .ignored), (["CONFIG", "SET", "hash-max-listpack-entries", "4", "save", ""], .read),
        (["PING"], .internal), (["ECHO", "x"], .internal), (["CLIENT", "SETNAME", "a"], .internal), (["HELLO"], .internal),
        (["PYLON", "INFO"], .internal),
    ])
    func classifies(arguments: [String], expected: Disposition) throws {
        let command = try #require(self.lookup(arguments))
        #expect(command.disposition(for: arguments.map { ByteBuffer(string: $0) }) == expected)
    }

    func lookup(_ arguments: [String]) -> Command? {
        if case .command(let c) = self.table.lookup(arguments.map { ByteBuffer(string: $0) }) { return c }
        return nil
    }

    @Test(arguments: [
        (["SUBSCRIBE", "c"], "pub/sub"), (["PUBLISH", "c", "m"], "pub/sub"), (["PUBSUB", "CHANNELS"], "pub/sub"),
        (["BLPOP", "l", "0"], "blocking"), (["BZPOPMIN", "z", "0"], "blocking"), (["XREAD", "BLOCK", "0", "STREAMS", "s", "$"], "blocking"),
        (["MULTI"], "transactions"), (["EXEC"], "transactions"), (["WATCH", "k"], "transactions"),
        (["EVAL", "return 1", "0"], "scripts"), (["FCALL", "f", "0"], "scripts"), (["SCRIPT", "LOAD", "x"], "scripts"),
        (["FUNCTION", "LIST"], "scripts"),
        (["CLUSTER", "INFO"], "cluster"), (["READONLY"], "cluster"),
        (["AUTH", "p"], "AUTH"),
        (["SORT", "l", "STORE", "d"], "SORT … STORE"), (["CONFIG", "SET", "x", "y"], "administrative"),
        (["CONFIG", "SET", "save", "", "maxmemory", "1"], "administrative"), (["CONFIG", "SET", "stream-node-max-entries", "1"], "administrative"),
        (["SHUTDOWN"], "administrative"), (["MONITOR"], "administrative"), (["CLIENT", "KILL", "ID", "1"], "administrative"),
        (["MOVE", "k", "1"], "database 0"), (["CLIENT", "TRACKING", "on"], "client-side caching"),
    ])
    func refusesWithAReason(arguments: [String], mention: String) throws {
        let command = try #require(self.lookup(arguments))
        guard case .refused(let reason) = command.disposition(for: arguments.map { ByteBuffer(string: $0) }) else {
            Issue.record("\(arguments) is not refused")
            return
        }
        #expect(reason.contains(mention), "\(reason)")
    }

    @Test func argumentsChangeTheNatureOfSomeCommands() throws {
        #expect(try self.command("SORT", "l").disposition(for: ["SORT", "l", "LIMIT", "0", "1"].map { ByteBuffer(string: $0) }) == .read)
        #expect(try self.command("XREAD", "STREAMS", "s", "0").disposition(for: ["XREAD", "STREAMS", "s", "0"].map { ByteBuffer(string: $0) }) == .read)
        let geo = try self.command("GEORADIUS", "g", "0", "0", "1", "km")
        #expect(geo.disposition(for: ["GEORADIUS", "g", "0", "0", "1", "km"].map { ByteBuffer(string: $0) }) == .read)
        #expect(geo.disposition(for: ["GEORADIUS", "g", "0", "0", "1", "km", "STORE", "d"].map { ByteBuffer(string: $0) }) == .write)
    }

    @Test func reportsErrorsAsRedisWordsThem() {
        #expect(self.error("NOSUCH", "a") == "ERR unknown command 'NOSUCH', with args beginning with: 'a' ")
        #expect(self.error("GET") == "ERR wrong number of arguments for 'get' command")
        #expect(self.error("CLIENT", "NOPE") == "ERR unknown subcommand 'NOPE'. Try CLIENT HELP.")
        #expect(self.error("CLIENT") == "ERR wrong number of arguments for 'client' command")
    }

    @Test(arguments: [
        (["GET", "k"], [1]), (["MGET", "a", "b", "c"], [1, 2, 3]), (["MSET", "a", "1", "b", "2"], [1, 3]),
        (["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"], [1, 3, 4]),
        (["XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"], [4, 5]),
        (["OBJECT", "ENCODING", "k"], [2]), (["LMPOP", "2", "a", "b", "LEFT"], [2, 3]),
        (["PING"], []), (["SINTERCARD", "2", "a", "b", "LIMIT", "1"], [2, 3]),
    ])
    func findsKeyPositions(arguments: [String], positions: [Int]) throws {
        let command = try #require(self.lookup(arguments))
        #expect(command.keyPositions(in: arguments.map { ByteBuffer(string: $0) }) == positions)
    }
}
