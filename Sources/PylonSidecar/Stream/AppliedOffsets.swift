import NIOCore

/// Where a rack's Redis records which ops of the log it has applied: a marker holding the offset
/// of the last op applied, written by the same Lua script that applies the ops, so ops and their
/// marker change together or not at all. An op whose offset is not above its marker is skipped:
/// replays after a crash or a rebalance, and a deposed applier (zombie) still writing, cannot
/// apply anything twice.
///
/// On a standalone or Sentinel-managed Redis there is one marker per partition, so a script
/// applying a hundred ops writes one marker. On Redis Cluster a script may only touch keys of
/// one slot, so the marker is per (partition, slot): its key carries a hash tag that hashes to
/// the ops' own slot, and it lives on the node that holds their keys.
public enum AppliedOffsets {
    /// The marker of a partition of a world's topic (standalone and Sentinel Redis).
    public static func markerKey(topic: String, partition: Int32) -> String {
        "pylon:applied:\(topic):\(partition)"
    }

    /// The marker of `slot` in a partition of a world's topic (Redis Cluster).
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

    /// The key naming the applier that owns a partition in this rack: the epoch of its claim.
    /// Every script checks it, so an applier deposed by a newer claim (a zombie that has not
    /// heard of the rebalance yet) writes nothing more.
    public static func ownerKey(topic: String, partition: Int32) -> String {
        "pylon:owner:\(topic):\(partition)"
    }

    /// The owner key on Redis Cluster, in `slot` (a script may only touch one slot there).
    public static func ownerKey(topic: String, partition: Int32, slot: Int) -> String {
        let tag = slot == OpRecord.noSlot ? "" : "{\(self.tags[slot])}"
        return "pylon:owner:\(tag):\(topic):\(partition)"
    }

    /// Claims a partition (`claim`, with ARGV[2] the claimant's clock in ms) or keeps a claim
    /// (`keep`, ARGV[2] the epoch held). A claim's epoch is above every earlier one (the stored
    /// epoch + 1) and at least the clock, so after Redis came back empty a new owner still
    /// outranks a zombie re-asserting its old epoch; `keep` restores an epoch lost that way, but
    /// never lowers one. Replies the epoch now stored: a keeper that gets another is deposed.
    public static let ownerScript = """
    local stored = tonumber(redis.call('GET', KEYS[1]) or '0')
    local mine = tonumber(ARGV[2])
    if ARGV[1] == 'claim' then mine = math.max(mine, stored + 1) end
    if mine > stored then redis.call('SET', KEYS[1], string.format('%d', mine)) return mine end
    return stored
    """

    /// The key holding a partition's checkpoint: the next offset to read. Every op before it is
    /// applied (or was rejected), so a restarted applier resumes there; it is written after the
    /// ops it covers were confirmed, so it may lag behind the markers, never run ahead.
    public static func checkpointKey(topic: String, partition: Int32) -> String {
        "pylon:checkpoint:\(topic):\(partition)"
    }

    /// The next offset a rack needs in a partition, from its marker (the last op applied) and its
    /// checkpoint (which also passes unreadable messages; on Redis Cluster, where markers are per
    /// slot, it alone tells): every offset below it is done.
    public static func nextOffset(marker: Int64?, checkpoint: Int64?) -> Int64 {
        max(marker.map { $0 + 1 } ?? 0, checkpoint ?? 0)
    }

    /// The most arguments an op applied by `script` may have: Lua's `unpack` takes at most about
    /// 8000 values. A longer op is applied on its own in a MULTI/EXEC instead (`Applier`).
    public static let maxScriptArguments = 7000

    /// Sets the marker of an op passed without running (refused when queued in a MULTI): KEYS[1]
    /// the marker, KEYS[2] the owner key; ARGV[1] the epoch, ARGV[2] the offset.
    public static let markScript = """
    if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[1]) then return -2 end
    if tonumber(redis.call('GET', KEYS[1]) or '-1') >= tonumber(ARGV[2]) then return -3 end
    redis.call('SET', KEYS[1], ARGV[2])
    return 0
    """

    /// One op for the script and where it is in its partition.
    public struct PendingOp: Sendable {
        public var op: OpRecord
        public var offset: Int64

        public init(op: OpRecord, offset: Int64) {
            self.op = op
            self.offset = offset
        }
    }

    /// Applies a run of ops that share one marker, in ascending offset order: those at or below
    /// the marker are skipped (they are a prefix of the run), the rest applied.
    ///
    /// The marker is set to the run's last offset *before* the ops run, as the script's first
    /// write. That is safe because a script is atomic: no client sees it half-done, replicas and
    /// the AOF receive its effects as one MULTI/EXEC, and once a script has written, Redis
    /// refuses none of its later writes for memory (an OOM refusal can only hit that first
    /// write, which then aborts the script with nothing changed). The ops run under `pcall`, so
    /// a rejected op (WRONGTYPE — the same on every rack) cannot stop the script either.
    ///
    /// KEYS[1] = the marker, KEYS[2] = the owner key; ARGV[1] = the offset of the op sent before
    /// this run under the same marker, or -1; ARGV[2] = the applier's epoch (see `ownerScript`);
    /// then per op: offset, argument count, arguments. Replies `{skipped, reply…}`: how many ops
    /// were applied before (a replay), then each applied op's reply or error. Replies `{-1}` when
    /// the previous op is not applied: it failed on the way (a dropped connection, OOM), and
    /// applying this run would move the marker past it for good. Replies `{-2}` when another
    /// applier claimed the partition since: this one is deposed.
    public static let script = spopFunction + "\n" + exactFunction + "\n" + """
    if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[2]) then return {-2} end
    local applied = tonumber(redis.call('GET', KEYS[1]) or '-1')
    if tonumber(ARGV[1]) > applied then return {-1} end
    local skipped, todo, pos = 0, {}, 3
    while pos <= #ARGV do
      if tonumber(ARGV[pos]) <= applied then skipped = skipped + 1 else todo[#todo + 1] = pos end
      pos = pos + 2 + tonumber(ARGV[pos + 1])
    end
    local results = {skipped}
    if #todo == 0 then return results end
    redis.call('SET', KEYS[1], ARGV[todo[#todo]])
    for i = 1, #todo do
      local first = todo[i] + 2
      if ARGV[first] == '\(spopCommand)' then
        local ok, reply = pcall(spop, ARGV[first + 1], ARGV[first + 2], ARGV[first + 3])
        if ok then results[i + 1] = reply
        elseif type(reply) == 'table' then results[i + 1] = reply
        else results[i + 1] = {err = tostring(reply)} end
      else
        local reply = redis.pcall(unpack(ARGV, first, first + tonumber(ARGV[first - 1]) - 1))
        if type(reply) == 'number' and (reply >= 9007199254740992 or reply <= -9007199254740992) then reply = exact(first, reply) end
        results[i + 1] = reply
      end
    end
    return results
    """

