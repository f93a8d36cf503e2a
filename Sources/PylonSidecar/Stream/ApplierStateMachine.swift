import NIOCore
import Shared

/// The applier's rules, free of I/O: what it knows of each partition it applies, and what each
/// event means for it.
///
/// `ApplierRun` drives it. The driver polls Kafka and talks to Redis; it reports each thing that
/// happened as an event (assigned, revoked, polled, checkpoints read, claims answered, replies
/// read, a Redis error, a tick of the clock, a snapshot loaded), asks the machine what to send
/// (the runs of a batch with their predecessors, the claims to make, the checkpoints due), and
/// carries out the actions the machine queues (hand over a reply, count, report, resync). So
/// every rule — replays skipped, a run after a failed predecessor refused, a deposed applier
/// writing nothing, a lost claim restored — is tested as a table of events without servers
/// (`ApplierStateMachineTests`), and the driver holds no decision of its own.
struct ApplierStateMachine {
    struct Settings: Sendable {
        var topic: String
        /// Markers per hash slot (Redis Cluster, where a script may touch one slot) rather than per partition.
        var perSlot: Bool
        /// Where a partition Redis has no checkpoint for starts, when not at the log's start.
        var catchUpOffsets: [Int32: Int64] = [:]
        /// Whether a partition Redis has no checkpoint for is loaded from a snapshot.
        var snapshot = false
    }

    /// The ops sharing one marker: a partition's (standalone, Sentinel), or a partition's ops in
    /// one hash slot (Redis Cluster).
    struct Unit: Hashable {
        var partition: Int32
        /// The slot, or -1 when the marker is the partition's.
        var slot: Int

        func markerKey(topic: String) -> String {
            self.slot < 0
                ? AppliedOffsets.markerKey(topic: topic, partition: self.partition)
                : AppliedOffsets.markerKey(topic: topic, partition: self.partition, slot: self.slot)
        }

        func ownerKey(topic: String) -> String {
            self.slot < 0
                ? AppliedOffsets.ownerKey(topic: topic, partition: self.partition)
                : AppliedOffsets.ownerKey(topic: topic, partition: self.partition, slot: self.slot)
        }
    }

    /// What a reply in a pipeline to Redis answers.
    enum Entry {
        case checkpoint(Int32)
        case publish
        case claim(Unit)
        /// A request of an op applied on its own (a flush, a large op's transaction), or of the snapshot loader.
        case ownTurn
        /// A script applying these ops (their offsets) under one marker.
        case run(Unit, offsets: [Int64])
    }

    /// A message of a batch sent to Redis, as its replies are recorded.
    struct Message: Equatable {
        var offset: Int64
        var kind: Kind
        /// Who waits for the op's reply.
        var replyTo: Origin?

        enum Kind: Equatable {
            /// An op, applied in a run.
            case op
            /// Not a readable op (a newer format): passed where it stands, counted.
            case unreadable
            /// A chunk of an op not yet whole (`OpChunk`): passed, the op applied at its last.
            case chunk
        }
    }

    /// Who waits for an op's reply.
    struct Origin: Equatable {
        var sidecar: String
        var rack: String

        /// The origin of an op that waits for its reply; nil when none does.
        init?(replyTo op: OpRecord) {
            guard op.wantsReply else { return nil }
            self.sidecar = op.originSidecar
            self.rack = op.originRack
        }
    }

    /// An op applied on its own, once everything before it was: a flush, or more arguments than
    /// a script takes.
    struct OwnTurn {
        /// Where it is in the batch.
        var index: Int
        var message: KafkaMessage
        var op: OpRecord
    }

    /// A polled batch, sorted for Redis: its ops under their markers, in the order of first
    /// appearance, up to an op that needs a turn of its own.
    struct Plan {
        var units: [Unit] = []
        var ops: [Unit: [AppliedOffsets.PendingOp]] = [:]
        /// Each partition's messages in log order, as their replies are recorded.
        var messages: [Int32: [Message]] = [:]
        var stop: OwnTurn?
    }

