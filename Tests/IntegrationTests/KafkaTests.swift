import Foundation
import NIOCore
import NIOPosix
import Shared
import Synchronization
import Testing

@testable import PylonSidecar

/// The stream layer's producer against a real Kafka-protocol broker.
@Suite("Kafka producer", .serialized, .timeLimit(.minutes(3)))
struct KafkaProducerTests {
    @Test func acknowledgesEachMessageWithItsPartitionAndOffset() async throws {
        let broker = try KafkaBroker()
        let producer = try KafkaProducer(brokers: broker.bootstrap)
        defer { producer.close() }
        try producer.createTopic("pylon.test.ops", partitions: 4, replicationFactor: 1)
        try producer.createTopic("pylon.test.ops", partitions: 4, replicationFactor: 1)  // idempotent
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        var futures: [EventLoopFuture<KafkaDelivery>] = []
        for i in 0..<200 {
            futures.append(producer.send(topic: "pylon.test.ops", partition: Int32(i % 4), key: Array("k\(i)".utf8), value: ByteBuffer(string: "v\(i)"), on: loop))
        }
        var deliveries: [KafkaDelivery] = []
        for future in futures { deliveries.append(try await future.get()) }
        for partition in Int32(0)..<4 {
            let offsets = deliveries.filter { $0.partition == partition }.map(\.offset)
            // Acknowledged in order, no gaps, each exactly once.
            #expect(offsets == Array(0..<50))
            let marks = try producer.watermarks(topic: "pylon.test.ops", partition: partition)
            #expect(marks.high == 50)
        }
        #expect(try producer.endOffsets(topic: "pylon.test.ops", partitions: [3, 0, 1, 2], timeoutMilliseconds: 2000) == [50, 50, 50, 50])
    }

    /// Acknowledgements are taken on librdkafka's broker thread and failures from its delivery
    /// reports: each message is completed once, by one of them, whatever the properties say.
    @Test func eachSendCompletesOnceWithItsOnDeliveryFirstAndAPartitionTheTopicLacksFails() async throws {
        let broker = try KafkaBroker()
        let producer = try KafkaProducer(brokers: broker.bootstrap, properties: ["delivery.report.only.error": "false"])
        defer { producer.close() }
        try producer.createTopic("pylon.test.acks", partitions: 2, replicationFactor: 1)
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let seen = Mutex<[KafkaDelivery]>([])
        var sends: [EventLoopFuture<KafkaDelivery>] = []
        for i in 0..<100 {
            sends.append(producer.send(topic: "pylon.test.acks", partition: Int32(i % 2), key: nil, value: ByteBuffer(string: "v\(i)"), on: loop) { delivery in
                seen.withLock { $0.append(delivery) }
            })
        }
        for send in sends {
            let delivery = try await send.get()
            #expect(seen.withLock { $0.contains(delivery) }, "onDelivery ran before the future completed")
        }
        #expect(seen.withLock { $0.count } == 100)
        // The topic's metadata is known now: librdkafka refuses the partition in the send itself.
        do {
            _ = try await producer.send(topic: "pylon.test.acks", partition: 7, key: nil, value: ByteBuffer(string: "x"), on: loop).get()
            Issue.record("a send to a partition the topic does not have succeeded")
        } catch let error as KafkaError {
            #expect(!error.mayBeInLog, "refused before sending: \(error)")
        }
        #expect(try await producer.send(topic: "pylon.test.acks", partition: 1, key: nil, value: ByteBuffer(string: "y"), on: loop).get() == KafkaDelivery(partition: 1, offset: 50))
    }

    @Test func aBrokerThatIsAwayFailsTheSendInsteadOfHangingAndSaysItWasNeverSent() async throws {
        let port = try Ports.free()
        let producer = try KafkaProducer(brokers: "127.0.0.1:\(port)", stallTimeout: .seconds(1))
        defer { producer.close(timeout: .milliseconds(100)) }
        let started = ContinuousClock.now
        do {
            _ = try await producer.send(topic: "t", partition: 0, key: nil, value: ByteBuffer(string: "x"), on: MultiThreadedEventLoopGroup.singleton.any()).get()
            Issue.record("a send to a broker that is away succeeded")
        } catch let error as KafkaError {
            #expect(!error.mayBeInLog, "never sent, so certainly not in the log: \(error)")
        }
        #expect(ContinuousClock.now - started < .seconds(5))
    }

    @Test func badPropertiesAreNamed() {
        #expect(throws: KafkaError.self) { try KafkaProducer(brokers: "127.0.0.1:1", properties: ["no.such.property": "1"]) }
        do {
            _ = try KafkaProducer(brokers: "127.0.0.1:1", properties: ["acks": "sometimes"])
            Issue.record("accepted acks=sometimes")
        } catch {
            #expect("\(error)".contains("'acks'"))
        }
    }
}

