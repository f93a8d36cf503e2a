import Logging
import NIOCore
import Synchronization

/// A Sentinel-managed Redis: the master (and replicas) are discovered through the Sentinels,
/// failovers are followed as they happen (`+switch-master`, plus a periodic re-check), and reads
/// go to the master, a replica or the nearest node as `--read-from` says.
final class SentinelBackend: RedisBackend {
    struct Target: Sendable, Equatable {
        var master: HostPort?
        var replicas: [HostPort] = []
        /// Where reads go now.
        var read: HostPort?
        var version = 0
    }

    let sentinels: [HostPort]
    let masterName: String
    let readFrom: ReadPreference
    let context: RedisLayerContext
    let logger: Logger
    private let target = Mutex(Target())
    private let targetVersion = Atomic<Int>(0)
    private let routers = LateBound<PerLoop<ProtocolRouters<SentinelRouter>>>()
    private let watcher = Mutex<Task<Void, Never>?>(nil)
    /// Re-check interval, in case a `+switch-master` message was missed.
    let pollInterval: Duration = .seconds(5)

    init(sentinels: [HostPort], masterName: String, readFrom: ReadPreference, context: RedisLayerContext) {
        self.sentinels = sentinels
        self.masterName = masterName
        self.readFrom = readFrom
        self.context = context
        var logger = context.logger
        logger[metadataKey: "master-name"] = "\(masterName)"
        self.logger = logger
    }

    func start() async throws {
        if await !self.discover() {
            self.logger.warning("no sentinel knows the master yet; retrying in the background", metadata: ["sentinels": "\(self.sentinels)"])
        }
        let routers = try await PerLoop(group: self.context.group) { [self] loop in
            let routers = ProtocolRouters { SentinelRouter(backend: self, eventLoop: loop, version: $0) }
            routers.forBoth { $0.syncTarget() }
            return routers
        }
        self.routers.set(routers)
        self.watcher.withLock { $0 = Task { [weak self] in await self?.watch() } }
    }

    func shutdown() async {
        self.watcher.withLock { $0?.cancel() }
        await self.routers.value?.forEach { $0.forBoth { $0.close() } }
    }

    func router(on eventLoop: EventLoop, version: RESPVersion) -> BackendRouter {
        self.routers.value!.value(on: eventLoop)[version]
    }

    var current: Target { self.target.withLock { $0 } }
    var currentVersion: Int { self.targetVersion.load(ordering: .acquiring) }

    func writeNode(forSlot slot: Int) -> HostPort? { self.current.master }

    var writeNodes: [HostPort] { self.current.master.map { [$0] } ?? [] }

    var isReady: Bool {
        guard let read = self.current.read else { return false }
        return self.context.status.isUp(read)
    }

    var description: BackendDescription {
        let target = self.current
        var nodes: [(address: HostPort, role: String, up: Bool)] = []
        if let master = target.master { nodes.append((master, target.read == master ? "master,reads" : "master", self.context.status.isUp(master))) }
        for replica in target.replicas {
            nodes.append((replica, target.read == replica ? "replica,reads" : "replica", self.context.status.isUp(replica)))
        }
        return BackendDescription(topology: "sentinel", nodes: nodes, details: [
            ("sentinel_master_name", self.masterName),
            ("sentinels", self.sentinels.map(\.description).joined(separator: ",")),
            ("sentinel_failovers_seen", "\(max(0, target.version - 1))"),
        ])
    }

    // MARK: - Discovery

