import Foundation
import NIOCore
import Testing

@testable import PylonSidecar

/// Snapshots of a rack's Redis (`SnapshotSource`, `RDBReader`) against real redis-servers.
@Suite("Snapshots of a live Redis", .serialized, .timeLimit(.minutes(3)))
struct SnapshotTests {
    /// Writes commands to `redis` in one pipeline and checks none failed.
    static func run(_ commands: [[String]], on redis: RedisServer) throws {
        let connection = try BlockingRedisConnection(to: redis.address, timeout: .seconds(10))
        defer { connection.close() }
        for start in stride(from: 0, to: commands.count, by: 10_000) {
            var bytes = ByteBuffer()
            let part = commands[start..<min(start + 10_000, commands.count)]
            for command in part { bytes.writeRESPCommand(command.map { ByteBuffer(string: $0) }) }
            let replies = try connection.exchange(bytes, replies: part.count)
            if let failed = replies.firstIndex(where: \.isError) { throw SnapshotSource.Failure(description: "\(part[start + failed]) answered \(replies[failed])") }
        }
    }

    /// Keys of every type and encoding Redis 7 saves: small and large (listpack, intset, quicklist,
    /// hashtable, skiplist), compressed keys and values, integers, streams with groups, consumers
    /// and pending entries, keys with expiries.
    static let everyType: [[String]] = {
        let long = String(repeating: "abcdefgh", count: 200)  // compressed in the file (LZF)
        var commands: [[String]] = [
            ["SET", "string", "value"], ["SET", "integer", "12345"], ["SET", "negative", "-70000"], ["SET", "long:" + long, long],
            ["SET", "expiring", "soon", "PX", "3600000"], ["SADD", "intset", "1", "2", "3"], ["SADD", "smallset", "a", "b"],
            ["RPUSH", "smalllist", "a", "b", "c"], ["HSET", "smallhash", "f", "v", "g", "w"], ["ZADD", "smallzset", "1.5", "a", "-2", "b"],
            ["PFADD", "hll", "a", "b", "c"], ["SETBIT", "bits", "1000", "1"], ["GEOADD", "geo", "13.361389", "38.115556", "Palermo"],
            ["XADD", "stream", "1-1", "field", "value"], ["XADD", "stream", "2-1", "field", "other"],
            ["XGROUP", "CREATE", "stream", "group", "0"], ["XREADGROUP", "GROUP", "group", "alice", "COUNT", "1", "STREAMS", "stream", ">"],
            ["XGROUP", "CREATECONSUMER", "stream", "group", "bob"], ["EXPIRE", "smallhash", "7200"],
        ]
        commands.append(["SADD", "bigset"] + (0..<600).map { "member\($0)" })
        commands.append(["RPUSH", "biglist"] + (0..<3000).map { "element\($0)-" + long.prefix(40) })
        commands.append(["HSET", "bighash"] + (0..<600).flatMap { ["field\($0)", "value\($0)"] })
        commands.append(["ZADD", "bigzset"] + (0..<600).flatMap { ["\(Double($0) / 3)", "member\($0)"] })
        commands += [["SELECT", "1"], ["SET", "elsewhere", "x"], ["SELECT", "0"]]
        return commands
    }()

