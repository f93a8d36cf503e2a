import Foundation
import Logging
import NIOCore
import Shared
import Synchronization

/// Applies the world's log to this rack's Redis, exactly once and in log order per slot.
///
/// The sidecars of a rack form one consumer group (`pylon.<world>.<rack>`), so each partition
/// has one applier in the rack. Where a partition starts is read from Redis, not from Kafka: the
/// partition's checkpoint (`AppliedOffsets.checkpointKey`), or the start of the log when Redis
/// has none (a new or emptied rack). Each op is applied by a script that also advances its
/// slot's marker, so a replay or a deposed applier never applies an op twice.
///
/// Ops go to Redis in pipelined batches on one connection, so Redis runs them in log order. Any
/// doubt — the connection drops, Redis times out or answers a transient error (OOM, LOADING,
/// READONLY…), a rebalance — stops the batch and *resyncs*: reconnect, re-read the checkpoints,
/// restart each partition there. A rejected op (WRONGTYPE) is the same on every rack: counted,
/// logged with its offset, passed.
final class Applier: Sendable {
    struct Settings: Sendable {
        var brokers: String
        var topic: String
        var groupID: String
        var properties: [String: String]
        var redisTimeout: TimeAmount
        /// This sidecar's name: replies for ops it originated are handed over in-process.
        var sidecarName: String
        var batchSize = 1000
    }

    /// A partition this sidecar applies, as `PYLON INFO` and `/metrics` show it.
    struct PartitionStatus: Sendable, Equatable {
        var partition: Int32
        /// Another applier of the rack claimed the partition; this one waits for the rebalance.
        var deposed = false
        /// The next offset to apply.
        var next: Int64
        /// The log end (the offset the next write will get), from the last fetch.
        var logEnd: Int64?
        var lag: Int64? { self.logEnd.map { max(0, $0 - self.next) } }
    }

    let settings: Settings
    let stats = ApplierStats()
    /// Where replies to this sidecar's `applied` writes go.
    let replies: AppliedReplies
    /// Where the rack's writes go now (it moves with a Sentinel failover).
    fileprivate let primary: @Sendable () -> HostPort?
    fileprivate let group: EventLoopGroup
    private let metrics: SidecarMetrics
    fileprivate let logger: Logger
    private let running = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)
    private let statusBox = Mutex<[PartitionStatus]>([])

    init(settings: Settings, replies: AppliedReplies, primary: @escaping @Sendable () -> HostPort?, group: EventLoopGroup, metrics: SidecarMetrics, logger: Logger) {
        self.settings = settings
        self.replies = replies
        self.primary = primary
        self.group = group
        self.metrics = metrics
        var logger = logger
        logger[metadataKey: "topic"] = "\(settings.topic)"
        self.logger = logger
    }

    /// The partitions this sidecar applies now.
    var partitions: [PartitionStatus] { self.statusBox.withLock { $0 } }

    /// True when every partition this sidecar applies lags by at most `maxLag` ops.
    func isCaughtUp(maxLag: Int64) -> Bool {
        self.partitions.allSatisfy { ($0.lag ?? .max) <= maxLag }
    }

    /// Joins the rack's consumer group and starts applying on a thread of its own.
    func start() throws {
        let run = try ApplierRun(applier: self)
        self.running.store(true, ordering: .releasing)
        let thread = Thread { [self] in
            run.loop()
            self.finished.signal()
        }
        thread.name = "pylon-applier"
        thread.start()
    }

    /// Stops after the batch in hand, leaves the group and waits for the thread.
    func stop() {
        guard self.running.exchange(false, ordering: .acquiringAndReleasing) else { return }
        self.finished.wait()
    }

    // MARK: - For the run loop

    fileprivate var isRunning: Bool { self.running.load(ordering: .acquiring) }

    fileprivate func publish(_ partitions: [PartitionStatus]) {
        let previous = self.statusBox.withLock { box in
            defer { box = partitions }
            return box
        }
        for gone in Set(previous.map(\.partition)).subtracting(partitions.map(\.partition)) { self.metrics.applierLag(partition: gone, lag: nil) }
        for partition in partitions { self.metrics.applierLag(partition: partition.partition, lag: partition.lag ?? 0) }
    }

    fileprivate func count(_ outcome: ApplierStats.Outcome, _ n: Int = 1) {
        guard n > 0 else { return }
        self.stats.add(outcome, n)
        self.metrics.applierOps(outcome, n)
    }
}

