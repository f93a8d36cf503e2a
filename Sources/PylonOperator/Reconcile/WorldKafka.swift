import Foundation
import Shared
import Synchronization

/// What the operator asks of a world's Kafka (blocking calls: run them off the cooperative pool).
/// One admin client per bootstrap string is kept: a probe of 100 racks' lag every few seconds
/// costs requests, not 100 new clients.
public struct WorldKafka: Sendable {
    /// Removes a retired rack's consumer group.
    public var retire: @Sendable (_ brokers: String, _ group: String) throws -> Void
    /// Per partition of the topic, how many ops the group has not committed yet (log end minus
    /// committed offset; the whole log for a partition it never committed).
    public var lag: @Sendable (_ brokers: String, _ topic: String, _ group: String) throws -> [Int64]

    public init() {
        let clients = Clients()
        // A reconcile worker waits for this: an unreachable Kafka fails it in 5 s, retried with backoff.
        self.retire = { brokers, group in try clients.admin(brokers).deleteConsumerGroup(group, timeoutMilliseconds: 5000) }
        self.lag = { brokers, topic, group in
            let admin = try clients.admin(brokers)
            // Short timeouts: an unreachable Kafka must not hold a reconcile worker for long.
            guard let count = try admin.partitionCount(topic: topic, timeoutMilliseconds: 2000) else { return [] }
            let partitions = (0..<Int32(count)).map { $0 }
            let ends = try admin.endOffsets(topic: topic, partitions: partitions, timeoutMilliseconds: 2000)
            let committed = try admin.committedOffsets(group: group, topic: topic, partitions: partitions, timeoutMilliseconds: 2000)
            return zip(ends, committed).map { end, committed in max(0, end - (committed ?? 0)) }
        }
    }

    /// The kept admin clients, by bootstrap string.
    private final class Clients: Sendable {
        private let clients = Mutex<[String: KafkaProducer]>([:])

        func admin(_ brokers: String) throws -> KafkaProducer {
            if let client = self.clients.withLock({ $0[brokers] }) { return client }
            let client = try KafkaProducer(brokers: brokers)
            return self.clients.withLock { clients in
                if let existing = clients[brokers] {
                    client.close(timeout: .zero)
                    return existing
                }
                clients[brokers] = client
                return client
            }
        }
    }
}
