/// The log positions a snapshot reflects, read from the Pylon keys it holds for the world's
/// topic: each partition's marker (the last op applied, set by the same script as the op) and
/// checkpoint (where a restart reads from: before any op whose chunks are not all applied).
/// Owner keys and other topics' keys say nothing about the data and are passed over.
struct SnapshotTags: Equatable {
    var markers: [Int32: Int64] = [:]
    var checkpoints: [Int32: Int64] = [:]
    /// The snapshot is of a Redis Cluster rack (its markers are per slot).
    var perSlot = false

    mutating func note(key: String, value: String?, topic: String) {
        guard let value = value.flatMap({ Int64($0) }) else { return }
        if let partition = Self.partition(of: key, prefix: "pylon:applied:", topic: topic) {
            self.markers[partition] = value
        } else if let partition = Self.partition(of: key, prefix: "pylon:checkpoint:", topic: topic) {
            self.checkpoints[partition] = value
        } else if key.hasPrefix("pylon:applied:{"), key.contains("}:\(topic):") {
            self.perSlot = true
        }
    }

    /// The first offset to apply in `partition` once the snapshot is loaded.
    func startOffset(_ partition: Int32) -> Int64 {
        self.checkpoints[partition] ?? self.markers[partition].map { $0 + 1 } ?? 0
    }

    private static func partition(of key: String, prefix: String, topic: String) -> Int32? {
        let head = prefix + topic + ":"
        guard key.hasPrefix(head) else { return nil }
        return Int32(key.dropFirst(head.count))
    }
}