/// What the applier did since start, for `PYLON INFO`.
final class ApplierStats: Sendable {
    enum Outcome: Int, CaseIterable, Sendable {
        /// Applied now; rejected by Redis (deterministic); applied before (a replay); not a
        /// readable op (an unknown version): skipped; a fresh start from the log's beginning;
        /// a resync after a doubt; a partition claimed by another applier of the rack.
        case applied, rejected, duplicate, undecodable, replay, resync, deposed

        /// The case's name, as metrics and `PYLON INFO` show it.
        var name: String { "\(self)" }
    }

    private let counts = Mutex([Int](repeating: 0, count: Outcome.allCases.count))

    func add(_ outcome: Outcome, _ n: Int) { self.counts.withLock { $0[outcome.rawValue] += n } }

    subscript(_ outcome: Outcome) -> Int { self.counts.withLock { $0[outcome.rawValue] } }
}

/// The applier's thread: owns the consumer and the Redis connection. @unchecked: made by
/// `start`, then handed to the thread once and touched only there (the rebalance handler runs
/// inside that thread's polls).
private final class ApplierRun: @unchecked Sendable {
    let applier: Applier
    var consumer: KafkaConsumer!
    var redis: RedisClient?
    var connectedTo: HostPort?
    var sha = ""
    /// Assigned partitions and the next offset to apply in each.
    var next: [Int32: Int64] = [:]
    /// Checkpoints earned by confirmed batches, written with the next batch.
    var checkpoints: [Int32: Int64] = [:]
    /// The batch sent to Redis whose replies are not read yet.
    var inFlight: InFlight?
    /// The offset of the last op sent in each partition since the last resync: the predecessor
    /// the script checks (see `AppliedOffsets.script`), across batches in flight.
    var lastSent: [Int32: Int64] = [:]
    /// This applier's claim on each assigned partition (see `AppliedOffsets.ownerScript`).
    var owners: [Int32: AppliedOffsets.Ownership] = [:]
    /// Partitions another applier claimed since: nothing is applied there until the next assignment.
    var deposed: Set<Int32> = []
    /// Replies owed to other sidecars (PUBLISH commands), sent with the next request.
    var publishes = ByteBuffer()
    var publishCount = 0
    var needsResync = false
    var backoffMilliseconds: Int32 = 50
    var lastCommit = ContinuousClock.now
    var lastConsumerError: String?
    var settings: Applier.Settings { self.applier.settings }
    var logger: Logger { self.applier.logger }

    struct Doubt: Error, CustomStringConvertible {
        let description: String
    }

    init(applier: Applier) throws {
        self.applier = applier
        // receive.message.max.bytes at its maximum: some brokers (noida-db) ignore fetch.max.bytes and
        // answer a catch-up fetch with the whole backlog at once.
        let defaults = [
            "isolation.level": "read_committed", "session.timeout.ms": "10000", "fetch.wait.max.ms": "100",
            "receive.message.max.bytes": "2147483647",
        ]
        // The consumer is made here, on the caller's thread, so bad properties fail `start`.
        self.consumer = try KafkaConsumer(
            brokers: applier.settings.brokers, groupID: applier.settings.groupID,
            properties: defaults.merging(applier.settings.properties) { $1 },
            onRebalance: { [unowned self] in self.rebalanced($0) }
        )
        try self.consumer.subscribe([applier.settings.topic])
    }

    func loop() {
        while self.applier.isRunning {
            if self.needsResync {
                self.finishInFlight()
                if !self.resync() {
                    // Redis is away: keep serving the group (rebalances) while waiting, apply nothing.
                    _ = try? self.consumer.poll(timeoutMilliseconds: self.backoffMilliseconds)
                    self.backoffMilliseconds = min(self.backoffMilliseconds * 2, 2000)
                    continue
                }
            }
            // With a batch in flight, only take what is already fetched: its replies come first.
            let batch = self.poll(timeoutMilliseconds: self.inFlight == nil ? 100 : 0)
            if self.needsResync { continue }  // a rebalance during the poll: its messages are re-read
            if batch.isEmpty {
                if self.inFlight != nil { self.finishInFlight() } else { try? self.writeCheckpoints() }
            } else {
                let sent = self.send(batch)
                self.finishInFlight()
                self.inFlight = sent
            }
            self.publish()
        }
        self.finishInFlight()
        self.consumer.close()
        if let redis = self.redis { redis.channel.close(promise: nil) }
    }

