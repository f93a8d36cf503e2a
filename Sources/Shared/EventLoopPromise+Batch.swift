import NIOCore

extension EventLoopPromise {
    /// Completes promises with one task per event loop, not one hop each (at once on the loop
    /// running this): acknowledgements and applied replies arrive in batches (a Kafka
    /// ProduceResponse's messages, an applier's batch of replies).
    public static func complete(_ batch: [(promise: EventLoopPromise<Value>, result: Result<Value, any Error>)]) {
        if batch.count == 1 { return batch[0].promise.completeWith(batch[0].result) }
        var byLoop: [ObjectIdentifier: (loop: EventLoop, batch: [(promise: EventLoopPromise<Value>, result: Result<Value, any Error>)])] = [:]
        for entry in batch {
            let loop = entry.promise.futureResult.eventLoop
            byLoop[ObjectIdentifier(loop), default: (loop, [])].batch.append(entry)
        }
        for (loop, batch) in byLoop.values {
            if loop.inEventLoop {
                for (promise, result) in batch { promise.completeWith(result) }
            } else {
                loop.execute { for (promise, result) in batch { promise.completeWith(result) } }
            }
        }
    }
}