/// Op records through a real broker: what one sidecar produces, another reads back byte for byte.
@Suite("Kafka consumer", .serialized, .timeLimit(.minutes(3)))
struct KafkaConsumerTests {
    @Test func readsBackOpRecordsFromAnAssignedOffset() async throws {
        let broker = try KafkaBroker()
        let producer = try KafkaProducer(brokers: broker.bootstrap)
        defer { producer.close() }
        let topic = "pylon.test.ops"
        try producer.createTopic(topic, partitions: 2, replicationFactor: 1)
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let records = (0..<20).map { i in
            OpRecord(arguments: [ByteBuffer(string: "SET"), ByteBuffer(string: "{k}\(i)"), ByteBuffer(bytes: [UInt8(i), 0, 13, 10])],
                     originRack: "a", originSidecar: "a-0", timestampMilliseconds: Int64(i), slot: HashSlot.of("{k}\(i)"))
        }
        for record in records {
            _ = try await producer.send(topic: topic, partition: record.partition(of: 2), key: nil, value: record.encoded, on: loop).get()
        }
        let partition = records[0].partition(of: 2)  // all share the hash tag {k}
        let consumer = try KafkaConsumer(brokers: broker.bootstrap, groupID: "pylon.test.rack-a")
        defer { consumer.close() }
        // Resume from offset 5, as an applier whose Redis records offset 5 would.
        try consumer.assign([(topic, partition, 5)])
        var read: [KafkaMessage] = []
        let deadline = ContinuousClock.now + .seconds(20)
        while read.count < 15, ContinuousClock.now < deadline {
            if let message = try consumer.poll(timeoutMilliseconds: 200) { read.append(message) }
        }
        #expect(read.map(\.offset) == Array(5..<20))
        #expect(try read.map { try OpRecord(decoding: $0.value) } == Array(records[5...]))
        try consumer.commit([(topic, partition, 20)])

        // Read again, passing over what a reader already has (the applier's own writes): only the rest comes.
        try consumer.assign([(topic, partition, 0)])
        var rest: [Int64] = []
        while rest.count < 10, ContinuousClock.now < deadline {
            if let message = try consumer.poll(timeoutMilliseconds: 200, skip: { $1 % 2 == 0 }) { rest.append(message.offset) }
        }
        #expect(rest == Array(stride(from: 1, to: 20, by: 2)))
    }

    /// Where each partition's log starts, asked at once: after retention deleted records, the
    /// first offset left; and a bounded error, not a minute's wait, from a broker that stopped
    /// answering (the applier asks while it resyncs, the snapshot loader before it loads).
    @Test func logStartsAreAskedAtOnceAndBoundedWhenTheBrokerStopsAnswering() async throws {
        let broker = try KafkaBroker()
        let producer = try KafkaProducer(brokers: broker.bootstrap)
        defer { producer.close(timeout: .zero) }
        let topic = "pylon.test.ops"
        try producer.createTopic(topic, partitions: 3, replicationFactor: 1)
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        for i in 0..<30 { _ = try await producer.send(topic: topic, partition: Int32(i % 3), key: nil, value: ByteBuffer(string: "\(i)"), on: loop).get() }
        try producer.deleteRecords(topic: topic, before: [0: 4, 2: 7])
        let consumer = try KafkaConsumer(brokers: broker.bootstrap, groupID: "pylon.test.log-starts")
        defer { consumer.close() }
        #expect(try consumer.logStarts(topic: topic, partitions: [2, 0, 1]) == [0: 4, 1: 0, 2: 7])

        broker.process.pause()
        defer { broker.process.resume() }
        let asked = ContinuousClock.now
        #expect(throws: KafkaError.self) { try consumer.logStarts(topic: topic, partitions: [0, 1, 2], timeoutMilliseconds: 1000) }
        #expect(ContinuousClock.now - asked < .seconds(5))
    }

    /// The applier's contract with its group: a partition the group gives is fetched only once
    /// the owner assigns it, from exactly the offset it names (never from a placeholder start
    /// librdkafka might move later), and the group waits for that call without taking the
    /// partition away, however long the owner needs (its Redis is away).
    @Test func aGroupPartitionIsReadOnlyFromWhereItsOwnerAssignsIt() async throws {
        let broker = try KafkaBroker()
        let producer = try KafkaProducer(brokers: broker.bootstrap)
        defer { producer.close() }
        let topic = "pylon.test.group"
        try producer.createTopic(topic, partitions: 1, replicationFactor: 1)
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        for i in 0..<10 { _ = try await producer.send(topic: topic, partition: 0, key: nil, value: ByteBuffer(string: "\(i)"), on: loop).get() }
        let rebalances = Mutex<[String]>([])
        let consumer = try KafkaConsumer(
            brokers: broker.bootstrap, groupID: "pylon.test.group-a", properties: WorldFixture.fastRebalances,
            onRebalance: { rebalance in
                switch rebalance {
                case .assigned(let partitions): rebalances.withLock { $0.append("assigned \(partitions.map(\.partition))") }
                case .revoked(let partitions): rebalances.withLock { $0.append("revoked \(partitions.map(\.partition))") }
                }
            }
        )
        defer { consumer.close() }
        try consumer.subscribe([topic])
        // Past the session timeout (6 s) without assigning: nothing is fetched, nothing revoked.
        var early: [Int64] = []
        let waited = ContinuousClock.now + .seconds(8)
        while ContinuousClock.now < waited {
            if let message = try? consumer.poll(timeoutMilliseconds: 200) { early.append(message.offset) }
        }
        #expect(rebalances.withLock { $0 } == ["assigned [0]"])
        #expect(early.isEmpty)
        try consumer.assign([(topic, 0, 7)])
        var read: [Int64] = []
        let deadline = ContinuousClock.now + .seconds(20)
        while read.count < 3, ContinuousClock.now < deadline {
            if let message = try consumer.poll(timeoutMilliseconds: 200) { read.append(message.offset) }
        }
        #expect(read == [7, 8, 9])
        #expect(rebalances.withLock { $0 } == ["assigned [0]"])
    }
}
