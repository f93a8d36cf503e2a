import Foundation
import Logging
import NIOCore
import Shared
import Synchronization

/// Applies the world's log to this rack's Redis, exactly once and in log order per slot.
///
/// The sidecars of a rack form one consumer group (`pylon.<world>.<rack>`), so each partition
/// has one applier in the rack. Where a partition starts is read from Redis, not from Kafka: the
/// partition's checkpoint (`AppliedOffsets.checkpointKey`), or when Redis has none (a new or
/// emptied rack) its catch-up offset if configured (a Redis loaded up to there by other means),
/// or where a snapshot of another rack stands, loaded first (`SnapshotCatchUp`), else the start
/// of the log. Each op is applied by a script that also advances its
/// marker (the partition's; on Redis Cluster the partition's in the op's slot), so a replay or a
/// deposed applier never applies an op twice.
///
/// Ops go to Redis in pipelined batches, one connection per node, so each node runs them in log
/// order. Any
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
        /// This rack's name: replies for ops of other racks are kept in `recent`.
        var rackName: String
        /// Where a partition Redis has no checkpoint for starts, when not at the log's start.
        var catchUpOffsets: [Int32: Int64] = [:]
        /// The topic's partitions (which partition a key's slot is in).
        var partitions: Int
        /// Where a partition Redis has no checkpoint for is loaded from, when not replayed.
        var snapshot: SnapshotCatchUp?
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
    /// The replies to other racks' recent ops, for `PYLON REPLY`.
    let recent = RecentReplies()
    /// Where a catch-up from a snapshot stands.
    let snapshot: SnapshotProgress
    /// This sidecar's ops as Kafka acknowledged them, applied without waiting for their fetch.
    let ownWrites: OwnWrites
    /// Where the rack's writes go now (a Sentinel failover moves the master, a Redis Cluster its slots).
    let rack: RackRedis
    private let metrics: SidecarMetrics
    let logger: Logger
    private let running = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)
    private let statusBox = Mutex<[PartitionStatus]>([])

    init(settings: Settings, replies: AppliedReplies, ownWrites: OwnWrites, rack: RackRedis, metrics: SidecarMetrics, logger: Logger) {
        self.settings = settings
        self.replies = replies
        self.ownWrites = ownWrites
        self.rack = rack
        self.metrics = metrics
        self.snapshot = SnapshotProgress(metrics: settings.snapshot == nil ? nil : metrics)
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
        Blocking.thread(named: "pylon-applier") { [self] in
            run.loop()
            self.finished.signal()
        }
    }

    /// Stops after the batch in hand, leaves the group and waits for the thread.
    func stop() {
        guard self.running.exchange(false, ordering: .acquiringAndReleasing) else { return }
        self.finished.wait()
    }

    // MARK: - For the run loop

    fileprivate var isRunning: Bool { self.running.load(ordering: .acquiring) }

    fileprivate func publish(_ partitions: [PartitionStatus]) {
        self.statusBox.withLock { $0 = partitions }
    }

    /// Sets the lag gauges of `partitions`, and removes those of the partitions in `gone`.
    fileprivate func recordLag(_ partitions: [PartitionStatus], gone: some Sequence<Int32>) {
        for partition in gone { self.metrics.applierLag(partition: partition, lag: nil) }
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

/// The applier's driver, on a thread of its own: owns the consumer and the connections to the
/// rack's Redis nodes, carries out what its `ApplierStateMachine` decides, and reports back to
/// it what Kafka and Redis did. It holds no rule of its own: only I/O, its handles and timers.
/// @unchecked: made by `start`, then handed to the thread once and touched only there (the
/// rebalance callback runs inside that thread's polls: it records, and on a revocation stops a
/// snapshot load).
final class ApplierRun: @unchecked Sendable {
    typealias Unit = ApplierStateMachine.Unit
    typealias Entry = ApplierStateMachine.Entry

    let applier: Applier
    var machine: ApplierStateMachine
    var consumer: KafkaConsumer!
    /// The connections to the nodes that take writes, opened by the last resync.
    let redis: RackPipelines
    /// The batch sent to Redis whose replies are not read yet.
    var inFlight: InFlight?
    /// Replies owed to other sidecars (PUBLISH commands), sent with the next request.
    var publishes: [[ByteBuffer]] = []
    /// Replies to this sidecar's own writes, handed over together once the actions are carried out.
    var ownReplies: [(reply: ByteBuffer, position: AppliedReplies.Position)] = []
    /// The partitions being loaded from a snapshot (`SnapshotLoad`, on a thread of its own).
    var load: SnapshotLoad?
    var backoffMilliseconds: Int32 = 50
    var lastCommit = ContinuousClock.now
    /// The log ends `publish` last read, of which partitions, and when.
    var logEnds: (partitions: [Int32], ends: [Int32: Int64], read: ContinuousClock.Instant) = ([], [:], .now)
    var lastConsumerError: String?
    var settings: Applier.Settings { self.applier.settings }
    var rack: RackRedis { self.applier.rack }
    var logger: Logger { self.applier.logger }

    typealias Doubt = RackPipelines.Doubt

    init(applier: Applier) throws {
        self.applier = applier
        self.redis = RackPipelines(rack: applier.rack, timeout: applier.settings.redisTimeout)
        self.machine = ApplierStateMachine(settings: .init(
            topic: applier.settings.topic, perSlot: applier.rack.perSlot,
            catchUpOffsets: applier.settings.catchUpOffsets, snapshot: applier.settings.snapshot != nil
        ))
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
            onRebalance: { [unowned self] rebalance in
                // A snapshot load ends before the partitions move, after its chunk in flight, so
                // the next owner does not find it writing (its writes are fenced too: `LoadFence`).
                if case .revoked = rebalance { self.stopLoad() }
                self.machine.record(rebalance)
            }
        )
        try self.consumer.subscribe([applier.settings.topic])
        applier.ownWrites.attach(wake: { [consumer = self.consumer!] in consumer.wake() })
    }

    func loop() {
        while self.applier.isRunning {
            if let load = self.load, let outcome = load.outcome {
                self.load = nil
                if case .loaded = outcome {
                    self.logger.info("partitions loaded from a snapshot: applying the log after it", metadata: ["partitions": "\(load.partitions)"])
                    self.machine.snapshotLoaded()
                } else {
                    self.machine.loadDeposed(load.partitions)
                    self.act()
                }
            }
            if self.machine.needsResync {
                self.finishInFlight()
                if !self.resync() {
                    // Redis is away: keep serving the group (rebalances) while waiting, apply nothing.
                    _ = try? self.consumer.poll(timeoutMilliseconds: self.backoffMilliseconds)
                    self.handleRebalances()
                    self.backoffMilliseconds = min(self.backoffMilliseconds * 2, 2000)
                    continue
                }
            }
            // With a batch in flight, only take what is already fetched: its replies come first.
            // An own write handed over wakes the poll.
            let fetched = self.poll(timeoutMilliseconds: self.inFlight == nil ? 100 : 0)
            self.handleRebalances()
            if self.machine.needsResync { continue }  // a rebalance during the poll: its messages are re-read
            let batch = self.machine.admit(fetched: fetched, own: self.applier.ownWrites.take())
            if batch.isEmpty {
                if self.inFlight != nil {
                    self.finishInFlight()
                } else {
                    do { try self.writeCheckpoints() } catch { self.doubt("redis went away while the log was quiet", error: error) }
                }
            } else {
                self.apply(batch)
            }
            self.publish()
            self.reviveDeposed()
        }
        self.applier.ownWrites.attach(wake: nil)
        self.stopLoad()
        self.finishInFlight()
        // The replies and checkpoints this applier owes go out before it leaves.
        try? self.writeCheckpoints()
        self.consumer.close()
        self.redis.dropConnections()
    }

    // MARK: - Carrying out the machine's actions

    /// Carries out the actions the machine queued.
    func act() {
        for action in self.machine.takeActions() {
            switch action {
            case .handOver(let reply, let position, let origin):
                self.handOver(reply, for: position, to: origin)
            case .count(let outcome, let n):
                self.applier.count(outcome, n)
            case .reportRejected(let position, let error):
                self.logger.warning("op rejected by redis", metadata: ["partition": "\(position.partition)", "offset": "\(position.offset)", "error": "\(error)"])
            case .reportUnreadable(let position, let error):
                self.logger.error("skipping a message of the log that is not a readable op", metadata: [
                    "partition": "\(position.partition)", "offset": "\(position.offset)", "error": "\(error)",
                ])
            case .reportDeposed(let partition, let epoch):
                self.logger.warning("another applier of the rack claimed the partition: applying nothing there until the group assigns it again", metadata: [
                    "partition": "\(partition)", "epoch": "\(epoch.map(String.init) ?? "newer than the snapshot load's")",
                ])
            case .reportRevived(let partitions):
                self.logger.notice("claiming deposed partitions again (their claim vanished, or no rebalance took them away)", metadata: ["partitions": "\(partitions)"])
            case .resync(let reason):
                self.logger.warning("\(reason); resyncing from the checkpoints")
            case .refreshSlots:
                self.rack.slotsMoved()
            }
        }
        self.applier.replies.deliver(self.ownReplies)
        self.ownReplies.removeAll(keepingCapacity: true)
    }

    /// A failure of Redis or a check: the machine resyncs.
    func doubt(_ what: String, error: Error) {
        self.machine.doubt("\(what) (\(error))")
        self.act()
    }

    /// Gives an op's reply to the sidecar that waits for it: in-process, or published on its
    /// channel with the next request; an op of another rack's sidecar has its reply kept in
    /// case that sidecar asks for it (its own Redis is away: `PYLON REPLY`).
    func handOver(_ reply: ByteBuffer, for position: AppliedReplies.Position, to origin: ApplierStateMachine.Origin) {
        if origin.rack != self.settings.rackName {
            self.applier.recent.keep(reply, for: position)
        } else if origin.sidecar == self.settings.sidecarName {
            self.ownReplies.append((reply, position))
        } else {
            self.publishes.append([ByteBuffer(string: "PUBLISH"), ByteBuffer(string: AppliedReplies.channel(for: origin.sidecar)), AppliedReplies.message(reply, for: position)])
        }
    }

    // MARK: - Partitions

    /// Handles the rebalances the consumer reported during the last poll. A batch in flight
    /// belongs to the assignment it was sent under: its replies are read before it changes;
    /// owed replies (their clients wait) and earned checkpoints go out before partitions do.
    func handleRebalances() {
        for rebalance in self.machine.takeRebalances() {
            self.finishInFlight()
            switch rebalance {
            case .assigned(let partitions):
                self.logger.info("partitions assigned to this sidecar's applier", metadata: ["partitions": "\(partitions.map(\.partition))"])
                self.machine.assigned(partitions.map(\.partition))
            case .revoked(let partitions):
                self.logger.info("partitions revoked from this sidecar's applier", metadata: ["partitions": "\(partitions.map(\.partition))"])
                try? self.writeCheckpoints()
                self.machine.revoked()
                self.publish()
            }
            self.act()
        }
    }

    func stopLoad() {
        guard let load = self.load.take() else { return }
        load.cancel()
        self.logger.notice("the snapshot load stopped before its end (partitions moved, or the sidecar stops); the next owner resumes or starts over", metadata: ["partitions": "\(load.partitions)"])
    }

    /// Reconnects and restarts every partition where the machine says: its checkpoint, its
    /// catch-up offset, a snapshot loaded now, or the log's start. The claims held are asserted
    /// again.
    func resync() -> Bool {
        do {
            try self.redis.connectAll()
            let starts = try self.startingOffsets(self.machine.next.keys.sorted())
            try self.own(self.machine.heldClaims.map { ($0.unit, "keep", $0.epoch) })
            try self.consumer.assign(starts.sorted { $0.key < $1.key }.map { (self.settings.topic, $0.key, $0.value) })
            self.machine.resynced(at: starts)
            self.act()
            self.backoffMilliseconds = 50
            if !starts.isEmpty { self.logger.info("applier resynced from the checkpoints in redis", metadata: ["offsets": "\(self.machine.next)"]) }
            return true
        } catch {
            self.act()
            self.logger.warning("applier waiting for redis", metadata: ["error": "\(error)"])
            self.redis.dropConnections()
            return false
        }
    }

    /// Reads each partition's checkpoint from Redis and answers where each starts (a real
    /// offset, or `KafkaConsumer.beginning`). Partitions to load from a snapshot get no start:
    /// their load begins (or goes on) on a thread of its own.
    func startingOffsets(_ partitions: [Int32]) throws -> [Int32: Int64] {
        var requests = RackPipelines.Requests()
        for partition in partitions {
            let key = AppliedOffsets.checkpointKey(topic: self.settings.topic, partition: partition)
            try requests.add(["GET", key], to: self.redis.node(forKey: key), as: .checkpoint(partition))
        }
        var checkpoints: [Int32: Int64] = [:]
        for (entry, reply) in try self.redis.exchange(requests) {
            if case .checkpoint(let partition) = entry, let offset = reply.string.flatMap({ Int64($0) }) { checkpoints[partition] = offset }
        }
        var starts: [Int32: Int64] = [:]
        var fromSnapshot: [Int32] = []
        var replayed: [Int32] = []
        for partition in partitions {
            switch self.machine.start(of: partition, checkpoint: checkpoints[partition]) {
            case .checkpoint(let offset):
                starts[partition] = offset
            case .catchUp(let offset):
                self.logger.notice("this rack's redis has no record of the partition: starting at its catch-up offset", metadata: ["partition": "\(partition)", "offset": "\(offset)"])
                starts[partition] = offset
            case .snapshot:
                fromSnapshot.append(partition)
            case .replay:
                self.logger.notice("this rack's redis has no record of the partition: replaying the world's log from its start", metadata: ["partition": "\(partition)"])
                replayed.append(partition)
                starts[partition] = KafkaConsumer.beginning
            }
        }
        // Asked once for every replayed partition, bounded: a broker that stopped answering
        // delays the resync by seconds, not a minute per partition.
        if !replayed.isEmpty, let logStarts = try? self.consumer.logStarts(topic: self.settings.topic, partitions: replayed, timeoutMilliseconds: 2000) {
            for (partition, start) in logStarts.sorted(by: { $0.key < $1.key }) where start > 0 {
                self.logger.error("the world's log no longer holds this partition's first ops (retention deleted them): this rack will miss them; catch it up from another rack's snapshot (snapshot-from)", metadata: [
                    "partition": "\(partition)", "logStart": "\(start)",
                ])
            }
        }
        // A new or emptied Redis loads a snapshot of another rack rather than replay the log.
        if let snapshot = self.settings.snapshot, !fromSnapshot.isEmpty, self.load == nil {
            self.load = SnapshotLoad(fromSnapshot, from: snapshot, applier: self.applier, consumer: self.consumer) { [consumer = self.consumer!] in consumer.wake() }
        }
        return starts
    }

    /// Claims `units` (before their first run since the assignment).
    func claim(_ units: [Unit]) throws {
        try self.own(units.map { ($0, "claim", Int(Date().timeIntervalSince1970 * 1000)) })
    }

    /// Runs the owner script for each unit (`RackPipelines.own`) and tells the machine the
    /// epochs Redis answered.
    private func own(_ requests: [(unit: Unit, mode: String, value: Int)]) throws {
        guard !requests.isEmpty else { return }
        for (unit, epoch) in try self.redis.own(requests, topic: self.settings.topic) { self.machine.claimed(unit, epoch: epoch) }
        self.act()
    }

    /// Checks, when the machine asks, whether deposed partitions' owner keys vanished from Redis.
    func reviveDeposed() {
        guard let units = self.machine.revivalCheck() else { return }
        var requests = RackPipelines.Requests()
        do {
            for unit in units { try requests.add(["EXISTS", unit.ownerKey(topic: self.settings.topic)], to: self.redis.node(forKey: unit.markerKey(topic: self.settings.topic)), as: .claim(unit)) }
            let vanished = try self.redis.exchange(requests).compactMap { entry, reply -> Unit? in
                guard case .claim(let unit) = entry, reply == .integer(0) else { return nil }
                return unit
            }
            self.machine.ownerKeysChecked(vanished: vanished)
            self.act()
        } catch {
            self.doubt("redis failed while checking deposed partitions", error: error)
        }
    }

    // MARK: - Applying

    func poll(timeoutMilliseconds: Int32) -> [KafkaMessage] {
        var batch: [KafkaMessage] = []
        do {
            // Messages the cursor would not admit (this sidecar's own writes, applied as soon as
            // Kafka acknowledged them) are passed over without being copied.
            let applied = { (partition: Int32, offset: Int64) in !self.machine.admits(partition, offset: offset) }
            guard let first = try self.consumer.poll(timeoutMilliseconds: timeoutMilliseconds, skip: applied) else { return [] }
            batch.append(first)
            while batch.count < self.settings.batchSize, let message = try self.consumer.poll(timeoutMilliseconds: 0, skip: applied) {
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

    /// A batch sent to Redis whose replies have not been read yet.
    struct InFlight {
        /// Each node's replies, and what each answers.
        var requests: [RackPipelines.Sent]
        /// Each partition's messages in log order.
        var messages: [Int32: [ApplierStateMachine.Message]]
    }

    /// Sends a batch: the earned checkpoints and owed replies, then the machine's runs, each
    /// node's in one pipeline. The replies are read by `finishInFlight` after the next batch was
    /// sent, so Redis does not wait for the applier between batches. Returns the op that needs a
    /// turn of its own, where the machine's plan stopped.
    func send(_ batch: ArraySlice<KafkaMessage>) -> (sent: InFlight?, stop: ApplierStateMachine.OwnTurn?) {
        let plan = self.machine.plan(batch)
        self.act()
        do {
            try self.claim(self.machine.unclaimed(plan.units))
            var requests = RackPipelines.Requests()
            try self.addCheckpointsAndPublishes(to: &requests)
            for run in self.machine.runs(of: plan) {
                let marker = run.unit.markerKey(topic: self.settings.topic)
                requests.add(
                    written: { AppliedOffsets.writeRequest(run.ops, marker: marker, owner: run.owner, previous: run.previous, sha: self.redis.sha, into: &$0) },
                    to: try self.redis.node(forKey: marker), as: .run(run.unit, offsets: run.ops.map(\.offset))
                )
            }
            return (InFlight(requests: try self.redis.transmit(requests), messages: plan.messages), plan.stop)
        } catch {
            self.doubt("redis failed during a batch", error: error)
            return (nil, nil)
        }
    }

    /// Applies a batch: its ops in pipelined runs (`send`, each batch sent before the replies of
    /// the one before are read), and an op that needs a turn of its own once everything before
    /// it was applied (`flush`, `applyAlone`).
    func apply(_ batch: [KafkaMessage]) {
        var rest = batch[...]
        while !rest.isEmpty {
            let (sent, stop) = self.send(rest)
            self.finishInFlight()
            self.inFlight = sent
            guard let stop else { return }
            self.finishInFlight()
            guard !self.machine.needsResync else { return }
            if let target = FlushOps.target(of: stop.op) {
                self.flush(stop.message, partitions: target.partitions, op: stop.op)
            } else {
                self.applyAlone(stop.message, op: stop.op)
            }
            self.act()
            guard !self.machine.needsResync else { return }
            rest = rest[(stop.index + 1)...]
        }
    }

    /// Applies an op with more arguments than a script can pass on (Lua's stack): in a
    /// transaction watching its marker and owner key, so it is fenced and applied exactly once
    /// like any run — the marker is set in the same MULTI/EXEC as the op.
    func applyAlone(_ message: KafkaMessage, op: OpRecord) {
        let partition = message.partition
        let unit = self.machine.unit(of: op, in: partition)
        let position = AppliedReplies.Position(partition: partition, offset: message.offset)
        do {
            try self.claim(self.machine.unclaimed([unit]))
            guard !self.machine.isDeposed(partition), let epoch = self.machine.owners[unit]?.epoch else { return }
            let (marker, owner) = (unit.markerKey(topic: self.settings.topic), unit.ownerKey(topic: self.settings.topic))
            let node = try self.redis.node(forKey: marker)
            var check = RackPipelines.Requests()
            check.add(["WATCH", marker, owner], to: node, as: .ownTurn)
            check.add(["MGET", owner, marker], to: node, as: .ownTurn)
            let stored = try self.redis.exchange(check)[1].1.array ?? []
            let outcome: AppliedOffsets.Outcome
            if let found = self.machine.ownTurnCheck(
                unit, offset: message.offset, ownerEpoch: stored.first?.string.flatMap { Int($0) },
                marker: stored.count == 2 ? stored[1].string.flatMap { Int64($0) } ?? -1 : -1
            ) {
                _ = try self.redis.exchange({ var r = RackPipelines.Requests(); r.add(["UNWATCH"], to: node, as: .ownTurn); return r }())
                outcome = found
            } else {
                var transaction = RackPipelines.Requests()
                transaction.add(["MULTI"], to: node, as: .ownTurn)
                transaction.add(["SET", marker, String(message.offset)], to: node, as: .ownTurn)
                transaction.add(op.arguments, to: node, as: .ownTurn)
                transaction.add(["EXEC"], to: node, as: .ownTurn)
                let replies = try self.redis.exchange(transaction).map(\.1)
                switch replies[3] {
                case .array(let results?) where results.count == 2:
                    if case .error(let error) = results[1] { outcome = .rejected(error: String(buffer: error)) } else { outcome = .applied(reply: results[1]) }
                case .error(let error) where String(buffer: error).hasPrefix("EXECABORT") && !Self.isTransient(replies[2]):
                    // Refused when queued (the same on every rack): passed, as a rejected op.
                    outcome = .rejected(error: replies[2].string ?? "EXECABORT")
                    _ = try self.redis.exchange({ var r = RackPipelines.Requests(); r.add(["EVAL", AppliedOffsets.markScript, "2", marker, owner, String(epoch), String(message.offset)], to: node, as: .ownTurn); return r }())
                default:
                    throw Doubt(description: "a transaction applying op \(position) answered \(replies[3]) (\(replies[2]))")
                }
            }
            self.machine.ownTurnFinished(outcome, of: op, at: position, units: [unit])
        } catch {
            self.doubt("redis failed applying a large op", error: error)
        }
    }

    /// Whether a queued command's reply is an error that may pass (OOM, LOADING, a moved slot…).
    static func isTransient(_ reply: RESPValue) -> Bool {
        guard case .error(let message) = reply else { return false }
        return ["OOM", "LOADING", "READONLY", "MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "BUSY", "MASTERDOWN"].contains { message.readableBytesView.starts(with: $0.utf8) }
    }

    /// Applies a flush op (`FlushOps`): deletes the user keys of the partition's slots, fenced
    /// and marked like any run, and hands over its reply.
    func flush(_ message: KafkaMessage, partitions: Int, op: OpRecord) {
        let partition = message.partition
        let units = self.machine.flushUnits(partition, partitions: partitions)
        do {
            try self.claim(self.machine.unclaimed(units))
            guard !self.machine.isDeposed(partition) else { return }
            let outcome = self.rack.perSlot
                ? try self.flushSlots(units, offset: message.offset)
                : try self.flushKeyspace(units[0], offset: message.offset, partitions: partitions)
            if case .applied = outcome {
                self.logger.notice("flushed the keys of the partition's slots (FLUSHALL)", metadata: ["partition": "\(partition)", "offset": "\(message.offset)"])
            }
            self.machine.ownTurnFinished(outcome, of: op, at: AppliedReplies.Position(partition: partition, offset: message.offset), units: units)
        } catch {
            self.doubt("redis failed during a flush", error: error)
        }
    }

    /// A flush on a standalone or Sentinel Redis: the keyspace a SCAN chunk at a time.
    private func flushKeyspace(_ unit: Unit, offset: Int64, partitions: Int) throws -> AppliedOffsets.Outcome {
        let (marker, owner) = (unit.markerKey(topic: self.settings.topic), unit.ownerKey(topic: self.settings.topic))
        guard let epoch = self.machine.owners[unit]?.epoch else { return .deposed }
        let previous = self.machine.lastSent[unit] ?? -1
        var cursor = "0"
        repeat {
            var request = RackPipelines.Requests()
            request.add(
                ["EVAL", FlushOps.standaloneScript, "2", marker, owner, String(epoch), String(offset), String(previous), cursor, String(unit.partition), String(partitions)],
                to: try self.redis.node(forKey: marker), as: .ownTurn
            )
            switch try self.redis.exchange(request)[0].1 {
            case .integer(-3): return .alreadyApplied
            case .integer(-2): return .deposed
            case .integer(-1): return .previousMissing
            case .bulkString(let next?): cursor = String(buffer: next)
            case let reply: throw Doubt(description: "a flush chunk answered \(reply)")
            }
        } while cursor != "0"
        return .applied(reply: .ok)
    }

    /// A flush on Redis Cluster: every slot of the partition emptied by a script of its own, on
    /// the node that owns it, all in one pipeline.
    private func flushSlots(_ units: [Unit], offset: Int64) throws -> AppliedOffsets.Outcome {
        var requests = RackPipelines.Requests()
        for unit in units {
            guard let epoch = self.machine.owners[unit]?.epoch else { return .deposed }
            let marker = unit.markerKey(topic: self.settings.topic)
            requests.add(
                ["EVAL", FlushOps.slotScript, "2", marker, unit.ownerKey(topic: self.settings.topic), String(epoch), String(offset), String(self.machine.lastSent[unit] ?? -1), String(unit.slot)],
                to: try self.redis.node(forKey: marker), as: .ownTurn
            )
        }
        var flushed = false
        for (_, reply) in try self.redis.exchange(requests) {
            switch reply {
            case .integer(0): flushed = true
            case .integer(-3): break
            case .integer(-2): return .deposed
            case .integer(-1): return .previousMissing
            default:
                if ApplierStateMachine.movesSlots(reply) { self.rack.slotsMoved() }
                throw Doubt(description: "a slot's flush answered \(reply)")
            }
        }
        return flushed ? .applied(reply: .ok) : .alreadyApplied
    }

    /// Reads the replies of the batch in flight, if any, for the machine to record.
    func finishInFlight() {
        guard let batch = self.inFlight.take() else { return }
        var replies: [(Entry, RESPValue)] = []
        do {
            for request in batch.requests { replies += try self.redis.receive(request) }
        } catch {
            if !self.machine.needsResync { self.doubt("redis failed during a batch", error: error) }
            return
        }
        self.machine.repliesRead(replies, messages: batch.messages)
        self.act()
        if !self.machine.needsResync { self.commitForMonitoring() }
    }

    // MARK: - Checkpoints and monitoring

    /// Adds the owed replies and the checkpoints due to a request (each checkpoint to the node
    /// of its key; replies to any node: a Redis Cluster forwards a PUBLISH to every node).
    func addCheckpointsAndPublishes(to requests: inout RackPipelines.Requests, force: Bool = false) throws {
        for (partition, offset) in self.machine.checkpointsDue(force: force) {
            let key = AppliedOffsets.checkpointKey(topic: self.settings.topic, partition: partition)
            try requests.add(["SET", key, String(offset)], to: self.redis.node(forKey: key), as: .checkpoint(partition))
        }
        if !self.publishes.isEmpty, let node = self.redis.connections.keys.first {
            for publish in self.publishes { requests.add(publish, to: node, as: .publish) }
        }
        self.publishes = []
    }

    /// Writes the earned checkpoints and owed replies now (the log is quiet); also notices,
    /// while idle, a Redis that restarted.
    func writeCheckpoints() throws {
        for node in self.redis.connections.keys { _ = try self.redis.sameConnection(to: node) }
        guard !self.machine.checkpoints.isEmpty || !self.publishes.isEmpty else { return }
        var requests = RackPipelines.Requests()
        try self.addCheckpointsAndPublishes(to: &requests, force: true)
        _ = try self.redis.exchange(requests)
        self.commitForMonitoring()
    }

    /// Kafka's committed offsets mirror the applier's progress, for lag tools; never read back.
    func commitForMonitoring() {
        guard ContinuousClock.now - self.lastCommit > .seconds(1), !self.machine.next.isEmpty else { return }
        self.lastCommit = .now
        let progress = self.machine.next.filter { !self.machine.loading.contains($0.key) }
        try? self.consumer.commit(progress.map { (self.settings.topic, $0.key, $0.value) }, async: true)
    }

    /// Publishes where each partition stands: where it applies, at once (read-your-writes
    /// reads it); the log's ends, and the lag gauges, when the partitions changed or every
    /// `logEndRefresh` (each is a librdkafka lookup under its locks: asked after every batch
    /// they were a tenth of the applier's time under load).
    func publish() {
        let topic = self.settings.topic
        var status = self.machine.status { self.logEnds.ends[$0] }
        let partitions = status.map(\.partition)
        guard partitions != self.logEnds.partitions || ContinuousClock.now - self.logEnds.read >= Self.logEndRefresh else {
            return self.applier.publish(status)
        }
        for index in status.indices { status[index].logEnd = self.consumer.cachedLogEnd(topic: topic, partition: status[index].partition) }
        self.applier.publish(status)
        self.applier.recordLag(status, gone: Set(self.logEnds.partitions).subtracting(partitions))
        self.logEnds = (partitions, Dictionary(uniqueKeysWithValues: status.compactMap { s in s.logEnd.map { (s.partition, $0) } }), .now)
    }

    /// How stale the log ends (and so the lag) `publish` shows may be.
    static let logEndRefresh = Duration.milliseconds(100)
}
