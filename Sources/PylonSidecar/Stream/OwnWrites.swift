import NIOCore
import Shared
import Synchronization

/// The ops this sidecar wrote, handed from its producer to its applier when Kafka acknowledged
/// them, with the offset each got: the applier applies one at once when it is the very next op
/// of a partition it applies (`LogCursor`), instead of waiting for its fetch to bring it back.
/// An `applied` write's reply then costs one round trip to Kafka, not two. Nothing here is
/// needed for correctness: an op not taken (another sidecar of the rack applies its partition,
/// earlier ops of other racks are not fetched yet, the applier is busy) comes back by the log.
final class OwnWrites: Sendable {
    private struct State {
        var messages: [KafkaMessage] = []
        /// Wakes the applier's thread from its poll; nil while no applier runs.
        var wake: (@Sendable () -> Void)?
    }

    private let state = Mutex(State())
    /// Kept at most: an applier that cannot keep up (its Redis is away) does not make this grow.
    private let capacity: Int

    init(capacity: Int = 10_000) {
        self.capacity = capacity
    }

    /// An op of this sidecar is in the log at `delivery`.
    func add(_ value: ByteBuffer, topic: String, at delivery: KafkaDelivery) {
        let message = KafkaMessage(topic: topic, partition: delivery.partition, offset: delivery.offset, key: nil, value: value)
        self.state.withLock { state in
            guard let wake = state.wake, state.messages.count < self.capacity else { return }
            state.messages.append(message)
            // One wake per batch: the applier takes everything gathered once awake. Under the
            // lock (a wake only sets a flag), so no wake can reach a consumer `attach(nil)` let go.
            if state.messages.count == 1 { wake() }
        }
    }

    /// Everything handed over since the last call.
    func take() -> [KafkaMessage] {
        self.state.withLock { state in
            defer { state.messages.removeAll(keepingCapacity: true) }
            return state.messages
        }
    }

    /// Starts (with the applier's wake) or stops (nil) taking ops.
    func attach(wake: (@Sendable () -> Void)?) {
        self.state.withLock { state in
            state.wake = wake
            if wake == nil { state.messages = [] }
        }
    }
}

/// Where each partition the applier applies stands in the log: the offset the next message it
/// sends must have. The consumer's messages are in log order and pass when at or after it (the
/// consumer knows the log: an offset it skips holds nothing to apply); an own write (`OwnWrites`)
/// passes only when it is exactly that offset, so that nothing before it is missing — and the
/// fetch that brings it back later is passed over.
struct LogCursor {
    /// Assigned partitions and the offset of the next message to send; a negative value (the
    /// log's beginning or end, not a real offset yet) takes any fetched message and no own write.
    private(set) var expected: [Int32: Int64] = [:]

    /// A partition starts at `offset` (a real offset, or `KafkaConsumer.beginning`/`.end`).
    mutating func start(_ partition: Int32, at offset: Int64) {
        self.expected[partition] = offset
    }

    mutating func removeAll() {
        self.expected = [:]
    }

    /// Whether a fetched message would be sent (`admit`): nothing before the next offset of a
    /// partition this applier applies.
    func admits(_ partition: Int32, offset: Int64) -> Bool {
        guard let next = self.expected[partition] else { return false }
        return offset >= next
    }

    /// The messages to send next, in order: the fetched ones, then the own writes that follow
    /// them without a gap.
    mutating func admit(fetched: [KafkaMessage], own: [KafkaMessage]) -> [KafkaMessage] {
        var admitted: [KafkaMessage] = []
        admitted.reserveCapacity(fetched.count + own.count)
        for message in fetched {
            guard self.admits(message.partition, offset: message.offset) else { continue }
            admitted.append(message)
            self.expected[message.partition] = message.offset + 1
        }
        for message in own.sorted(by: { ($0.partition, $0.offset) < ($1.partition, $1.offset) }) {
            guard self.expected[message.partition] == message.offset else { continue }
            admitted.append(message)
            self.expected[message.partition] = message.offset + 1
        }
        return admitted
    }
}