    // MARK: - Partitions

    func rebalanced(_ event: KafkaConsumer.Rebalance) -> [Int64] {
        // The batch in flight belongs to the old assignment: record it before the assignment changes.
        self.finishInFlight()
        self.lastSent = [:]
        switch event {
        case .assigned(let partitions):
            self.logger.info("partitions assigned to this sidecar's applier", metadata: ["partitions": "\(partitions.map(\.partition))"])
            self.next = [:]
            do {
                let offsets = try self.startingOffsets(partitions.map(\.partition), claim: true)
                self.needsResync = false
                return offsets
            } catch {
                // Fetch nothing yet (the log's end); the resync starts each partition properly.
                self.logger.warning("cannot read the checkpoints from redis yet", metadata: ["error": "\(error)"])
                for partition in partitions { self.next[partition.partition] = KafkaConsumer.end }
                self.needsResync = true
                return partitions.map { _ in KafkaConsumer.end }
            }
        case .revoked(let partitions):
            self.logger.info("partitions revoked from this sidecar's applier", metadata: ["partitions": "\(partitions.map(\.partition))"])
            self.next = [:]
            self.checkpoints = [:]
            self.owners = [:]
            self.deposed = []
            self.publish()
            return []
        }
    }

    /// Reads each partition's checkpoint from Redis (connecting first when needed); a partition
    /// Redis knows nothing of starts at the beginning of the log. With `claim`, claims each
    /// partition for this applier (a new assignment); otherwise checks that the claims still
    /// hold, restoring one Redis lost (it came back empty) and noting the ones another applier took.
    func startingOffsets(_ partitions: [Int32], claim: Bool) throws -> [Int64] {
        let redis = try self.connection()
        var request = ByteBuffer()
        let now = Int(Date().timeIntervalSince1970 * 1000)
        for partition in partitions {
            request.writeRESPCommand([ByteBuffer(string: "GET"), ByteBuffer(string: AppliedOffsets.checkpointKey(topic: self.settings.topic, partition: partition))])
            let key = AppliedOffsets.ownerKey(topic: self.settings.topic, partition: partition)
            let held = claim ? nil : self.owners[partition]
            request.writeRESPCommand(["EVAL", AppliedOffsets.ownerScript, "1", key, held == nil ? "claim" : "keep", String(held?.epoch ?? now)].map { ByteBuffer(string: $0) })
        }
        let replies = try self.wait(redis.pipeline(request, replies: 2 * partitions.count))
        return partitions.enumerated().map { index, partition in
            let (checkpoint, owner) = (replies[2 * index], replies[2 * index + 1])
            let key = AppliedOffsets.ownerKey(topic: self.settings.topic, partition: partition)
            if case .integer(let epoch) = owner {
                if let held = self.owners[partition], !claim, held.epoch != epoch {
                    self.depose(partition, epoch: epoch)
                } else {
                    self.owners[partition] = .init(key: key, epoch: epoch)
                    self.deposed.remove(partition)
                }
            }
            if let text = checkpoint.string, let offset = Int64(text) {
                self.next[partition] = offset
                return offset
            }
            self.logger.notice("this rack's redis has no record of the partition: replaying the world's log from its start", metadata: ["partition": "\(partition)"])
            self.applier.count(.replay)
            self.next[partition] = 0
            return KafkaConsumer.beginning
        }
    }

    /// Stops applying a partition another applier of the rack claimed (a newer epoch): this one
    /// was deposed and has not heard of the rebalance yet.
    func depose(_ partition: Int32, epoch: Int) {
        guard self.deposed.insert(partition).inserted else { return }
        self.logger.warning("another applier of the rack claimed the partition: applying nothing there until the group assigns it again", metadata: [
            "partition": "\(partition)", "epoch": "\(epoch)",
        ])
        self.applier.count(.deposed)
    }

    /// Reconnects if needed and restarts every partition from its checkpoint.
    func resync() -> Bool {
        do {
            let partitions = self.next.keys.sorted()
            let offsets = try self.startingOffsets(partitions, claim: false)
            try self.consumer.assign(zip(partitions, offsets).map { (self.settings.topic, $0, $1) })
            self.checkpoints = [:]
            self.lastSent = [:]
            self.needsResync = false
            self.backoffMilliseconds = 50
            if !partitions.isEmpty { self.logger.info("applier resynced from the checkpoints in redis", metadata: ["offsets": "\(self.next)"]) }
            return true
        } catch {
            self.logger.warning("applier waiting for redis", metadata: ["error": "\(error)"])
            self.dropConnection()
            return false
        }
    }

