import Foundation
import Logging
import NIOCore
import Synchronization

/// How far this rack's Redis is behind the world's log: the log's end (each partition's high
/// watermark, from the broker) against what the rack applied (its markers and checkpoints in
/// Redis, whichever sidecar of the rack applies the partition). Peers learn it through
/// `PYLON PING`, so a read never fails over to a rack further behind than `max-peer-lag`.
///
/// Refreshed every `interval` on a thread of its own (the broker calls block).
final class RackProgress: Sendable {
    private let log: WorldLog
    private let primary: @Sendable () -> HostPort?
    private let eventLoop: EventLoop
    private let interval: Duration
    private let logger: Logger
    private let latest = Mutex<(lag: Int64?, at: ContinuousClock.Instant)>((nil, .now))
    private let stopping = DispatchSemaphore(value: 0)
    private let stopped = DispatchSemaphore(value: 0)
    private let running = Atomic<Bool>(false)

    init(log: WorldLog, primary: @escaping @Sendable () -> HostPort?, eventLoop: EventLoop, interval: Duration, logger: Logger) {
        self.log = log
        self.primary = primary
        self.eventLoop = eventLoop
        self.interval = interval
        self.logger = logger
    }

    /// Ops of the log this rack has not applied yet, over all partitions; nil when unknown (the
    /// broker or the rack's Redis cannot be read, or the last reading is stale).
    var lag: Int64? {
        let (lag, at) = self.latest.withLock { $0 }
        return ContinuousClock.now - at < self.interval * 3 ? lag : nil
    }

    func start() {
        self.running.store(true, ordering: .releasing)
        let thread = Thread { [self] in
            var redis: RedisClient?
            repeat {
                let lag: Int64?
                do { lag = try self.measure(&redis) } catch {
                    self.logger.debug("cannot measure this rack's lag", metadata: ["error": "\(error)"])
                    redis?.channel.close(promise: nil)
                    redis = nil
                    lag = nil
                }
                self.latest.withLock { $0 = (lag, .now) }
            } while self.stopping.wait(timeout: .now() + .milliseconds(Int(self.interval.milliseconds))) == .timedOut
            redis?.channel.close(promise: nil)
            self.stopped.signal()
        }
        thread.name = "pylon-rack-progress"
        thread.start()
    }

    func stop() {
        guard self.running.exchange(false, ordering: .acquiringAndReleasing) else { return }
        self.stopping.signal()
        self.stopped.wait()
    }

    private func measure(_ redis: inout RedisClient?) throws -> Int64 {
        let topic = self.log.topic
        let partitions = (0..<Int32(self.log.partitions))
        let ends = try partitions.map { try self.log.producer.watermarks(topic: topic, partition: $0, timeoutMilliseconds: 1000).high }
        if redis == nil || redis?.channel.isActive != true {
            guard let address = self.primary() else { throw RedisClient.Error(description: "the rack's redis master is not known yet") }
            redis = try RedisClient.connecting(to: address, on: self.eventLoop, timeout: .seconds(1)).wait()
        }
        let keys = partitions.flatMap { [AppliedOffsets.markerKey(topic: topic, partition: $0), AppliedOffsets.checkpointKey(topic: topic, partition: $0)] }
        let values = try redis!.pipeline(RedisRequest(strings: ["MGET"] + keys).raw, replies: 1).wait()[0].array ?? []
        guard values.count == keys.count else { throw RedisClient.Error(description: "MGET answered \(values.count) values for \(keys.count) keys") }
        // Next offset the rack needs: past its last applied op, or its checkpoint (which also
        // passes unreadable messages), whichever is further.
        return zip(partitions, ends).reduce(0) { total, entry in
            let index = Int(entry.0) * 2
            let marker = values[index].string.flatMap { Int64($0) }.map { $0 + 1 } ?? 0
            let checkpoint = values[index + 1].string.flatMap { Int64($0) } ?? 0
            return total + max(0, entry.1 - max(marker, checkpoint))
        }
    }
}
