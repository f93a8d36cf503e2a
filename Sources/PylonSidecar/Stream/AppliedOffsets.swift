import NIOCore

/// Where a rack's Redis records which ops of the log it has applied: one marker per
/// (world, partition, hash slot), written by the same Lua script that applies the op, so an op
/// and its marker change together or not at all. An op whose offset is not above its slot's
/// marker is skipped: replays after a crash or a rebalance, and a deposed applier (zombie) still
/// writing, cannot apply anything twice.
///
/// The marker key carries a hash tag that hashes to the op's own slot, so on Redis Cluster the
/// marker lives on the node that holds the op's keys, and the script may touch both.
public enum AppliedOffsets {
    /// The marker key of `slot` for a partition of a world's topic.
    public static func markerKey(topic: String, partition: Int32, slot: Int) -> String {
        let tag = slot == OpRecord.noSlot ? "" : "{\(self.tags[slot])}"
        return "pylon:applied:\(tag):\(topic):\(partition)"
    }

    /// For each slot, a short string whose hash slot is that slot (found once, by search).
    static let tags: [String] = {
        var tags = [String?](repeating: nil, count: HashSlot.count)
        var missing = HashSlot.count
        var n = 0
        while missing > 0 {
            let candidate = String(n, radix: 36)
            let slot = HashSlot.of(candidate)
            if tags[slot] == nil {
                tags[slot] = candidate
                missing -= 1
            }
            n += 1
        }
        return tags.map { $0! }
    }()

    /// The key holding a partition's checkpoint: the next offset to read. Every op before it is
    /// applied (or was rejected), so a restarted applier resumes there; it is written after the
    /// ops it covers were confirmed, so it may lag behind the slot markers, never run ahead.
    public static func checkpointKey(topic: String, partition: Int32) -> String {
        "pylon:checkpoint:\(topic):\(partition)"
    }

    /// One op for the script: where it is in the log and the offset of the previous op of its
    /// slot in the applier's batch (-1 when it is the first).
    public struct PendingOp: Sendable {
        public var op: OpRecord
        public var partition: Int32
        public var offset: Int64
        public var previousInSlot: Int64

        public init(op: OpRecord, partition: Int32, offset: Int64, previousInSlot: Int64 = -1) {
            self.op = op
            self.partition = partition
            self.offset = offset
            self.previousInSlot = previousInSlot
        }
    }

    /// Applies a run of ops in order, each only if its offset is above its slot's marker, and
    /// advances the marker before running the op, so the two go together even if the script
    /// stops half-way (Redis does not undo a script's earlier writes).
    ///
    /// KEYS = the markers the ops use; ARGV = per op: marker index, offset, previous offset of the
    /// same slot in the batch (or -1), argument count, arguments. Replies one element per op:
    /// `0` applied before (a replay, a zombie), `{reply}` applied now, an error when Redis
    /// rejected the op (WRONGTYPE: the same on every rack, so it counts as applied). A final `-1`
    /// stops the run at an op whose predecessor in its slot is missing — it failed on the way (a
    /// dropped connection, OOM), and applying this one would advance the marker past it for good.
    public static let script = """
    local applied = {}
    for i = 1, #KEYS do applied[i] = tonumber(redis.call('GET', KEYS[i]) or '-1') end
    local results = {}
    local pos = 1
    while pos <= #ARGV do
      local m, offset, previous, argc = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3])
      local first = pos + 4
      if offset <= applied[m] then
        results[#results + 1] = 0
      elseif previous >= 0 and applied[m] < previous then
        results[#results + 1] = -1
        return results
      else
        redis.call('SET', KEYS[m], ARGV[pos + 1])
        applied[m] = offset
        local reply = redis.pcall(unpack(ARGV, first, first + argc - 1))
        if type(reply) == 'table' and reply.err then results[#results + 1] = reply else results[#results + 1] = {reply} end
      end
      pos = first + argc
    end
    return results
    """

    /// Writes the request applying `ops`: EVALSHA with the `sha` that `SCRIPT LOAD` answered,
    /// or EVAL with the script's text when `sha` is nil.
    public static func writeRequest(_ ops: some Collection<PendingOp>, topic: String, sha: String?, into buffer: inout ByteBuffer) {
        var markers: [String] = []
        var markerIndex: [String: Int] = [:]
        var argumentCount = 0
        let indices = ops.map { pending in
            let key = self.markerKey(topic: topic, partition: pending.partition, slot: pending.op.slot)
            argumentCount += 4 + pending.op.arguments.count
            if let index = markerIndex[key] { return index }
            markers.append(key)
            markerIndex[key] = markers.count
            return markers.count
        }
        buffer.writeString("*\(3 + markers.count + argumentCount)\r\n")
        for text in [sha == nil ? "EVAL" : "EVALSHA", sha ?? self.script, String(markers.count)] + markers {
            buffer.writeRESPBulkString(text)
        }
        for (pending, index) in zip(ops, indices) {
            buffer.writeRESPBulkString(String(index))
            buffer.writeRESPBulkString(String(pending.offset))
            buffer.writeRESPBulkString(String(pending.previousInSlot))
            buffer.writeRESPBulkString(String(pending.op.arguments.count))
            for argument in pending.op.arguments { buffer.writeRESPBulkString(argument) }
        }
    }

    /// What applying one op did.
    public enum Outcome: Equatable, Sendable {
        /// Applied now; `reply` is the command's reply.
        case applied(reply: RESPValue)
        /// Redis rejected the op (e.g. WRONGTYPE); the rejection is the same on every rack.
        case rejected(error: String)
        /// The marker shows it was applied before; nothing was done.
        case alreadyApplied
        /// The previous op of its slot did not apply (see `script`); nothing was done, and the
        /// ops after it in the run were not tried.
        case previousMissing
    }

    /// Reads the script's reply: one outcome per op tried, in order.
    public static func outcomes(of reply: RESPValue) throws -> [Outcome] {
        guard let fields = reply.array else { throw OpRecord.DecodingError(description: "applier: unexpected reply \(reply)") }
        return try fields.map { field in
            switch field {
            case .integer(0): return .alreadyApplied
            case .integer(-1): return .previousMissing
            case .error(let message): return .rejected(error: String(buffer: message))
            case .array(let wrapped?) where wrapped.count <= 1: return .applied(reply: wrapped.first ?? .null)
            default: throw OpRecord.DecodingError(description: "applier: unexpected outcome \(field)")
            }
        }
    }
}