    // MARK: - Redis

    func connection() throws -> RedisClient {
        guard let address = self.applier.primary() else { throw Doubt(description: "the rack's redis master is not known yet") }
        // Reuse the connection unless it closed or the master moved (a Sentinel failover).
        if let redis = self.redis, redis.channel.isActive, address == self.connectedTo { return redis }
        self.dropConnection()
        let redis = try self.wait(RedisClient.connecting(to: address, on: self.applier.group.any(), timeout: self.settings.redisTimeout))
        let reply = try self.wait(redis.pipeline(RedisRequest(strings: ["SCRIPT", "LOAD", AppliedOffsets.script]).raw, replies: 1))[0]
        guard let sha = reply.string, sha.count == 40 else { throw Doubt(description: "SCRIPT LOAD answered \(reply)") }
        self.sha = sha
        self.redis = redis
        self.connectedTo = address
        return redis
    }

    /// The connection the checkpoints were read on. A new connection may reach a restarted (or
    /// emptied) Redis, so only a resync may open one.
    func sameConnection() throws -> RedisClient {
        guard let redis = self.redis, redis.channel.isActive else {
            self.needsResync = true
            throw Doubt(description: "the connection to redis closed")
        }
        return redis
    }

    func dropConnection() {
        self.redis?.channel.close(promise: nil)
        self.redis = nil
    }

    /// Waits for `future` up to the Redis timeout; a timeout closes the connection (a late reply
    /// must not be mistaken for another request's).
    func wait<Value: Sendable>(_ future: EventLoopFuture<Value>) throws -> Value {
        let promise = future.eventLoop.makePromise(of: Value.self)
        let timeout = future.eventLoop.scheduleTask(in: self.settings.redisTimeout) {
            promise.fail(Doubt(description: "redis did not answer within \(self.settings.redisTimeout.nanoseconds / 1_000_000) ms"))
        }
        future.cascade(to: promise)
        defer { timeout.cancel() }
        do { return try promise.futureResult.wait() } catch {
            self.dropConnection()
            throw error
        }
    }

    // MARK: - Applying

    func poll(timeoutMilliseconds: Int32) -> [KafkaMessage] {
        var batch: [KafkaMessage] = []
        do {
            guard let first = try self.consumer.poll(timeoutMilliseconds: timeoutMilliseconds) else { return [] }
            batch.append(first)
            while batch.count < self.settings.batchSize, let message = try self.consumer.poll(timeoutMilliseconds: 0) {
                batch.append(message)
            }
        } catch {
            // Broker trouble is reported here and retried by librdkafka; nothing to undo. Each
            // new error is logged once, not once per poll.
            let text = "\(error)"
            if text != self.lastConsumerError {
                self.logger.warning("kafka consumer", metadata: ["error": "\(text)"])
                self.lastConsumerError = text
            }
            return batch
        }
        self.lastConsumerError = nil
        return batch
    }

    /// Ops per script call: large enough that Lua's call cost is shared, small enough that
    /// Redis is not blocked for long (about a tenth of a millisecond).
    static let opsPerScript = 100

    /// A batch sent to Redis whose replies have not been read yet.
    struct InFlight {
        var replies: EventLoopFuture<[RESPValue]>
        /// Replies before the scripts': the checkpoints', then the publishes'.
        var checkpointCount: Int
        var publishCount: Int
        /// The partition of each script call and how many ops it tries, in request order.
        var runs: [(partition: Int32, count: Int)]
        /// Each partition's messages in log order.
        var messages: [Int32: [Message]]
    }

    /// A message of a batch: unreadable ones are passed where they stand; `replyTo` names the
    /// sidecar waiting for the op's reply.
    struct Message {
        var offset: Int64
        var readable: Bool
        var replyTo: String?
    }