    /// A run of ops to send as one script call, with what the script checks: the claim and the
    /// offset of the op sent before it under the same marker.
    struct Run {
        var unit: Unit
        var ops: ArraySlice<AppliedOffsets.PendingOp>
        var owner: AppliedOffsets.Ownership
        var previous: Int64
    }

    /// What the driver does for the machine, in order.
    enum Action: Equatable {
        /// Give an op's reply to whoever waits for it (in-process, published, or kept).
        case handOver(ByteBuffer, position: AppliedReplies.Position, to: Origin)
        case count(ApplierStats.Outcome, Int)
        /// Redis rejected an op (the same on every rack): passed, logged.
        case reportRejected(AppliedReplies.Position, error: String)
        /// A message that is not a readable op: passed, logged.
        case reportUnreadable(AppliedReplies.Position, error: String)
        /// Another applier of the rack claimed the partition (a newer epoch; nil when its snapshot load found it).
        case reportDeposed(partition: Int32, epoch: Int?)
        /// Claimed again after being deposed: the claim vanished, or no rebalance came.
        case reportRevived([Int32])
        /// Something is in doubt: reconnect, re-read the checkpoints, restart every partition there.
        case resync(reason: String)
        /// Redis Cluster answered MOVED/ASK/CLUSTERDOWN: read the slot map again.
        case refreshSlots
    }

    /// Where a partition starts after a resync.
    enum Start: Equatable {
        /// Its checkpoint in this rack's Redis.
        case checkpoint(Int64)
        /// Redis has none; the configured catch-up offset (Redis was loaded there by other means).
        case catchUp(Int64)
        /// Redis has none; loaded from a snapshot of another rack first.
        case snapshot
        /// Redis has none; the world's log from its start.
        case replay
    }

    /// How long a deposed applier that the group still assigns the partition to waits before it
    /// claims the partition again: longer than a rebalance takes to revoke it (the session
    /// timeout), so a rightful new owner is not disturbed, yet a partition whose claimant is
    /// gone (a zombie, a sidecar stopped for good) is applied again without a rebalance.
    static let deposedGrace = Duration.seconds(30)

    /// Ops per script call: large enough that Lua's call cost is shared, small enough that
    /// Redis is not blocked for long (about a tenth of a millisecond).
    static let opsPerScript = 100

    /// How often a busy applier writes its checkpoints. They only say where a restart reads
    /// from (the markers decide what is applied, so an older one costs a few skipped ops), yet
    /// written with every batch they were as many Redis commands as the ops themselves when
    /// batches are small (one op per partition under many clients).
    static let checkpointInterval = Duration.milliseconds(10)

    let settings: Settings
    /// Assigned partitions and the next offset to apply in each.
    private(set) var next: [Int32: Int64] = [:]
    /// Where the next message sent to Redis must be in each assigned partition (ahead of `next`
    /// by what is in flight): which fetched messages and own writes go next.
    private var cursor = LogCursor()
    /// Checkpoints earned by confirmed batches, written with the next batch.
    private(set) var checkpoints: [Int32: Int64] = [:]
    private var lastCheckpoints: ContinuousClock.Instant
    /// The offset of the last op sent under each marker since the last resync: the predecessor
    /// the script checks (see `AppliedOffsets.script`), across batches in flight.
    private(set) var lastSent: [Unit: Int64] = [:]
    /// This applier's claim on each marker it wrote under since its assignment (see
    /// `AppliedOffsets.ownerScript`); a marker is claimed before its first run.
    private(set) var owners: [Unit: AppliedOffsets.Ownership] = [:]
    /// Chunks of ops not yet whole (`OpChunk`), per partition.
    private var chunks = OpChunk.Assembly()
    /// Partitions another applier claimed, and when: nothing is applied there until the next
    /// assignment, or until a revival check finds the claim gone or stale.
    private(set) var deposed: [Int32: ContinuousClock.Instant] = [:]
    private var lastRevivalCheck: ContinuousClock.Instant
    /// Rebalances the consumer reported during a poll, handled by the driver after it.
    private var rebalances: [KafkaConsumer.Rebalance] = []
    /// Partitions being loaded from a snapshot: assigned here, not read from the log until loaded.
    private(set) var loading: Set<Int32> = []
    /// Whether the next step is a resync.
    private(set) var needsResync = false
    private var actions: [Action] = []

