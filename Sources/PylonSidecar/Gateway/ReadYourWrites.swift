/// What one client connection must wait for to read its own writes, per partition of the log
/// (I/O-free; the connection asks before each read).
///
/// A read of a key must see every earlier write of the connection to that key, whatever the
/// consistency level: a write still on its way to the log or to this rack's reply (`inFlight`),
/// or acknowledged at the `log` level but perhaps not applied here yet (`unapplied`, checked
/// against this rack's markers). Other connections' writes never hold a read.
struct ReadYourWrites {
    /// Writes sent and not answered yet, per partition.
    private var inFlight: [Int32: Int] = [:]
    /// The highest offset of writes answered before this rack was known to have applied them
    /// (`log` level), per partition.
    private(set) var unapplied: [Int32: Int64] = [:]
    /// The highest offset of every acknowledged write, per partition (`PYLON LASTWRITE`).
    private(set) var written: [Int32: Int64] = [:]

    /// What a read has to wait for.
    enum Wait: Equatable {
        case nothing
        /// An earlier write to one of its partitions is still in flight: ask again once it is answered.
        case inFlight
        /// Earlier writes this rack may not have applied yet: wait until its markers pass them.
        case applied([AppliedReplies.Position])
    }

    var isEmpty: Bool { self.inFlight.isEmpty && self.unapplied.isEmpty }

    /// A write to these partitions was sent.
    mutating func sent(to partitions: [Int32]) {
        for partition in partitions { self.inFlight[partition, default: 0] += 1 }
    }

    /// The write sent to `partitions` was answered: Kafka has it at `positions` (empty when it
    /// failed); `appliedHere` when its reply came from this rack's application.
    mutating func answered(_ partitions: [Int32], positions: [AppliedReplies.Position], appliedHere: Bool) {
        for partition in partitions {
            let left = (self.inFlight[partition] ?? 1) - 1
            self.inFlight[partition] = left > 0 ? left : nil
        }
        for position in positions {
            self.written[position.partition] = max(self.written[position.partition] ?? -1, position.offset)
            if !appliedHere { self.unapplied[position.partition] = max(self.unapplied[position.partition] ?? -1, position.offset) }
        }
    }

    /// This rack applied every offset below `next` in `partition`.
    mutating func applied(below next: Int64, in partition: Int32) {
        if let offset = self.unapplied[partition], offset < next { self.unapplied[partition] = nil }
    }

    /// What a read of `partitions` waits for.
    func wait(forReading partitions: Set<Int32>) -> Wait {
        if partitions.contains(where: { self.inFlight[$0] != nil }) { return .inFlight }
        let positions = self.unapplied.filter { partitions.contains($0.key) }.sorted { $0.key < $1.key }
        return positions.isEmpty ? .nothing : .applied(positions.map { AppliedReplies.Position(partition: $0.key, offset: $0.value) })
    }
}