    /// Sends a batch: the earned checkpoints, then each partition's ops in runs of
    /// `opsPerScript`, all in one pipeline. The replies are read by `finishInFlight` after the
    /// next batch was sent, so Redis does not wait for the applier between batches.
    func send(_ batch: [KafkaMessage]) -> InFlight? {
        var request = ByteBuffer()
        let checkpointCount = self.writeCheckpointRequests(into: &request)
        let publishCount = self.takePublishes(into: &request)
        var ops: [Int32: [AppliedOffsets.PendingOp]] = [:]
        var messages: [Int32: [Message]] = [:]
        for message in batch where !self.deposed.contains(message.partition) && (self.next[message.partition].map { message.offset >= $0 } ?? false) {
            do {
                let op = try OpRecord(decoding: message.value)
                guard op.arguments.count <= AppliedOffsets.maxArguments else {
                    throw OpRecord.DecodingError(description: "\(op.arguments.count) arguments, more than the applier's script takes (\(AppliedOffsets.maxArguments))")
                }
                ops[message.partition, default: []].append(.init(op: op, offset: message.offset))
                messages[message.partition, default: []].append(Message(offset: message.offset, readable: true, replyTo: op.wantsReply ? op.originSidecar : nil))
            } catch {
                messages[message.partition, default: []].append(Message(offset: message.offset, readable: false))
                self.logger.error("skipping a message of the log that is not a readable op", metadata: [
                    "partition": "\(message.partition)", "offset": "\(message.offset)", "error": "\(error)",
                ])
            }
        }
        var runs: [(partition: Int32, count: Int)] = []
        for (partition, ops) in ops {
            guard let owner = self.owners[partition] else { continue }
            let marker = AppliedOffsets.markerKey(topic: self.settings.topic, partition: partition)
            for start in stride(from: 0, to: ops.count, by: Self.opsPerScript) {
                let run = ops[start..<min(start + Self.opsPerScript, ops.count)]
                AppliedOffsets.writeRequest(run, marker: marker, owner: owner, previous: self.lastSent[partition] ?? -1, sha: self.sha, into: &request)
                self.lastSent[partition] = run.last!.offset
                runs.append((partition, run.count))
            }
        }
        do {
            let replies = try self.sameConnection().pipeline(request, replies: checkpointCount + publishCount + runs.count)
            // Sent checkpoints are not sent again; if they fail, the resync re-reads them anyway.
            self.checkpoints = [:]
            return InFlight(replies: replies, checkpointCount: checkpointCount, publishCount: publishCount, runs: runs, messages: messages)
        } catch {
            self.doubt("redis failed during a batch", error: error)
            return nil
        }
    }

    /// Reads the replies of the batch in flight, if any, and records each partition's progress
    /// op by op up to its first doubt. After a doubt nothing in flight is recorded: the resync
    /// replays it.
    func finishInFlight() {
        guard let batch = self.inFlight.take() else { return }
        let replies: [RESPValue]
        do { replies = try self.wait(batch.replies) } catch {
            if !self.needsResync { self.doubt("redis failed during a batch", error: error) }
            return
        }
        guard !self.needsResync else { return }
        if let failed = replies.prefix(batch.checkpointCount).first(where: \.isError) {
            self.doubt("redis refused a checkpoint", error: Doubt(description: "\(failed)"))
            return
        }
        var outcomes: [Int32: [AppliedOffsets.Outcome]] = [:]
        var stopped: (partition: Int32, reply: RESPValue)?
        for (reply, run) in zip(replies.dropFirst(batch.checkpointCount + batch.publishCount), batch.runs) where run.partition != stopped?.partition && !self.deposed.contains(run.partition) {
            let tried = (try? AppliedOffsets.outcomes(of: reply)) ?? []
            if tried == [.deposed] {
                self.depose(run.partition, epoch: self.owners[run.partition]?.epoch ?? 0)
                continue
            }
            guard tried.count == run.count, tried.first != .previousMissing else {
                // A script error (OOM, LOADING…) or a run whose predecessor did not apply: the
                // partition's later runs did not apply either. Keep what surely applied.
                stopped = (run.partition, reply)
                continue
            }
            outcomes[run.partition, default: []] += tried
        }
        var counts = [ApplierStats.Outcome: Int]()
        for (partition, messages) in batch.messages {
            self.record(outcomes[partition] ?? [], partition: partition, messages: messages, counts: &counts)
        }
        for (outcome, n) in counts { self.applier.count(outcome, n) }
        if let stopped {
            self.doubt("redis could not apply a run of ops now", error: Doubt(description: "\(stopped.reply)".prefix(300).description))
        } else {
            self.commitForMonitoring()
        }
    }