    init(settings: Settings, now: ContinuousClock.Instant = .now) {
        self.settings = settings
        self.lastCheckpoints = now
        self.lastRevivalCheck = now
    }

    /// The actions queued since the last call, in order.
    mutating func takeActions() -> [Action] {
        defer { self.actions = [] }
        return self.actions
    }

    func unit(of op: OpRecord, in partition: Int32) -> Unit {
        Unit(partition: partition, slot: self.settings.perSlot ? op.slot : -1)
    }

    func isDeposed(_ partition: Int32) -> Bool { self.deposed[partition] != nil }

    // MARK: - Rebalances

    /// The consumer's rebalance callback: records the event for the driver, which handles it
    /// once the poll returns (nothing is fetched before its resync assigns each partition its start).
    mutating func record(_ rebalance: KafkaConsumer.Rebalance) {
        self.rebalances.append(rebalance)
    }

    mutating func takeRebalances() -> [KafkaConsumer.Rebalance] {
        defer { self.rebalances = [] }
        return self.rebalances
    }

    /// The group gave this applier `partitions` (the driver read what was in flight first):
    /// claims start anew, and a resync finds each partition's start.
    mutating func assigned(_ partitions: [Int32]) {
        self.endAssignment()
        for partition in partitions { self.next[partition] = KafkaConsumer.end }
        self.needsResync = true
    }

    /// The group took the partitions away (the driver read what was in flight and wrote the
    /// checkpoints and replies owed first).
    mutating func revoked() {
        self.endAssignment()
        self.checkpoints = [:]
    }

    private mutating func endAssignment() {
        self.next = [:]
        self.loading = []
        self.cursor.removeAll()
        self.lastSent = [:]
        self.chunks.removeAll()
        self.owners = [:]
        self.deposed = [:]
    }

    // MARK: - Starting

    /// Where `partition` starts, given its checkpoint in this rack's Redis (nil when Redis has none).
    func start(of partition: Int32, checkpoint: Int64?) -> Start {
        if let checkpoint { return .checkpoint(checkpoint) }
        if let offset = self.settings.catchUpOffsets[partition] { return .catchUp(offset) }
        return self.settings.snapshot ? .snapshot : .replay
    }

    /// The claims to assert again at a resync: that restores one a Redis lost (it came back
    /// empty) and finds the ones another applier of the rack took meanwhile.
    var heldClaims: [(unit: Unit, epoch: Int)] { self.owners.map { ($0.key, $0.value.epoch) } }

    /// The driver reconnected, asserted the claims held, and assigned each partition its start
    /// (an offset, or `KafkaConsumer.beginning` for a replay): what was sent before is forgotten.
    /// A partition without a start is being loaded from a snapshot: it takes no message until
    /// `snapshotLoaded`.
    mutating func resynced(at starts: [Int32: Int64]) {
        self.cursor.removeAll()
        self.loading = Set(self.next.keys.filter { starts[$0] == nil })
        for partition in self.loading { self.next[partition] = 0 }
        for (partition, offset) in starts {
            self.next[partition] = max(offset, 0)
            self.cursor.start(partition, at: offset)
            if offset == KafkaConsumer.beginning { self.count(.replay) }
        }
        self.checkpoints = [:]
        self.lastSent = [:]
        self.chunks.removeAll()
        self.needsResync = false
    }

    /// The snapshot load is done: the loaded partitions' checkpoints are in Redis, and a resync
    /// starts them there.
    mutating func snapshotLoaded() {
        self.needsResync = true
    }

    /// The snapshot load stopped because another sidecar of the rack claimed its partitions
    /// (`LoadFence`): they are deposed here, as if a claim of the applier's were lost.
    mutating func loadDeposed(_ partitions: [Int32], now: ContinuousClock.Instant = .now) {
        for partition in partitions where self.loading.contains(partition) { self.depose(partition, epoch: nil, now: now) }
    }

