import Foundation
import Synchronization

/// The reconcilers' queue, as Kubernetes controllers keep one: a key is queued at most once
/// however often it is added; a key being worked on is not handed out again until that work
/// ends (added meanwhile, it comes back after); a failed key comes back after a growing delay
/// (0.1 s doubling to 30 s), reset by a success.
public actor WorkQueue<Key: Hashable & Sendable> {
    private var queue: [Key] = []
    private var queued: Set<Key> = []
    private var processing: Set<Key> = []
    private var dirty: Set<Key> = []
    private var failures: [Key: Int] = [:]
    /// Keys to be added later, each at its earliest deadline.
    private var waiting: [Key: ContinuousClock.Instant] = [:]
    private var waiters: [CheckedContinuation<Key?, Never>] = []
    private var closed = false

    /// Keys waiting, readable from anywhere (metrics).
    public nonisolated let depth = Atomic<Int>(0)

    public init() {}

    private func updateDepth() { self.depth.store(self.queue.count, ordering: .relaxed) }

    public func add(_ key: Key) {
        guard !self.closed else { return }
        if self.processing.contains(key) {
            self.dirty.insert(key)
            return
        }
        guard self.queued.insert(key).inserted else { return }
        if let waiter = self.waiters.first {
            self.waiters.removeFirst()
            self.queued.remove(key)
            self.processing.insert(key)
            waiter.resume(returning: key)
        } else {
            self.queue.append(key)
            self.updateDepth()
        }
    }

    /// Adds `key` once `delay` has passed (a periodic look at something that changes without
    /// events). A key already due sooner is not added twice: however many reconciles asked for a
    /// later look, one is taken.
    public func add(_ key: Key, after delay: Duration) {
        let deadline = ContinuousClock.now + delay
        if let due = self.waiting[key], due <= deadline { return }
        self.waiting[key] = deadline
        Task {
            try? await Task.sleep(until: deadline)
            self.due(key, deadline)
        }
    }

    private func due(_ key: Key, _ deadline: ContinuousClock.Instant) {
        guard self.waiting[key] == deadline else { return }  // an earlier deadline took its place
        self.waiting[key] = nil
        self.add(key)
    }

    /// The next key to work on; nil once the queue is closed.
    public func next() async -> Key? {
        if let key = self.take() { return key }
        if self.closed { return nil }
        return await withCheckedContinuation { self.waiters.append($0) }
    }

    private func take() -> Key? {
        guard !self.queue.isEmpty else { return nil }
        let key = self.queue.removeFirst()
        self.updateDepth()
        self.queued.remove(key)
        self.processing.insert(key)
        return key
    }

    /// The work on `key` ended: with `failed`, it is retried after its backoff.
    public func done(_ key: Key, failed: Bool) {
        self.processing.remove(key)
        if self.dirty.remove(key) != nil { self.add(key) }
        guard failed else {
            self.failures[key] = nil
            return
        }
        let attempt = self.failures[key, default: 0]
        self.failures[key] = attempt + 1
        self.add(key, after: .milliseconds(Int(min(0.1 * pow(2, Double(attempt)), 30) * 1000)))
    }

    public var isClosed: Bool { self.closed }

    public func close() {
        self.closed = true
        for waiter in self.waiters { waiter.resume(returning: nil) }
        self.waiters = []
    }
}
