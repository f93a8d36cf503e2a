import CRdKafka

extension KafkaProducer {
    /// Creates a topic through the admin API; an existing topic is fine. Blocks the calling
    /// thread up to `timeoutMilliseconds` (call it at start-up, not on an event loop).
    public func createTopic(_ name: String, partitions: Int32, replicationFactor: Int32, timeoutMilliseconds: Int32 = 10_000) throws {
        var errorText = [CChar](repeating: 0, count: 512)
        guard let topic = rd_kafka_NewTopic_new(name, partitions, replicationFactor, &errorText, errorText.count) else {
            throw KafkaError("topic '\(name)': \(KafkaClient.text(errorText))")
        }
        defer { rd_kafka_NewTopic_destroy(topic) }
        let what = "creating topic '\(name)'"
        try self.adminRequest(what, timeoutMilliseconds: timeoutMilliseconds, advice: "; create it with \(partitions) partitions by hand, or check the brokers") { queue in
            var topics: [OpaquePointer?] = [topic]
            rd_kafka_CreateTopics(self.pointer, &topics, 1, nil, queue)
        } read: { event in
            var count = 0
            guard let result = rd_kafka_event_CreateTopics_result(event), let results = rd_kafka_CreateTopics_result_topics(result, &count),
                  count == 1, let first = results[0] else {
                throw KafkaError("\(what): no result")
            }
            let error = rd_kafka_topic_result_error(first)
            guard error == RD_KAFKA_RESP_ERR_NO_ERROR || error == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS else {
                let message = rd_kafka_topic_result_error_string(first).map { String(cString: $0) } ?? String(cString: rd_kafka_err2str(error))
                throw KafkaError("\(what): \(message)")
            }
        }
    }

    /// Runs one admin request: `start` sends it to `queue`, `read` reads the result event.
    /// Errors and the timeout name `what`.
    private func adminRequest<Result>(
        _ what: String, timeoutMilliseconds: Int32, advice: String = "", start: (OpaquePointer?) -> Void, read: (OpaquePointer) throws -> Result
    ) throws -> Result {
        let queue = rd_kafka_queue_new(self.pointer)
        defer { rd_kafka_queue_destroy(queue) }
        start(queue)
        guard let event = rd_kafka_queue_poll(queue, timeoutMilliseconds) else {
            throw KafkaError("\(what) timed out after \(timeoutMilliseconds) ms\(advice)")
        }
        defer { rd_kafka_event_destroy(event) }
        if rd_kafka_event_error(event) != RD_KAFKA_RESP_ERR_NO_ERROR {
            throw KafkaError("\(what): \(String(cString: rd_kafka_event_error_string(event)))")
        }
        return try read(event)
    }

    /// Deletes the records of a topic's partitions before the given offsets, as retention would
    /// (the log then starts there). Blocks up to `timeoutMilliseconds`.
    public func deleteRecords(topic: String, before offsets: [Int32: Int64], timeoutMilliseconds: Int32 = 10_000) throws {
        let list = rd_kafka_topic_partition_list_new(Int32(offsets.count))!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for (partition, offset) in offsets { rd_kafka_topic_partition_list_add(list, topic, partition).pointee.offset = offset }
        guard let request = rd_kafka_DeleteRecords_new(list) else { throw KafkaError("deleting records of '\(topic)': cannot build the request") }
        defer { rd_kafka_DeleteRecords_destroy(request) }
        let what = "deleting records of '\(topic)'"
        try self.adminRequest(what, timeoutMilliseconds: timeoutMilliseconds) { queue in
            var requests: [OpaquePointer?] = [request]
            rd_kafka_DeleteRecords(self.pointer, &requests, 1, nil, queue)
        } read: { event in
            guard let result = rd_kafka_event_DeleteRecords_result(event), let partitions = rd_kafka_DeleteRecords_result_offsets(result) else {
                throw KafkaError("\(what): no result")
            }
            for index in 0..<Int(partitions.pointee.cnt) where partitions.pointee.elems[index].err != RD_KAFKA_RESP_ERR_NO_ERROR {
                throw KafkaError("\(what): partition \(partitions.pointee.elems[index].partition): \(String(cString: rd_kafka_err2str(partitions.pointee.elems[index].err)))")
            }
        }
    }

