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

    /// Applies one op if its offset is above the marker, and advances the marker, atomically.
    /// KEYS[1] = marker; ARGV[1] = offset; ARGV[2…] = the op's arguments. Replies
    /// `{1, reply}` when applied (`reply` is `{err = …}` when Redis rejected the op: the
    /// rejection is the same on every rack, so the op still counts as applied) and `{0}` when the
    /// op was applied before.
    public static let script = """
    local applied = tonumber(redis.call('GET', KEYS[1]) or '-1')
    local offset = tonumber(ARGV[1])
    if offset <= applied then return {0} end
    redis.call('SET', KEYS[1], ARGV[1])
    local reply = redis.pcall(unpack(ARGV, 2))
    if type(reply) == 'table' and reply.err then return {1, 'ERR', reply.err} end
    return {1, 'OK', reply}
    """

    /// The EVAL request that applies `op` at `offset`.
    public static func request(for op: OpRecord, offset: Int64, topic: String, partition: Int32) -> RedisRequest {
        var arguments = [
            ByteBuffer(string: "EVAL"), ByteBuffer(string: self.script), ByteBuffer(string: "1"),
            ByteBuffer(string: self.markerKey(topic: topic, partition: partition, slot: op.slot)),
            ByteBuffer(string: String(offset)),
        ]
        arguments.append(contentsOf: op.arguments)
        return RedisRequest(arguments)
    }

    /// What applying one op did.
    public enum Outcome: Equatable, Sendable {
        /// Applied now; `reply` is the command's reply.
        case applied(reply: RESPValue)
        /// Redis rejected the op (e.g. WRONGTYPE); the rejection is the same on every rack.
        case rejected(error: String)
        /// The marker shows it was applied before; nothing was done.
        case alreadyApplied
    }

    /// Reads the script's reply.
    public static func outcome(of reply: RESPValue) throws -> Outcome {
        guard let fields = reply.array, let first = fields.first?.int else {
            throw OpRecord.DecodingError(description: "applier: unexpected reply \(reply)")
        }
        if first == 0 { return .alreadyApplied }
        guard fields.count >= 2 else { return .applied(reply: .null) }
        if fields[1].string == "ERR" { return .rejected(error: fields.count > 2 ? fields[2].string ?? "" : "") }
        return .applied(reply: fields.count > 2 ? fields[2] : .null)
    }
}
