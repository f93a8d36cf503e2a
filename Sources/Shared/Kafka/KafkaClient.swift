import CRdKafka

/// What the producer and the consumer share when they make their librdkafka handle.
enum KafkaClient {
    /// Creates a librdkafka client from `properties` (an error names the property at fault);
    /// `configure` adds callbacks to the configuration before the handle is made.
    static func make(
        _ type: rd_kafka_type_t, properties: [String: String], configure: (OpaquePointer) -> Void = { _ in }
    ) throws -> OpaquePointer {
        let conf = rd_kafka_conf_new()!
        var errorText = [CChar](repeating: 0, count: 512)
        for (key, value) in properties {
            guard rd_kafka_conf_set(conf, key, value, &errorText, errorText.count) == RD_KAFKA_CONF_OK else {
                rd_kafka_conf_destroy(conf)
                throw KafkaError("kafka property '\(key)': \(self.text(errorText))")
            }
        }
        configure(conf)
        // On success librdkafka owns `conf`; on failure it is still ours.
        guard let handle = rd_kafka_new(type, conf, &errorText, errorText.count) else {
            rd_kafka_conf_destroy(conf)
            throw KafkaError("cannot create a kafka \(type == RD_KAFKA_PRODUCER ? "producer" : "consumer"): \(self.text(errorText))")
        }
        return handle
    }

    /// The offset at `position` (the log's start or end, `RD_KAFKA_OFFSET_BEGINNING`/`_END`) of
    /// each of `partitions` of `topic`, asked of the leaders all at once (ListOffsets) and bounded
    /// by `timeoutMilliseconds` even when a broker stops answering — where
    /// `rd_kafka_query_watermark_offsets` waits for its requests' socket timeout, a minute.
    static func offsets(
        _ handle: OpaquePointer, at position: Int64, topic: String, partitions: [Int32], timeoutMilliseconds: Int32
    ) throws -> [Int64] {
        let what = position == Int64(RD_KAFKA_OFFSET_END) ? "end offset" : "log start"
        let list = rd_kafka_topic_partition_list_new(Int32(partitions.count))!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        // The offset field carries the timestamp asked for: -1 the latest offset, -2 the earliest.
        for partition in partitions { rd_kafka_topic_partition_list_add(list, topic, partition).pointee.offset = position }
        let error = rd_kafka_offsets_for_times(handle, list, timeoutMilliseconds)
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw KafkaError("\(what)s of \(topic): \(String(cString: rd_kafka_err2str(error)))")
        }
        var found: [Int32: Int64] = [:]
        for index in 0..<Int(list.pointee.cnt) {
            let entry = list.pointee.elems[index]
            guard entry.err == RD_KAFKA_RESP_ERR_NO_ERROR, entry.offset >= 0 else {
                throw KafkaError("\(what) of \(topic)[\(entry.partition)]: \(String(cString: rd_kafka_err2str(entry.err)))")
            }
            found[entry.partition] = entry.offset
        }
        return try partitions.map { partition in
            guard let offset = found[partition] else { throw KafkaError("\(what) of \(topic)[\(partition)]: not in the broker's answer") }
            return offset
        }
    }

    /// librdkafka's NUL-terminated error text.
    static func text(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension Duration {
    /// Whole milliseconds, as librdkafka's timeouts (and other C and NIO timeouts) take them.
    public var milliseconds: Int64 {
        self.components.seconds * 1000 + self.components.attoseconds / 1_000_000_000_000_000
    }
}
