import NIOCore
import Testing

@testable import PylonSidecar

@Suite("Write planner")
struct WritePlannerTests {
    let now: Int64 = 1_764_000_000_000

    func plan(_ arguments: String...) throws -> [[String]] {
        let buffers = arguments.map { ByteBuffer(string: $0) }
        guard case .command(let command) = CommandTable.shared.lookup(buffers) else { throw CancellationError() }
        return try WritePlanner.plan(buffers, command: command, now: self.now, seed: 0xABC).map { $0.arguments.map { String(buffer: $0) } }
    }

    func refusal(_ arguments: String...) -> String? {
        let buffers = arguments.map { ByteBuffer(string: $0) }
        guard case .command(let command) = CommandTable.shared.lookup(buffers) else { return nil }
        do {
            _ = try WritePlanner.plan(buffers, command: command, now: self.now)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func makesRelativeTimesAbsolute() throws {
        #expect(try self.plan("EXPIRE", "k", "10") == [["PEXPIREAT", "k", "1764000010000"]])
        #expect(try self.plan("EXPIRE", "k", "10", "NX") == [["PEXPIREAT", "k", "1764000010000", "NX"]])
        #expect(try self.plan("PEXPIRE", "k", "250") == [["PEXPIREAT", "k", "1764000000250"]])
        #expect(try self.plan("EXPIREAT", "k", "1800000000") == [["PEXPIREAT", "k", "1800000000000"]])
        #expect(try self.plan("SETEX", "k", "5", "v") == [["SET", "k", "v", "PXAT", "1764000005000"]])
        #expect(try self.plan("PSETEX", "k", "5", "v") == [["SET", "k", "v", "PXAT", "1764000000005"]])
        #expect(try self.plan("SET", "k", "v", "EX", "3", "NX") == [["SET", "k", "v", "PXAT", "1764000003000", "NX"]])
        #expect(try self.plan("SET", "k", "v", "px", "7") == [["SET", "k", "v", "PXAT", "1764000000007"]])
        #expect(try self.plan("SET", "k", "v", "EXAT", "1800000000") == [["SET", "k", "v", "PXAT", "1800000000000"]])
        #expect(try self.plan("SET", "k", "v", "KEEPTTL") == [["SET", "k", "v", "KEEPTTL"]])
        #expect(try self.plan("GETEX", "k", "EX", "1") == [["GETEX", "k", "PXAT", "1764000001000"]])
        #expect(try self.plan("RESTORE", "k", "100", "payload") == [["RESTORE", "k", "1764000000100", "payload", "ABSTTL"]])
        #expect(try self.plan("RESTORE", "k", "0", "payload") == [["RESTORE", "k", "0", "payload"]])
        #expect(try self.plan("XADD", "s", "*", "f", "v") == [["XADD", "s", "1764000000000-*", "f", "v"]])
        #expect(try self.plan("XADD", "s", "MAXLEN", "~", "10", "*", "f", "v") == [["XADD", "s", "MAXLEN", "~", "10", "1764000000000-*", "f", "v"]])
        #expect(try self.plan("XADD", "s", "5-1", "f", "v") == [["XADD", "s", "5-1", "f", "v"]])
    }

    @Test func carriesSPOPsChanceInTheOp() throws {
        #expect(try self.plan("SPOP", "s") == [[AppliedOffsets.spopCommand, "s", "single", "abc"]])
        #expect(try self.plan("SPOP", "s", "3") == [[AppliedOffsets.spopCommand, "s", "3", "abc"]])
        #expect(self.refusal("SPOP", "s", "-1") == "ERR value is out of range, must be positive")
        #expect(self.refusal("SPOP", "s", "x") == "ERR value is out of range, must be positive")
        // Only a sidecar that knows the op may apply it: the record says so with its version.
        let spop = OpRecord(arguments: try self.plan("SPOP", "s")[0].map { ByteBuffer(string: $0) }, originRack: "", originSidecar: "", timestampMilliseconds: 0, slot: 0)
        #expect(spop.encoded.getInteger(at: 2, as: UInt8.self) == 2)
        let set = OpRecord(arguments: try self.plan("SET", "k", "v", "GET")[0].map { ByteBuffer(string: $0) }, originRack: "", originSidecar: "", timestampMilliseconds: 0, slot: 0)
        #expect(set.encoded.getInteger(at: 2, as: UInt8.self) == 1)
    }

    @Test func flushesBecomeOneOpPerPartitionEachInItsPartition() throws {
        for name in ["FLUSHALL", "FLUSHDB"] {
            for arguments in [[name], [name, "ASYNC"], [name, "sync"]] {
                let buffers = arguments.map { ByteBuffer(string: $0) }
                guard case .command(let command) = CommandTable.shared.lookup(buffers) else { throw CancellationError() }
                let ops = try WritePlanner.plan(buffers, command: command, now: self.now, partitions: 5)
                #expect(ops.map { $0.arguments.map { String(buffer: $0) } } == (0..<5).map { [FlushOps.command, "\($0)", "5"] })
                #expect(ops.map { OpRecord.partition(ofSlot: $0.slot, count: 5) } == [0, 1, 2, 3, 4])
                let record = OpRecord(arguments: ops[3].arguments, originRack: "", originSidecar: "", timestampMilliseconds: 0, slot: ops[3].slot)
                #expect(FlushOps.target(of: record)! == (3, 5))
                #expect(record.encoded.getInteger(at: 2, as: UInt8.self) == 2)
            }
        }
        #expect(self.refusal("FLUSHALL", "LATER") == "ERR syntax error")
        #expect(self.refusal("SET", "pylon:owner:t:0", "1")?.hasPrefix("ERR pylon: keys starting with 'pylon:'") == true)
    }

    @Test func keepsRedisErrorsForBadTimes() {
        #expect(self.refusal("SET", "k", "v", "EX", "0") == "ERR invalid expire time in 'set' command")
        #expect(self.refusal("SETEX", "k", "-1", "v") == "ERR invalid expire time in 'setex' command")
        #expect(self.refusal("EXPIRE", "k", "soon") == "ERR value is not an integer or out of range")
        #expect(self.refusal("EXPIRE", "k", "9223372036854775807") == "ERR invalid expire time in 'expire' command")
    }

    @Test func refusesWhatCannotBeTheSameOnEveryRack() {
        #expect(self.refusal("XCLAIM", "s", "g", "c", "0", "1-0")?.hasPrefix("ERR pylon:") == true)
    }

    @Test func splitsWhereMeaningSurvivesAndRefusesElsewhere() throws {
        let keys = ["a", "b", "{a}.x"]
        #expect(HashSlot.of("a") != HashSlot.of("b"))
        #expect(try self.plan("DEL", keys[0], keys[1], keys[2]) == [["DEL", "a", "{a}.x"], ["DEL", "b"]])
        #expect(try self.plan("UNLINK", "a", "b") == [["UNLINK", "a"], ["UNLINK", "b"]])
        #expect(try self.plan("MSET", "a", "1", "b", "2", "{a}.x", "3") == [["MSET", "a", "1", "{a}.x", "3"], ["MSET", "b", "2"]])
        #expect(try self.plan("MSET", "{u}.a", "1", "{u}.b", "2") == [["MSET", "{u}.a", "1", "{u}.b", "2"]])
        #expect(self.refusal("MSETNX", "a", "1", "b", "2")?.hasPrefix("CROSSSLOT") == true)
        #expect(self.refusal("RENAME", "a", "b")?.hasPrefix("CROSSSLOT") == true)
        #expect(try self.plan("RENAME", "{a}.1", "{a}.2") == [["RENAME", "{a}.1", "{a}.2"]])
    }

    @Test func refusesWritesLargerThanTheLimitAndNoArgumentCount() throws {
        // Any argument count in one slot (the applier takes long ops in a transaction).
        let pairs = (0..<10_000).flatMap { ["{k}.\($0)", "v"] }
        #expect(try Self.planned(["MSET"] + pairs).map(\.arguments.count) == [20_001])
        // The bytes of the arguments together are limited (max-write-bytes): up to it, not one byte over.
        let buffers = ["SET", "k", String(repeating: "v", count: 96)].map { ByteBuffer(string: $0) }
        guard case .command(let set) = CommandTable.shared.lookup(buffers) else { throw CancellationError() }
        #expect(try WritePlanner.plan(buffers, command: set, now: 0, maxWriteBytes: 100).count == 1)
        #expect { try WritePlanner.plan(buffers, command: set, now: 0, maxWriteBytes: 99) } throws: {
            "\($0)" == "ERR pylon: a write may carry at most 99 bytes (max-write-bytes); this one has 100: split the value, or raise max-write-bytes"
        }
    }

    static func planned(_ arguments: [String]) throws -> [WritePlanner.PlannedOp] {
        let buffers = arguments.map { ByteBuffer(string: $0) }
        guard case .command(let command) = CommandTable.shared.lookup(buffers) else { throw CancellationError() }
        return try WritePlanner.plan(buffers, command: command, now: 0)
    }

    @Test func opsCarryTheirSlot() throws {
        let buffers = ["SET", "{user1}.name", "x"].map { ByteBuffer(string: $0) }
        guard case .command(let command) = CommandTable.shared.lookup(buffers) else { throw CancellationError() }
        let ops = try WritePlanner.plan(buffers, command: command, now: self.now)
        #expect(ops.map(\.slot) == [HashSlot.of("user1")])
    }

    @Test func writesWhoseKeysCannotBeFoundAreLoggedKeylessForRedisToRefuse() throws {
        // A numkeys that is no count, or counts past the arguments; STORE without its key.
        for arguments in [
            ["LMPOP", "a", "list", "LEFT"], ["ZMPOP", "-1", "z", "MIN"], ["ZUNIONSTORE", "d", "5", "a"],
            ["GEORADIUS", "points", "13.36", "38.11", "50", "km", "STORE"],
        ] {
            let ops = try Self.planned(arguments)
            #expect(ops.map(\.slot) == [OpRecord.noSlot], "\(arguments)")
            #expect(ops.map(\.keysUnknown) == [true])
            #expect(ops.map { $0.arguments.map { String(buffer: $0) } } == [arguments])
        }
        // Found keys still keep writes off Pylon's bookkeeping.
        #expect(self.refusal("LMPOP", "1", "pylon:applied:t:0", "LEFT") == Bookkeeping.refusal)
    }
}
