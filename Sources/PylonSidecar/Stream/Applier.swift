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

/// The applier's thread: owns the consumer and the connections to the rack's Redis nodes.
/// @unchecked: made by `start`, then handed to the thread once and touched only there (the
/// rebalance handler runs inside that thread's polls).
final class ApplierRun: @unchecked Sendable {
    let applier: Applier
    var consumer: KafkaConsumer!
    /// One connection per node that takes writes, opened by the last resync.
    var connections: [HostPort: BlockingRedisConnection] = [:]
    var sha = ""
    /// Assigned partitions and the next offset to apply in each.
    var next: [Int32: Int64] = [:]
    /// Where the next message sent to Redis must be in each assigned partition (ahead of `next`
    /// by what is in flight): which fetched messages and own writes go next.
    var cursor = LogCursor()
    /// Checkpoints earned by confirmed batches, written with the next batch.
    var checkpoints: [Int32: Int64] = [:]
    /// The batch sent to Redis whose replies are not read yet.
    var inFlight: InFlight?
    /// The offset of the last op sent under each marker since the last resync: the predecessor
    /// the script checks (see `AppliedOffsets.script`), across batches in flight.
    var lastSent: [Unit: Int64] = [:]
    /// This applier's claim on each marker it wrote under since its assignment (see
    /// `AppliedOffsets.ownerScript`); a marker is claimed before its first run.
    var owners: [Unit: AppliedOffsets.Ownership] = [:]
    /// Chunks of ops not yet whole (`OpChunk`), per partition.
    var chunks = OpChunk.Assembly()
    /// Partitions another applier claimed since: nothing is applied there until the next
    /// assignment, or until `reviveDeposed` finds the claim gone or stale.
    var deposed: Set<Int32> = []
    /// When each deposed partition was deposed.
    var deposedAt: [Int32: ContinuousClock.Instant] = [:]
    var lastRevivalCheck = ContinuousClock.now
    /// Replies owed to other sidecars (PUBLISH commands), sent with the next request.
    var publishes: [[ByteBuffer]] = []
    var needsResync = false
    var backoffMilliseconds: Int32 = 50
    var lastCommit = ContinuousClock.now
    var lastCheckpoints = ContinuousClock.now
    var lastConsumerError: String?
    var settings: Applier.Settings { self.applier.settings }
    var rack: RackRedis { self.applier.rack }
    var logger: Logger { self.applier.logger }

    struct Doubt: Error, CustomStringConvertible {
        let description: String
    }

    /// The ops sharing one marker: a partition's (standalone, Sentinel), or a partition's ops in
    /// one hash slot (Redis Cluster, where a script may only touch one slot).
    struct Unit: Hashable {
        var partition: Int32
        /// The slot, or -1 when the marker is the partition's.
        var slot: Int
    }

    func unit(of op: OpRecord, in partition: Int32) -> Unit {
        Unit(partition: partition, slot: self.rack.perSlot ? op.slot : -1)
    }

    func markerKey(_ unit: Unit) -> String {
        unit.slot < 0
            ? AppliedOffsets.markerKey(topic: self.settings.topic, partition: unit.partition)
            : AppliedOffsets.markerKey(topic: self.settings.topic, partition: unit.partition, slot: unit.slot)
    }

    func ownerKey(_ unit: Unit) -> String {
        unit.slot < 0
            ? AppliedOffsets.ownerKey(topic: self.settings.topic, partition: unit.partition)
            : AppliedOffsets.ownerKey(topic: self.settings.topic, partition: unit.partition, slot: unit.slot)
    }

