import Testing

@testable import PylonOperator

@Suite("Work queue")
struct WorkQueueTests {
    @Test func queuesAKeyOnceAndNeverHandsItOutTwiceAtOnce() async {
        let queue = WorkQueue<String>()
        await queue.add("a")
        await queue.add("a")
        await queue.add("b")
        #expect(queue.depth.load(ordering: .relaxed) == 2)
        #expect(await queue.next() == "a")
        await queue.add("a")  // changed while being reconciled: comes back after, not alongside
        #expect(await queue.next() == "b")
        #expect(queue.depth.load(ordering: .relaxed) == 0)
        await queue.done("a", failed: false)
        #expect(await queue.next() == "a")
    }

    @Test func aFailedKeyComesBackAfterItsBackoff() async {
        let queue = WorkQueue<String>()
        await queue.add("x")
        _ = await queue.next()
        let failed = ContinuousClock.now
        await queue.done("x", failed: true)
        #expect(await queue.next() == "x")
        #expect(ContinuousClock.now - failed >= .milliseconds(90))
        await queue.close()
        #expect(await queue.next() == nil)
    }
}