    /// Every key of database 0 (Pylon's aside) with its value and absolute expiry: its DUMP,
    /// except for sets and hashes in a hash table, whose DUMP lists members in the order of a
    /// hash seed each Redis process draws: their sorted members instead. Pipelined, for racks
    /// of many keys.
    static func contents(_ redis: RedisServer) async throws -> [String: [RESPValue]] {
        let connection = try BlockingRedisConnection(to: redis.address, timeout: .seconds(30))
        defer { connection.close() }
        func pipeline(_ commands: [[String]]) throws -> [RESPValue] {
            var bytes = ByteBuffer()
            for command in commands { bytes.writeRESPCommand(command.map { ByteBuffer(string: $0) }) }
            return try connection.exchange(bytes, replies: commands.count)
        }
        var keys: [String] = []
        var cursor = "0"
        repeat {
            let reply = try pipeline([["SCAN", cursor, "COUNT", "10000"]])[0].array ?? []
            cursor = reply.first?.string ?? "0"
            keys += (reply.last?.array ?? []).compactMap(\.string).filter { !$0.hasPrefix("pylon:") }
        } while cursor != "0"
        let described = try pipeline(keys.flatMap { [["DUMP", $0], ["PEXPIRETIME", $0], ["OBJECT", "ENCODING", $0], ["TYPE", $0]] })
        var contents: [String: [RESPValue]] = [:]
        for (index, key) in keys.enumerated() {
            let (dump, expiry, encoding, type) = (described[4 * index], described[4 * index + 1], described[4 * index + 2].string, described[4 * index + 3].string)
            guard encoding == "hashtable" else {
                contents[key] = [dump, expiry]
                continue
            }
            let members = try pipeline([[type == "set" ? "SMEMBERS" : "HGETALL", key]])[0].array ?? []
            let sorted = type == "set"
                ? members.compactMap(\.string).sorted()
                : stride(from: 0, to: members.count, by: 2).map { "\(members[$0].string ?? "")=\(members[$0 + 1].string ?? "")" }.sorted()
            contents[key] = [.array(sorted.map { .bulkString(ByteBuffer(string: $0)) }), expiry]
        }
        return contents
    }

    @Test(arguments: [true, false])
    func aSnapshotRestoresEveryKeyAsItWas(diskless: Bool) async throws {
        let source = try RedisServer(extra: ["--repl-diskless-sync", diskless ? "yes" : "no", "--repl-diskless-sync-delay", "0"])
        try Self.run(Self.everyType, on: source)
        let directory = try ScratchDirectory()
        let path = directory.url.appendingPathComponent("snapshot.rdb").path
        let size = try SnapshotSource.fetch(from: source.address, to: path, timeout: .seconds(10))
        #expect(size > 10_000)
        #expect(!FileManager.default.fileExists(atPath: path + ".part"))

        let target = try RedisServer()
        var reader = try RDBReader([UInt8](FileManager.default.contents(atPath: path)!))
        var restores: [[ByteBuffer]] = []
        var databases: [String: Int] = [:]
        while let entry = try reader.next() {
            databases[String(decoding: entry.key, as: UTF8.self)] = entry.database
            guard entry.database == 0 else { continue }
            restores.append([ByteBuffer(string: "RESTORE"), ByteBuffer(bytes: entry.key), ByteBuffer(string: String(entry.expiresAt ?? 0)), reader.dumpPayload(entry)]
                + (entry.expiresAt == nil ? [] : [ByteBuffer(string: "ABSTTL")]))
        }
        #expect(databases["elsewhere"] == 1)
        let connection = try BlockingRedisConnection(to: target.address, timeout: .seconds(10))
        var bytes = ByteBuffer()
        for restore in restores { bytes.writeRESPCommand(restore) }
        #expect(try connection.exchange(bytes, replies: restores.count).allSatisfy { $0 == .ok })

        let expected = try await Self.contents(source)
        #expect(expected.count == 18)
        let restored = try await Self.contents(target)
        for key in Set(expected.keys).union(restored.keys).sorted() where expected[key] != restored[key] {
            Issue.record("\(key): source \(String(describing: expected[key]).prefix(200)), restored \(String(describing: restored[key]).prefix(200))")
        }
        #expect(expected["expiring"]?[1].int ?? 0 > Int(Date().timeIntervalSince1970 * 1000))
    }

    @Test func aFileCutShortOrAlteredIsRefusedBeforeAnyKey() async throws {
        let source = try RedisServer(extra: ["--repl-diskless-sync-delay", "0"])
        try Self.run(Self.everyType, on: source)
        let directory = try ScratchDirectory()
        let path = directory.url.appendingPathComponent("snapshot.rdb").path
        _ = try SnapshotSource.fetch(from: source.address, to: path, timeout: .seconds(10))
        let bytes = [UInt8](FileManager.default.contents(atPath: path)!)
        #expect(throws: RDBReader.Failure.self) { _ = try RDBReader(Array(bytes.prefix(bytes.count / 2))) }
        var altered = bytes
        altered[bytes.count / 2] ^= 0x01
        #expect(throws: RDBReader.Failure.self) { _ = try RDBReader(altered) }
        #expect(throws: RDBReader.Failure.self) { _ = try RDBReader(Array("not a snapshot at all".utf8)) }
    }
}
