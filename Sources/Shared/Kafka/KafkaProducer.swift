import CRdKafka
import Foundation
import Logging
import NIOCore
import Synchronization

/// Where a produced message landed.
public struct KafkaDelivery: Sendable, Equatable {
    public var partition: Int32
    public var offset: Int64

    public init(partition: Int32, offset: Int64) {
        self.partition = partition
        self.offset = offset
    }
}

/// A Kafka error, with librdkafka's own words.
public struct KafkaError: Error, CustomStringConvertible, Equatable {
    public let description: String
    /// For a failed send: whether the message may still be in the log. `false` only when
    /// librdkafka knows the broker never received it, so it can never appear later.
    public let mayBeInLog: Bool
    public init(_ description: String, mayBeInLog: Bool = false) {
        self.description = description
        self.mayBeInLog = mayBeInLog
    }
}

/// A thin, thread-safe wrapper over a librdkafka producer: acks=all, idempotence on, no
/// linger. Each `send` completes when the broker acknowledged the message (or it failed), with
/// no timer and no thread hop of librdkafka's in between: an acknowledgement is taken on the
/// broker thread that read it (an `on_acknowledgement` interceptor), which hands the promises
/// of a ProduceResponse to their event loop together. Failures come as delivery reports (only
/// those: `delivery.report.only.error`), served by a thread of this producer blocked in
/// `rd_kafka_poll`, which also serves librdkafka's other callbacks.
///
/// A failure must be certain. librdkafka's own `message.timeout.ms` would fail messages that a
/// broker may already have written, so it is off (0: never give up on a message once sent).
/// Instead, when no delivery report has come for `stallTimeout` while messages wait, the
/// producer purges the messages still in its queues: those were never sent, so they fail with
/// `mayBeInLog == false`. Messages already on the wire stay until the broker answers.
public final class KafkaProducer: Sendable {
    /// The librdkafka producer. @unchecked: librdkafka documents a producer as thread-safe for
    /// produce, poll and flush; topic handles are made under the lock and live as long as it.
    private final class Handle: @unchecked Sendable {
        let pointer: OpaquePointer
        let topics = Mutex<[String: OpaquePointer]>([:])
        let polling = Atomic<Bool>(true)
        let pollStopped = Atomic<Bool>(false)
        /// Messages handed to librdkafka and not reported yet.
        let outstanding = Atomic<Int>(0)
        /// Uptime (ms) of the last progress: a delivery report, or the first message after idling.
        let lastProgress = Atomic<Int64>(0)
        /// Outcomes not handed to their promises yet, completed together: under load one
        /// ProduceResponse acknowledges many messages, one poll reports many failures.
        let reports = Mutex<[(promise: EventLoopPromise<KafkaDelivery>, result: Result<KafkaDelivery, any Error>)]>([])
        init(_ pointer: OpaquePointer) { self.pointer = pointer }

        /// A message's outcome, on the thread that learnt it: `onDelivery` runs now, the promise
        /// is collected. Answers whether the collection was empty (its taker must be called).
        func report(_ completion: DeliveryCompletion, _ result: Result<KafkaDelivery, KafkaError>) -> Bool {
            self.outstanding.subtract(1, ordering: .relaxed)
            self.lastProgress.store(Handle.now(), ordering: .relaxed)
            if case .success(let delivery) = result { completion.onDelivery?(delivery) }
            return self.reports.withLock { reports in
                reports.append((completion.promise, result.mapError { $0 }))
                return reports.count == 1
            }
        }

        /// Completes the collected outcomes with one task per event loop, not a hop each.
        func completeReports() {
            let reports = self.reports.withLock { reports in
                defer { reports.removeAll(keepingCapacity: true) }
                return reports
            }
            EventLoopPromise.complete(reports)
        }

        static func now() -> Int64 { Int64(DispatchTime.now().uptimeNanoseconds / 1_000_000) }
    }

    private let handle: Handle
    /// The librdkafka handle, for the admin calls in this module.
    var pointer: OpaquePointer { self.handle.pointer }
    private let logger: Logger

    /// The defaults Pylon needs for "no acknowledged write is lost"; `properties` may add to them.
    /// No linger: a lone write is sent at once (0.5 ms to its acknowledgement here, against 1.5 ms
    /// with 1 ms of linger), and under load writes still share requests, queued behind the ones
    /// in flight (the same throughput with 50 clients).
    public static let defaultProperties: [String: String] = [
        "acks": "all",
        "enable.idempotence": "true",
        "linger.ms": "0",
        "message.timeout.ms": "0",
    ]

