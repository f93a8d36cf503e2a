import Foundation
import NIOCore
import Shared

/// What keeps a snapshot load from writing into partitions that another sidecar of the rack took
/// over. A loader whose sidecar lost its partitions without noticing yet (cut off from Kafka, or
/// paused, while the group moved them on) must not go on restoring keys over the new owner's
/// later writes, nor empty them.
///
/// The loader claims every unit it may write (`AppliedOffsets.ownerScript`, as the applier does)
/// before its first write of an attempt, and every write it makes is a `script` call that checks,
/// on the node it runs on and atomically with the writes, that the units written are still its
/// own. The next owner — a loader or an applier — claims before it writes, so each write of the
/// old loader comes before that claim, or is refused whole; the old loader then stops.
struct LoadFence {
    typealias Unit = ApplierStateMachine.Unit

    struct Deposed: Error, CustomStringConvertible {
        var description: String
    }

    let topic: String
    let perSlot: Bool
    /// Every unit the load may write: its partitions' (standalone, Sentinel), or every slot of
    /// them and the slots of their bookkeeping keys (Redis Cluster).
    let units: [Unit]
    /// The epoch this loader holds on each unit, once claimed.
    private(set) var epochs: [Unit: Int] = [:]

    init(partitions: [Int32], topic: String, perSlot: Bool, partitionCount: Int) {
        self.topic = topic
        self.perSlot = perSlot
        guard perSlot else {
            self.units = partitions.map { Unit(partition: $0, slot: -1) }
            return
        }
        var units: Set<Unit> = []
        for partition in partitions {
            for slot in stride(from: Int(partition), to: HashSlot.count, by: partitionCount) { units.insert(Unit(partition: partition, slot: slot)) }
            let bookkeeping = [
                SnapshotCatchUp.progressKey(topic: topic, partition: partition), AppliedOffsets.checkpointKey(topic: topic, partition: partition),
                AppliedOffsets.markerKey(topic: topic, partition: partition), AppliedOffsets.markerKey(topic: topic, partition: partition, slot: OpRecord.noSlot),
            ]
            for key in bookkeeping { units.insert(Unit(partition: partition, slot: HashSlot.of(key))) }
        }
        self.units = units.sorted { ($0.partition, $0.slot) < ($1.partition, $1.slot) }
    }

    /// The unit whose claim fences a write of `key` (user data or bookkeeping) for `partition`.
    func unit(ofKey key: String, partition: Int32) -> Unit {
        self.unit(ofSlot: HashSlot.of(key), partition: partition)
    }

    func unit(ofSlot slot: Int, partition: Int32) -> Unit {
        Unit(partition: partition, slot: self.perSlot ? slot : -1)
    }

    /// Claims every unit (an attempt's first) or, when this loader holds them already (a retry),
    /// asserts its claims again: that restores a claim a Redis lost (it came back empty) and
    /// finds one another sidecar took meanwhile (`Deposed`).
    mutating func claim(through redis: RackPipelines, now: Int = Int(Date().timeIntervalSince1970 * 1000)) throws {
        let claims = self.units.map { unit in self.epochs[unit].map { (unit, "keep", $0) } ?? (unit, "claim", now) }
        for (unit, epoch) in try redis.own(claims, topic: self.topic) {
            if let held = self.epochs[unit], held != epoch {
                throw Deposed(description: "another sidecar of the rack claimed partition \(unit.partition) (epoch \(epoch), this load held \(held))")
            }
            self.epochs[unit] = epoch
        }
    }

    /// The reply of a `Writes` call, read: an error names what refused it.
    static func check(_ reply: RESPValue, doing what: String) throws {
        guard reply.isError, let message = reply.string else { return }
        if message.hasPrefix("DEPOSED") { throw Deposed(description: String(message.dropFirst("DEPOSED ".count))) }
        throw RackPipelines.Doubt(description: "\(what): redis answered \(message)")
    }

