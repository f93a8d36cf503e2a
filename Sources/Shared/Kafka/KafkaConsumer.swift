import CRdKafka
import NIOCore

/// One message read from the log.
public struct KafkaMessage: Sendable, Equatable {
    public var topic: String
    public var partition: Int32
    public var offset: Int64
    public var key: [UInt8]?
    public var value: ByteBuffer

    public init(topic: String, partition: Int32, offset: Int64, key: [UInt8]?, value: ByteBuffer) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
    }
}

/// A thin wrapper over a librdkafka consumer with explicit assignment: the caller says where
/// each partition starts (the applier resumes from the offset its Redis records, not from what
/// Kafka committed), and reads with `poll`, which blocks its thread — run it on a dedicated one.
/// Offsets committed to Kafka are for monitoring only (`enable.auto.commit` is off).
public final class KafkaConsumer: @unchecked Sendable {
    // @unchecked: librdkafka documents a consumer handle as thread-safe; `poll` is meant for one
    // thread at a time, which is how the applier uses it.
    private let handle: OpaquePointer
    private let rebalance: RebalanceBox?
    /// The queue `poll` reads (the group's, once `rd_kafka_poll_set_consumer` redirected the rest), for `wake`.
    private let queue: OpaquePointer

    /// What a consumer-group rebalance did to this member. Called on the thread that polls.
    public enum Rebalance {
        /// These partitions are now this member's. Nothing is fetched until the handler's owner
        /// calls `assign` with where each starts (the group waits for that call, heartbeating).
        case assigned([(topic: String, partition: Int32)])
        /// This member's partitions were taken away (before they are given to another member).
        case revoked([(topic: String, partition: Int32)])
    }

    public typealias RebalanceHandler = (Rebalance) -> Void

    private final class RebalanceBox {
        let handler: RebalanceHandler
        init(_ handler: @escaping RebalanceHandler) { self.handler = handler }
    }

