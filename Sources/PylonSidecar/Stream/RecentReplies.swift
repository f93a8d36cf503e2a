import NIOCore
import Synchronization

/// The replies this sidecar's applier gave to the recent ops of other racks' sidecars, kept so
/// that such a sidecar can still answer its client with the real reply while its own Redis is
/// away (`PYLON REPLY`, asked by `PeerReplies`): the log makes every rack's reply the same.
/// Bounded: the newest `capacity` replies of at most `maxReplyBytes` each.
final class RecentReplies: Sendable {
    private struct State {
        var replies: [AppliedReplies.Position: ByteBuffer] = [:]
        var order = CircularBuffer<AppliedReplies.Position>()
        var waiting: [AppliedReplies.Position: [EventLoopPromise<ByteBuffer>]] = [:]
    }

    private let state = Mutex(State())
    let capacity: Int
    let maxReplyBytes: Int

    init(capacity: Int = 16_384, maxReplyBytes: Int = 64 * 1024) {
        self.capacity = capacity
        self.maxReplyBytes = maxReplyBytes
    }

    /// Keeps the reply of the op at `position` and hands it to whoever waits for it.
    func keep(_ reply: ByteBuffer, for position: AppliedReplies.Position) {
        guard reply.readableBytes <= self.maxReplyBytes else { return }
        let waiters = self.state.withLock { state -> [EventLoopPromise<ByteBuffer>] in
            if state.replies.updateValue(reply, forKey: position) == nil { state.order.append(position) }
            while state.order.count > self.capacity { state.replies[state.order.removeFirst()] = nil }
            return state.waiting.removeValue(forKey: position) ?? []
        }
        for waiter in waiters { waiter.succeed(reply) }
    }

    /// The reply of the op at `position`: kept already, or once it is applied; fails after `timeout`.
    func reply(for position: AppliedReplies.Position, on eventLoop: EventLoop, timeout: TimeAmount) -> EventLoopFuture<ByteBuffer> {
        let promise = eventLoop.makePromise(of: ByteBuffer.self)
        let kept = self.state.withLock { state -> ByteBuffer? in
            if let reply = state.replies[position] { return reply }
            state.waiting[position, default: []].append(promise)
            return nil
        }
        if let kept {
            promise.succeed(kept)
            return promise.futureResult
        }
        let timer = eventLoop.scheduleTask(in: timeout) { [self] in
            let removed = self.state.withLock { state -> Bool in
                guard var waiters = state.waiting[position], let index = waiters.firstIndex(where: { $0.futureResult === promise.futureResult }) else { return false }
                waiters.remove(at: index)
                state.waiting[position] = waiters.isEmpty ? nil : waiters
                return true
            }
            if removed { promise.fail(AppliedReplies.Timeout()) }
        }
        promise.futureResult.whenComplete { _ in timer.cancel() }
        return promise.futureResult
    }
}
