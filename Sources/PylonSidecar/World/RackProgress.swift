import Foundation
import Logging
import NIOCore
import Shared
import Synchronization

/// How far this rack's Redis is behind the world's log: the log's end (each partition's high
/// watermark, from the broker) against what the rack applied (its markers and checkpoints in
/// Redis, whichever sidecar of the rack applies the partition). Peers learn it through
/// `PYLON PING`, so a read never fails over to a rack further behind than `max-peer-lag`.
///
/// Refreshed every `interval` on a thread of its own (the broker calls block).
final class RackProgress: Sendable {
    private let log: WorldLog
    private let rack: RackRedis
    private let eventLoop: EventLoop
    private let interval: Duration
    private let logger: Logger
    private let latest = Mutex<(lag: Int64?, at: ContinuousClock.Instant)>((nil, .now))
    private let stopping = DispatchSemaphore(value: 0)
    private let stopped = DispatchSemaphore(value: 0)
    private let running = Atomic<Bool>(false)

    init(log: WorldLog, rack: RackRedis, eventLoop: EventLoop, interval: Duration, logger: Logger) {
        self.log = log
        self.rack = rack
        self.eventLoop = eventLoop
        self.interval = interval
        self.logger = logger
    }

    /// Ops of the log this rack has not applied yet, over all partitions; nil when unknown (the
    /// broker or the rack's Redis cannot be read, or the last reading is stale).
    var lag: Int64? {
        let (lag, at) = self.latest.withLock { $0 }
        // A reading is good for a few rounds: one round may take long on a busy broker.
        return ContinuousClock.now - at < max(self.interval * 5, .seconds(2)) ? lag : nil
    }

    func start() {
        self.running.store(true, ordering: .releasing)
        Blocking.thread(named: "pylon-rack-progress") { [self] in
            var clients: [HostPort: RedisClient] = [:]
            repeat {
                let lag: Int64?
                do { lag = try self.measure(&clients) } catch {
                    self.logger.debug("cannot measure this rack's lag", metadata: ["error": "\(error)"])
                    for client in clients.values { client.channel.close(promise: nil) }
                    clients = [:]
                    lag = nil
                }
                self.latest.withLock { $0 = (lag, .now) }
            } while self.stopping.wait(timeout: .now() + .milliseconds(Int(self.interval.milliseconds))) == .timedOut
            for client in clients.values { client.channel.close(promise: nil) }
            self.stopped.signal()
        }
    }

    func stop() {
        guard self.running.exchange(false, ordering: .acquiringAndReleasing) else { return }
        self.stopping.signal()
        self.stopped.wait()
    }

    /// The most the log's end may take to read.
    static let logEndTimeout = Duration.seconds(2)

    private func measure(_ clients: inout [HostPort: RedisClient]) throws -> Int64 {
        let topic = self.log.topic
        let partitions = (0..<Int32(self.log.partitions))
        // One request for every partition, bounded: a stop waits for the round under way, and
        // against a broker that stopped answering a read per partition took a minute each.
        let ends = try self.log.producer.endOffsets(topic: topic, partitions: Array(partitions), timeoutMilliseconds: Int32(Self.logEndTimeout.milliseconds))
        // Each partition's marker and checkpoint, read from the node holding each key.
        var reads: [HostPort: [String]] = [:]
        for partition in partitions {
            for key in [AppliedOffsets.markerKey(topic: topic, partition: partition), AppliedOffsets.checkpointKey(topic: topic, partition: partition)] {
                guard let node = self.rack.node(HashSlot.of(key)) else { throw RedisClient.Error(description: "the rack's redis node for \(key) is not known yet") }
                reads[node, default: []].append(key)
            }
        }
        var values: [String: Int64] = [:]
        for (node, keys) in reads {
            if clients[node]?.channel.isActive != true {
                clients[node] = try RedisClient.connecting(to: node, on: self.eventLoop, timeout: .seconds(1)).wait()
            }
            var request = ByteBuffer()
            for key in keys { request.writeRESPCommand([ByteBuffer(string: "GET"), ByteBuffer(string: key)]) }
            // A Redis that stopped answering (SIGSTOP, a full network) fails the read in a second.
            for (key, value) in zip(keys, try clients[node]!.pipeline(request, replies: keys.count, timeout: .seconds(1)).wait()) {
                if let number = value.string.flatMap({ Int64($0) }) { values[key] = number }
            }
        }
        return zip(partitions, ends).reduce(0) { total, entry in
            let next = AppliedOffsets.nextOffset(
                marker: values[AppliedOffsets.markerKey(topic: topic, partition: entry.0)],
                checkpoint: values[AppliedOffsets.checkpointKey(topic: topic, partition: entry.0)]
            )
            return total + max(0, entry.1 - next)
        }
    }
}
