import Shared

/// What the operator asks of a world's Kafka (blocking calls: run them off the cooperative pool).
public struct WorldKafka: Sendable {
    /// Removes a retired rack's consumer group.
    public var retire: @Sendable (_ brokers: String, _ group: String) throws -> Void
    /// Per partition of the topic, how many ops the group has not committed yet (log end minus
    /// committed offset; the whole log for a partition it never committed).
    public var lag: @Sendable (_ brokers: String, _ topic: String, _ group: String) throws -> [Int64]

    public init(
        retire: @escaping @Sendable (String, String) throws -> Void = WorldKafka.deleteGroup,
        lag: @escaping @Sendable (String, String, String) throws -> [Int64] = WorldKafka.groupLag
    ) {
        self.retire = retire
        self.lag = lag
    }

    public static func deleteGroup(brokers: String, group: String) throws {
        let admin = try KafkaProducer(brokers: brokers)
        defer { admin.close(timeout: .zero) }
        try admin.deleteConsumerGroup(group)
    }

    public static func groupLag(brokers: String, topic: String, group: String) throws -> [Int64] {
        let admin = try KafkaProducer(brokers: brokers)
        defer { admin.close(timeout: .zero) }
        // Short timeouts: an unreachable Kafka must not hold a reconcile worker for long.
        guard let count = try admin.partitionCount(topic: topic, timeoutMilliseconds: 2000) else { return [] }
        let partitions = (0..<Int32(count)).map { $0 }
        let ends = try partitions.map { try admin.watermarks(topic: topic, partition: $0, timeoutMilliseconds: 2000).high }
        // A consumer handle of the group that never joins it: it only reads the committed offsets.
        let reader = try KafkaConsumer(brokers: brokers, groupID: group)
        defer { reader.close() }
        let committed = try reader.committed(topic: topic, partitions: partitions, timeoutMilliseconds: 2000)
        return zip(ends, committed).map { end, committed in max(0, end - (committed ?? 0)) }
    }
}