    /// Redis, Kafka or a check failed: everything in flight is in doubt.
    mutating func doubt(_ reason: String) {
        self.needsResync = true
        self.count(.resync)
        self.actions.append(.resync(reason: reason))
    }

    // MARK: - Claims

    /// Of `units`, those without a claim yet (claimed before their first run).
    func unclaimed(_ units: [Unit]) -> [Unit] {
        units.filter { self.owners[$0] == nil }
    }

    /// Redis answered a claim (a new one, or one asserted again) with the epoch now in the owner
    /// key: another epoch than the one held means another applier claimed the partition since.
    mutating func claimed(_ unit: Unit, epoch: Int, now: ContinuousClock.Instant = .now) {
        if let held = self.owners[unit], held.epoch != epoch {
            self.depose(unit.partition, epoch: epoch, now: now)
        } else {
            self.owners[unit] = .init(key: unit.ownerKey(topic: self.settings.topic), epoch: epoch)
        }
    }

    private mutating func depose(_ partition: Int32, epoch: Int?, now: ContinuousClock.Instant) {
        guard self.deposed[partition] == nil else { return }
        self.deposed[partition] = now
        self.count(.deposed)
        self.actions.append(.reportDeposed(partition: partition, epoch: epoch))
    }

    /// While partitions are deposed, once a second: the markers whose owner keys the driver
    /// checks (`ownerKeysChecked`).
    mutating func revivalCheck(now: ContinuousClock.Instant = .now) -> [Unit]? {
        guard !self.deposed.isEmpty, now - self.lastRevivalCheck > .seconds(1) else { return nil }
        self.lastRevivalCheck = now
        return self.owners.keys.filter { self.deposed[$0.partition] != nil }
    }

    /// The owner keys checked: a deposed partition whose claim vanished from Redis, or that the
    /// group has still assigned here after `deposedGrace`, is claimed again after a resync.
    /// Safe whatever the other claimant does: the markers decide what is applied, so ownership
    /// passing back and forth never applies an op twice.
    mutating func ownerKeysChecked(vanished: [Unit], now: ContinuousClock.Instant = .now) {
        let gone = Set(vanished.map(\.partition))
        let revived = self.deposed.filter { gone.contains($0.key) || now - $0.value > Self.deposedGrace }.keys.sorted()
        guard !revived.isEmpty else { return }
        for partition in revived {
            self.deposed[partition] = nil
            for unit in self.owners.keys where unit.partition == partition { self.owners[unit] = nil }
        }
        self.actions.append(.reportRevived(revived))
        // Another applier may have moved the partition on: start again from the checkpoints.
        self.needsResync = true
    }

    // MARK: - Batches

    /// The fetched messages and own writes to send next, in order (`LogCursor`).
    mutating func admit(fetched: [KafkaMessage], own: [KafkaMessage]) -> [KafkaMessage] {
        self.cursor.admit(fetched: fetched, own: own)
    }

    /// Whether `admit` would take a fetched message at this position (not one applied already).
    func admits(_ partition: Int32, offset: Int64) -> Bool {
        self.cursor.admits(partition, offset: offset)
    }

    /// Sorts a polled batch under its markers, assembling chunked ops; deposed partitions' messages are left out.
    mutating func plan(_ batch: ArraySlice<KafkaMessage>) -> Plan {
        var plan = Plan()
        for (index, message) in zip(batch.indices, batch) where self.deposed[message.partition] == nil {
            do {
                var value = message.value
                if OpChunk.isChunk(value) {
                    guard let whole = self.chunks.add(try OpChunk(decoding: value), partition: message.partition, offset: message.offset) else {
                        plan.messages[message.partition, default: []].append(Message(offset: message.offset, kind: .chunk))
                        continue
                    }
                    value = whole
                }
                let op = try OpRecord(decoding: value)
                if FlushOps.target(of: op) != nil || op.arguments.count > AppliedOffsets.maxScriptArguments {
                    plan.stop = OwnTurn(index: index, message: message, op: op)
                    break
                }
                let unit = self.unit(of: op, in: message.partition)
                if plan.ops[unit] == nil { plan.units.append(unit) }
                plan.ops[unit, default: []].append(.init(op: op, offset: message.offset))
                plan.messages[message.partition, default: []].append(Message(offset: message.offset, kind: .op, replyTo: Origin(replyTo: op)))
            } catch {
                plan.messages[message.partition, default: []].append(Message(offset: message.offset, kind: .unreadable))
                self.actions.append(.reportUnreadable(.init(partition: message.partition, offset: message.offset), error: "\(error)"))
            }
        }
        return plan
    }

