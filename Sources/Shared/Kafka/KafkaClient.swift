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
