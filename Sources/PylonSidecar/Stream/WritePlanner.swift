import NIOCore

/// Turns a write into the op(s) the log records, so that every rack applies the same effect:
///
/// - **Partitioning.** An op's slot is the hash slot of its key(s). A multi-key write whose keys
///   span slots is split where its meaning survives splitting (DEL, UNLINK, MSET: one op per
///   slot) and refused otherwise, as Redis Cluster refuses it (`-CROSSSLOT`).
/// - **Determinism.** Relative times are made absolute at the gateway with the gateway's clock
///   (EXPIRE/PEXPIRE/EXPIREAT → PEXPIREAT; SETEX/PSETEX and SET … EX/PX/EXAT → SET … PXAT;
///   GETEX … EX/PX/EXAT → PXAT; RESTORE ttl → ABSTTL; XADD `*` → `<ms>-*`). SPOP's chance is
///   a seed drawn here and carried in the op (`AppliedOffsets.spop`), so every rack pops the
///   same members. Writes whose effect depends on each rack's own state are refused
///   (XAUTOCLAIM, XCLAIM).
/// - **Flushes.** FLUSHALL and FLUSHDB become one op per partition (`FlushOps`).
/// - **Size.** A write carries at most `maxWriteBytes` bytes of arguments (`max-write-bytes`,
///   64 MB by default); a larger one is refused before it reaches the log, never dropped after.
///   An op larger than a Kafka message travels in several (`OpChunk`).
public enum WritePlanner {
    /// One op to append: its arguments and slot.
    public struct PlannedOp: Sendable, Equatable {
        public var arguments: [ByteBuffer]
        public var slot: Int
        /// Its keys could not be found from its arguments: Redis refuses it, so its reply (Redis's
        /// error) is awaited whatever the level.
        public var keysUnknown = false
    }

    public struct Refusal: Error, Equatable, CustomStringConvertible {
        /// The error reply, with its Redis prefix (`ERR pylon: …`, `CROSSSLOT …`).
        public let description: String
    }

    static let refusals: [String: String] = [
        "xautoclaim": "ERR pylon: XAUTOCLAIM depends on each rack's idle times; consumer groups are not replicated by pylon yet",
        "xclaim": "ERR pylon: XCLAIM depends on each rack's idle times; consumer groups are not replicated by pylon yet",
    ]

    /// Commands whose keys may be split into one op per slot.
    static let splittable: Set<String> = ["del", "unlink", "mset"]

    /// Plans a write. `now` is the gateway's clock, in Unix milliseconds.
    /// `partitions` is the log's partition count; `seed` makes SPOP's choice (drawn when an
    /// SPOP needs one — a draw is a system call —; tests fix it).
    public static func plan(
        _ arguments: [ByteBuffer], command: Command, now: Int64, partitions: Int = 1, maxWriteBytes: Int = 64 << 20,
        seed: UInt64? = nil
    ) throws -> [PlannedOp] {
        let bytes = arguments.reduce(0) { $0 + $1.readableBytes }
        guard bytes <= maxWriteBytes else {
            throw Refusal(description: "ERR pylon: a write may carry at most \(maxWriteBytes) bytes (max-write-bytes); this one has \(bytes): split the value, or raise max-write-bytes")
        }
        if command.name == "flushall" || command.name == "flushdb" {
            guard arguments.count == 1 || (arguments.count == 2 && (arguments[1].equalsIgnoringASCIICase("ASYNC") || arguments[1].equalsIgnoringASCIICase("SYNC"))) else {
                throw Refusal(description: "ERR syntax error")
            }
            return FlushOps.ops(partitions: partitions)
        }
        return try self.partitioned(arguments, command: command, now: now, seed: seed)
    }

    static func partitioned(_ arguments: [ByteBuffer], command: Command, now: Int64, seed: UInt64?) throws -> [PlannedOp] {
        if let reason = refusals[command.name] { throw Refusal(description: reason) }
        let rewritten = try self.deterministic(arguments, command: command.name, now: now, seed: seed)
        // Keys the specification cannot find (a numkeys that is no count, STORE without its key)
        // Redis cannot find either: it refuses the command, and logged as a keyless op the write
        // gets Redis's own error, from every rack alike.
        guard let positions = command.keyPositions(in: rewritten) else {
            return [PlannedOp(arguments: rewritten, slot: OpRecord.noSlot, keysUnknown: true)]
        }
        // The keys are found once here, so the planner also keeps writes off Pylon's bookkeeping.
        if positions.contains(where: { Bookkeeping.isBookkeeping(rewritten[$0]) }) { throw Refusal(description: Bookkeeping.refusal) }
        guard !positions.isEmpty else {
            return [PlannedOp(arguments: rewritten, slot: OpRecord.noSlot)]
        }
        let slots = positions.map { HashSlot.of(rewritten[$0]) }
        if slots.allSatisfy({ $0 == slots[0] }) {
            return [PlannedOp(arguments: rewritten, slot: slots[0])]
        }
        guard self.splittable.contains(command.name) else {
            throw Refusal(description: "CROSSSLOT Keys in request don't hash to the same slot (pylon orders each slot on its own; use hash tags, e.g. {user1}.a and {user1}.b, to keep one command's keys in one slot)")
        }
        // MSET takes key/value pairs; DEL and UNLINK take keys.
        let stride = command.name == "mset" ? 2 : 1
        var order: [Int] = []
        var groups: [Int: [ByteBuffer]] = [:]
        for (index, position) in positions.enumerated() {
            let slot = slots[index]
            if groups[slot] == nil { order.append(slot) }
            groups[slot, default: [rewritten[0]]].append(contentsOf: rewritten[position..<(position + stride)])
        }
        return order.map { PlannedOp(arguments: groups[$0]!, slot: $0) }
    }

