import NIOCore

/// Pylon's own keys in each rack's Redis — markers, owner epochs, checkpoints, all under
/// `pylon:` (`AppliedOffsets`) — kept out of every client's sight and reach: a command naming
/// such a key is refused, KEYS and SCAN leave them out, DBSIZE does not count them, RANDOMKEY
/// never answers one, and SORT may not name them in a BY or GET pattern. So a client that
/// deletes every key it can see leaves replication intact.
enum Bookkeeping {
    static let prefix = "pylon:"

    static func isBookkeeping(_ key: ByteBuffer) -> Bool {
        key.readableBytesView.starts(with: prefix.utf8)
    }

    /// Every key Pylon may keep for a world's topic: per partition its marker, owner,
    /// checkpoint and (while a snapshot loads) the load's progress; with `perSlot` (Redis
    /// Cluster) a marker and an owner per slot instead.
    static func keys(topic: String, partitions: Int, perSlot: Bool) -> [String] {
        let perPartition = (0..<Int32(partitions)).flatMap {
            [AppliedOffsets.checkpointKey(topic: topic, partition: $0), SnapshotCatchUp.progressKey(topic: topic, partition: $0)]
        }
        guard perSlot else {
            return perPartition + (0..<Int32(partitions)).flatMap {
                [AppliedOffsets.markerKey(topic: topic, partition: $0), AppliedOffsets.ownerKey(topic: topic, partition: $0)]
            }
        }
        return perPartition + (0..<HashSlot.count).flatMap { slot in
            let partition = OpRecord.partition(ofSlot: slot, count: partitions)
            return [AppliedOffsets.markerKey(topic: topic, partition: partition, slot: slot), AppliedOffsets.ownerKey(topic: topic, partition: partition, slot: slot)]
        }
    }

    static let refusal = "ERR pylon: keys starting with 'pylon:' are Pylon's own bookkeeping (applied offsets, owners, checkpoints) and cannot be read or written through a sidecar; use another prefix"

    static let patternRefusal = "ERR pylon: a SORT BY or GET pattern that could name a key starting with 'pylon:' (Pylon's own bookkeeping) is refused; start the pattern with a fixed prefix of your own keys"

    /// How the gateway sends a read that may touch the bookkeeping (a write naming it is refused
    /// by `WritePlanner`, which finds the write's keys anyway).
    enum Treatment {
        /// As it is.
        case unchanged
        /// Refused with this error.
        case refused(String)
        /// A read whose reply is filtered (KEYS, SCAN).
        case filtered(ReplyFilter)
        /// Another request in its place (DBSIZE, RANDOMKEY).
        case replaced(RedisRequest)
    }

    /// What becomes of `arguments`. `bookkeepingKeys` lists, for DBSIZE, the keys Pylon keeps
    /// in a standalone or Sentinel Redis (nil on Redis Cluster, whose backend asks every primary
    /// for DBSIZE and RANDOMKEY itself: `ClusterKeyspace`).
    static func treatment(of arguments: [ByteBuffer], command: Command, bookkeepingKeys: () -> [String]?) -> Treatment {
        if let positions = command.keyPositions(in: arguments), positions.contains(where: { isBookkeeping(arguments[$0]) }) {
            return .refused(refusal)
        }
        switch command.name {
        case "keys":
            return .filtered(.keys)
        case "scan":
            return .filtered(.scan)
        case "sort", "sort_ro":
            return self.sortNamesBookkeeping(arguments) ? .refused(patternRefusal) : .unchanged
        case "dbsize":
            guard let keys = bookkeepingKeys() else { return .unchanged }
            return .replaced(RedisRequest(strings: ["EVAL", dbsizeScript, "0"] + keys))
        case "randomkey":
            guard bookkeepingKeys() != nil else { return .unchanged }
            return .replaced(RedisRequest(strings: ["EVAL", randomKeyScript, "0"]))
        default:
            return .unchanged
        }
    }

