import NIOCore
import Shared
import Testing

@testable import PylonSidecar

/// The applier's rules, as tables of events played into `ApplierStateMachine` without servers.
/// A case is what the driver would report (assignments, checkpoints read, polls, the epochs the
/// owner keys answer, Redis's replies to each batch, the clock) and what must come of it: the
/// runs sent with their predecessors, where each partition stands, the checkpoints earned, the
/// deposed partitions, and the actions the driver is asked to carry out.
@Suite("Applier state machine")
struct ApplierStateMachineTests {
    /// A message of the log in a case: an op (an INCR of `key`, `wantsReply` when its sidecar waits).
    struct Op: Sendable {
        var partition: Int32
        var offset: Int64
        var key = "k"
        var wantsReply = false
        /// Not an op this sidecar can read.
        var garbage = false
        var flush = false
    }

    /// What the driver reports, in order.
    enum Event: Sendable {
        case assigned([Int32])
        case revoked
        /// A resync: the connections are open again, these checkpoints read (a partition
        /// missing from them has none), the claims held asserted (answered by the owner keys).
        case resync(checkpoints: [Int32: Int64])
        /// The snapshot load is done: it wrote these checkpoints, and the resync that follows reads them.
        case snapshotLoaded(checkpoints: [Int32: Int64])
        /// The snapshot load stopped: another sidecar of the rack claimed its partitions (`LoadFence`).
        case loadDeposed
        /// Another applier claims the partition: its owner key holds this epoch from now on.
        case rival(Int32, epoch: Int)
        /// Redis lost the owner key (emptied, or a client deleted it).
        case ownerKeyLost(Int32)
        /// A poll: the messages are planned, unclaimed markers claimed, the runs sent.
        case poll([Op])
        /// Redis's replies to the oldest batch in flight, one per run sent (after the reply to
        /// the checkpoint written with the batch, if given).
        case replies([RESPValue], checkpoint: RESPValue? = nil)
        /// Redis failed (a dropped connection, a timeout).
        case redisFailed
        /// The clock moves on; the driver checks the deposed partitions' owner keys if asked.
        case wait(seconds: Int)
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var settings = ApplierStateMachine.Settings(topic: "t", perSlot: false)
        var events: [Event]
        /// The runs sent, as "partition:first-last after previous (epoch)".
        var sent: [String]? = nil
        var next: [Int32: Int64]? = nil
        var checkpoints: [Int32: Int64]? = nil
        var deposed: Set<Int32> = []
        /// Partitions being loaded from a snapshot.
        var loading: Set<Int32> = []
        var needsResync = false
        /// Actions the driver must have been asked to carry out (others may come too).
        var actions: [ApplierStateMachine.Action] = []
        /// Kinds of action that must not have come (`kind`).
        var never: [String] = []
        var testDescription: String { self.name }
    }

    /// The script's reply for a run: `skipped` ops applied before, then each applied op's reply.
    static func ran(skipped: Int = 0, _ replies: RESPValue...) -> RESPValue { .array([.integer(skipped)] + replies) }
    static let predecessorMissing = RESPValue.array([.integer(-1)])
    static let deposedReply = RESPValue.array([.integer(-2)])
    static func ops(_ partition: Int32, _ offsets: ClosedRange<Int64>) -> [Op] { offsets.map { Op(partition: partition, offset: $0) } }
    static let origin = ApplierStateMachine.Origin(replyTo: OpRecord(arguments: [], originRack: "r", originSidecar: "s", timestampMilliseconds: 0, slot: 0, wantsReply: true))!

