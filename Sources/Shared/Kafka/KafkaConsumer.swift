import CRdKafka
import NIOCore

/// One message read from the log.
public struct KafkaMessage: Sendable, Equatable {
    public var topic: String
    public var partition: Int32
    public var offset: Int64
    public var key: [UInt8]?
    public var value: ByteBuffer
}

/// A thin wrapper over a librdkafka consumer with explicit assignment: the caller says where
/// each partition starts (the applier resumes from the offset its Redis records, not from what
/// Kafka committed), and reads with `poll`, which blocks its thread — run it on a dedicated one.
/// Offsets committed to Kafka are for monitoring only (`enable.auto.commit` is off).
public final class KafkaConsumer: @unchecked Sendable {
    // @unchecked: librdkafka documents a consumer handle as thread-safe; `poll` is meant for one
    // thread at a time, which is how the applier uses it.
    private let handle: OpaquePointer

    public init(brokers: String, groupID: String, properties: [String: String] = [:]) throws {
        let conf = rd_kafka_conf_new()!
        var errorText = [CChar](repeating: 0, count: 512)
        let settings = [
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "auto.offset.reset": "earliest",
        ].merging(properties, uniquingKeysWith: { $1 }).merging(["bootstrap.servers": brokers, "group.id": groupID], uniquingKeysWith: { $1 })
        for (key, value) in settings {
            guard rd_kafka_conf_set(conf, key, value, &errorText, errorText.count) == RD_KAFKA_CONF_OK else {
                rd_kafka_conf_destroy(conf)
                throw KafkaError("kafka property '\(key)': \(KafkaProducer.text(errorText))")
            }
        }
        guard let handle = rd_kafka_new(RD_KAFKA_CONSUMER, conf, &errorText, errorText.count) else {
            throw KafkaError("cannot create a kafka consumer: \(KafkaProducer.text(errorText))")
        }
        rd_kafka_poll_set_consumer(handle)
        self.handle = handle
    }

    /// Reads exactly these partitions, each from the given offset.
    public func assign(_ partitions: [(topic: String, partition: Int32, offset: Int64)]) throws {
        let list = Self.list(partitions)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let error = rd_kafka_assign(self.handle, list)
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError("assign: \(String(cString: rd_kafka_err2str(error)))") }
    }

    /// Waits up to `timeoutMilliseconds` for the next message; nil when none arrived. Errors that
    /// only report a partition's end are skipped; others are thrown.
    public func poll(timeoutMilliseconds: Int32) throws -> KafkaMessage? {
        guard let message = rd_kafka_consumer_poll(self.handle, timeoutMilliseconds) else { return nil }
        defer { rd_kafka_message_destroy(message) }
        let m = message.pointee
        if m.err == RD_KAFKA_RESP_ERR__PARTITION_EOF { return nil }
        guard m.err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(String(cString: rd_kafka_err2str(m.err))) }
        let value = m.payload.map { ByteBuffer(bytes: UnsafeRawBufferPointer(start: $0, count: m.len)) } ?? ByteBuffer()
        let key = m.key.map { Array(UnsafeRawBufferPointer(start: $0, count: m.key_len)) }
        return KafkaMessage(topic: String(cString: rd_kafka_topic_name(m.rkt)), partition: m.partition, offset: m.offset, key: key, value: value)
    }

    /// Commits offsets (the next offset to read) synchronously: Kafka's view of progress, for monitoring.
    public func commit(_ partitions: [(topic: String, partition: Int32, offset: Int64)]) throws {
        let list = Self.list(partitions)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let error = rd_kafka_commit(self.handle, list, 0)
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError("commit: \(String(cString: rd_kafka_err2str(error)))") }
    }

    public func close() {
        rd_kafka_consumer_close(self.handle)
        rd_kafka_destroy(self.handle)
    }

    private static func list(_ partitions: [(topic: String, partition: Int32, offset: Int64)]) -> UnsafeMutablePointer<rd_kafka_topic_partition_list_t> {
        let list = rd_kafka_topic_partition_list_new(Int32(partitions.count))!
        for entry in partitions {
            rd_kafka_topic_partition_list_add(list, entry.topic, entry.partition).pointee.offset = entry.offset
        }
        return list
    }
}
