import NIOCore
import Shared
import Synchronization
import Testing

@testable import PylonSidecar

/// Which messages the applier sends next: the consumer's in log order, and this sidecar's own
/// writes only when nothing before them is missing.
@Suite("Log cursor")
struct LogCursorTests {
    func message(_ partition: Int32, _ offset: Int64) -> KafkaMessage {
        KafkaMessage(topic: "t", partition: partition, offset: offset, key: nil, value: ByteBuffer(string: "\(partition):\(offset)"))
    }

    func positions(_ messages: [KafkaMessage]) -> [String] { messages.map { "\($0.partition):\($0.offset)" } }

    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        /// Where partitions 0 and 1 start.
        var starts: [Int32: Int64]
        var fetched: [(Int32, Int64)]
        var own: [(Int32, Int64)]
        var sent: [String]
        var testDescription: String { self.name }
    }

    static let cases: [Case] = [
        Case(name: "an own write that is the next offset goes at once", starts: [0: 5], fetched: [], own: [(0, 5)], sent: ["0:5"]),
        Case(name: "an own write after a gap waits for the log", starts: [0: 5], fetched: [], own: [(0, 7)], sent: []),
        Case(name: "own writes follow the fetched messages they continue", starts: [0: 5], fetched: [(0, 5), (0, 6)], own: [(0, 8), (0, 7)], sent: ["0:5", "0:6", "0:7", "0:8"]),
        Case(name: "a fetched message is sent once, not again as an own write", starts: [0: 5], fetched: [(0, 5)], own: [(0, 5)], sent: ["0:5"]),
        Case(name: "a replay before the start is passed over", starts: [0: 5], fetched: [(0, 3), (0, 4), (0, 5)], own: [], sent: ["0:5"]),
        Case(name: "the consumer may skip offsets that hold nothing", starts: [0: 5], fetched: [(0, 9)], own: [(0, 10)], sent: ["0:9", "0:10"]),
        Case(name: "a partition not assigned here takes nothing", starts: [0: 5], fetched: [(1, 0)], own: [(1, 0)], sent: []),
        Case(name: "from the log's beginning: any fetched message, no own write before it", starts: [0: KafkaConsumer.beginning], fetched: [], own: [(0, 0)], sent: []),
        Case(name: "from the log's beginning, once a message is fetched own writes follow it", starts: [0: KafkaConsumer.beginning], fetched: [(0, 40)], own: [(0, 41)], sent: ["0:40", "0:41"]),
        Case(name: "partitions advance independently", starts: [0: 5, 1: 0], fetched: [(1, 0)], own: [(1, 1), (0, 5), (0, 6)], sent: ["1:0", "0:5", "0:6", "1:1"]),
    ]

    @Test(arguments: cases)
    func admits(_ example: Case) {
        var cursor = LogCursor()
        for (partition, offset) in example.starts { cursor.start(partition, at: offset) }
        let sent = cursor.admit(fetched: example.fetched.map { self.message($0.0, $0.1) }, own: example.own.map { self.message($0.0, $0.1) })
        #expect(self.positions(sent) == example.sent)
    }

    @Test func laterFetchesOfOwnWritesAlreadySentArePassedOver() {
        var cursor = LogCursor()
        cursor.start(0, at: 0)
        #expect(self.positions(cursor.admit(fetched: [], own: [self.message(0, 0), self.message(0, 1)])) == ["0:0", "0:1"])
        #expect(self.positions(cursor.admit(fetched: [self.message(0, 0), self.message(0, 1), self.message(0, 2)], own: [])) == ["0:2"])
        #expect(cursor.expected[0] == 3)
    }

    @Test func aRestartFromACheckpointForgetsWhatWasSent() {
        var cursor = LogCursor()
        cursor.start(0, at: 0)
        _ = cursor.admit(fetched: [self.message(0, 0), self.message(0, 1)], own: [])
        // A doubt: the resync restarts the partition at its checkpoint, and its messages are sent again.
        cursor.start(0, at: 1)
        #expect(self.positions(cursor.admit(fetched: [self.message(0, 1)], own: [])) == ["0:1"])
        cursor.removeAll()
        #expect(cursor.admit(fetched: [self.message(0, 2)], own: [self.message(0, 2)]).isEmpty)
    }

    @Test("the consumer passes over exactly the fetched messages admit would drop (the own writes applied already)")
    func admitsAnswersAsAdmitDoes() {
        var cursor = LogCursor()
        cursor.start(0, at: 4)
        cursor.start(1, at: KafkaConsumer.beginning)
        _ = cursor.admit(fetched: [], own: [self.message(0, 4), self.message(0, 5)])
        let fetched = [(0, 3), (0, 5), (0, 6), (1, 0), (1, 9), (2, 0)].map { self.message(Int32($0.0), Int64($0.1)) }
        let wanted = fetched.filter { cursor.admits($0.partition, offset: $0.offset) }
        #expect(self.positions(wanted) == ["0:6", "1:0", "1:9"])
        #expect(self.positions(cursor.admit(fetched: fetched, own: [])) == self.positions(wanted))
    }
}

@Suite("Own writes")
struct OwnWritesTests {
    final class Wakes: Sendable {
        let count = Mutex(0)
    }

    @Test func wakesTheApplierOncePerBatchAndKeepsNothingWithoutOne() {
        let writes = OwnWrites(capacity: 3)
        writes.add(ByteBuffer(string: "x"), topic: "t", at: KafkaDelivery(partition: 0, offset: 0))
        #expect(writes.take().isEmpty)  // no applier attached: nothing kept

        let wakes = Wakes()
        writes.attach(wake: { wakes.count.withLock { $0 += 1 } })
        for offset in 0..<5 { writes.add(ByteBuffer(string: "op \(offset)"), topic: "t", at: KafkaDelivery(partition: 2, offset: Int64(offset))) }
        #expect(wakes.count.withLock { $0 } == 1)
        let taken = writes.take()
        // At most `capacity` kept: the rest come back through the log.
        #expect(taken.map(\.offset) == [0, 1, 2])
        #expect(taken.allSatisfy { $0.partition == 2 && $0.topic == "t" })
        #expect(String(buffer: taken[1].value) == "op 1")
        writes.add(ByteBuffer(string: "y"), topic: "t", at: KafkaDelivery(partition: 2, offset: 5))
        #expect(wakes.count.withLock { $0 } == 2)

        writes.attach(wake: nil)
        #expect(writes.take().isEmpty)
    }
}
