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

    /// Applies one op if its offset is above the marker, and advances the marker, atomically.
    /// KEYS[1] = marker; ARGV[1] = offset; ARGV[2] = the offset of the previous op of the same
    /// slot in the applier's current batch, or -1; ARGV[3…] = the op's arguments.
    ///
    /// Replies `{1, 'OK', reply}` when applied, `{1, 'ERR', message}` when Redis rejected the op
    /// (e.g. WRONGTYPE: the rejection is the same on every rack, so the op still counts as
    /// applied), `{0}` when the op was applied before, and `{-1}` when the previous op of its slot
    /// is missing — it failed on the way (a timeout, a dropped connection), and applying this one
    /// would advance the marker past it for good. The applier then re-reads its checkpoint.
    public static let script = """
    local applied = tonumber(redis.call('GET', KEYS[1]) or '-1')
    local offset = tonumber(ARGV[1])
    if offset <= applied then return {0} end
    local previous = tonumber(ARGV[2])
    if previous >= 0 and applied < previous then return {-1} end
    redis.call('SET', KEYS[1], ARGV[1])
    local reply = redis.pcall(unpack(ARGV, 3))
    if type(reply) == 'table' and reply.err then return {1, 'ERR', reply.err} end
    return {1, 'OK', reply}
    """

    /// The request that applies `op` at `offset` (see `script`): EVALSHA with the `sha` that
    /// `SCRIPT LOAD` answered, or EVAL with the script's text when `sha` is nil.
    public static func request(
        for op: OpRecord, offset: Int64, previousInSlot: Int64 = -1, topic: String, partition: Int32, sha: String? = nil
    ) -> [ByteBuffer] {
        var arguments = [
            ByteBuffer(string: sha == nil ? "EVAL" : "EVALSHA"), ByteBuffer(string: sha ?? self.script), ByteBuffer(string: "1"),
            ByteBuffer(string: self.markerKey(topic: topic, partition: partition, slot: op.slot)),
            ByteBuffer(string: String(offset)), ByteBuffer(string: String(previousInSlot)),
        ]
        arguments.append(contentsOf: op.arguments)
        return arguments
    }

    /// What applying one op did.
    public enum Outcome: Equatable, Sendable {
        /// Applied now; `reply` is the command's reply.
        case applied(reply: RESPValue)
        /// Redis rejected the op (e.g. WRONGTYPE); the rejection is the same on every rack.
        case rejected(error: String)
        /// The marker shows it was applied before; nothing was done.
        case alreadyApplied
        /// The previous op of its slot did not apply (see `script`); nothing was done.
        case previousMissing
    }

    /// Reads the script's reply.
    public static func outcome(of reply: RESPValue) throws -> Outcome {
        guard let fields = reply.array, let first = fields.first?.int else {
            throw OpRecord.DecodingError(description: "applier: unexpected reply \(reply)")
        }
        if first == 0 { return .alreadyApplied }
        if first == -1 { return .previousMissing }
        guard fields.count >= 2 else { return .applied(reply: .null) }
        if fields[1].string == "ERR" { return .rejected(error: fields.count > 2 ? fields[2].string ?? "" : "") }
        return .applied(reply: fields.count > 2 ? fields[2] : .null)
    }
}