    /// The loader's writes on one node: ARGV[1] the number of claims to check, then each claim as
    /// its owner key and the epoch held, then each command as its argument count and arguments —
    /// a count of 0 being `RESTORE key ttl payload REPLACE ABSTTL` with its three variable
    /// arguments only (a load's bulk: fewer arguments for Redis and Lua to copy). Replies how
    /// many commands ran, or `-DEPOSED …` (and runs none) when a claim is not held. The keys are
    /// undeclared (`allow-cross-slot-keys`): on Redis Cluster a chunk's keys are in many slots of
    /// the node it is sent to. (A transaction under a WATCH of the owner keys was tried for
    /// standalone racks: no faster, as Redis then answers every command twice.)
    static let script = """
    #!lua flags=allow-cross-slot-keys
    local claims = tonumber(ARGV[1])
    for i = 2, 2 * claims, 2 do
      local stored = redis.call('GET', ARGV[i])
      if stored ~= ARGV[i + 1] then
        return redis.error_reply('DEPOSED ' .. ARGV[i] .. ' holds epoch ' .. tostring(stored) .. ', not ' .. ARGV[i + 1])
      end
    end
    local i, last, ran = 2 * claims + 2, #ARGV, 0
    while i <= last do
      local count = tonumber(ARGV[i])
      if count == 0 then
        redis.call('RESTORE', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], 'REPLACE', 'ABSTTL')
        count = 3
      else
        redis.call(unpack(ARGV, i + 1, i + count))
      end
      i, ran = i + count + 1, ran + 1
    end
    return ran
    """

    /// Writes for several nodes, each node's in one `script` call that checks the claims on the
    /// units it writes before it runs them.
    struct Writes {
        /// One node's part: its commands as the script's arguments, and the units they write.
        private struct Part {
            var body = ByteBuffer()
            var arguments = 0
            var units: Set<Unit> = []

            /// Adds a command (`count`: its argument count, or 0 for a RESTORE's three); answers its bytes.
            mutating func add(count: Int, arguments: Int, unit: Unit, write: (inout ByteBuffer) -> Void) -> Int {
                self.units.insert(unit)
                self.arguments += arguments + 1
                let before = self.body.writerIndex
                self.body.writeRESPBulkString(count)
                write(&self.body)
                return self.body.writerIndex - before
            }
        }

        private var parts: [HostPort: Part] = [:]
        /// The commands' bytes, on every node.
        private(set) var bytes = 0

        var isEmpty: Bool { self.parts.isEmpty }

        mutating func add(_ command: [String], unit: Unit, to node: HostPort) {
            self.add(command.map { ByteBuffer(string: $0) }, unit: unit, to: node)
        }

        mutating func add(_ command: [ByteBuffer], unit: Unit, to node: HostPort) {
            self.bytes += self.parts[node, default: Part()].add(count: command.count, arguments: command.count, unit: unit) { body in
                for argument in command { body.writeRESPBulkString(argument) }
            }
        }

        /// Adds `RESTORE key ttl payload REPLACE ABSTTL`: `write` writes its key, ttl and payload
        /// as bulk strings.
        mutating func addRestore(unit: Unit, to node: HostPort, write: (inout ByteBuffer) -> Void) {
            self.bytes += self.parts[node, default: Part()].add(count: 0, arguments: 3, unit: unit, write: write)
        }

        /// One `EVAL` per node, holding the claims of `fence` on the units it writes.
        func requests(fence: LoadFence) throws -> RackPipelines.Requests {
            var requests = RackPipelines.Requests()
            for (node, part) in self.parts {
                let claims = try part.units.map { unit in
                    guard let epoch = fence.epochs[unit] else { throw RackPipelines.Doubt(description: "the snapshot load writes \(unit) without claiming it") }
                    return (unit.ownerKey(topic: fence.topic), epoch)
                }
                requests.add(written: { buffer in
                    buffer.writeRESPArrayHeader(4 + 2 * claims.count + part.arguments)
                    buffer.writeRESPBulkString("EVAL")
                    buffer.writeRESPBulkString(LoadFence.script)
                    buffer.writeRESPBulkString("0")
                    buffer.writeRESPBulkString(claims.count)
                    for (key, epoch) in claims {
                        buffer.writeRESPBulkString(key)
                        buffer.writeRESPBulkString(epoch)
                    }
                    var body = part.body
                    buffer.writeBuffer(&body)
                }, to: node, as: .ownTurn)
            }
            return requests
        }
    }
}
