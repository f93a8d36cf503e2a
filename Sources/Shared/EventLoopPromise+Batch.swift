import NIOCore

extension EventLoopPromise {
    /// Completes promises from a thread that is not their event loop's with one task per loop,
    /// not one hop each: acknowledgements and applied replies arrive in batches (a Kafka poll's
    /// delivery reports, an applier's batch of replies).
    public static func complete(_ batch: [(promise: EventLoopPromise<Value>, result: Result<Value, any Error>)]) {
        if batch.count == 1 { return batch[0].promise.completeWith(batch[0].result) }
        var byLoop: [ObjectIdentifier: (loop: EventLoop, batch: [(promise: EventLoopPromise<Value>, result: Result<Value, any Error>)])] = [:]
        for entry in batch {
            let loop = entry.promise.futureResult.eventLoop
            byLoop[ObjectIdentifier(loop), default: (loop, [])].batch.append(entry)
        }
        for (loop, batch) in byLoop.values {
            loop.execute { for (promise, result) in batch { promise.completeWith(result) } }
        }
    }
}