    static let cases: [Case] = [
        // Starting.
        Case(
            name: "a partition starts at its checkpoint",
            events: [.assigned([0, 1]), .resync(checkpoints: [0: 5, 1: 9])],
            next: [0: 5, 1: 9]
        ),
        Case(
            name: "an emptied Redis (no checkpoint) replays the log from its start",
            events: [.assigned([0]), .resync(checkpoints: [:]), .poll(ops(0, 0...1)), .replies([ran(.integer(1), .integer(2))])],
            sent: ["0:0-1 after -1 (1)"], next: [0: 2], checkpoints: [0: 2], actions: [.count(.replay, 1), .count(.applied, 2)]
        ),
        Case(
            name: "catch-up offsets: a partition Redis knows nothing of starts at its offset, not at the log's start",
            settings: .init(topic: "t", perSlot: false, catchUpOffsets: [0: 100]),
            events: [.assigned([0, 1]), .resync(checkpoints: [1: 7])],
            next: [0: 100, 1: 7], never: ["count(replay)"]
        ),
        Case(
            name: "catch-up offsets never override a checkpoint",
            settings: .init(topic: "t", perSlot: false, catchUpOffsets: [0: 100]),
            events: [.assigned([0]), .resync(checkpoints: [0: 120])],
            next: [0: 120]
        ),
        Case(
            name: "with a snapshot configured, a partition without checkpoint is loaded, then starts where the snapshot stands",
            settings: .init(topic: "t", perSlot: false, snapshot: true),
            events: [.assigned([0, 1]), .resync(checkpoints: [:]), .snapshotLoaded(checkpoints: [0: 40, 1: 3])],
            next: [0: 40, 1: 3], never: ["count(replay)"]
        ),
        Case(
            name: "a partition being loaded from a snapshot takes no message; the others are applied meanwhile",
            settings: .init(topic: "t", perSlot: false, snapshot: true),
            events: [.assigned([0, 1]), .resync(checkpoints: [1: 7]), .poll(ops(0, 0...1) + ops(1, 7...7)), .replies([ran(.integer(1))])],
            sent: ["1:7-7 after -1 (1)"], next: [0: 0, 1: 8], loading: [0]
        ),
        Case(
            name: "once loaded, the partition is read from where the snapshot stands",
            settings: .init(topic: "t", perSlot: false, snapshot: true),
            events: [.assigned([0, 1]), .resync(checkpoints: [1: 7]), .snapshotLoaded(checkpoints: [0: 40, 1: 7]), .poll(ops(0, 39...40))],
            sent: ["0:40-40 after -1 (1)"], next: [0: 40, 1: 7], loading: []
        ),
        Case(
            name: "a snapshot load that another sidecar's claim stopped leaves its partitions deposed; the others are applied",
            settings: .init(topic: "t", perSlot: false, snapshot: true),
            events: [.assigned([0, 1]), .resync(checkpoints: [1: 7]), .loadDeposed, .poll(ops(0, 0...0) + ops(1, 7...7)), .replies([ran(.integer(1))])],
            sent: ["1:7-7 after -1 (1)"], next: [0: 0, 1: 8], deposed: [0], loading: [0], actions: [.reportDeposed(partition: 0, epoch: nil)]
        ),
        Case(
            name: "a deposed load's partition still assigned after the grace starts again: from the checkpoint the other sidecar's load wrote",
            settings: .init(topic: "t", perSlot: false, snapshot: true),
            events: [.assigned([0]), .resync(checkpoints: [:]), .loadDeposed, .wait(seconds: 31), .resync(checkpoints: [0: 40]), .poll(ops(0, 40...40))],
            sent: ["0:40-40 after -1 (1)"], next: [0: 40], deposed: [], loading: [], actions: [.reportRevived([0])]
        ),
        // Applying.
        Case(
            name: "replays are skipped: ops at or below the marker count as duplicates and are passed",
            events: [.assigned([0]), .resync(checkpoints: [0: 5]), .poll(ops(0, 5...7)), .replies([ran(skipped: 2, .integer(3))])],
            sent: ["0:5-7 after -1 (1)"], next: [0: 8], checkpoints: [0: 8],
            actions: [.count(.applied, 1), .count(.duplicate, 2)]
        ),
        Case(
            name: "a run names the run sent before it under its marker, across batches in flight",
            events: [.assigned([0]), .resync(checkpoints: [0: 5]), .poll(ops(0, 5...6)), .poll(ops(0, 7...7))],
            sent: ["0:5-6 after -1 (1)", "0:7-7 after 6 (1)"]
        ),
        Case(
            name: "a batch is cut into runs of opsPerScript, each after the one before",
            events: [.assigned([0]), .resync(checkpoints: [0: 0]), .poll(ops(0, 0...249))],
            sent: ["0:0-99 after -1 (1)", "0:100-199 after 99 (1)", "0:200-249 after 199 (1)"]
        ),
        Case(
            name: "a run after a failed predecessor is refused: nothing past the failure is recorded, and the applier resyncs",
            events: [
                .assigned([0]), .resync(checkpoints: [0: 5]), .poll(ops(0, 5...6)), .poll(ops(0, 7...7)),
                .replies([.error("OOM command not allowed when used memory > 'maxmemory'")]), .replies([predecessorMissing]),
            ],
            next: [0: 5], checkpoints: [:], needsResync: true, never: ["count(applied)"]
        ),
        Case(
            name: "after a doubt, the replies still in flight are not recorded: the resync replays them",
            events: [
                .assigned([0]), .resync(checkpoints: [0: 5]), .poll(ops(0, 5...5)), .poll(ops(0, 6...6)),
                .replies([.error("LOADING Redis is loading the dataset in memory")]), .replies([ran(.integer(1))]),
            ],
            next: [0: 5], needsResync: true, never: ["count(applied)"]
        ),
        Case(
            name: "after a resync the runs start over from the checkpoint, with no predecessor",
            events: [
                .assigned([0]), .resync(checkpoints: [0: 5]), .poll(ops(0, 5...6)), .redisFailed,
                .resync(checkpoints: [0: 5]), .poll(ops(0, 5...6)), .replies([ran(.integer(1), .integer(2))]),
            ],
            sent: ["0:5-6 after -1 (1)", "0:5-6 after -1 (1)"], next: [0: 7], actions: [.count(.resync, 1)]
        ),
        Case(
            name: "a rejected op (WRONGTYPE) is passed, counted, and its error handed to the client that waits",
            events: [
                .assigned([0]), .resync(checkpoints: [0: 5]), .poll([Op(partition: 0, offset: 5, wantsReply: true)]),
                .replies([ran(.error("WRONGTYPE Operation against a key holding the wrong kind of value"))]),
            ],
            next: [0: 6],
            actions: [
                .reportRejected(.init(partition: 0, offset: 5), error: "WRONGTYPE Operation against a key holding the wrong kind of value"),
                .handOver(.respError("WRONGTYPE Operation against a key holding the wrong kind of value"), position: .init(partition: 0, offset: 5), to: origin),
                .count(.rejected, 1),
            ]
        ),
        Case(
            name: "an applied op's real reply is handed to the client that waits",
            events: [.assigned([0]), .resync(checkpoints: [0: 5]), .poll([Op(partition: 0, offset: 5, wantsReply: true)]), .replies([ran(.integer(42))])],
            actions: [.handOver(RESPValue.integer(42).encoded, position: .init(partition: 0, offset: 5), to: origin)]
        ),
        Case(
            name: "an unreadable message is passed where it stands",
            events: [.assigned([0]), .resync(checkpoints: [0: 5]), .poll([Op(partition: 0, offset: 5, garbage: true)] + ops(0, 6...6)), .replies([ran(.integer(1))])],
            sent: ["0:6-6 after -1 (1)"], next: [0: 7], actions: [.count(.applied, 1), .count(.undecodable, 1)]
        ),
        Case(
            name: "a refused checkpoint is a doubt: nothing of the batch is recorded",
            events: [
                .assigned([0]), .resync(checkpoints: [0: 5]), .poll(ops(0, 5...5)), .replies([ran(.integer(1))]), .poll(ops(0, 6...6)),
                .replies([ran(.integer(2))], checkpoint: .error("READONLY You can't write against a read only replica.")),
            ],
            next: [0: 6], needsResync: true
        ),
        Case(
            name: "a moved slot re-reads the slot map and resyncs",
            settings: .init(topic: "t", perSlot: true),
            events: [.assigned([0]), .resync(checkpoints: [0: 5]), .poll(ops(0, 5...5)), .replies([.error("MOVED 3168 127.0.0.1:7001")])],
            next: [0: 5], needsResync: true, actions: [.refreshSlots]
        ),
        Case(
            name: "an op that needs a turn of its own (a flush) stops the plan: the ops before it are sent first",
            events: [.assigned([0]), .resync(checkpoints: [0: 5]), .poll(ops(0, 5...6) + [Op(partition: 0, offset: 7, flush: true)] + ops(0, 8...8))],
            sent: ["0:5-6 after -1 (1)"]
        ),
        // Fencing.
        Case(
            name: "a deposed applier writes nothing: its later polls send no run of the partition",
            events: [
                .assigned([0, 1]), .resync(checkpoints: [0: 5, 1: 0]), .poll(ops(0, 5...5) + ops(1, 0...0)),
                .replies([deposedReply, ran(.integer(1))]), .poll(ops(0, 6...7) + ops(1, 1...1)),
            ],
            sent: ["0:5-5 after -1 (1)", "1:0-0 after -1 (1)", "1:1-1 after 0 (1)"], next: [0: 5, 1: 1], deposed: [0],
            actions: [.reportDeposed(partition: 0, epoch: 1), .count(.deposed, 1)]
        ),
        Case(
            name: "a claim another applier took meanwhile is found at the resync: deposed",
            events: [.assigned([0]), .resync(checkpoints: [0: 5]), .poll(ops(0, 5...5)), .replies([ran(.integer(1))]), .rival(0, epoch: 2), .redisFailed, .resync(checkpoints: [0: 6]), .poll(ops(0, 6...6))],
            sent: ["0:5-5 after -1 (1)"], deposed: [0], actions: [.reportDeposed(partition: 0, epoch: 2)]
        ),
        Case(
            name: "a claim lost to an emptied Redis is restored by the resync, not taken for a rival's",
            events: [.assigned([0]), .resync(checkpoints: [0: 5]), .poll(ops(0, 5...5)), .replies([ran(.integer(1))]), .ownerKeyLost(0), .redisFailed, .resync(checkpoints: [:]), .poll(ops(0, 0...0))],
            sent: ["0:5-5 after -1 (1)", "0:0-0 after -1 (1)"], next: [0: 0], deposed: [], never: ["reportDeposed"]
        ),
        Case(
            name: "a deposed partition whose claim vanished is claimed again and applied",
            events: [
                .assigned([0]), .resync(checkpoints: [0: 5]), .poll(ops(0, 5...5)), .rival(0, epoch: 2), .replies([deposedReply]),
                .ownerKeyLost(0), .wait(seconds: 2), .resync(checkpoints: [0: 5]), .poll(ops(0, 5...5)), .replies([ran(.integer(1))]),
            ],
            next: [0: 6], deposed: [], actions: [.reportDeposed(partition: 0, epoch: 1), .reportRevived([0])]
        ),
        Case(
            name: "a deposed partition whose rival is still there is left alone within the grace",
            events: [.assigned([0]), .resync(checkpoints: [0: 5]), .poll(ops(0, 5...5)), .rival(0, epoch: 2), .replies([deposedReply]), .wait(seconds: 2), .wait(seconds: 2)],
            deposed: [0], never: ["reportRevived"]
        ),
        Case(
            name: "a deposed partition no rebalance took away recovers after the grace (its rival is gone)",
            events: [
                .assigned([0]), .resync(checkpoints: [0: 5]), .poll(ops(0, 5...5)), .rival(0, epoch: 2), .replies([deposedReply]),
                .wait(seconds: 31), .resync(checkpoints: [0: 5]), .poll(ops(0, 5...5)),
            ],
            sent: ["0:5-5 after -1 (1)", "0:5-5 after -1 (3)"], deposed: [], actions: [.reportRevived([0])]
        ),
        // Rebalances.
        Case(
            name: "an assignment starts every claim anew and needs a resync before anything is sent",
            events: [.assigned([0]), .resync(checkpoints: [0: 5]), .poll(ops(0, 5...5)), .rival(0, epoch: 2), .replies([deposedReply]), .revoked, .assigned([0])],
            deposed: [], needsResync: true
        ),
        Case(
            name: "a revoked partition takes no message",
            events: [.assigned([0]), .resync(checkpoints: [0: 5]), .revoked, .poll(ops(0, 5...5))],
            sent: [], next: [:]
        ),
    ]