    /// The runs of a plan to send, once its markers are claimed (a plan holds no deposed
    /// partition's ops), each naming the run sent before it under its marker.
    mutating func runs(of plan: Plan) -> [Run] {
        var runs: [Run] = []
        for unit in plan.units {
            guard let owner = self.owners[unit], let ops = plan.ops[unit] else { continue }
            for start in stride(from: 0, to: ops.count, by: Self.opsPerScript) {
                let run = ops[start..<min(start + Self.opsPerScript, ops.count)]
                runs.append(Run(unit: unit, ops: run, owner: owner, previous: self.lastSent[unit] ?? -1))
                self.lastSent[unit] = run.last!.offset
            }
        }
        return runs
    }

    /// The replies of a batch sent to Redis were read: each partition's progress is recorded op
    /// by op up to its first doubt. After a doubt nothing in flight is recorded: the resync
    /// replays it.
    mutating func repliesRead(_ replies: [(Entry, RESPValue)], messages: [Int32: [Message]]) {
        guard !self.needsResync else { return }
        var outcomes: [Int32: [Int64: AppliedOffsets.Outcome]] = [:]
        var stopped: RESPValue?
        for (entry, reply) in replies {
            switch entry {
            case .checkpoint where reply.isError:
                self.doubt("redis refused a checkpoint: \(reply)")
                return
            case .run(let unit, let offsets) where self.deposed[unit.partition] == nil:
                let tried = (try? AppliedOffsets.outcomes(of: reply)) ?? []
                if tried == [.deposed] {
                    self.depose(unit.partition, epoch: self.owners[unit]?.epoch ?? 0, now: .now)
                } else if tried.count == offsets.count, tried.first != .previousMissing {
                    for (offset, outcome) in zip(offsets, tried) { outcomes[unit.partition, default: [:]][offset] = outcome }
                } else {
                    // A script error (OOM, LOADING, MOVED…) or a run whose predecessor did not
                    // apply: the later runs under its marker did not apply either.
                    if Self.movesSlots(reply) { self.actions.append(.refreshSlots) }
                    stopped = stopped ?? reply
                }
            default:
                break
            }
        }
        var counts = [ApplierStats.Outcome: Int]()
        for (partition, messages) in messages.sorted(by: { $0.key < $1.key }) {
            self.record(outcomes[partition] ?? [:], partition: partition, messages: messages, counts: &counts)
        }
        for outcome in ApplierStats.Outcome.allCases { if let n = counts[outcome] { self.count(outcome, n) } }
        if let stopped { self.doubt("redis could not apply a run of ops now: \("\(stopped)".prefix(300))") }
    }

