import Foundation

/// The log positions a snapshot reflects, read from the Pylon keys it holds for the world's
/// topic: each partition's marker (the last op applied, set by the same script as the op) and
/// checkpoint (where a restart reads from: before any op whose chunks are not all applied).
/// Owner keys and other topics' keys say nothing about the data and are passed over.
///
/// A Redis Cluster rack has a marker per slot, and its snapshot is one file per node, each of
/// its own instant. Each slot's marker is exact for that slot (the same node, the same script),
/// so the snapshot stands at a different offset in each slot. Its checkpoints are read from the
/// nodes before any node's file is begun (`sourceCheckpoints`): every op before one was applied
/// on every node by then, so each slot holds at least that much.
struct SnapshotTags: Equatable {
    var markers: [Int32: [Int: Int64]] = [:]
    var checkpoints: [Int32: Int64] = [:]
    /// The snapshot is of a Redis Cluster rack (its markers are per slot; keyless ops' under `OpRecord.noSlot`).
    var perSlot = false
    /// Markers of other topics: the source is a rack of another world.
    var otherTopics = false
    /// A Redis Cluster source's checkpoints, read before its nodes' files were begun; nil when
    /// the snapshot was not taken across a cluster (one file of one node).
    var sourceCheckpoints: [Int32: Int64]?

    /// The slot a marker of the partition (not of one slot) is kept under in `markers`.
    static let partitionMarker = -1

    mutating func note(key: String, value: String?, topic: String) {
        guard let value = value.flatMap({ Int64($0) }) else { return }
        if let partition = Self.partition(of: key, prefix: "pylon:applied:", topic: topic) {
            self.markers[partition, default: [:]][Self.partitionMarker] = value
        } else if let partition = Self.partition(of: key, prefix: "pylon:checkpoint:", topic: topic) {
            self.checkpoints[partition] = value
        } else if key.hasPrefix("pylon:applied:"), let range = key.range(of: ":\(topic):", options: .backwards),
                  let partition = Int32(key[range.upperBound...]) {
            let tag = key.dropFirst("pylon:applied:".count)[..<range.lowerBound]
            guard tag.isEmpty || (tag.hasPrefix("{") && tag.hasSuffix("}")) else { return self.otherTopics = true }
            self.perSlot = true
            self.markers[partition, default: [:]][tag.isEmpty ? OpRecord.noSlot : HashSlot.of(key)] = value
        } else if key.hasPrefix("pylon:applied:") {
            self.otherTopics = true
        }
    }

    /// Why the snapshot cannot be loaded into a rack of `topic` (`perSlot`: a Redis Cluster
    /// rack) whose log starts at `logStarts` (per partition), or nil when it can.
    func refusal(topic: String, logStarts: [Int32: Int64], partitions: Int, perSlot target: Bool) -> String? {
        if self.perSlot, self.sourceCheckpoints == nil {
            return "the snapshot is of one node of a Redis Cluster rack: name the whole cluster in snapshot-from (redis-cluster://HOST:PORT)"
        }
        if self.perSlot, !target {
            return "the snapshot is of a Redis Cluster rack (it stands at another offset in each slot): only a Redis Cluster rack can load it; take the snapshot from a standalone or Sentinel rack"
        }
        if self.markers.isEmpty, self.otherTopics {
            return "the snapshot holds the markers of another world's log, none of \(topic): snapshot-from must name a rack of this world"
        }
        for (partition, start) in logStarts.sorted(by: { $0.key < $1.key }) {
            let reached = self.reached(partition, partitions: partitions)
            if reached < start {
                return "the log of partition \(partition) starts at offset \(start), after the snapshot's \(reached) (retention deleted the ops between): a newer snapshot is needed"
            }
        }
        return nil
    }

    /// What a rack that loaded the snapshot writes for `partition`: its markers (by slot, or
    /// `partitionMarker`), and the first offset to apply in a log that starts at `logStart`.
    func adoption(of partition: Int32, partitions: Int, logStart: Int64 = 0, perSlot target: Bool) -> (markers: [Int: Int64], start: Int64) {
        guard self.perSlot else {
            let start = max(self.checkpoints[partition] ?? self.markers[partition]?[Self.partitionMarker].map { $0 + 1 } ?? 0, logStart)
            guard let marker = self.markers[partition]?[Self.partitionMarker] else { return ([:], start) }
            // On Redis Cluster every slot of the partition stands where the partition did.
            let slots = target ? Self.units(of: partition, partitions: partitions) : [Self.partitionMarker]
            return (Dictionary(uniqueKeysWithValues: slots.map { ($0, marker) }), start)
        }
        var markers: [Int: Int64] = [:]
        for (slot, reached) in self.reachedBySlot(partition, partitions: partitions) where reached > 0 { markers[slot] = reached - 1 }
        return (markers, max(self.sourceCheckpoints?[partition] ?? 0, logStart))
    }

    /// The offset up to which the snapshot holds every op of `partition`.
    private func reached(_ partition: Int32, partitions: Int) -> Int64 {
        guard self.perSlot else {
            return max(self.markers[partition]?[Self.partitionMarker].map { $0 + 1 } ?? 0, self.checkpoints[partition] ?? 0)
        }
        return self.reachedBySlot(partition, partitions: partitions).values.min() ?? 0
    }

    /// A Redis Cluster snapshot: how far each slot of `partition` (and its keyless ops) got —
    /// past its marker, and at least the checkpoint read before the files were begun.
    private func reachedBySlot(_ partition: Int32, partitions: Int) -> [Int: Int64] {
        let floor = self.sourceCheckpoints?[partition] ?? 0
        return Dictionary(uniqueKeysWithValues: Self.units(of: partition, partitions: partitions).map { slot in
            (slot, max(self.markers[partition]?[slot].map { $0 + 1 } ?? 0, floor))
        })
    }

    /// The slots whose ops `partition` carries on Redis Cluster, each under a marker of its own:
    /// the hash slots of its keys, and `OpRecord.noSlot` (keyless ops) in the partition that has them.
    static func units(of partition: Int32, partitions: Int) -> [Int] {
        let keyless = OpRecord.partition(ofSlot: OpRecord.noSlot, count: partitions) == partition ? [OpRecord.noSlot] : []
        return (0..<HashSlot.count).filter { OpRecord.partition(ofSlot: $0, count: partitions) == partition } + keyless
    }

    private static func partition(of key: String, prefix: String, topic: String) -> Int32? {
        let head = prefix + topic + ":"
        guard key.hasPrefix(head) else { return nil }
        return Int32(key.dropFirst(head.count))
    }
}