    init(applier: Applier) throws {
        self.applier = applier
        // receive.message.max.bytes at its maximum: some brokers (noida-db) ignore fetch.max.bytes and
        // answer a catch-up fetch with the whole backlog at once.
        var defaults = [
            "isolation.level": "read_committed", "session.timeout.ms": "10000", "fetch.wait.max.ms": "100",
            "receive.message.max.bytes": "2147483647",
        ]
        // A snapshot loads inside an assignment, between two polls of the group: the group must
        // not take the partitions away meanwhile (another sidecar would load them too).
        if applier.settings.snapshot != nil { defaults["max.poll.interval.ms"] = "86400000" }
        // The consumer is made here, on the caller's thread, so bad properties fail `start`.
        self.consumer = try KafkaConsumer(
            brokers: applier.settings.brokers, groupID: applier.settings.groupID,
            properties: defaults.merging(applier.settings.properties) { $1 },
            onRebalance: { [unowned self] in self.rebalanced($0) }
        )
        try self.consumer.subscribe([applier.settings.topic])
        applier.ownWrites.attach(wake: { [consumer = self.consumer!] in consumer.wake() })
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
            // An own write handed over wakes the poll.
            let fetched = self.poll(timeoutMilliseconds: self.inFlight == nil ? 100 : 0)
            if self.needsResync { continue }  // a rebalance during the poll: its messages are re-read
            let batch = self.cursor.admit(fetched: fetched, own: self.applier.ownWrites.take())
            if batch.isEmpty {
                if self.inFlight != nil { self.finishInFlight() } else { try? self.writeCheckpoints() }
            } else {
                self.apply(batch)
            }
            self.publish()
            self.reviveDeposed()
        }
        self.applier.ownWrites.attach(wake: nil)
        self.finishInFlight()
        // The replies and checkpoints this applier owes go out before it leaves.
        try? self.writeCheckpoints()
        self.consumer.close()
        self.dropConnections()
    }

    // MARK: - Partitions

    func rebalanced(_ event: KafkaConsumer.Rebalance) -> [Int64] {
        // The batch in flight belongs to the old assignment: record it before the assignment changes.
        self.finishInFlight()
        self.lastSent = [:]
        self.chunks.removeAll()
        // A new assignment claims its markers anew (before their first run); a revocation ends the claims.
        self.owners = [:]
        self.deposed = []
        self.deposedAt = [:]
        switch event {
        case .assigned(let partitions):
            self.logger.info("partitions assigned to this sidecar's applier", metadata: ["partitions": "\(partitions.map(\.partition))"])
            self.next = [:]
            self.cursor.removeAll()
            do {
                try self.connectAll()
                let offsets = try self.startingOffsets(partitions.map(\.partition))
                self.needsResync = false
                return offsets
            } catch {
                // Fetch nothing yet (the log's end); the resync starts each partition properly.
                self.logger.warning("cannot read the checkpoints from redis yet", metadata: ["error": "\(error)"])
                for partition in partitions {
                    self.next[partition.partition] = KafkaConsumer.end
                    self.cursor.start(partition.partition, at: KafkaConsumer.end)
                }
                self.needsResync = true
                return partitions.map { _ in KafkaConsumer.end }
            }
        case .revoked(let partitions):
            self.logger.info("partitions revoked from this sidecar's applier", metadata: ["partitions": "\(partitions.map(\.partition))"])
            // Owed replies (their clients wait) and earned checkpoints go out before the partitions do.
            try? self.writeCheckpoints()
            self.next = [:]
            self.cursor.removeAll()
            self.checkpoints = [:]
            self.publish()
            return []
        }
    }

    /// Reads each partition's checkpoint from Redis; a partition Redis knows nothing of starts at
    /// the beginning of the log.
    func startingOffsets(_ partitions: [Int32]) throws -> [Int64] {
        var requests = NodeRequests()
        for partition in partitions {
            let key = AppliedOffsets.checkpointKey(topic: self.settings.topic, partition: partition)
            try requests.add(["GET", key], to: self.node(forKey: key), as: .checkpoint(partition))
        }
        var offsets: [Int32: Int64] = [:]
        for (entry, reply) in try self.exchange(requests) {
            if case .checkpoint(let partition) = entry, let offset = reply.string.flatMap({ Int64($0) }) { offsets[partition] = offset }
        }
        // A new or emptied Redis loads a snapshot of another rack rather than replay the log.
        let unknown = partitions.filter { offsets[$0] == nil && self.settings.catchUpOffsets[$0] == nil }
        if let snapshot = self.settings.snapshot, !unknown.isEmpty {
            offsets.merge(try self.loadSnapshot(unknown, from: snapshot)) { $1 }
        }
        return partitions.map { partition in
            let offset: Int64
            if let checkpoint = offsets[partition] {
                offset = checkpoint
            } else if let catchUp = self.settings.catchUpOffsets[partition] {
                self.logger.notice("this rack's redis has no record of the partition: starting at its catch-up offset", metadata: ["partition": "\(partition)", "offset": "\(catchUp)"])
                offset = catchUp
            } else {
                self.logger.notice("this rack's redis has no record of the partition: replaying the world's log from its start", metadata: ["partition": "\(partition)"])
                if let start = try? self.consumer.logStart(topic: self.settings.topic, partition: partition), start > 0 {
                    self.logger.error("the world's log no longer holds this partition's first ops (retention deleted them): this rack will miss them; catch it up from another rack's snapshot (snapshot-from)", metadata: [
                        "partition": "\(partition)", "logStart": "\(start)",
                    ])
                }
                self.applier.count(.replay)
                self.next[partition] = 0
                self.cursor.start(partition, at: KafkaConsumer.beginning)
                return KafkaConsumer.beginning
            }
            self.next[partition] = offset
            self.cursor.start(partition, at: offset)
            return offset
        }
    }

    /// Reconnects and restarts every partition from its checkpoint. The claims held are
    /// re-asserted: that restores one a Redis lost (it came back empty) and finds the ones
    /// another applier of the rack took meanwhile.
    func resync() -> Bool {
        do {
            try self.connectAll()
            let partitions = self.next.keys.sorted()
            let offsets = try self.startingOffsets(partitions)
            try self.assertClaims()
            try self.consumer.assign(zip(partitions, offsets).map { (self.settings.topic, $0, $1) })
            self.checkpoints = [:]
            self.lastSent = [:]
            self.chunks.removeAll()
            self.needsResync = false
            self.backoffMilliseconds = 50
            if !partitions.isEmpty { self.logger.info("applier resynced from the checkpoints in redis", metadata: ["offsets": "\(self.next)"]) }
            return true
        } catch {
            self.logger.warning("applier waiting for redis", metadata: ["error": "\(error)"])
            self.dropConnections()
            return false
        }
    }

    /// Claims `units` (before their first run since the assignment).
    func claim(_ units: some Sequence<Unit>) throws {
        try self.own(units.map { ($0, "claim", Int(Date().timeIntervalSince1970 * 1000)) })
    }

    /// Re-asserts every claim held (after a resync).
    func assertClaims() throws {
        try self.own(self.owners.map { ($0.key, "keep", $0.value.epoch) })
    }

    private func own(_ requests: [(unit: Unit, mode: String, value: Int)]) throws {
        guard !requests.isEmpty else { return }
        var pipeline = NodeRequests()
        for (unit, mode, value) in requests {
            let key = self.ownerKey(unit)
            try pipeline.add(["EVAL", AppliedOffsets.ownerScript, "1", key, mode, String(value)], to: self.node(forKey: self.markerKey(unit)), as: .claim(unit))
        }
        for (entry, reply) in try self.exchange(pipeline) {
            guard case .claim(let unit) = entry, case .integer(let epoch) = reply else {
                throw Doubt(description: "claiming a partition: redis answered \(reply)")
            }
            if let held = self.owners[unit], held.epoch != epoch {
                self.depose(unit.partition, epoch: epoch)
            } else {
                self.owners[unit] = .init(key: self.ownerKey(unit), epoch: epoch)
            }
        }
    }

    /// Stops applying a partition another applier of the rack claimed (a newer epoch): this one
    /// was deposed and has not heard of the rebalance yet.
    func depose(_ partition: Int32, epoch: Int) {
        guard self.deposed.insert(partition).inserted else { return }
        self.deposedAt[partition] = .now
        self.logger.warning("another applier of the rack claimed the partition: applying nothing there until the group assigns it again", metadata: [
            "partition": "\(partition)", "epoch": "\(epoch)",
        ])
        self.applier.count(.deposed)
    }

    /// How long a deposed applier that the group still assigns the partition to waits before it
    /// claims the partition again: longer than a rebalance takes to revoke it (the session
    /// timeout), so a rightful new owner is not disturbed, yet a partition whose claimant is
    /// gone (a zombie, a sidecar stopped for good) is applied again without a rebalance.
    static let deposedGrace = Duration.seconds(30)

    /// Claims again, once a second at most, the deposed partitions whose claim has vanished from
    /// Redis (its owner key is gone) or that the group has still assigned here after
    /// `deposedGrace`. Safe whatever the other claimant does: the markers in Redis decide what
    /// is applied, so ownership passing back and forth never applies an op twice.
    func reviveDeposed() {
        guard !self.deposed.isEmpty, ContinuousClock.now - self.lastRevivalCheck > .seconds(1) else { return }
        self.lastRevivalCheck = .now
        var requests = NodeRequests()
        let units = self.owners.keys.filter { self.deposed.contains($0.partition) }
        do {
            for unit in units { try requests.add(["EXISTS", self.ownerKey(unit)], to: self.node(forKey: self.markerKey(unit)), as: .claim(unit)) }
            let vanished = Set(try self.exchange(requests).compactMap { entry, reply -> Int32? in
                guard case .claim(let unit) = entry, reply == .integer(0) else { return nil }
                return unit.partition
            })
            let revived = self.deposed.filter { vanished.contains($0) || ContinuousClock.now - (self.deposedAt[$0] ?? .now) > Self.deposedGrace }
            guard !revived.isEmpty else { return }
            self.logger.notice("claiming deposed partitions again (their claim vanished, or no rebalance took them away)", metadata: ["partitions": "\(revived.sorted())"])
            for partition in revived {
                self.deposed.remove(partition)
                self.deposedAt[partition] = nil
                for unit in self.owners.keys where unit.partition == partition { self.owners[unit] = nil }
            }
            // Another applier may have moved the partition on: start again from the checkpoints.
            self.needsResync = true
        } catch {
            self.doubt("redis failed while checking deposed partitions", error: error)
        }
    }

    // MARK: - Redis

    /// What a reply in a pipeline answers.
    enum Entry {
        case checkpoint(Int32)
        case publish
        case claim(Unit)
        /// A request of an op applied on its own: a flush (`FlushOps`), a large op's transaction.
        case ownTurn
        /// A script applying these ops (their offsets) under one marker.
        case run(Unit, offsets: [Int64])
    }

    /// Requests for several nodes, each node's in one pipeline.
    struct NodeRequests {
        var byNode: [HostPort: (bytes: ByteBuffer, entries: [Entry])] = [:]

        mutating func add(_ command: [String], to node: HostPort, as entry: Entry) {
            self.add(command.map { ByteBuffer(string: $0) }, to: node, as: entry)
        }

        mutating func add(_ command: [ByteBuffer], to node: HostPort, as entry: Entry) {
            self.byNode[node, default: (ByteBuffer(), [])].bytes.writeRESPCommand(command)
            self.byNode[node]!.entries.append(entry)
        }

        mutating func add(written: (inout ByteBuffer) -> Void, to node: HostPort, as entry: Entry) {
            written(&self.byNode[node, default: (ByteBuffer(), [])].bytes)
            self.byNode[node]!.entries.append(entry)
        }
    }

    /// One node's pipeline, sent: its replies are still to be read.
    struct Sent {
        var connection: BlockingRedisConnection
        var ticket: BlockingRedisConnection.Ticket
        var entries: [Entry]
    }

    /// Sends each node its pipeline; the replies are read by `receive`.
    func transmit(_ requests: NodeRequests) throws -> [Sent] {
        try requests.byNode.map { node, request in
            let connection = try self.sameConnection(to: node)
            do {
                return Sent(connection: connection, ticket: try connection.send(request.bytes, replies: request.entries.count), entries: request.entries)
            } catch {
                self.dropConnections()
                throw error
            }
        }
    }

    /// Reads a sent pipeline's replies, with what each answers. A failure (Redis closed the
    /// connection, or did not answer within the Redis timeout) closes every connection: a late
    /// reply must not be mistaken for another request's.
    func receive(_ sent: Sent) throws -> [(Entry, RESPValue)] {
        do { return zip(sent.entries, try sent.connection.receive(sent.ticket)).map { ($0, $1) } } catch {
            self.dropConnections()
            throw error
        }
    }

    /// Sends and waits.
    func exchange(_ requests: NodeRequests) throws -> [(Entry, RESPValue)] {
        try self.transmit(requests).flatMap { try self.receive($0) }
    }

    /// The node that takes writes for `key`.
    func node(forKey key: String) throws -> HostPort {
        guard let node = self.rack.node(HashSlot.of(key)) else { throw Doubt(description: "the rack's redis node for \(key) is not known yet") }
        return node
    }

    /// Connects to every node that takes writes (keeping live connections to the same nodes);
    /// only a resync or an assignment may do this, as a new connection may reach a restarted
    /// (or emptied) Redis.
    func connectAll() throws {
        let nodes = self.rack.nodes()
        guard !nodes.isEmpty else { throw Doubt(description: "the rack's redis master is not known yet") }
        for (node, connection) in self.connections where !nodes.contains(node) || !connection.isOpen {
            connection.close()
            self.connections[node] = nil
        }
        for node in nodes where self.connections[node] == nil {
            let client = try BlockingRedisConnection(to: node, timeout: self.settings.redisTimeout)
            let reply = try client.exchange(RedisRequest(strings: ["SCRIPT", "LOAD", AppliedOffsets.script]).raw, replies: 1)[0]
            guard let sha = reply.string, sha.count == 40 else {
                client.close()
                throw Doubt(description: "SCRIPT LOAD answered \(reply)")
            }
            self.sha = sha
            self.connections[node] = client
        }
    }

    /// The connection to `node` opened by the last resync; a closed or missing one (Redis
    /// restarted, a failover moved the master, a slot moved) calls for a resync.
    func sameConnection(to node: HostPort) throws -> BlockingRedisConnection {
        guard let client = self.connections[node], client.isOpen else {
            self.needsResync = true
            throw Doubt(description: "no open connection to redis at \(node)")
        }
        return client
    }

    func dropConnections() {
        for client in self.connections.values { client.close() }
        self.connections = [:]
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
        /// Each node's replies, and what each answers.
        var requests: [Sent]
        /// Each partition's messages in log order.
        var messages: [Int32: [Message]]
    }

    /// A message of a batch: unreadable ones are passed where they stand; `replyTo` names the
    /// sidecar waiting for the op's reply.
    struct Message {
        var offset: Int64
        var kind: Kind
        var replyTo: Origin?

        enum Kind {
            /// An op, applied in a run.
            case op
            /// Not a readable op (a newer format): passed where it stands, counted.
            case unreadable
            /// A chunk of an op not yet whole (`OpChunk`): passed, the op applied at its last.
            case chunk
        }
    }

    /// Who waits for an op's reply.
    struct Origin {
        var sidecar: String
        var rack: String

        /// The origin of an op that waits for its reply; nil when none does.
        init?(replyTo op: OpRecord) {
            guard op.wantsReply else { return nil }
            self.sidecar = op.originSidecar
            self.rack = op.originRack
        }
    }

    /// Sends a batch: the earned checkpoints and owed replies, then the ops under each marker
    /// in runs of `opsPerScript`, each node's in one pipeline. The replies are read by
    /// `finishInFlight` after the next batch was sent, so Redis does not wait for the applier
    /// between batches.
    ///
    /// It stops before an op that needs a turn of its own (`OwnTurn`: a flush, or more arguments
    /// than a script takes) and returns it with where it is in the batch.
    func send(_ batch: ArraySlice<KafkaMessage>) -> (sent: InFlight?, stop: OwnTurn?) {
        var ops: [Unit: [AppliedOffsets.PendingOp]] = [:]
        var order: [Unit] = []
        var messages: [Int32: [Message]] = [:]
        var stop: OwnTurn?
        for (index, message) in zip(batch.indices, batch) where !self.deposed.contains(message.partition) {
            do {
                var value = message.value
                if OpChunk.isChunk(value) {
                    guard let whole = self.chunks.add(try OpChunk(decoding: value), partition: message.partition, offset: message.offset) else {
                        messages[message.partition, default: []].append(Message(offset: message.offset, kind: .chunk))
                        continue
                    }
                    value = whole
                }
                let op = try OpRecord(decoding: value)
                if FlushOps.target(of: op) != nil || op.arguments.count > AppliedOffsets.maxScriptArguments {
                    stop = OwnTurn(index: index, message: message, op: op)
                    break
                }
                let unit = self.unit(of: op, in: message.partition)
                if ops[unit] == nil { order.append(unit) }
                ops[unit, default: []].append(.init(op: op, offset: message.offset))
                messages[message.partition, default: []].append(Message(offset: message.offset, kind: .op, replyTo: Origin(replyTo: op)))
            } catch {
                messages[message.partition, default: []].append(Message(offset: message.offset, kind: .unreadable))
                self.logger.error("skipping a message of the log that is not a readable op", metadata: [
                    "partition": "\(message.partition)", "offset": "\(message.offset)", "error": "\(error)",
                ])
            }
        }
        do {
            try self.claim(order.filter { self.owners[$0] == nil })
            var requests = NodeRequests()
            try self.addCheckpointsAndPublishes(to: &requests)
            for unit in order where !self.deposed.contains(unit.partition) {
                guard let owner = self.owners[unit], let ops = ops[unit] else { continue }
                let marker = self.markerKey(unit)
                let node = try self.node(forKey: marker)
                for start in stride(from: 0, to: ops.count, by: Self.opsPerScript) {
                    let run = ops[start..<min(start + Self.opsPerScript, ops.count)]
                    let previous = self.lastSent[unit] ?? -1
                    requests.add(written: { AppliedOffsets.writeRequest(run, marker: marker, owner: owner, previous: previous, sha: self.sha, into: &$0) }, to: node, as: .run(unit, offsets: run.map(\.offset)))
                    self.lastSent[unit] = run.last!.offset
                }
            }
            return (InFlight(requests: try self.transmit(requests), messages: messages), stop)
        } catch {
            self.doubt("redis failed during a batch", error: error)
            return (nil, nil)
        }
    }

    /// An op applied on its own, once everything before it was (see `send`).
    struct OwnTurn {
        /// Where it is in the batch.
        var index: Int
        var message: KafkaMessage
        var op: OpRecord
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
            guard !self.needsResync else { return }
            if let target = FlushOps.target(of: stop.op) {
                self.flush(stop.message, partitions: target.partitions, op: stop.op)
            } else {
                self.applyAlone(stop.message, op: stop.op)
            }
            guard !self.needsResync else { return }
            rest = rest[(stop.index + 1)...]
        }
    }

    /// Applies an op with more arguments than a script can pass on (Lua's stack): in a
    /// transaction watching its marker and owner key, so it is fenced and applied exactly once
    /// like any run — the marker is set in the same MULTI/EXEC as the op.
    func applyAlone(_ message: KafkaMessage, op: OpRecord) {
        let partition = message.partition
        let unit = self.unit(of: op, in: partition)
        let position = AppliedReplies.Position(partition: partition, offset: message.offset)
        do {
            if self.owners[unit] == nil { try self.claim([unit]) }
            guard !self.deposed.contains(partition), let epoch = self.owners[unit]?.epoch else { return }
            let (marker, owner) = (self.markerKey(unit), self.ownerKey(unit))
            let node = try self.node(forKey: marker)
            var check = NodeRequests()
            check.add(["WATCH", marker, owner], to: node, as: .ownTurn)
            check.add(["MGET", owner, marker], to: node, as: .ownTurn)
            let stored = try self.exchange(check)[1].1.array ?? []
            let applied = stored.count == 2 ? stored[1].string.flatMap { Int64($0) } ?? -1 : -1
            let outcome: AppliedOffsets.Outcome
            if stored.first?.string.flatMap({ Int($0) }) != epoch {
                outcome = .deposed
            } else if applied >= message.offset {
                outcome = .alreadyApplied
            } else if (self.lastSent[unit] ?? -1) > applied {
                outcome = .previousMissing
            } else {
                var transaction = NodeRequests()
                transaction.add(["MULTI"], to: node, as: .ownTurn)
                transaction.add(["SET", marker, String(message.offset)], to: node, as: .ownTurn)
                transaction.add(op.arguments, to: node, as: .ownTurn)
                transaction.add(["EXEC"], to: node, as: .ownTurn)
                let replies = try self.exchange(transaction).map(\.1)
                switch replies[3] {
                case .array(let results?) where results.count == 2:
                    if case .error(let error) = results[1] { outcome = .rejected(error: String(buffer: error)) } else { outcome = .applied(reply: results[1]) }
                case .error(let error) where String(buffer: error).hasPrefix("EXECABORT") && !Self.isTransient(replies[2]):
                    // Refused when queued (the same on every rack): passed, as a rejected op.
                    outcome = .rejected(error: replies[2].string ?? "EXECABORT")
                    _ = try self.exchange({ var r = NodeRequests(); r.add(["EVAL", AppliedOffsets.markScript, "2", marker, owner, String(epoch), String(message.offset)], to: node, as: .ownTurn); return r }())
                default:
                    throw Doubt(description: "a transaction applying op \(position) answered \(replies[3]) (\(replies[2]))")
                }
            }
            try self.finish(outcome, of: op, at: position, units: [unit])
        } catch {
            self.doubt("redis failed applying a large op", error: error)
        }
    }

    /// Whether a queued command's reply is an error that may pass (OOM, LOADING, a moved slot…).
    static func isTransient(_ reply: RESPValue) -> Bool {
        guard case .error(let message) = reply else { return false }
        return ["OOM", "LOADING", "READONLY", "MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "BUSY", "MASTERDOWN"].contains { message.readableBytesView.starts(with: $0.utf8) }
    }

    /// Records what an op applied on its own (a large op, a flush under each of `units`' markers)
    /// did, as `record` does for runs.
    private func finish(_ outcome: AppliedOffsets.Outcome, of op: OpRecord, at position: AppliedReplies.Position, units: [Unit]) throws {
        let origin = Origin(replyTo: op)
        switch outcome {
        case .applied(let reply):
            self.applier.count(.applied)
            if let origin { self.handOver(reply.encoded, for: position, to: origin) }
        case .rejected(let error):
            self.applier.count(.rejected)
            self.logger.warning("op rejected by redis", metadata: ["partition": "\(position.partition)", "offset": "\(position.offset)", "error": "\(error)"])
            if let origin { self.handOver(.respError(error), for: position, to: origin) }
        case .alreadyApplied:
            self.applier.count(.duplicate)
        case .deposed:
            self.depose(position.partition, epoch: units.first.flatMap { self.owners[$0]?.epoch } ?? 0)
            return
        case .previousMissing:
            throw Doubt(description: "the op before \(position) did not apply")
        }
        for unit in units { self.lastSent[unit] = position.offset }
        self.advance(position.partition, past: position.offset)
    }

    /// Applies a flush op (`FlushOps`): deletes the user keys of the partition's slots, fenced
    /// and marked like any run, and hands over its reply.
    func flush(_ message: KafkaMessage, partitions: Int, op: OpRecord) {
        let partition = message.partition
        let units = self.rack.perSlot
            ? (0..<HashSlot.count).filter { OpRecord.partition(ofSlot: $0, count: partitions) == partition }.map { Unit(partition: partition, slot: $0) }
            : [Unit(partition: partition, slot: -1)]
        do {
            try self.claim(units.filter { self.owners[$0] == nil })
            guard !self.deposed.contains(partition) else { return }
            let outcome = self.rack.perSlot
                ? try self.flushSlots(units, offset: message.offset)
                : try self.flushKeyspace(units[0], offset: message.offset, partitions: partitions)
            if case .applied = outcome {
                self.logger.notice("flushed the keys of the partition's slots (FLUSHALL)", metadata: ["partition": "\(partition)", "offset": "\(message.offset)"])
            }
            try self.finish(outcome, of: op, at: AppliedReplies.Position(partition: partition, offset: message.offset), units: units)
        } catch {
            self.doubt("redis failed during a flush", error: error)
        }
    }

    /// A flush on a standalone or Sentinel Redis: the keyspace a SCAN chunk at a time.
    private func flushKeyspace(_ unit: Unit, offset: Int64, partitions: Int) throws -> AppliedOffsets.Outcome {
        let (marker, owner) = (self.markerKey(unit), self.ownerKey(unit))
        guard let epoch = self.owners[unit]?.epoch else { return .deposed }
        let previous = self.lastSent[unit] ?? -1
        var cursor = "0"
        repeat {
            var request = NodeRequests()
            request.add(
                ["EVAL", FlushOps.standaloneScript, "2", marker, owner, String(epoch), String(offset), String(previous), cursor, String(unit.partition), String(partitions)],
                to: try self.node(forKey: marker), as: .ownTurn
            )
            switch try self.exchange(request)[0].1 {
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
        var requests = NodeRequests()
        for unit in units {
            guard let epoch = self.owners[unit]?.epoch else { return .deposed }
            let marker = self.markerKey(unit)
            requests.add(
                ["EVAL", FlushOps.slotScript, "2", marker, self.ownerKey(unit), String(epoch), String(offset), String(self.lastSent[unit] ?? -1), String(unit.slot)],
                to: try self.node(forKey: marker), as: .ownTurn
            )
        }
        var flushed = false
        for (_, reply) in try self.exchange(requests) {
            switch reply {
            case .integer(0): flushed = true
            case .integer(-3): break
            case .integer(-2): return .deposed
            case .integer(-1): return .previousMissing
            case .error(let message):
                if ["MOVED", "ASK", "CLUSTERDOWN"].contains(where: { message.readableBytesView.starts(with: $0.utf8) }) { self.rack.slotsMoved() }
                throw Doubt(description: "a slot's flush answered \(reply)")
            default: throw Doubt(description: "a slot's flush answered \(reply)")
            }
        }
        return flushed ? .applied(reply: .ok) : .alreadyApplied
    }

    /// Reads the replies of the batch in flight, if any, and records each partition's progress
    /// op by op up to its first doubt. After a doubt nothing in flight is recorded: the resync
    /// replays it.
    func finishInFlight() {
        guard let batch = self.inFlight.take() else { return }
        var replies: [(Entry, RESPValue)] = []
        do {
            for request in batch.requests { replies += try self.receive(request) }
        } catch {
            if !self.needsResync { self.doubt("redis failed during a batch", error: error) }
            return
        }
        guard !self.needsResync else { return }
        var outcomes: [Int32: [Int64: AppliedOffsets.Outcome]] = [:]
        var stopped: RESPValue?
        for (entry, reply) in replies {
            switch entry {
            case .checkpoint where reply.isError:
                self.doubt("redis refused a checkpoint", error: Doubt(description: "\(reply)"))
                return
            case .run(let unit, let offsets) where !self.deposed.contains(unit.partition):
                let tried = (try? AppliedOffsets.outcomes(of: reply)) ?? []
                if tried == [.deposed] {
                    self.depose(unit.partition, epoch: self.owners[unit]?.epoch ?? 0)
                } else if tried.count == offsets.count, tried.first != .previousMissing {
                    for (offset, outcome) in zip(offsets, tried) { outcomes[unit.partition, default: [:]][offset] = outcome }
                } else {
                    // A script error (OOM, LOADING, MOVED…) or a run whose predecessor did not
                    // apply: the later runs under its marker did not apply either.
                    if case .error(let message) = reply, ["MOVED", "ASK", "CLUSTERDOWN"].contains(where: { message.readableBytesView.starts(with: $0.utf8) }) {
                        self.rack.slotsMoved()
                    }
                    stopped = stopped ?? reply
                }
            default:
                break
            }
        }
        var counts = [ApplierStats.Outcome: Int]()
        for (partition, messages) in batch.messages {
            self.record(outcomes[partition] ?? [:], partition: partition, messages: messages, counts: &counts)
        }
        for (outcome, n) in counts { self.applier.count(outcome, n) }
        if let stopped {
            self.doubt("redis could not apply a run of ops now", error: Doubt(description: "\(stopped)".prefix(300).description))
        } else {
            self.commitForMonitoring()
        }
    }

    /// Advances past each of a partition's messages whose outcome is known (unreadable ones
    /// count as passed), stopping at the first readable op without an outcome. Replies go to
    /// the sidecars that wait for them.
    func record(_ outcomes: [Int64: AppliedOffsets.Outcome], partition: Int32, messages: [Message], counts: inout [ApplierStats.Outcome: Int]) {
        for message in messages {
            switch message.kind {
            case .chunk:
                self.advance(partition, past: message.offset)
                continue
            case .unreadable:
                counts[.undecodable, default: 0] += 1
                self.advance(partition, past: message.offset)
                continue
            case .op:
                break
            }
            guard let outcome = outcomes[message.offset] else { return }
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
    /// channel with the next request; an op of another rack's sidecar has its reply kept in
    /// case that sidecar asks for it (its own Redis is away: `PYLON REPLY`).
    func handOver(_ reply: ByteBuffer, for position: AppliedReplies.Position, to origin: Origin) {
        if origin.rack != self.settings.rackName {
            self.applier.recent.keep(reply, for: position)
        } else if origin.sidecar == self.settings.sidecarName {
            self.applier.replies.deliver(reply, for: position)
        } else {
            self.publishes.append([ByteBuffer(string: "PUBLISH"), ByteBuffer(string: AppliedReplies.channel(for: origin.sidecar)), AppliedReplies.message(reply, for: position)])
        }
    }

    /// The checkpoint never passes the first chunk of an op not yet whole: a restart must read it again.
    func advance(_ partition: Int32, past offset: Int64) {
        self.next[partition] = offset + 1
        self.checkpoints[partition] = min(offset + 1, self.chunks.oldestUnfinished(in: partition, next: offset + 1) ?? .max)
    }

    func doubt(_ what: String, error: Error) {
        self.logger.warning("\(what); resyncing from the checkpoints", metadata: ["error": "\(error)"])
        self.applier.count(.resync)
        self.needsResync = true
    }

    // MARK: - Checkpoints and monitoring

    /// How often a busy applier writes its checkpoints. They only say where a restart reads
    /// from (the markers decide what is applied, so an older one costs a few skipped ops), yet
    /// written with every batch they were as many Redis commands as the ops themselves when
    /// batches are small (one op per partition under many clients).
    static let checkpointInterval = Duration.milliseconds(10)

    /// Adds the owed replies and, `checkpointInterval` after the last ones (or when `force`d),
    /// the earned checkpoints to a request (each checkpoint to the node of its key; replies to
    /// any node: a Redis Cluster forwards a PUBLISH to every node).
    func addCheckpointsAndPublishes(to requests: inout NodeRequests, force: Bool = false) throws {
        let checkpointsDue = force || ContinuousClock.now - self.lastCheckpoints >= Self.checkpointInterval
        for (partition, offset) in self.checkpoints where checkpointsDue {
            let key = AppliedOffsets.checkpointKey(topic: self.settings.topic, partition: partition)
            try requests.add(["SET", key, String(offset)], to: self.node(forKey: key), as: .checkpoint(partition))
        }
        if !self.publishes.isEmpty, let node = self.connections.keys.first {
            for publish in self.publishes { requests.add(publish, to: node, as: .publish) }
        }
        // Sent checkpoints are not sent again; if they fail, the resync re-reads them anyway.
        if checkpointsDue {
            self.checkpoints = [:]
            self.lastCheckpoints = .now
        }
        self.publishes = []
    }

    /// Writes the earned checkpoints and owed replies now (the log is quiet); also notices,
    /// while idle, a Redis that restarted.
    func writeCheckpoints() throws {
        for node in self.connections.keys { _ = try self.sameConnection(to: node) }
        guard !self.checkpoints.isEmpty || !self.publishes.isEmpty else { return }
        var requests = NodeRequests()
        try self.addCheckpointsAndPublishes(to: &requests, force: true)
        _ = try self.exchange(requests)
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