    /// Advances past each of a partition's messages whose outcome is known (unreadable ones
    /// count as passed), stopping at the first readable op without an outcome.
    private mutating func record(_ outcomes: [Int64: AppliedOffsets.Outcome], partition: Int32, messages: [Message], counts: inout [ApplierStats.Outcome: Int]) {
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
                if let origin = message.replyTo { self.actions.append(.handOver(reply.encoded, position: position, to: origin)) }
            case .alreadyApplied:
                counts[.duplicate, default: 0] += 1
            case .rejected(let error):
                counts[.rejected, default: 0] += 1
                self.actions.append(.reportRejected(position, error: error))
                if let origin = message.replyTo { self.actions.append(.handOver(.respError(error), position: position, to: origin)) }
            case .previousMissing, .deposed:
                return
            }
            self.advance(partition, past: message.offset)
        }
    }

    // MARK: - Ops applied on their own

    /// The markers a flush op of `partition` writes under: the partition's, or on Redis Cluster
    /// every slot's of the partition.
    func flushUnits(_ partition: Int32, partitions: Int) -> [Unit] {
        guard self.settings.perSlot else { return [Unit(partition: partition, slot: -1)] }
        return (0..<HashSlot.count).filter { OpRecord.partition(ofSlot: $0, count: partitions) == partition }.map { Unit(partition: partition, slot: $0) }
    }

    /// What applying an op on its own (in a transaction watching its marker and owner key) would
    /// find, from what they hold: nil when it is to be applied.
    func ownTurnCheck(_ unit: Unit, offset: Int64, ownerEpoch: Int?, marker: Int64) -> AppliedOffsets.Outcome? {
        if ownerEpoch == nil || ownerEpoch != self.owners[unit]?.epoch { return .deposed }
        if marker >= offset { return .alreadyApplied }
        if (self.lastSent[unit] ?? -1) > marker { return .previousMissing }
        return nil
    }

    /// What an op applied on its own (under each of `units`' markers) did, recorded as for runs.
    mutating func ownTurnFinished(_ outcome: AppliedOffsets.Outcome, of op: OpRecord, at position: AppliedReplies.Position, units: [Unit]) {
        let origin = Origin(replyTo: op)
        switch outcome {
        case .applied(let reply):
            self.count(.applied)
            if let origin { self.actions.append(.handOver(reply.encoded, position: position, to: origin)) }
        case .rejected(let error):
            self.count(.rejected)
            self.actions.append(.reportRejected(position, error: error))
            if let origin { self.actions.append(.handOver(.respError(error), position: position, to: origin)) }
        case .alreadyApplied:
            self.count(.duplicate)
        case .deposed:
            self.depose(position.partition, epoch: units.first.flatMap { self.owners[$0]?.epoch } ?? 0, now: .now)
            return
        case .previousMissing:
            self.doubt("the op before \(position) did not apply")
            return
        }
        for unit in units { self.lastSent[unit] = position.offset }
        self.advance(position.partition, past: position.offset)
    }

    // MARK: - Progress

    /// The checkpoint never passes the first chunk of an op not yet whole: a restart must read it again.
    private mutating func advance(_ partition: Int32, past offset: Int64) {
        self.next[partition] = offset + 1
        self.checkpoints[partition] = min(offset + 1, self.chunks.oldestUnfinished(in: partition, next: offset + 1) ?? .max)
    }

    /// The earned checkpoints to send, `checkpointInterval` after the last ones (or when
    /// `force`d); sent ones are not sent again (if they fail, the resync re-reads them anyway).
    mutating func checkpointsDue(force: Bool = false, now: ContinuousClock.Instant = .now) -> [Int32: Int64] {
        guard force || now - self.lastCheckpoints >= Self.checkpointInterval else { return [:] }
        self.lastCheckpoints = now
        defer { self.checkpoints = [:] }
        return self.checkpoints
    }

    /// The partitions this applier has, as `PYLON INFO` and `/metrics` show them.
    func status(logEnd: (Int32) -> Int64?) -> [Applier.PartitionStatus] {
        self.next.keys.sorted().map { partition in
            Applier.PartitionStatus(partition: partition, deposed: self.deposed[partition] != nil, next: self.next[partition]!, logEnd: logEnd(partition))
        }
    }

    private mutating func count(_ outcome: ApplierStats.Outcome, _ n: Int = 1) {
        self.actions.append(.count(outcome, n))
    }

    /// Whether Redis Cluster's reply says the slot map changed.
    static func movesSlots(_ reply: RESPValue) -> Bool {
        guard case .error(let message) = reply else { return false }
        return ["MOVED", "ASK", "CLUSTERDOWN"].contains { message.readableBytesView.starts(with: $0.utf8) }
    }
}