    /// Plays a case's events into a machine, as the driver would, with a Redis reduced to its
    /// owner keys.
    struct Player {
        var machine: ApplierStateMachine
        var now = ContinuousClock.now
        /// What each partition's owner key holds (nil: no key), as `AppliedOffsets.ownerScript`
        /// keeps it: a claim takes the next epoch, an asserted claim writes its own back only
        /// over an older one.
        var ownerKeys: [Int32: Int] = [:]
        var inFlight: [(entries: [ApplierStateMachine.Entry], messages: [Int32: [ApplierStateMachine.Message]])] = []
        var sent: [String] = []
        var actions: [ApplierStateMachine.Action] = []

        init(_ settings: ApplierStateMachine.Settings) {
            self.machine = ApplierStateMachine(settings: settings, now: self.now)
        }

        mutating func play(_ event: Event) {
            switch event {
            case .assigned(let partitions):
                // The callback only records; the partitions start at the resync, and nothing
                // fetched before it (of an earlier assignment) is taken.
                self.machine.record(.assigned(partitions.map { ("t", $0) }))
                #expect(self.machine.takeRebalances().count == 1)
                self.inFlight = []
                self.machine.assigned(partitions)
                let early = partitions.map { KafkaMessage(topic: "t", partition: $0, offset: 0, key: nil, value: ByteBuffer()) }
                #expect(self.machine.admit(fetched: early, own: []).isEmpty)
            case .revoked:
                self.inFlight = []
                self.machine.revoked()
            case .resync(let checkpoints):
                self.inFlight = []
                var starts: [Int32: Int64] = [:]
                for partition in self.machine.next.keys {
                    switch self.machine.start(of: partition, checkpoint: checkpoints[partition]) {
                    case .checkpoint(let offset), .catchUp(let offset): starts[partition] = offset
                    case .replay: starts[partition] = KafkaConsumer.beginning
                    case .snapshot: break  // loaded meanwhile, on a thread of its own
                    }
                }
                // The claims held are asserted ("keep"): a lost owner key is written back.
                for (unit, epoch) in self.machine.heldClaims {
                    if epoch > self.ownerKeys[unit.partition] ?? 0 { self.ownerKeys[unit.partition] = epoch }
                    self.machine.claimed(unit, epoch: self.ownerKeys[unit.partition]!, now: self.now)
                }
                self.machine.resynced(at: starts)
            case .snapshotLoaded(let checkpoints):
                #expect(!self.machine.loading.isEmpty)
                self.machine.snapshotLoaded()
                #expect(self.machine.needsResync)
                self.play(.resync(checkpoints: checkpoints))
            case .loadDeposed:
                self.machine.loadDeposed(self.machine.loading.sorted(), now: self.now)
            case .rival(let partition, let epoch):
                self.ownerKeys[partition] = epoch
            case .ownerKeyLost(let partition):
                self.ownerKeys[partition] = nil
            case .poll(let ops):
                let plan = self.machine.plan(self.machine.admit(fetched: ops.map(Self.message), own: [])[...])
                for unit in self.machine.unclaimed(plan.units) {
                    self.ownerKeys[unit.partition] = (self.ownerKeys[unit.partition] ?? 0) + 1
                    self.machine.claimed(unit, epoch: self.ownerKeys[unit.partition]!, now: self.now)
                }
                let runs = self.machine.runs(of: plan)
                self.sent += runs.map { "\($0.unit.partition):\($0.ops.first!.offset)-\($0.ops.last!.offset) after \($0.previous) (\($0.owner.epoch))" }
                self.inFlight.append((runs.map { .run($0.unit, offsets: $0.ops.map(\.offset)) }, plan.messages))
            case .replies(let replies, let checkpoint):
                let batch = self.inFlight.removeFirst()
                let entries: [ApplierStateMachine.Entry] = (checkpoint == nil ? [] : [.checkpoint(0)]) + batch.entries
                self.machine.repliesRead(Array(zip(entries, (checkpoint.map { [$0] } ?? []) + replies)), messages: batch.messages)
            case .redisFailed:
                self.inFlight = []
                self.machine.doubt("redis went away")
            case .wait(let seconds):
                self.now += .seconds(seconds)
                if let units = self.machine.revivalCheck(now: self.now) {
                    self.machine.ownerKeysChecked(vanished: units.filter { self.ownerKeys[$0.partition] == nil }, now: self.now)
                }
            }
            self.actions += self.machine.takeActions()
        }

