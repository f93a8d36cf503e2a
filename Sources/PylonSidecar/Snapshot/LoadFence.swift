import Foundation
import NIOCore
import Shared

/// What keeps a snapshot load from writing into partitions that another sidecar of the rack took
/// over. A loader whose sidecar lost its partitions without noticing yet (cut off from Kafka, or
/// paused, while the group moved them on) must not go on restoring keys over the new owner's
/// later writes, nor empty them.
///
/// The loader names its connections after the partitions it loads (`connectionName`) and, on
/// each, claims every unit it may write (`AppliedOffsets.ownerScript`, as the applier does)
/// before its first write; its writes are then plain commands (RESTORE, pipelined). The next
/// owner — a loader or an applier — claims before it writes, and its claim ends by closing the
/// connections of the loaders of those partitions on that node (`RackPipelines.own`, `CLIENT
/// KILL`). Redis runs one command at a time, so each write of the old loader comes before that
/// kill, and the new owner writes after it; a connection the old loader opens later asserts its
/// claims first and finds them taken (`Deposed`). The old loader then stops.
///
/// (Checking the claims in a script around each chunk's RESTOREs cost a third of the load rate:
/// Lua copies every payload once more. `BENCHMARKS.md`.)
struct LoadFence {
    typealias Unit = ApplierStateMachine.Unit

    struct Deposed: Error, CustomStringConvertible {
        var description: String
    }

    let topic: String
    /// Every unit the load may write: its partitions' (standalone, Sentinel), or every slot of
    /// them and the slots of their bookkeeping keys (Redis Cluster).
    let units: [Unit]
    /// The epoch this loader holds on each unit, once claimed.
    private(set) var epochs: [Unit: Int] = [:]

    init(partitions: [Int32], topic: String, perSlot: Bool, partitionCount: Int) {
        self.topic = topic
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

    /// Claims every unit (an attempt's first) or, when this loader holds them already (a retry,
    /// on new connections), asserts its claims again: that restores a claim a Redis lost (it came
    /// back empty) and finds one another sidecar took meanwhile (`Deposed`).
    mutating func claim(through redis: RackPipelines, now: Int = Int(Date().timeIntervalSince1970 * 1000)) throws {
        let claims = self.units.map { unit in self.epochs[unit].map { (unit, "keep", $0) } ?? (unit, "claim", now) }
        for (unit, epoch) in try redis.own(claims, topic: self.topic) {
            if let held = self.epochs[unit], held != epoch {
                throw Deposed(description: "another sidecar of the rack claimed partition \(unit.partition) (epoch \(epoch), this load held \(held))")
            }
            self.epochs[unit] = epoch
        }
    }

    // MARK: - Loaders' connections

    /// The client name of a loader's connections (`CLIENT SETNAME`): the partitions it writes.
    static func connectionName(topic: String, partitions: [Int32]) -> String {
        "pylon-load:\(topic):" + partitions.sorted().map(String.init).joined(separator: ",")
    }

    /// The ids of the connections in `clientList` (a `CLIENT LIST` reply) that loaders of `topic`
    /// named after any of `partitions`: those a claim of them closes.
    static func loaders(in clientList: String, topic: String, partitions: Set<Int32>) -> [Int] {
        let prefix = "pylon-load:\(topic):"
        return clientList.split(whereSeparator: \.isNewline).compactMap { line in
            var id: Int?
            var named: Substring?
            for field in line.split(separator: " ") {
                if field.hasPrefix("id=") { id = Int(field.dropFirst(3)) }
                if field.hasPrefix("name=") { named = field.dropFirst(5) }
            }
            guard let id, let named, named.hasPrefix(prefix) else { return nil }
            let theirs = named.dropFirst(prefix.count).split(separator: ",").compactMap { Int32($0) }
            return theirs.contains(where: partitions.contains) ? id : nil
        }
    }
}