    /// Lua's numbers are doubles: an integer reply beyond 2^53 reaches a script rounded. For the
    /// commands whose reply is a stored integer (INCR, INCRBY, DECR, DECRBY, HINCRBY) the exact
    /// value is read back and handed out as `+PYLON.INT <digits>` (`outcomes` makes it an
    /// integer again); another such reply stays rounded (see the README).
    static let exactFunction = """
    local function exact(first, rounded)
      local name = string.lower(ARGV[first])
      local value
      if name == 'incr' or name == 'decr' or name == 'incrby' or name == 'decrby' then value = redis.call('GET', ARGV[first + 1])
      elseif name == 'hincrby' then value = redis.call('HGET', ARGV[first + 1], ARGV[first + 2]) end
      if value then return {ok = 'PYLON.INT ' .. value} end
      return rounded
    end
    """

    /// The op SPOP becomes (`WritePlanner`): `PYLON.SPOP key count|single seed`. No client can
    /// send it (it is no command of the table); the script above applies it.
    public static let spopCommand = "PYLON.SPOP"

    /// SPOP without chance: the members popped are those whose SHA-1 with the op's seed is
    /// lowest, so every rack pops the same ones whatever order its set keeps them in. Replies
    /// as SPOP does: a member or nil, or with a count the members popped.
    static let spopFunction = """
    local function spop(key, count, seed)
      local members = redis.call('SMEMBERS', key)
      local want = count == 'single' and 1 or tonumber(count)
      if want > #members then want = #members end
      local ranked = {}
      for i = 1, #members do ranked[i] = {redis.sha1hex(seed .. members[i]), members[i]} end
      table.sort(ranked, function(a, b) return a[1] < b[1] end)
      local popped = {}
      for i = 1, want do popped[i] = ranked[i][2] end
      for i = 1, #popped, 1000 do redis.call('SREM', key, unpack(popped, i, math.min(i + 999, #popped))) end
      if count == 'single' then return popped[1] or false end
      return popped
    end
    """

    /// Who applies a partition: the owner key and the epoch of the claim.
    public struct Ownership: Sendable, Equatable {
        public var key: String
        public var epoch: Int
    }

    /// Writes the request applying a run of ops sharing `marker`: EVALSHA with the `sha` that
    /// `SCRIPT LOAD` answered, or EVAL with the script's text when `sha` is nil.
    public static func writeRequest(
        _ run: some Collection<PendingOp>, marker: String, owner: Ownership, previous: Int64, sha: String?, into buffer: inout ByteBuffer
    ) {
        let argumentCount = run.reduce(0) { $0 + 2 + $1.op.arguments.count }
        buffer.writeRESPArrayHeader(7 + argumentCount)
        buffer.writeRESPBulkString(sha == nil ? "EVAL" : "EVALSHA")
        buffer.writeRESPBulkString(sha ?? self.script)
        buffer.writeRESPBulkString(2)
        buffer.writeRESPBulkString(marker)
        buffer.writeRESPBulkString(owner.key)
        buffer.writeRESPBulkString(Int(previous))
        buffer.writeRESPBulkString(owner.epoch)
        for pending in run {
            buffer.writeRESPBulkString(Int(pending.offset))
            buffer.writeRESPBulkString(pending.op.arguments.count)
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
        /// The op before the run did not apply (see `script`); nothing in the run was done.
        case previousMissing
        /// Another applier claimed the partition; nothing in the run was done.
        case deposed
    }

    /// Reads the script's reply: one outcome per op, in order, or one `previousMissing` or `deposed`.
    public static func outcomes(of reply: RESPValue) throws -> [Outcome] {
        guard let fields = reply.array, case .integer(let skipped) = fields.first, skipped >= -2 else {
            throw OpRecord.DecodingError(description: "applier: unexpected reply \(reply)")
        }
        if skipped == -1 { return [.previousMissing] }
        if skipped == -2 { return [.deposed] }
        return Array(repeating: .alreadyApplied, count: skipped) + fields.dropFirst().map { field in
            switch field {
            case .error(let message):
                return .rejected(error: String(buffer: message))
            case .simpleString(let text) where text.readableBytesView.starts(with: "PYLON.INT ".utf8):
                return .applied(reply: .integer(Int(String(buffer: text).dropFirst(10)) ?? 0))
            default:
                return .applied(reply: field)
            }
        }
    }
}