    public init(
        brokers: String, properties: [String: String] = [:], stallTimeout: Duration = .seconds(5),
        logger: Logger = Logger(label: "pylon.kafka")
    ) throws {
        let settings = Self.defaultProperties.merging(properties) { $1 }.merging(["bootstrap.servers": brokers]) { $1 }
        let handle = try KafkaClient.make(RD_KAFKA_PRODUCER, properties: settings) { conf in
            // Whatever the properties say: a success is the interceptor's, never also a report's.
            _ = rd_kafka_conf_set(conf, "delivery.report.only.error", "true", nil, 0)
            rd_kafka_conf_interceptor_add_on_new(conf, "pylon-acknowledgements", { handle, _, _, _, _ in
                rd_kafka_interceptor_add_on_acknowledgement(handle, "pylon-acknowledgements", { _, message, _ in
                    // On the broker thread, as the ProduceResponse is read. Failures are left to
                    // the delivery report, where their status (was it ever sent?) is given.
                    guard let message, message.pointee.err == RD_KAFKA_RESP_ERR_NO_ERROR, let opaque = message.pointee._private else {
                        return RD_KAFKA_RESP_ERR_NO_ERROR
                    }
                    let completion = Unmanaged<DeliveryCompletion>.fromOpaque(opaque).takeRetainedValue()
                    let delivery = KafkaDelivery(partition: message.pointee.partition, offset: message.pointee.offset)
                    if completion.handle.report(completion, .success(delivery)) {
                        // The first of the response's messages: the rest join it before the loop runs this.
                        completion.promise.futureResult.eventLoop.execute { completion.handle.completeReports() }
                    }
                    return RD_KAFKA_RESP_ERR_NO_ERROR
                }, nil)
            }, nil)
            rd_kafka_conf_set_dr_msg_cb(conf) { _, message, _ in
                guard let message, let opaque = message.pointee._private else { return }
                let completion = Unmanaged<DeliveryCompletion>.fromOpaque(opaque).takeRetainedValue()
                let neverSent = rd_kafka_message_status(message) == RD_KAFKA_MSG_STATUS_NOT_PERSISTED
                let error = KafkaError(String(cString: rd_kafka_err2str(message.pointee.err)), mayBeInLog: !neverSent)
                _ = completion.handle.report(completion, .failure(error))  // completed once the poll returns
            }
        }
        let wrapped = Handle(handle)
        self.handle = wrapped
        self.logger = logger
        let stallMilliseconds = stallTimeout.milliseconds
        Blocking.thread(named: "pylon-kafka-poll") {
            while wrapped.polling.load(ordering: .acquiring) {
                rd_kafka_poll(wrapped.pointer, 100)  // returns at once when a failure is reported
                wrapped.completeReports()
                if wrapped.outstanding.load(ordering: .relaxed) > 0,
                    Handle.now() - wrapped.lastProgress.load(ordering: .relaxed) > stallMilliseconds
                {
                    // The brokers took nothing for a whole stall timeout: fail what was never sent.
                    rd_kafka_purge(wrapped.pointer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_NON_BLOCKING)
                    wrapped.lastProgress.store(Handle.now(), ordering: .relaxed)
                }
            }
            wrapped.pollStopped.store(true, ordering: .releasing)
        }
    }

    /// What waits for a message's acknowledgement or failure.
    private final class DeliveryCompletion: Sendable {
        let promise: EventLoopPromise<KafkaDelivery>
        let onDelivery: (@Sendable (KafkaDelivery) -> Void)?
        let handle: Handle
        init(_ promise: EventLoopPromise<KafkaDelivery>, onDelivery: (@Sendable (KafkaDelivery) -> Void)?, handle: Handle) {
            self.promise = promise
            self.onDelivery = onDelivery
            self.handle = handle
        }
    }

    /// Sends one message; the future completes when Kafka acknowledged it (acks=all) or failed.
    /// `onDelivery` runs on librdkafka's broker thread as soon as the acknowledgement arrives,
    /// before the future completes on its event loop: for quick work that should not wait for
    /// the hop there (it must not block, nor call this producer).
    public func send(
        topic: String, partition: Int32, key: [UInt8]?, value: ByteBuffer, on eventLoop: EventLoop,
        onDelivery: (@Sendable (KafkaDelivery) -> Void)? = nil
    ) -> EventLoopFuture<KafkaDelivery> {
        let promise = eventLoop.makePromise(of: KafkaDelivery.self)
        let topicHandle = self.topic(topic)
        let opaque = Unmanaged.passRetained(DeliveryCompletion(promise, onDelivery: onDelivery, handle: self.handle)).toOpaque()
        if self.handle.outstanding.add(1, ordering: .relaxed).oldValue == 0 {
            self.handle.lastProgress.store(Handle.now(), ordering: .relaxed)
        }
        let result = value.withUnsafeReadableBytes { bytes in
            (key ?? []).withUnsafeBytes { keyBytes in
                rd_kafka_produce(
                    topicHandle, partition, RD_KAFKA_MSG_F_COPY,
                    UnsafeMutableRawPointer(mutating: bytes.baseAddress), bytes.count,
                    keyBytes.baseAddress, key == nil ? 0 : keyBytes.count, opaque
                )
            }
        }
        if result != 0 {
            Unmanaged<DeliveryCompletion>.fromOpaque(opaque).release()
            self.handle.outstanding.subtract(1, ordering: .relaxed)
            let error = rd_kafka_last_error()
            promise.fail(KafkaError(
                error == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE
                    ? "the message (\(value.readableBytes) bytes) is larger than the producer's message.max.bytes; raise it with the kafka property message.max.bytes (and the topic's max.message.bytes)"
                    : "kafka refused the message: \(String(cString: rd_kafka_err2str(error)))"
            ))
        }
        return promise.futureResult
    }

    private func topic(_ name: String) -> OpaquePointer {
        self.handle.topics.withLock { topics in
            if let handle = topics[name] { return handle }
            let handle = rd_kafka_topic_new(self.handle.pointer, name, nil)!
            topics[name] = handle
            return handle
        }
    }

    /// Waits (up to `timeout`) for outstanding messages, then releases everything.
    /// Flushes and destroys the producer; later calls do nothing.
    public func close(timeout: Duration = .seconds(5)) {
        guard self.handle.polling.load(ordering: .acquiring) else { return }
        if rd_kafka_flush(self.handle.pointer, Int32(timeout.milliseconds)) != RD_KAFKA_RESP_ERR_NO_ERROR {
            self.logger.warning("kafka producer closed with messages still in flight")
        }
        self.handle.polling.store(false, ordering: .releasing)
        while !self.handle.pollStopped.load(ordering: .acquiring) { usleep(1000) }
        self.handle.completeReports()  // reports served by the flush above
        self.handle.topics.withLock { topics in
            for handle in topics.values { rd_kafka_topic_destroy(handle) }
            topics.removeAll()
        }
        rd_kafka_destroy(self.handle.pointer)
    }
}