    /// Asks the Sentinels for the master and its replicas and chooses where reads go.
    /// Returns whether a Sentinel answered.
    @discardableResult
    func discover() async -> Bool {
        for sentinel in self.sentinels {
            do {
                let client = try await self.context.controlClient(to: sentinel)
                defer { Task { await client.close() } }
                let reply = try await client.send("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.masterName)
                guard let fields = reply.array, fields.count == 2, let host = fields[0].string, let port = fields[1].int else {
                    self.logger.warning("sentinel does not know the master", metadata: ["sentinel": "\(sentinel)", "reply": "\(reply.string ?? "nil")"])
                    continue
                }
                let master = HostPort(host: host, port: port)
                let replicas = Self.healthyReplicas(try await client.send("SENTINEL", "REPLICAS", self.masterName))
                let read = await self.chooseReadTarget(master: master, replicas: replicas)
                self.update(master: master, replicas: replicas, read: read)
                return true
            } catch {
                self.logger.debug("sentinel query failed", metadata: ["sentinel": "\(sentinel)", "error": "\(error)"])
            }
        }
        return false
    }

    /// Replicas Sentinel considers up and in sync with the master.
    static func healthyReplicas(_ reply: RESPValue) -> [HostPort] {
        (reply.array ?? []).compactMap { entry in
            guard let fields = entry.array else { return nil }
            var info: [String: String] = [:]
            var index = 0
            while index + 1 < fields.count {
                if let key = fields[index].string, let value = fields[index + 1].string { info[key] = value }
                index += 2
            }
            let flags = Set((info["flags"] ?? "").split(separator: ",").map(String.init))
            guard flags.isDisjoint(with: ["s_down", "o_down", "disconnected"]), info["master-link-status"] == "ok",
                  let host = info["ip"], let port = info["port"].flatMap(Int.init) else { return nil }
            return HostPort(host: host, port: port)
        }
    }

    private func chooseReadTarget(master: HostPort, replicas: [HostPort]) async -> HostPort {
        switch self.readFrom {
        case .master:
            return master
        case .replica:
            // Keep the current replica while it stays healthy, so reads do not bounce between nodes.
            if let current = self.current.read, replicas.contains(current) { return current }
            return replicas.first ?? master
        case .nearest:
            var best = (master, await self.roundTrip(to: master))
            for replica in replicas {
                let rtt = await self.roundTrip(to: replica)
                if rtt < best.1 { best = (replica, rtt) }
            }
            return best.0
        }
    }

    /// The best of three PING round trips; unreachable nodes are infinitely far.
    private func roundTrip(to address: HostPort) async -> Duration {
        guard let client = try? await self.context.controlClient(to: address) else {
            return .seconds(3600)
        }
        defer { Task { await client.close() } }
        var best = Duration.seconds(3600)
        for _ in 0..<3 {
            let start = ContinuousClock.now
            guard (try? await client.send("PING")) != nil else { break }
            best = min(best, ContinuousClock.now - start)
        }
        return best
    }

    private func update(master: HostPort, replicas: [HostPort], read: HostPort) {
        let changed = self.target.withLock { target -> Target? in
            guard target.master != master || target.replicas != replicas || target.read != read else { return nil }
            let previous = target
            target = Target(master: master, replicas: replicas, read: read, version: target.version + 1)
            return previous
        }
        guard let previous = changed else { return }
        self.targetVersion.store(previous.version + 1, ordering: .releasing)
        if previous.master != nil, previous.master != master {
            self.logger.notice("following failover", metadata: ["old-master": "\(previous.master!)", "new-master": "\(master)", "reads": "\(read)"])
        } else {
            self.logger.info("redis topology from sentinel", metadata: ["master": "\(master)", "replicas": "\(replicas)", "reads": "\(read)"])
        }
        Task { await self.routers.value?.forEach { $0.forBoth { $0.syncTarget() } } }
    }

    // MARK: - Watching for failovers

    /// Subscribes to a Sentinel's `+switch-master` (and replica changes); re-checks periodically.
    private func watch() async {
        var index = 0
        var backoff = Duration.milliseconds(100)
        while !Task.isCancelled {
            let sentinel = self.sentinels[index % self.sentinels.count]
            index += 1
            let events = AsyncStream<Void>.makeStream()
            do {
                let client = try await self.context.controlClient(to: sentinel) { push in
                    // ["message", channel, payload]: any of these means the topology may have changed.
                    if push.array?.first?.string == "message" { events.continuation.yield() }
                }
                _ = try await client.sendRaw(RedisRequest("SUBSCRIBE", "+switch-master", "+slave", "+sdown", "-sdown", "+role-change").raw, replies: 1)
                client.channel.closeFuture.whenComplete { _ in events.continuation.finish() }
                backoff = .milliseconds(100)
                await self.discover()
                // Re-check on every event, and on a timer in case one was missed.
                let ticker = Task {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: self.pollInterval)
                        events.continuation.yield()
                    }
                }
                for await _ in events.stream {
                    if Task.isCancelled { break }
                    await self.discover()
                }
                ticker.cancel()
                await client.close()
            } catch {
                self.logger.debug("cannot watch sentinel", metadata: ["sentinel": "\(sentinel)", "error": "\(error)"])
            }
            if Task.isCancelled { return }
            try? await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(2))
        }
    }
}

/// The Sentinel router of one event loop: a connection to the node reads go to, replaced when
/// Sentinel says the master (or chosen replica) changed.
final class SentinelRouter: BackendRouter {
    private unowned let backend: SentinelBackend
    private let eventLoop: EventLoop
    private let protocolVersion: RESPVersion
    private var version = -1
    private var readConnection: BackendConnection?
    private var connections: [HostPort: BackendConnection] = [:]

    init(backend: SentinelBackend, eventLoop: EventLoop, version: RESPVersion) {
        self.backend = backend
        self.eventLoop = eventLoop
        self.protocolVersion = version
    }

    func syncTarget() {
        guard self.version != self.backend.currentVersion else { return }
        let target = self.backend.current
        self.version = target.version
        guard let read = target.read else { return }
        let connection = self.connections[read] ?? self.backend.context.connection(to: read, on: self.eventLoop, version: self.protocolVersion)
        self.connections[read] = connection
        connection.connect()
        self.readConnection = connection
        // Connections to former targets close once nothing is in flight on them.
        for (address, old) in self.connections where address != read && old.pendingCount == 0 {
            old.close()
            self.connections[address] = nil
        }
    }

    func send(_ request: RedisRequest, command: Command, sink: ReplySink, tag: Int) {
        self.syncTarget()
        guard let connection = self.readConnection else {
            sink.deliver(.respError("ERR pylon: local redis unavailable (no sentinel has told where master '\(self.backend.masterName)' is yet); retry shortly"), tag: tag)
            return
        }
        connection.send(request.raw, sink: sink, tag: tag)
    }

    func close() {
        for connection in self.connections.values { connection.close() }
    }
}