    /// A consumer; with `onRebalance`, it joins its group through `subscribe`, and the
    /// handler's owner assigns each partition the group gives it (`assign`) from where it says.
    public init(brokers: String, groupID: String, properties: [String: String] = [:], onRebalance: RebalanceHandler? = nil) throws {
        let settings = [
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "auto.offset.reset": "earliest",
        ].merging(properties, uniquingKeysWith: { $1 }).merging(["bootstrap.servers": brokers, "group.id": groupID], uniquingKeysWith: { $1 })
        let box = onRebalance.map(RebalanceBox.init)
        let handle = try KafkaClient.make(RD_KAFKA_CONSUMER, properties: settings) { conf in
            guard let box else { return }
            rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(box).toOpaque())
            rd_kafka_conf_set_rebalance_cb(conf) { handle, error, list, opaque in
                guard let handle, let list, let opaque else { return }
                let box = Unmanaged<RebalanceBox>.fromOpaque(opaque).takeUnretainedValue()
                let partitions = (0..<Int(list.pointee.cnt)).map { index in
                    (topic: String(cString: list.pointee.elems[index].topic), partition: list.pointee.elems[index].partition)
                }
                if error == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
                    // Not assigned here at a placeholder offset to be moved later: librdkafka
                    // 2.0.2 answers an outdated ListOffsets reply (a logical start such as END,
                    // replaced before the broker answered it) by querying that start again,
                    // which moved a partition restarted at a real offset to the log's end — a
                    // gap of ops never fetched (seen after a broker restart, whose reply came
                    // 2 s late). The owner assigns once, at the real offsets.
                    box.handler(.assigned(partitions))
                } else {
                    _ = box.handler(.revoked(partitions))
                    rd_kafka_assign(handle, nil)
                }
            }
        }
        rd_kafka_poll_set_consumer(handle)
        self.handle = handle
        self.rebalance = box
        self.queue = rd_kafka_queue_get_consumer(handle)
    }

    /// Joins the group for these topics; partitions arrive through the rebalance handler.
    public func subscribe(_ topics: [String]) throws {
        let list = rd_kafka_topic_partition_list_new(Int32(topics.count))!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for topic in topics { rd_kafka_topic_partition_list_add(list, topic, RD_KAFKA_PARTITION_UA) }
        let error = rd_kafka_subscribe(self.handle, list)
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError("subscribe: \(String(cString: rd_kafka_err2str(error)))") }
    }

    /// The log end offset of a partition as last seen by this consumer's fetches (no request).
    public func cachedLogEnd(topic: String, partition: Int32) -> Int64? {
        var low: Int64 = 0
        var high: Int64 = 0
        guard rd_kafka_get_watermark_offsets(self.handle, topic, partition, &low, &high) == RD_KAFKA_RESP_ERR_NO_ERROR, high >= 0 else {
            return nil
        }
        return high
    }

    /// The first offset each partition's log still holds (retention deletes the ones before),
    /// asked of the broker; bounded by `timeoutMilliseconds` even when a broker stops answering
    /// (`KafkaClient.offsets`).
    public func logStarts(topic: String, partitions: [Int32], timeoutMilliseconds: Int32 = 5000) throws -> [Int32: Int64] {
        let starts = try KafkaClient.offsets(self.handle, at: Self.beginning, topic: topic, partitions: partitions, timeoutMilliseconds: timeoutMilliseconds)
        return Dictionary(uniqueKeysWithValues: zip(partitions, starts))
    }

    /// Offsets meaning "the start of the partition's log" and "its end".
    public static let beginning = Int64(RD_KAFKA_OFFSET_BEGINNING)
    public static let end = Int64(RD_KAFKA_OFFSET_END)

    /// Reads exactly these partitions, each from the given offset.
    public func assign(_ partitions: [(topic: String, partition: Int32, offset: Int64)]) throws {
        let list = Self.list(partitions)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let error = rd_kafka_assign(self.handle, list)
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError("assign: \(String(cString: rd_kafka_err2str(error)))") }
    }

    /// Waits up to `timeoutMilliseconds` for the next message; nil when none arrived. Errors that
    /// only report a partition's end are skipped; others are thrown. Messages `skip` names (by
    /// partition and offset) are passed over before anything of them is copied: a reader that
    /// already has them (the applier's own writes) pays nothing for their coming back.
    public func poll(timeoutMilliseconds: Int32, skip: ((Int32, Int64) -> Bool)? = nil) throws -> KafkaMessage? {
        var timeout = timeoutMilliseconds
        while let message = rd_kafka_consumer_poll(self.handle, timeout) {
            defer { rd_kafka_message_destroy(message) }
            let m = message.pointee
            if m.err == RD_KAFKA_RESP_ERR__PARTITION_EOF { return nil }
            guard m.err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(String(cString: rd_kafka_err2str(m.err))) }
            if let skip, skip(m.partition, m.offset) {
                timeout = 0
                continue
            }
            let value = m.payload.map { ByteBuffer(bytes: UnsafeRawBufferPointer(start: $0, count: m.len)) } ?? ByteBuffer()
            let key = m.key.map { Array(UnsafeRawBufferPointer(start: $0, count: m.key_len)) }
            return KafkaMessage(topic: String(cString: rd_kafka_topic_name(m.rkt)), partition: m.partition, offset: m.offset, key: key, value: value)
        }
        return nil
    }

    /// Makes the current (or else the next) `poll` return at once, from any thread: someone has
    /// work for the polling thread that does not come from the log.
    public func wake() {
        rd_kafka_queue_yield(self.queue)
    }

    /// Commits offsets (the next offset to read): Kafka's view of progress, for monitoring.
    public func commit(_ partitions: [(topic: String, partition: Int32, offset: Int64)], async: Bool = false) throws {
        let list = Self.list(partitions)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let error = rd_kafka_commit(self.handle, list, async ? 1 : 0)
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError("commit: \(String(cString: rd_kafka_err2str(error)))") }
    }

    /// Leaves the group (revoking through the handler) and releases the consumer.
    public func close() {
        rd_kafka_queue_destroy(self.queue)
        rd_kafka_consumer_close(self.handle)
        rd_kafka_destroy(self.handle)
        withExtendedLifetime(self.rebalance) {}
    }

    private static func list(_ partitions: [(topic: String, partition: Int32, offset: Int64)]) -> UnsafeMutablePointer<rd_kafka_topic_partition_list_t> {
        let list = rd_kafka_topic_partition_list_new(Int32(partitions.count))!
        for entry in partitions {
            rd_kafka_topic_partition_list_add(list, entry.topic, entry.partition).pointee.offset = entry.offset
        }
        return list
    }
}