    /// Advances past each of a partition's messages whose outcome is known (unreadable ones
    /// count as passed), stopping at the first readable op without an outcome. Replies go to
    /// the sidecars that wait for them.
    func record(_ outcomes: [AppliedOffsets.Outcome], partition: Int32, messages: [Message], counts: inout [ApplierStats.Outcome: Int]) {
        var next = outcomes.makeIterator()
        for message in messages {
            guard message.readable else {
                counts[.undecodable, default: 0] += 1
                self.advance(partition, past: message.offset)
                continue
            }
            guard let outcome = next.next() else { return }
            let position = AppliedReplies.Position(partition: partition, offset: message.offset)
            switch outcome {
            case .applied(let reply):
                counts[.applied, default: 0] += 1
                if let origin = message.replyTo { self.handOver(reply.encoded, for: position, to: origin) }
            case .alreadyApplied: counts[.duplicate, default: 0] += 1
            case .rejected(let error):
                counts[.rejected, default: 0] += 1
                self.logger.warning("op rejected by redis", metadata: ["partition": "\(partition)", "offset": "\(message.offset)", "error": "\(error)"])
                if let origin = message.replyTo { self.handOver(.respError(error), for: position, to: origin) }
            case .previousMissing, .deposed: return
            }
            self.advance(partition, past: message.offset)
        }
    }

    /// Gives an op's reply to the sidecar that waits for it: in-process, or published on its
    /// channel with the next request.
    func handOver(_ reply: ByteBuffer, for position: AppliedReplies.Position, to origin: String) {
        if origin == self.settings.sidecarName {
            self.applier.replies.deliver(reply, for: position)
            return
        }
        self.publishes.writeRESPCommand([ByteBuffer(string: "PUBLISH"), ByteBuffer(string: AppliedReplies.channel(for: origin)), AppliedReplies.message(reply, for: position)])
        self.publishCount += 1
    }

    /// Moves the owed replies into a request; returns how many.
    func takePublishes(into request: inout ByteBuffer) -> Int {
        defer {
            self.publishes.clear()
            self.publishCount = 0
        }
        request.writeBuffer(&self.publishes)
        return self.publishCount
    }

    func advance(_ partition: Int32, past offset: Int64) {
        self.next[partition] = offset + 1
        self.checkpoints[partition] = offset + 1
    }

    func doubt(_ what: String, error: Error) {
        self.logger.warning("\(what); resyncing from the checkpoints", metadata: ["error": "\(error)"])
        self.applier.count(.resync)
        self.needsResync = true
    }

    // MARK: - Checkpoints and monitoring

    /// Adds the earned checkpoints to a request; returns how many.
    func writeCheckpointRequests(into request: inout ByteBuffer) -> Int {
        for (partition, offset) in self.checkpoints {
            request.writeRESPCommand([
                ByteBuffer(string: "SET"), ByteBuffer(string: AppliedOffsets.checkpointKey(topic: self.settings.topic, partition: partition)),
                ByteBuffer(string: String(offset)),
            ])
        }
        return self.checkpoints.count
    }

    /// Writes the earned checkpoints and owed replies now (the log is quiet); also notices,
    /// while idle, a Redis that restarted.
    func writeCheckpoints() throws {
        let redis = try self.sameConnection()
        guard !self.checkpoints.isEmpty || self.publishCount > 0 else { return }
        var request = ByteBuffer()
        let count = self.writeCheckpointRequests(into: &request) + self.takePublishes(into: &request)
        self.checkpoints = [:]
        _ = try self.wait(redis.pipeline(request, replies: count))
        self.commitForMonitoring()
    }

    /// Kafka's committed offsets mirror the applier's progress, for lag tools; never read back.
    func commitForMonitoring() {
        guard ContinuousClock.now - self.lastCommit > .seconds(1), !self.next.isEmpty else { return }
        self.lastCommit = .now
        try? self.consumer.commit(self.next.map { (self.settings.topic, $0.key, $0.value) }, async: true)
    }

    func publish() {
        let topic = self.settings.topic
        self.applier.publish(self.next.keys.sorted().map { partition in
            Applier.PartitionStatus(
                partition: partition, deposed: self.deposed.contains(partition), next: self.next[partition]!,
                logEnd: self.consumer.cachedLogEnd(topic: topic, partition: partition)
            )
        })
    }
}
