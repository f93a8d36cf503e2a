import NIOCore
import NIOPosix
import Testing

@testable import PylonSidecar

/// Where `applied` writes wait for their real reply: handed over by the applier before or after
/// the write waits for it, in batches across event loops, and a clear timeout when none comes.
@Suite("Applied replies")
struct AppliedRepliesTests {
    typealias Position = AppliedReplies.Position

    func reply(_ text: String) -> ByteBuffer { ByteBuffer(string: "+\(text)\r\n") }

    @Test("a reply handed over after the write waits, or before (the applier was quicker), reaches it")
    func repliesReachTheirWaiters() async throws {
        let replies = AppliedReplies(timeout: .seconds(5))
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let waiting = replies.reply(for: Position(partition: 0, offset: 7), on: loop)
        replies.deliver(self.reply("late"), for: Position(partition: 0, offset: 7))
        #expect(try await waiting.get() == self.reply("late"))

        replies.deliver(self.reply("early"), for: Position(partition: 1, offset: 3))
        #expect(try await replies.reply(for: Position(partition: 1, offset: 3), on: loop).get() == self.reply("early"))
    }

    @Test("a batch answers the waiters of several event loops, each its own reply")
    func aBatchAnswersWaitersOnEveryLoop() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let loops = [group.next(), group.next()]
        #expect(loops[0] !== loops[1])
        let replies = AppliedReplies(timeout: .seconds(5))
        let positions = (0..<20).map { Position(partition: Int32($0 % 4), offset: Int64($0)) }
        let waits = positions.enumerated().map { index, position in replies.reply(for: position, on: loops[index % 2]) }
        replies.deliver(positions.reversed().map { (reply: self.reply("\($0.offset)"), position: $0) })
        for (position, wait) in zip(positions, waits) {
            #expect(try await wait.get() == self.reply("\(position.offset)"))
        }
        try await group.shutdownGracefully()
    }

    @Test("a reply that does not come fails with Timeout after the timeout; answered waiters do not; later waiters get their own time")
    func unansweredWaitersTimeOut() async throws {
        let timeout = TimeAmount.milliseconds(200)
        let replies = AppliedReplies(timeout: timeout)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let started = NIODeadline.now()
        let lost = replies.reply(for: Position(partition: 0, offset: 1), on: loop)
        let answered = replies.reply(for: Position(partition: 0, offset: 2), on: loop)
        replies.deliver(self.reply("OK"), for: Position(partition: 0, offset: 2))
        await #expect(throws: AppliedReplies.Timeout.self) { try await lost.get() }
        #expect(NIODeadline.now() - started >= timeout)
        #expect(try await answered.get() == self.reply("OK"))

        // A waiter registered after the first sweep: it gets the whole timeout, then fails too.
        let second = NIODeadline.now()
        let later = replies.reply(for: Position(partition: 3, offset: 9), on: loop)
        try await Task.sleep(for: .milliseconds(100))
        let laterStill = replies.reply(for: Position(partition: 3, offset: 10), on: loop)
        await #expect(throws: AppliedReplies.Timeout.self) { try await later.get() }
        #expect(NIODeadline.now() - second >= timeout)
        replies.deliver(self.reply("in time"), for: Position(partition: 3, offset: 10))
        #expect(try await laterStill.get() == self.reply("in time"))
    }
}
