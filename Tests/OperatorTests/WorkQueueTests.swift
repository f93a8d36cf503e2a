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

    @Test func laterLooksAtAKeyAreTakenOnceAtTheEarliestTime() async throws {
        let queue = WorkQueue<String>()
        let asked = ContinuousClock.now
        await queue.add("r", after: .seconds(10))
        await queue.add("r", after: .milliseconds(50))  // sooner: replaces the later look
        await queue.add("r", after: .milliseconds(100))  // later than one already due: dropped
        #expect(await queue.next() == "r")
        #expect(ContinuousClock.now - asked < .seconds(5))  // not the 10 s look
        await queue.done("r", failed: false)
        try await Task.sleep(for: .milliseconds(300))
        #expect(queue.depth.load(ordering: .relaxed) == 0)  // the 100 ms look never came
    }
}