    /// Whether a SORT's BY or GET pattern could name a bookkeeping key: its text before the
    /// first `*` is a prefix of `pylon:` or starts with it (`*` alone names the elements themselves).
    static func sortNamesBookkeeping(_ arguments: [ByteBuffer]) -> Bool {
        var index = 2
        while index + 1 < arguments.count {
            if arguments[index].equalsIgnoringASCIICase("BY") || arguments[index].equalsIgnoringASCIICase("GET") {
                let pattern = String(buffer: arguments[index + 1])
                if pattern != "#", pattern.contains("*") {
                    let fixed = pattern.prefix { $0 != "*" }
                    if prefix.hasPrefix(fixed) || fixed.hasPrefix(prefix) { return true }
                }
                index += 2
            } else {
                index += 1
            }
        }
        return false
    }

    /// DBSIZE less the bookkeeping keys that exist (ARGV: every key Pylon may keep).
    static let dbsizeScript = """
    local n = redis.call('DBSIZE')
    for i = 1, #ARGV, 1000 do n = n - redis.call('EXISTS', unpack(ARGV, i, math.min(i + 999, #ARGV))) end
    return n
    """

    /// DBSIZE on one Redis Cluster primary, less the bookkeeping keys it holds (ARGV: those of
    /// its slots). A script may touch keys of several slots only with the flag, and one command
    /// only keys of one slot, so each key is looked up by itself (about 5 ms per 10,000 keys).
    static let clusterDBSizeScript = """
    #!lua flags=allow-cross-slot-keys,no-writes
    local n = redis.call('DBSIZE')
    for i = 1, #ARGV do n = n - redis.call('EXISTS', ARGV[i]) end
    return n
    """

    /// RANDOMKEY that never answers a bookkeeping key: a few draws, then the first user key a
    /// SCAN finds (there are few bookkeeping keys, so the draws nearly always suffice).
    static let randomKeyScript = """
    local function mine(key) return string.sub(key, 1, 6) ~= 'pylon:' end
    for _ = 1, 16 do
      local key = redis.call('RANDOMKEY')
      if not key then return false end
      if mine(key) then return key end
    end
    local cursor = '0'
    repeat
      local scanned = redis.call('SCAN', cursor, 'COUNT', 1000)
      for _, key in ipairs(scanned[2]) do if mine(key) then return key end end
      cursor = scanned[1]
    until cursor == '0'
    return false
    """

    /// The replies that list keys.
    enum ReplyFilter {
        /// KEYS: an array of keys.
        case keys
        /// SCAN: a cursor and an array of keys.
        case scan

        /// `reply` without bookkeeping keys (unchanged when it has none, or is an error).
        func apply(to reply: ByteBuffer) -> ByteBuffer {
            guard reply.readableBytesView.firstRange(of: Bookkeeping.prefix.utf8) != nil else { return reply }
            var bytes = reply
            guard let value = try? RESPValue.decode(from: &bytes) else { return reply }
            func mine(_ keys: [RESPValue]) -> [RESPValue] {
                keys.filter { if case .bulkString(let key?) = $0 { !Bookkeeping.isBookkeeping(key) } else { true } }
            }
            switch (self, value) {
            case (.keys, .array(let keys?)):
                return RESPValue.array(mine(keys)).encoded
            case (.scan, .array(let page?)) where page.count == 2:
                return RESPValue.array([page[0], .array(mine(page[1].array ?? []))]).encoded
            default:
                return reply
            }
        }
    }
}

/// Hands a client the reply of a read with the bookkeeping filtered out (`Bookkeeping.ReplyFilter`).
final class BookkeepingFilter: ReplySink {
    private let filter: Bookkeeping.ReplyFilter
    private let target: ReplySink
    var flushRequested = false

    init(_ filter: Bookkeeping.ReplyFilter, target: ReplySink) {
        self.filter = filter
        self.target = target
    }

    func deliver(_ reply: ByteBuffer, tag: Int) {
        self.target.deliver(self.filter.apply(to: reply), tag: tag)
    }

    func flushReplies() {
        self.target.flushReplies()
    }
}
