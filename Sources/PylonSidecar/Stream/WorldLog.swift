import Foundation
import Logging
import NIOCore
import Shared

/// The world's log as the gateway writes it: one Kafka topic whose partitions hold the ops, each
/// op in the partition of its hash slot. A write is acknowledged when Kafka acknowledged every op
/// it became (acks=all); a failure is reported only when it is certain.
final class WorldLog: Sendable {
    let producer: KafkaProducer
    let topic: String
    /// The topic's real partition count (from the broker), which places every op.
    let partitions: Int
    let rack: String
    let sidecar: String
    /// The largest message this sidecar writes: an op larger than this travels as chunks
    /// (`OpChunk`), below the producer's `message.max.bytes` and its request overhead.
    let maxMessageBytes: Int
    /// Each op this sidecar appends, once acknowledged, for its applier.
    let ownWrites = OwnWrites()

    /// Connects, creates the topic when it is missing and learns its partition count. Blocks
    /// (start-up only).
    init(_ membership: SidecarConfiguration.WorldMembership, configuration: SidecarConfiguration, logger: Logger) throws {
        let (brokers, topic) = (membership.brokers, membership.topic)
        let producer = try KafkaProducer(
            // Looking the topic up must not create it (a producer's metadata request would, with
            // the broker's default partition count).
            brokers: brokers, properties: ["allow.auto.create.topics": "false"].merging(configuration.kafkaProperties) { $1 },
            stallTimeout: .milliseconds(configuration.writeTimeoutMilliseconds), logger: logger
        )
        do {
            // Looked up first: a sidecar of a least-privilege Kafka user (no CreateTopics right)
            // starts on an existing topic; only a missing one is created.
            let partitions: Int
            if let existing = try producer.partitionCount(topic: topic) {
                partitions = existing
            } else {
                logger.notice("the world's topic does not exist: creating it", metadata: ["topic": "\(topic)", "partitions": "\(configuration.partitions)"])
                try producer.createTopic(topic, partitions: Int32(configuration.partitions), replicationFactor: Int32(configuration.replicationFactor))
                guard let created = try producer.partitionCount(topic: topic) else {
                    throw KafkaError("topic '\(topic)' does not exist after creating it")
                }
                partitions = created
            }
            if partitions != configuration.partitions {
                logger.notice("the topic has another partition count than configured; using the topic's", metadata: [
                    "topic": "\(topic)", "partitions": "\(partitions)", "configured": "\(configuration.partitions)",
                ])
            }
            self.partitions = partitions
        } catch {
            producer.close(timeout: .zero)
            throw Sidecar.StartError(description: "the world's log at \(brokers): \(error)")
        }
        self.producer = producer
        self.topic = topic
        self.rack = membership.rack
        self.sidecar = configuration.resolvedSidecarName
        let messageMaxBytes = configuration.kafkaProperties["message.max.bytes"].flatMap(Int.init) ?? 1_000_000
        self.maxMessageBytes = max(64 * 1024, messageMaxBytes - 16 * 1024)
    }

    /// Appends the ops one write became; succeeds when Kafka has all of them, with where each is.
    /// With `wantsReply`, the rack's applier hands each op's reply back (see `AppliedReplies`).
    func append(_ ops: [WritePlanner.PlannedOp], now: Int64, wantsReply: Bool = false, on eventLoop: EventLoop) -> EventLoopFuture<[KafkaDelivery]> {
        let sends = ops.map { op in
            let record = OpRecord(
                arguments: op.arguments, originRack: self.rack, originSidecar: self.sidecar, timestampMilliseconds: now, slot: op.slot, wantsReply: wantsReply
            )
            // The key names the slot, for tools reading the topic; the partition is chosen here.
            let key: [UInt8] = [UInt8(truncatingIfNeeded: op.slot >> 8), UInt8(truncatingIfNeeded: op.slot)]
            let partition = record.partition(of: self.partitions)
            let encoded = record.encoded
            guard encoded.readableBytes > self.maxMessageBytes else {
                return self.producer.send(topic: self.topic, partition: partition, key: key, value: encoded, on: eventLoop) { [ownWrites = self.ownWrites, topic = self.topic] delivery in
                    ownWrites.add(encoded, topic: topic, at: delivery)
                }
            }
            // Chunks, in order, to the op's partition: the op is where its last chunk is.
            let chunks = OpChunk.split(encoded, id: .random(in: .min ... .max), maxMessageBytes: self.maxMessageBytes).map {
                self.producer.send(topic: self.topic, partition: partition, key: key, value: $0, on: eventLoop)
            }
            return EventLoopFuture.whenAllComplete(chunks, on: eventLoop).flatMapThrowing { results in
                let failures = results.compactMap { result -> Error? in
                    if case .failure(let error) = result { return error }
                    return nil
                }
                if let failure = failures.first(where: { ($0 as? KafkaError)?.mayBeInLog == true }) ?? failures.first { throw failure }
                return results.compactMap { try? $0.get() }.max { $0.offset < $1.offset }!
            }
        }
        if sends.count == 1 { return sends[0].map { [$0] } }
        return EventLoopFuture.whenAllComplete(sends, on: eventLoop).flatMapThrowing { results in
            let failures = results.compactMap { result -> KafkaError? in
                if case .failure(let error) = result { return error as? KafkaError ?? KafkaError("\(error)", mayBeInLog: true) }
                return nil
            }
            guard let first = failures.first else { return results.compactMap { try? $0.get() } }
            if failures.count == results.count, !failures.contains(where: \.mayBeInLog) { throw first }
            throw PartialWrite(written: results.count - failures.count, total: results.count, cause: first)
        }
    }

    /// Some ops of a write split by slot reached the log and some did not.
    struct PartialWrite: Error {
        let written: Int
        let total: Int
        let cause: KafkaError
    }

    /// The error reply for a failed append, saying what is certain.
    static func errorReply(for error: Error) -> String {
        switch error {
        case let partial as PartialWrite:
            return "ERR pylon: the write was split by hash slot and only part of it (\(partial.written) of \(partial.total) ops) surely reached the world's log: \(partial.cause); read the keys before retrying"
        case let kafka as KafkaError where kafka.mayBeInLog:
            return "ERR pylon: the world's log (Kafka) lost contact while taking the write (\(kafka)); it may still be applied: read the key before retrying"
        default:
            return "ERR pylon: the world's log (Kafka) did not take the write (\(error)); it was not applied anywhere: retry when the log is reachable"
        }
    }

    func close() {
        self.producer.close()
    }
}