    // MARK: - Determinism

    static func deterministic(_ arguments: [ByteBuffer], command: String, now: Int64, seed: UInt64? = nil) throws -> [ByteBuffer] {
        let time = Clock(arguments: arguments, command: command, now: now)
        var out = arguments
        switch command {
        case "expire":
            out[0] = ByteBuffer(string: "PEXPIREAT")
            out[2] = try time.absolute(time.milliseconds(seconds: 2))
        case "pexpire":
            out[0] = ByteBuffer(string: "PEXPIREAT")
            out[2] = try time.absolute(time.number(2))
        case "expireat":
            out[0] = ByteBuffer(string: "PEXPIREAT")
            out[2] = ByteBuffer(string: String(try time.milliseconds(seconds: 2)))
        case "setex", "psetex":
            let milliseconds = try command == "setex" ? time.milliseconds(seconds: 2) : time.number(2)
            out = [ByteBuffer(string: "SET"), arguments[1], arguments[3], ByteBuffer(string: "PXAT"), try time.absolute(time.positive(milliseconds))]
        case "set":
            var index = 3
            while index < out.count {
                index += try self.rewriteExpiry(&out, at: index, time: time)
            }
        case "spop":
            // `PYLON.SPOP key count|single seed`: the members whose SHA-1 with the seed is
            // lowest, whatever order a rack's set keeps them in.
            var count = "single"
            if arguments.count > 2 {
                guard let n = Int(String(buffer: arguments[2])), n >= 0 else {
                    throw Refusal(description: "ERR value is out of range, must be positive")
                }
                count = String(n)
            }
            out = [ByteBuffer(string: AppliedOffsets.spopCommand), arguments[1], ByteBuffer(string: count), ByteBuffer(string: String(seed ?? .random(in: .min ... .max), radix: 16))]
        case "getex":
            var index = 2
            while index < out.count {
                index += try self.rewriteExpiry(&out, at: index, time: time)
            }
        case "restore":
            let ttl = try time.number(2)
            let hasAbsolute = out.dropFirst(4).contains { $0.equalsIgnoringASCIICase("ABSTTL") }
            if ttl > 0, !hasAbsolute {
                out[2] = try time.absolute(ttl)
                out.append(ByteBuffer(string: "ABSTTL"))
            }
        case "xadd":
            // The entry ID follows the key and the optional NOMKSTREAM, MAXLEN/MINID [=|~] n, LIMIT n.
            var index = 2
            scan: while index < out.count {
                let argument = out[index]
                if argument.equalsIgnoringASCIICase("NOMKSTREAM") {
                    index += 1
                } else if argument.equalsIgnoringASCIICase("MAXLEN") || argument.equalsIgnoringASCIICase("MINID") {
                    index += 1
                    if index < out.count, ["=", "~"].contains(String(buffer: out[index])) { index += 1 }
                    index += 1
                } else if argument.equalsIgnoringASCIICase("LIMIT") {
                    index += 2
                } else {
                    // `<ms>-*`: Redis picks the sequence number, the same on every rack that applies
                    // the same history.
                    if String(buffer: argument) == "*" { out[index] = ByteBuffer(string: "\(now)-*") }
                    break scan
                }
            }
        default:
            break
        }
        return out
    }

    /// Turns relative times into absolute ones with the gateway's clock, with Redis's errors.
    struct Clock {
        let arguments: [ByteBuffer]
        let command: String
        let now: Int64

        var invalidExpire: Refusal { Refusal(description: "ERR invalid expire time in '\(self.command)' command") }

        func number(_ index: Int) throws -> Int64 {
            guard index < self.arguments.count, let n = Int64(String(buffer: self.arguments[index])) else {
                throw Refusal(description: "ERR value is not an integer or out of range")
            }
            return n
        }

        func milliseconds(seconds index: Int) throws -> Int64 {
            let (product, overflow) = try self.number(index).multipliedReportingOverflow(by: 1000)
            guard !overflow else { throw self.invalidExpire }
            return product
        }

        func absolute(_ milliseconds: Int64) throws -> ByteBuffer {
            ByteBuffer(string: String(try self.absoluteValue(milliseconds)))
        }

        /// SET … EX/PX and SETEX take positive times only, as in Redis.
        func positive(_ milliseconds: Int64) throws -> Int64 {
            guard milliseconds > 0 else { throw self.invalidExpire }
            return milliseconds
        }

        /// `now + milliseconds`.
        func absoluteValue(_ milliseconds: Int64) throws -> Int64 {
            let (sum, overflow) = self.now.addingReportingOverflow(milliseconds)
            guard !overflow else { throw self.invalidExpire }
            return sum
        }
    }

    /// Rewrites an EX/PX/EXAT option at `index` to PXAT; returns how many arguments it spans.
    private static func rewriteExpiry(_ out: inout [ByteBuffer], at index: Int, time: Clock) throws -> Int {
        let option = out[index]
        let milliseconds: Int64
        if option.equalsIgnoringASCIICase("EX") {
            milliseconds = try time.absoluteValue(time.positive(time.milliseconds(seconds: index + 1)))
        } else if option.equalsIgnoringASCIICase("PX") {
            milliseconds = try time.absoluteValue(time.positive(time.number(index + 1)))
        } else if option.equalsIgnoringASCIICase("EXAT") {
            milliseconds = try time.milliseconds(seconds: index + 1)
        } else {
            return option.equalsIgnoringASCIICase("PXAT") ? 2 : 1
        }
        out[index] = ByteBuffer(string: "PXAT")
        out[index + 1] = ByteBuffer(string: String(milliseconds))
        return 2
    }
}
