import NIOCore

/// The reply a write gets at the `log` consistency level, once the world's log has it. The write
/// has not been applied yet (every rack applies it from the log, this one included), so its
/// real result is unknown: the gateway answers a valid reply of the type the command's clients
/// expect, saying "accepted, no result known yet". At the default `applied` level the client
/// gets the real reply instead (`applied(_:)`).
///
/// | Reply          | Commands                                                                   |
/// |----------------|----------------------------------------------------------------------------|
/// | `+OK`          | SET (any options), SETEX, PSETEX, MSET, LSET, LTRIM, RENAME, RESTORE,      |
/// |                | HMSET, PFMERGE, XGROUP CREATE / SETID, XSETID                              |
/// | nil (`$-1`)    | the *POP family (LPOP, RPOP, RPOPLPUSH, LMOVE, LMPOP, ZMPOP, SPOP), GETDEL, |
/// |                | GETSET, SET … GET, GETEX, INCRBYFLOAT, HINCRBYFLOAT, ZINCRBY, ZADD … INCR,  |
/// |                | XADD                                                                       |
/// | empty (`*0`)   | ZPOPMIN, ZPOPMAX, SPOP with a count, BITFIELD                              |
/// | `:0`           | every other write (DEL, INCR, HSET, SADD, LPUSH, ZADD, EXPIRE, …): integer |
/// |                | replies count effects, and none is known yet                               |
public enum WriteReply: Sendable, Equatable {
    case ok, null, emptyArray, zero

    static let byCommand: [String: WriteReply] = {
        var table: [String: WriteReply] = [:]
        for name in [
            "set", "setex", "psetex", "mset", "lset", "ltrim", "rename", "restore", "restore-asking", "hmset", "pfmerge",
            "xgroup|create", "xgroup|setid", "xsetid",
        ] { table[name] = .ok }
        for name in [
            "lpop", "rpop", "rpoplpush", "lmove", "lmpop", "zmpop", "getdel", "getex", "getset", "spop", "incrbyfloat",
            "hincrbyfloat", "zincrby", "xadd",
        ] { table[name] = .null }
        for name in ["zpopmin", "zpopmax", "bitfield"] { table[name] = .emptyArray }
        return table
    }()

    /// The reply for a write of `command` with these arguments.
    public static func of(_ command: Command, arguments: [ByteBuffer]) -> WriteReply {
        if command.name == "zadd", arguments.dropFirst(2).contains(where: { $0.equalsIgnoringASCIICase("INCR") }) {
            return .null  // ZADD … INCR answers the new score, like ZINCRBY
        }
        if command.name == "set", arguments.dropFirst(3).contains(where: { $0.equalsIgnoringASCIICase("GET") }) {
            return .null  // SET … GET answers the old value, like GETSET
        }
        if command.name == "spop", arguments.count > 2 { return .emptyArray }
        return self.byCommand[command.name] ?? .zero
    }

    private static let okBytes = ByteBuffer(string: "+OK\r\n")
    private static let nullBytes = ByteBuffer(string: "$-1\r\n")
    private static let emptyArrayBytes = ByteBuffer(string: "*0\r\n")
    private static let zeroBytes = ByteBuffer(string: ":0\r\n")

    /// The real reply of an `applied` write from its ops' replies: one op's reply as it is; for
    /// a write split by slot (DEL, UNLINK, MSET), the first error, else the sum of integer
    /// replies (keys deleted), else the first reply (MSET's OK).
    static func applied(_ replies: [ByteBuffer]) -> ByteBuffer {
        guard replies.count > 1 else { return replies[0] }
        var sum = 0
        for reply in replies {
            var copy = reply
            switch try? RESPValue.decode(from: &copy) {
            case .error: return reply
            case .integer(let n): sum += n
            default: return replies[0]
            }
        }
        return RESPValue.integer(sum).encoded
    }

    /// A write's reply (real or placeholder, both RESP2: the applier's script speaks RESP2, and
    /// Lua has one nil for both of RESP2's) as a client of `version` gets it from Redis.
    static func forClient(_ reply: ByteBuffer, command: Command, arguments: [ByteBuffer], version: RESPVersion) -> ByteBuffer {
        var reply = reply
        if Self.nilIsNullArray(command, arguments: arguments), reply.readableBytesView.elementsEqual("$-1\r\n".utf8) { reply = Self.nullArrayBytes }
        return version == .resp3 ? Self.resp3(reply, command: command, arguments: arguments) : reply
    }

    /// Whether a write's nil is a null array in RESP2 (`*-1`): LMPOP's, ZMPOP's, and LPOP's and
    /// RPOP's given a count (their list of popped elements).
    static func nilIsNullArray(_ command: Command, arguments: [ByteBuffer]) -> Bool {
        switch command.name {
        case "lmpop", "zmpop": true
        case "lpop", "rpop": arguments.count > 2
        default: false
        }
    }
    private static let nullArrayBytes = ByteBuffer(string: "*-1\r\n")

    /// A RESP2 reply as a RESP3 client gets it from Redis: nulls as `_`, and the scores of
    /// sorted-set writes as doubles (ZINCRBY, ZADD … INCR, ZPOPMIN/ZPOPMAX — pairs when given a
    /// count —, ZMPOP).
    static func resp3(_ reply: ByteBuffer, command: Command, arguments: [ByteBuffer]) -> ByteBuffer {
        let first = reply.getInteger(at: reply.readerIndex, as: UInt8.self)
        guard first == UInt8(ascii: "$") || first == UInt8(ascii: "*") else { return reply }
        var bytes = reply
        guard let value = try? RESPValue.decode(from: &bytes) else { return reply }
        func double(_ value: RESPValue) -> RESPValue {
            if case .bulkString(.some(let text)) = value { return .double(text) }
            return value
        }
        func pairs(_ flat: [RESPValue]) -> [RESPValue] {
            stride(from: 0, to: flat.count - 1, by: 2).map { .array([flat[$0], double(flat[$0 + 1])]) }
        }
        let upgraded: RESPValue
        switch (command.name, value) {
        case ("zincrby", _), ("zadd", _):
            upgraded = double(value)
        case ("zpopmin", .array(.some(let flat))), ("zpopmax", .array(.some(let flat))):
            upgraded = arguments.count > 2 ? .array(pairs(flat)) : .array(flat.enumerated().map { $0.offset % 2 == 1 ? double($0.element) : $0.element })
        case ("zmpop", .array(.some(let popped))) where popped.count == 2:
            upgraded = .array([popped[0], .array(popped[1].array?.map { .array(($0.array ?? []).enumerated().map { $0.offset == 1 ? double($0.element) : $0.element }) })])
        default:
            upgraded = value
        }
        return upgraded.encoded(.resp3)
    }

    public var encoded: ByteBuffer {
        switch self {
        case .ok: Self.okBytes
        case .null: Self.nullBytes
        case .emptyArray: Self.emptyArrayBytes
        case .zero: Self.zeroBytes
        }
    }
}
