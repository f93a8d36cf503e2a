import NIOCore

/// FLUSHALL and FLUSHDB in the log. A flush cannot be one op: the log has one order per
/// partition, none across them. So it becomes one op per partition, `PYLON.FLUSH <partition>
/// <partitions>`, and each partition's applier, when it reaches its op, deletes the keys of that
/// partition's slots. On every rack every user key written before the flush (earlier in its
/// partition) is gone and every write acknowledged after it (later in its partition) survives;
/// Pylon's bookkeeping (`pylon:` keys) is kept.
///
/// The deletion runs in scripts that check the applier's claim and the marker like every run
/// (`AppliedOffsets.script`), so a deposed applier deletes nothing and a replay does not delete
/// again: on a standalone or Sentinel Redis, `standaloneScript` walks the keyspace with SCAN a
/// chunk at a time and sets the marker with the last chunk; on Redis Cluster, `slotScript`
/// empties one slot (CLUSTER GETKEYSINSLOT) and sets that slot's marker.
public enum FlushOps {
    public static let command = "PYLON.FLUSH"

    /// The ops of a flush in a log of `partitions` partitions: op `p` is on slot `p`, which is in
    /// partition `p` (`OpRecord.partition(ofSlot:count:)`).
    static func ops(partitions: Int) -> [WritePlanner.PlannedOp] {
        (0..<partitions).map { partition in
            WritePlanner.PlannedOp(
                arguments: [command, String(partition), String(partitions)].map { ByteBuffer(string: $0) }, slot: partition
            )
        }
    }

    /// The partition a flush op empties and the partition count it was planned for; nil when
    /// `op` is no flush.
    static func target(of op: OpRecord) -> (partition: Int32, partitions: Int)? {
        guard op.arguments.count == 3, op.arguments[0].readableBytesView.elementsEqual(command.utf8),
              let partition = Int32(String(buffer: op.arguments[1])), let partitions = Int(String(buffer: op.arguments[2])), partitions > 0 else { return nil }
        return (partition, partitions)
    }

    /// Checks shared by both scripts: KEYS[1] the marker, KEYS[2] the owner key; ARGV[1] the
    /// applier's epoch, ARGV[2] the flush op's offset, ARGV[3] the offset of the op sent before
    /// it under this marker (-1: none). Replies -2 (deposed), -3 (applied before: nothing to do)
    /// or -1 (the previous op did not apply), as `AppliedOffsets.script`.
    static let guards = """
    if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[1]) then return -2 end
    local applied = tonumber(redis.call('GET', KEYS[1]) or '-1')
    if applied >= tonumber(ARGV[2]) then return -3 end
    if tonumber(ARGV[3]) > applied then return -1 end
    local function unlink(keys)
      for i = 1, #keys, 1000 do redis.call('UNLINK', unpack(keys, i, math.min(i + 999, #keys))) end
    end
    local function bookkeeping(key) return string.sub(key, 1, 6) == 'pylon:' end

    """

    /// One chunk of a flush on a standalone Redis: ARGV[4] the SCAN cursor, ARGV[5] the
    /// partition, ARGV[6] the partition count. Deletes the user keys of the partition's slots
    /// among the chunk (CRC16 and hash tags as Redis Cluster computes slots); replies the next
    /// cursor, and with the last ("0") sets the marker.
    public static let standaloneScript = guards + """
    local crcs = {}
    for i = 0, 255 do
      local crc = bit.lshift(i, 8)
      for _ = 1, 8 do
        if bit.band(crc, 0x8000) ~= 0 then crc = bit.bxor(bit.lshift(crc, 1), 0x1021) else crc = bit.lshift(crc, 1) end
      end
      crcs[i] = bit.band(crc, 0xFFFF)
    end
    local function slot(key)
      local open = string.find(key, '{', 1, true)
      if open then
        local close = string.find(key, '}', open + 1, true)
        if close and close > open + 1 then key = string.sub(key, open + 1, close - 1) end
      end
      local crc = 0
      for i = 1, #key do
        crc = bit.bxor(bit.band(bit.lshift(crc, 8), 0xFFFF), crcs[bit.bxor(bit.rshift(crc, 8), string.byte(key, i))])
      end
      return crc % 16384
    end
    local partition, partitions = tonumber(ARGV[5]), tonumber(ARGV[6])
    local scanned = redis.call('SCAN', ARGV[4], 'COUNT', 1000)
    local doomed = {}
    for _, key in ipairs(scanned[2]) do
      if not bookkeeping(key) and slot(key) % partitions == partition then doomed[#doomed + 1] = key end
    end
    unlink(doomed)
    if scanned[1] == '0' then redis.call('SET', KEYS[1], ARGV[2]) end
    return scanned[1]
    """

    /// A flush of one slot on Redis Cluster (KEYS are that slot's marker and owner key): ARGV[4]
    /// the slot. Deletes its user keys, sets its marker; replies 0.
    public static let slotScript = guards + """
    while true do
      local doomed = {}
      for _, key in ipairs(redis.call('CLUSTER', 'GETKEYSINSLOT', ARGV[4], 1000)) do
        if not bookkeeping(key) then doomed[#doomed + 1] = key end
      end
      if #doomed == 0 then break end
      unlink(doomed)
    end
    redis.call('SET', KEYS[1], ARGV[2])
    return 0
    """
}
