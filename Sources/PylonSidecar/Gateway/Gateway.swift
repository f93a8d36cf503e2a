import Logging
import NIOCore
import Synchronization

/// What every client connection of a sidecar shares: the command table, the Redis layer,
/// counters and identity. Sendable; each connection keeps its loop's router.
final class Gateway: Sendable {
    let table: CommandTable
    let backend: RedisBackend
    /// The world's log writes go to (nil: this sidecar serves reads only).
    let log: WorldLog?
    let applier: Applier?
    let writes: WritePolicy
    /// The world view, when peers are configured; this rack's lag, when a world is.
    let peers: Peers?
    let progress: RackProgress?
    let stats: SidecarStats
    let metrics: SidecarMetrics
    let clients = ClientRegistry()
    let identity: Identity
    let maxPendingReplies: Int
    let logger: Logger
    /// Every key Pylon may keep in a standalone or Sentinel Redis (DBSIZE leaves them out);
    /// nil on Redis Cluster (see `Bookkeeping`).
    let bookkeepingKeys: [String]?
    /// The EVAL command, for the reads the gateway replaces with a script (`Bookkeeping`), and
    /// PYLON, for what it asks peers.
    let eval: Command
    let pylon: Command

    struct Identity: Sendable {
        var rack: String?
        var world: String?
        var redis: RedisEndpoint
        var readFrom: ReadPreference
    }

    /// How writes are acknowledged (see `Consistency`).
    struct WritePolicy: Sendable {
        var consistency: Consistency
        var contentious: [KeyPattern]
        var appliedTimeout: TimeAmount
        var maxWriteBytes: Int
        /// Where `applied` writes wait for their replies (nil without a world).
        var replies: AppliedReplies?

        /// The level of a write: `applied` for contentious keys whatever the connection chose.
        func level(of arguments: [ByteBuffer], command: Command, chosen: Consistency?) -> Consistency {
            if !self.contentious.isEmpty, let positions = command.keyPositions(in: arguments),
               positions.contains(where: { position in self.contentious.contains { $0.matches(arguments[position]) } }) {
                return .applied
            }
            return chosen ?? self.consistency
        }
    }

    init(
        table: CommandTable, backend: RedisBackend, log: WorldLog?, applier: Applier?, writes: WritePolicy, peers: Peers?, progress: RackProgress?,
        stats: SidecarStats, metrics: SidecarMetrics, identity: Identity, maxPendingReplies: Int, logger: Logger
    ) {
        self.table = table
        self.backend = backend
        self.log = log
        self.applier = applier
        self.writes = writes
        self.peers = peers
        self.progress = progress
        self.stats = stats
        self.metrics = metrics
        self.identity = identity
        self.maxPendingReplies = maxPendingReplies
        self.logger = logger
        if case .cluster = identity.redis {
            self.bookkeepingKeys = nil
        } else if let log {
            self.bookkeepingKeys = Bookkeeping.keys(topic: log.topic, partitions: log.partitions, perSlot: false)
        } else {
            self.bookkeepingKeys = []
        }
        guard case .command(let eval) = table.lookup([ByteBuffer(string: "EVAL"), ByteBuffer(string: ""), ByteBuffer(string: "0")]) else {
            preconditionFailure("EVAL is in every command table")
        }
        self.eval = eval
        guard case .command(let pylon) = table.lookup([ByteBuffer(string: "PYLON"), ByteBuffer(string: "WAIT")]) else {
            preconditionFailure("PYLON is in every command table")
        }
        self.pylon = pylon
    }

    /// The reply to a write when no world's log is configured: never a silent success.
    static let noWorldError = "ERR pylon: no world configured: this sidecar serves reads only; start it with --kafka-brokers, --world and --rack to accept writes, or write to the rack's Redis directly"
}

/// The connections of one sidecar, for `CLIENT LIST` and `CLIENT ID`.
final class ClientRegistry: Sendable {
    struct Client: Sendable {
        var id: Int
        var address: String
        var localAddress: String
        var name: String
        var connectedAt: ContinuousClock.Instant
        var version = RESPVersion.resp2
        /// Closed when the sidecar stops.
        var channel: Channel
    }

    private let nextID = Atomic<Int>(1)
    private let clients = Mutex<[Int: Client]>([:])

    func register(address: String, localAddress: String, channel: Channel) -> Int {
        let id = self.nextID.add(1, ordering: .relaxed).oldValue
        self.clients.withLock { $0[id] = Client(id: id, address: address, localAddress: localAddress, name: "", connectedAt: .now, channel: channel) }
        return id
    }

    /// Closes every client connection (the sidecar is stopping).
    func closeAll() {
        for client in self.all { client.channel.close(promise: nil) }
    }

    func rename(_ id: Int, to name: String) {
        self.clients.withLock { $0[id]?.name = name }
    }

    func speaks(_ id: Int, _ version: RESPVersion) {
        self.clients.withLock { $0[id]?.version = version }
    }

    func remove(_ id: Int) {
        _ = self.clients.withLock { $0.removeValue(forKey: id) }
    }

    var all: [Client] { self.clients.withLock { $0.values.sorted { $0.id < $1.id } } }

    func client(_ id: Int) -> Client? { self.clients.withLock { $0[id] } }

    /// One `CLIENT INFO` / `CLIENT LIST` line, in Redis's format (fields Pylon cannot know are zero).
    static func describe(_ client: Client, lastCommand: String) -> String {
        let age = (ContinuousClock.now - client.connectedAt).components.seconds
        return "id=\(client.id) addr=\(client.address) laddr=\(client.localAddress) fd=-1 name=\(client.name) age=\(age) idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=\(lastCommand) user=default redir=-1 resp=\(client.version.rawValue)"
    }
}