        static func message(_ op: Op) -> KafkaMessage {
            let arguments = op.flush ? [FlushOps.command, String(op.partition), "1"] : ["INCR", op.key]
            let record = OpRecord(arguments: arguments.map { ByteBuffer(string: $0) }, originRack: "r", originSidecar: "s", timestampMilliseconds: 0, slot: 0, wantsReply: op.wantsReply)
            return KafkaMessage(topic: "t", partition: op.partition, offset: op.offset, key: nil, value: op.garbage ? ByteBuffer(string: "not an op") : record.encoded)
        }
    }

    @Test(arguments: Self.cases)
    func rule(_ rule: Case) {
        var player = Player(rule.settings)
        for event in rule.events { player.play(event) }
        if let sent = rule.sent { #expect(player.sent == sent) }
        if let next = rule.next { #expect(player.machine.next == next) }
        if let checkpoints = rule.checkpoints { #expect(player.machine.checkpoints == checkpoints) }
        #expect(Set(player.machine.deposed.keys) == rule.deposed)
        #expect(player.machine.loading == rule.loading)
        #expect(player.machine.needsResync == rule.needsResync)
        for action in rule.actions { #expect(player.actions.contains(action), "\(action) in \(player.actions)") }
        for kind in rule.never { #expect(!player.actions.contains { $0.kind == kind }, "no \(kind) in \(player.actions)") }
    }

    @Test("an op waits for the last of its chunks, and no checkpoint passes its first until then")
    func chunkedOp() throws {
        var machine = ApplierStateMachine(settings: .init(topic: "t", perSlot: false))
        machine.assigned([0])
        machine.resynced(at: [0: 10])
        let record = OpRecord(arguments: [ByteBuffer(string: "SET"), ByteBuffer(string: "k"), ByteBuffer(repeating: 7, count: 300)], originRack: "r", originSidecar: "s", timestampMilliseconds: 0, slot: 0)
        let chunks = OpChunk.split(record.encoded, id: 1, maxMessageBytes: 200)
        #expect(chunks.count == 2)
        func message(_ offset: Int64, _ value: ByteBuffer) -> KafkaMessage { KafkaMessage(topic: "t", partition: 0, offset: offset, key: nil, value: value) }
        let other = OpRecord(arguments: [ByteBuffer(string: "INCR"), ByteBuffer(string: "n")], originRack: "r", originSidecar: "s", timestampMilliseconds: 0, slot: 0).encoded

        // The first chunk and another op: the op is applied, the checkpoint stays at the chunk.
        var plan = machine.plan([message(10, chunks[0]), message(11, other)][...])
        for unit in machine.unclaimed(plan.units) { machine.claimed(unit, epoch: 1) }
        var runs = machine.runs(of: plan)
        #expect(runs.map { $0.ops.map(\.offset) } == [[11]])
        machine.repliesRead([(.run(runs[0].unit, offsets: [11]), Self.ran(.integer(1)))], messages: plan.messages)
        #expect(machine.next == [0: 12])
        #expect(machine.checkpointsDue(force: true) == [0: 10])

        // The last chunk: the whole op is applied at its offset, and the checkpoint moves past it.
        plan = machine.plan([message(12, chunks[1])][...])
        runs = machine.runs(of: plan)
        #expect(runs.count == 1)
        #expect(runs[0].ops.map(\.offset) == [12])
        #expect(runs[0].ops[runs[0].ops.startIndex].op.arguments == record.arguments)
        machine.repliesRead([(.run(runs[0].unit, offsets: [12]), Self.ran(.ok))], messages: plan.messages)
        #expect(machine.checkpointsDue(force: true) == [0: 13])
    }

    @Test("an op applied on its own is checked against its marker and claim first")
    func ownTurnChecks() {
        var machine = ApplierStateMachine(settings: .init(topic: "t", perSlot: false))
        machine.assigned([0])
        machine.resynced(at: [0: 5])
        let unit = ApplierStateMachine.Unit(partition: 0, slot: -1)
        machine.claimed(unit, epoch: 4)
        #expect(machine.ownTurnCheck(unit, offset: 5, ownerEpoch: 9, marker: 4) == .deposed)
        #expect(machine.ownTurnCheck(unit, offset: 5, ownerEpoch: nil, marker: 4) == .deposed)
        #expect(machine.ownTurnCheck(unit, offset: 5, ownerEpoch: 4, marker: 5) == .alreadyApplied)
        #expect(machine.ownTurnCheck(unit, offset: 5, ownerEpoch: 4, marker: 4) == nil)
        // Once a run up to offset 7 was sent, a marker still at 4 means that run did not apply.
        let plan = machine.plan([Player.message(Op(partition: 0, offset: 5)), Player.message(Op(partition: 0, offset: 6)), Player.message(Op(partition: 0, offset: 7))][...])
        _ = machine.runs(of: plan)
        #expect(machine.ownTurnCheck(unit, offset: 8, ownerEpoch: 4, marker: 4) == .previousMissing)
        machine.ownTurnFinished(.previousMissing, of: OpRecord(arguments: [], originRack: "r", originSidecar: "s", timestampMilliseconds: 0, slot: 0), at: .init(partition: 0, offset: 8), units: [unit])
        #expect(machine.needsResync)
    }

    @Test("on Redis Cluster each slot of a partition has its own marker")
    func perSlotUnits() {
        var machine = ApplierStateMachine(settings: .init(topic: "t", perSlot: true))
        machine.assigned([0])
        machine.resynced(at: [0: 0])
        func op(_ offset: Int64, slot: Int) -> KafkaMessage {
            KafkaMessage(topic: "t", partition: 0, offset: offset, key: nil, value: OpRecord(arguments: [ByteBuffer(string: "INCR"), ByteBuffer(string: "k")], originRack: "r", originSidecar: "s", timestampMilliseconds: 0, slot: slot).encoded)
        }
        let plan = machine.plan([op(0, slot: 3), op(1, slot: 8), op(2, slot: 3)][...])
        #expect(plan.units == [.init(partition: 0, slot: 3), .init(partition: 0, slot: 8)])
        #expect(machine.unclaimed(plan.units).count == 2)
        #expect(machine.flushUnits(0, partitions: 8).count == HashSlot.count / 8)
        #expect(ApplierStateMachine(settings: .init(topic: "t", perSlot: false)).flushUnits(0, partitions: 8) == [.init(partition: 0, slot: -1)])
    }
}

extension ApplierStateMachine.Action {
    /// The action's kind, as a case's `never` names it: `count(replay)`, `reportDeposed`…
    var kind: String {
        switch self {
        case .count(let outcome, _): "count(\(outcome.name))"
        case .handOver: "handOver"
        case .reportRejected: "reportRejected"
        case .reportUnreadable: "reportUnreadable"
        case .reportDeposed: "reportDeposed"
        case .reportRevived: "reportRevived"
        case .resync: "resync"
        case .refreshSlots: "refreshSlots"
        }
    }
}
