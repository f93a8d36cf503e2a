/// The log positions a snapshot reflects, read from the Pylon keys it holds for the world's
/// topic: each partition's marker (the last op applied, set by the same script as the op) and
/// checkpoint (where a restart reads from: before any op whose chunks are not all applied).
/// Owner keys and other topics' keys say nothing about the data and are passed over.
struct SnapshotTags: Equatable {
    var markers: [Int32: Int64] = [:]
    var checkpoints: [Int32: Int64] = [:]
    /// The snapshot is of a Redis Cluster rack (its markers are per slot).
    var perSlot = false
    /// Markers of other topics: the source is a rack of another world.
    var otherTopics = false

    mutating func note(key: String, value: String?, topic: String) {
        guard let value = value.flatMap({ Int64($0) }) else { return }
        if let partition = Self.partition(of: key, prefix: "pylon:applied:", topic: topic) {
            self.markers[partition] = value
        } else if let partition = Self.partition(of: key, prefix: "pylon:checkpoint:", topic: topic) {
            self.checkpoints[partition] = value
        } else if key.hasPrefix("pylon:applied:{"), key.contains("}:\(topic):") {
            self.perSlot = true
        } else if key.hasPrefix("pylon:applied:") {
            self.otherTopics = true
        }
    }

    /// Why the snapshot cannot be loaded into a rack of `topic` whose log starts at `logStarts`
    /// (per partition), or nil when it can.
    func refusal(topic: String, logStarts: [Int32: Int64]) -> String? {
        if self.perSlot {
            return "the snapshot is of a Redis Cluster rack (its markers are per slot), which cannot be loaded yet: take it from a standalone or Sentinel rack"
        }
        if self.markers.isEmpty, self.otherTopics {
            return "the snapshot holds the markers of another world's log, none of \(topic): snapshot-from must name a rack of this world"
        }
        for (partition, start) in logStarts.sorted(by: { $0.key < $1.key }) where self.reached(partition) < start {
            return "the log of partition \(partition) starts at offset \(start), after the snapshot's \(self.reached(partition)) (retention deleted the ops between): a newer snapshot is needed"
        }
        return nil
    }

    /// The first offset to apply in `partition` once the snapshot is loaded, in a log that
    /// starts at `logStart`: the source's checkpoint, else past its marker, else the log's start.
    func startOffset(_ partition: Int32, logStart: Int64 = 0) -> Int64 {
        max(self.checkpoints[partition] ?? self.markers[partition].map { $0 + 1 } ?? 0, logStart)
    }

    /// The offset up to which the snapshot holds every op of `partition`.
    private func reached(_ partition: Int32) -> Int64 {
        max(self.markers[partition].map { $0 + 1 } ?? 0, self.checkpoints[partition] ?? 0)
    }

    private static func partition(of key: String, prefix: String, topic: String) -> Int32? {
        let head = prefix + topic + ":"
        guard key.hasPrefix(head) else { return nil }
        return Int32(key.dropFirst(head.count))
    }
}