    /// Deletes a consumer group (a retired rack's); a group that does not exist is fine. Blocks
    /// up to `timeoutMilliseconds`. The group must have no live members.
    public func deleteConsumerGroup(_ group: String, timeoutMilliseconds: Int32 = 10_000) throws {
        guard let request = rd_kafka_DeleteGroup_new(group) else { throw KafkaError("consumer group '\(group)': cannot build the request") }
        defer { rd_kafka_DeleteGroup_destroy(request) }
        let what = "deleting consumer group '\(group)'"
        try self.adminRequest(what, timeoutMilliseconds: timeoutMilliseconds) { queue in
            var groups: [OpaquePointer?] = [request]
            rd_kafka_DeleteGroups(self.pointer, &groups, 1, nil, queue)
        } read: { event in
            guard let result = rd_kafka_event_DeleteGroups_result(event) else { throw KafkaError("\(what): no result") }
            var count = 0
            guard let results = rd_kafka_DeleteGroups_result_groups(result, &count), count == 1, let first = results[0] else { return }
            if let error = rd_kafka_group_result_error(first), rd_kafka_error_code(error) != RD_KAFKA_RESP_ERR_GROUP_ID_NOT_FOUND {
                throw KafkaError("\(what): \(String(cString: rd_kafka_error_string(error)))")
            }
        }
    }

    /// A consumer group's committed offsets of a topic's partitions (nil where it has none),
    /// through the admin API: no consumer handle per group. Blocks up to `timeoutMilliseconds`.
    public func committedOffsets(group: String, topic: String, partitions: [Int32], timeoutMilliseconds: Int32 = 5_000) throws -> [Int64?] {
        let list = rd_kafka_topic_partition_list_new(Int32(partitions.count))!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for partition in partitions { rd_kafka_topic_partition_list_add(list, topic, partition) }
        guard let request = rd_kafka_ListConsumerGroupOffsets_new(group, list) else { throw KafkaError("consumer group '\(group)': cannot build the request") }
        defer { rd_kafka_ListConsumerGroupOffsets_destroy(request) }
        let what = "committed offsets of '\(group)'"
        let offsets = try self.adminRequest(what, timeoutMilliseconds: timeoutMilliseconds) { queue in
            var requests: [OpaquePointer?] = [request]
            rd_kafka_ListConsumerGroupOffsets(self.pointer, &requests, 1, nil, queue)
        } read: { event -> [Int32: Int64] in
            var count = 0
            guard let result = rd_kafka_event_ListConsumerGroupOffsets_result(event), let groups = rd_kafka_ListConsumerGroupOffsets_result_groups(result, &count),
                  count == 1, let first = groups[0] else {
                throw KafkaError("\(what): no result")
            }
            if let error = rd_kafka_group_result_error(first) { throw KafkaError("\(what): \(String(cString: rd_kafka_error_string(error)))") }
            var offsets: [Int32: Int64] = [:]
            if let answered = rd_kafka_group_result_partitions(first) {
                for index in 0..<Int(answered.pointee.cnt) {
                    let entry = answered.pointee.elems[index]
                    if entry.err == RD_KAFKA_RESP_ERR_NO_ERROR, entry.offset >= 0 { offsets[entry.partition] = entry.offset }
                }
            }
            return offsets
        }
        return partitions.map { offsets[$0] }
    }

    /// The low and high watermark (log start and log end offsets) of a partition, from the broker.
    public func watermarks(topic: String, partition: Int32, timeoutMilliseconds: Int32 = 5_000) throws -> (low: Int64, high: Int64) {
        var low: Int64 = 0
        var high: Int64 = 0
        let error = rd_kafka_query_watermark_offsets(self.pointer, topic, partition, &low, &high, timeoutMilliseconds)
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw KafkaError("watermarks of \(topic)[\(partition)]: \(String(cString: rd_kafka_err2str(error)))")
        }
        return (low, high)
    }

    /// The log end offset of each of `partitions` of `topic`, bounded by `timeoutMilliseconds`
    /// even when a broker stops answering (`KafkaClient.offsets`).
    public func endOffsets(topic: String, partitions: [Int32], timeoutMilliseconds: Int32) throws -> [Int64] {
        try KafkaClient.offsets(self.pointer, at: Int64(RD_KAFKA_OFFSET_END), topic: topic, partitions: partitions, timeoutMilliseconds: timeoutMilliseconds)
    }

    /// How many partitions the broker says `topic` has (nil when it does not exist).
    public func partitionCount(topic: String, timeoutMilliseconds: Int32 = 5_000) throws -> Int? {
        let handle = rd_kafka_topic_new(self.pointer, topic, nil)
        defer { rd_kafka_topic_destroy(handle) }
        var metadata: UnsafePointer<rd_kafka_metadata>?
        let error = rd_kafka_metadata(self.pointer, 0, handle, &metadata, timeoutMilliseconds)
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else {
            throw KafkaError("metadata of '\(topic)': \(String(cString: rd_kafka_err2str(error)))")
        }
        defer { rd_kafka_metadata_destroy(metadata) }
        guard metadata.pointee.topic_cnt == 1 else { return nil }
        let entry = metadata.pointee.topics[0]
        if entry.err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART { return nil }
        guard entry.err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw KafkaError("metadata of '\(topic)': \(String(cString: rd_kafka_err2str(entry.err)))")
        }
        return Int(entry.partition_cnt)
    }
}
