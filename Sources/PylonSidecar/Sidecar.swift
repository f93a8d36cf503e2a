import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Shared
import Synchronization

/// A running sidecar: the gateway listening for clients, the Redis layer behind it and the admin
/// endpoints. Run it as a `Service`; on graceful shutdown it stops accepting, lets in-flight
/// replies finish (up to the grace period) and closes.
public final class Sidecar: Service, Sendable {
    public let configuration: SidecarConfiguration
    public let stats = SidecarStats()
    public let metrics: SidecarMetrics
    private let group: EventLoopGroup
    private let logger: Logger
    private let backend: RedisBackend
    private let gateway: Gateway
    /// The write path, when a world's log is configured.
    let log: WorldLog?
    let applier: Applier?
    private let replies: AppliedReplies?
    /// The world view: peers probed for read failover, and this rack's lag for their probes.
    private let peers: Peers?
    private let progress: RackProgress?
    private let layer: RedisLayerContext
    private let failover = LateBound<PerLoop<ProtocolRouters<FailoverRouter>>>()
    private let peerReplies = LateBound<PerLoop<PeerReplies>>()
    private let stopped = Atomic<Bool>(false)
    private let bound = LateBound<BoundSockets>()

    private struct BoundSockets: Sendable {
        var server: Channel
        var admin: AdminServer
    }

    /// Builds the sidecar; with `kafka-brokers` set, connects to the world's log (creating its
    /// topic when missing), so a broker that cannot be reached fails here, naming it.
    public init(configuration: SidecarConfiguration, group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger = Logger(label: "pylon.sidecar")) async throws {
        let configuration = try configuration.validated()
        self.configuration = configuration
        self.group = group
        self.logger = logger
        let table = CommandTable.shared
        let metrics = SidecarMetrics(table: table)
        self.metrics = metrics
        let status = BackendStatus { address, up in metrics.backendUp(address, up) }
        var settings = BackendConnection.Settings()
        settings.requestTimeout = .milliseconds(Int64(configuration.redisTimeoutMilliseconds))
        settings.connectTimeout = .milliseconds(Int64(configuration.connectTimeoutMilliseconds))
        let layer = RedisLayerContext(group: group, settings: settings, status: status, logger: logger)
        var worldLog: WorldLog?
        if let membership = configuration.membership {
            worldLog = try await Blocking.run { try WorldLog(membership, configuration: configuration, logger: logger) }
        }
        let backend = Self.makeBackend(configuration, context: layer, log: worldLog)
        self.backend = backend
        self.layer = layer
        if let membership = configuration.membership, let log = worldLog {
            let replies = AppliedReplies(timeout: .milliseconds(Int64(configuration.appliedTimeoutMilliseconds)))
            let rack = RackRedis(backend)
            self.log = log
            self.replies = replies
            let interval = Duration.milliseconds(configuration.peerProbeIntervalMilliseconds)
            self.progress = RackProgress(log: log, rack: rack, eventLoop: group.any(), interval: interval, logger: logger)
            self.peers = configuration.peers.isEmpty ? nil : Peers(
                settings: .init(seeds: configuration.peers, interval: interval, maxLag: configuration.maxPeerLag),
                identity: .init(name: log.sidecar, rack: membership.rack, world: membership.world), metrics: metrics, logger: logger
            )
            self.applier = Applier(
                settings: .init(
                    brokers: membership.brokers, topic: log.topic, groupID: membership.consumerGroup,
                    // Static membership when the name is stable: a sidecar restarted under its name
                    // takes its partitions back at once, without waiting for its old session to
                    // expire. A sidecar with a random name could never come back, and a static
                    // member does not leave the group when it stops, so its partitions would wait
                    // for the session to expire: it joins as a dynamic member instead.
                    properties: (configuration.hasStableName ? ["group.instance.id": log.sidecar] : [:]).merging(configuration.kafkaProperties) { $1 },
                    redisTimeout: settings.requestTimeout, sidecarName: log.sidecar, rackName: membership.rack, catchUpOffsets: configuration.catchUpOffsets,
                    partitions: log.partitions,
                    snapshot: configuration.snapshotFrom.map { SnapshotCatchUp(source: $0, directory: configuration.snapshotDirectory) }
                ),
                replies: replies, ownWrites: log.ownWrites, rack: rack, metrics: metrics, logger: logger
            )
        } else {
            self.log = nil
            self.replies = nil
            self.progress = nil
            self.peers = nil
            self.applier = nil
        }
        let writes = Gateway.WritePolicy(
            consistency: configuration.consistency, contentious: configuration.contentiousKeys.map(KeyPattern.init),
            appliedTimeout: .milliseconds(Int64(configuration.appliedTimeoutMilliseconds)), maxWriteBytes: configuration.maxWriteBytes,
            replies: self.replies
        )
        self.gateway = Gateway(
            table: table, backend: backend, log: self.log, applier: self.applier, writes: writes, peers: self.peers, progress: self.progress,
            stats: self.stats, metrics: metrics,
            identity: .init(rack: configuration.rack, world: configuration.world, redis: configuration.redis, readFrom: configuration.readFrom),
            maxPendingReplies: configuration.maxPendingReplies, logger: logger
        )
    }

    static func makeBackend(_ configuration: SidecarConfiguration, context: RedisLayerContext, log: WorldLog? = nil) -> RedisBackend {
        switch configuration.redis {
        case .standalone(let address):
            StandaloneBackend(address: address, context: context)
        case .cluster(let seeds):
            ClusterBackend(seeds: seeds, context: context, bookkeepingKeys: log.map { Bookkeeping.keys(topic: $0.topic, partitions: $0.partitions, perSlot: true) } ?? [])
        case .sentinel(let sentinels, let master):
            SentinelBackend(sentinels: sentinels, masterName: master, readFrom: configuration.readFrom, context: context)
        }
    }

    /// The address clients connect to (after `start`), useful when listening on port 0.
    public var listenAddress: SocketAddress? { self.bound.value?.server.localAddress }
    public var adminAddress: SocketAddress? { self.bound.value?.admin.localAddress }
    public var isReady: Bool { self.readiness == nil }

    /// Why the sidecar is not ready, or nil when it is.
    var readiness: String? {
        guard self.backend.isReady else { return "the local redis is unreachable" }
        if let maxLag = self.configuration.maxReadyLag, let applier = self.applier, !applier.isCaughtUp(maxLag: maxLag) {
            return "the applier lags by more than \(maxLag) ops (max-ready-lag)"
        }
        return nil
    }
    /// The text `PYLON INFO` answers.
    public var info: String { PylonCommands.info(self.gateway) }

    /// Connects to Redis, starts the applier and binds the listening sockets.
    public func start() async throws {
        try await self.backend.start()
        do { try self.applier?.start() } catch {
            throw StartError(description: "the applier cannot join the world's log: \(error)")
        }
        if let replies = self.replies, let log = self.log {
            let backend = self.backend
            // On Redis Cluster any node will do: a PUBLISH reaches every node.
            replies.subscribe(sidecar: log.sidecar, node: { backend.writeNode(forSlot: 0) }, eventLoop: self.group.any(), logger: self.logger)
        }
        self.progress?.start()
        if let peers = self.peers {
            peers.start(group: self.group)
            let (backend, layer, metrics, progress, maxLocalLag) = (self.backend, self.layer, self.metrics, self.progress, self.configuration.maxLocalLag)
            self.failover.set(try await PerLoop(group: self.group) { loop in
                ProtocolRouters { version in
                    FailoverRouter(
                        local: backend.router(on: loop, version: version), version: version,
                        localServes: { backend.isReady && (maxLocalLag.map { (progress?.lag ?? 0) <= $0 } ?? true) },
                        peers: peers, context: layer, eventLoop: loop, metrics: metrics
                    )
                }
            })
            if let replies = self.gateway.writes.replies {
                self.peerReplies.set(try await PerLoop(group: self.group) { loop in
                    PeerReplies(peers: peers, context: layer, eventLoop: loop, replies: replies, localReady: { backend.isReady })
                })
            }
        }
        let (failover, peerReplies) = (self.failover.value, self.peerReplies.value)
        let gateway = self.gateway
        let limits = self.configuration.limits
        let server = try await ServerBootstrap(group: self.group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 1024)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 32 * 1024, high: 256 * 1024))
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let routers = failover.map { routers in
                        ProtocolRouters<BackendRouter> { routers.value(on: channel.eventLoop)[$0] }
                    } ?? gateway.backend.routers(on: channel.eventLoop)
                    try channel.pipeline.syncOperations.addHandler(
                        GatewayConnection(gateway: gateway, routers: routers, peerReplies: peerReplies?.value(on: channel.eventLoop), limits: limits)
                    )
                }
            }
            .bind(host: self.configuration.listen.host, port: self.configuration.listen.port)
            .flatMapErrorThrowing { throw StartError(description: "cannot listen on \(self.configuration.listen) (listen): \($0)") }
            .get()
        let admin: AdminServer
        do {
            admin = try await AdminServer.start(
                host: self.configuration.admin.host, port: self.configuration.admin.port, group: self.group, routes: self.adminRoutes()
            )
        } catch {
            try? await server.close()
            throw StartError(description: "cannot listen on \(self.configuration.admin) (admin): \(error)")
        }
        self.bound.set(BoundSockets(server: server, admin: admin))
        self.logger.info("pylon-sidecar listening", metadata: [
            "listen": "\(server.localAddress.map { "\($0)" } ?? "?")", "admin": "\(admin.localAddress.map { "\($0)" } ?? "?")",
            "redis": "\(self.configuration.redis)", "version": "\(Pylon.version)",
        ])
    }

    private func adminRoutes() -> [String: AdminServer.Route] {
        let metrics = self.metrics
        return [
            "/metrics": { .init(contentType: "text/plain; version=0.0.4; charset=utf-8", body: metrics.render()) },
            "/healthz": { .init(body: "ok\n") },
            "/readyz": { [self] in
                guard let reason = self.readiness else { return .init(body: "ready\n") }
                return .init(status: .serviceUnavailable, body: "not ready: \(reason)\n")
            },
        ]
    }

    /// Why the sidecar could not start.
    public struct StartError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Stops accepting, waits for in-flight replies (bounded by the grace period), closes
    /// everything; a stop that takes `stop-timeout-ms` longer than that ends the process
    /// (`ShutdownWatchdog`).
    public func stop() async {
        guard !self.stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let grace = Duration.milliseconds(self.configuration.shutdownGraceMilliseconds)
        let watchdog = self.configuration.stopTimeoutMilliseconds == 0 ? nil : ShutdownWatchdog(
            limit: grace + .milliseconds(self.configuration.stopTimeoutMilliseconds), logger: self.logger
        ) {
            fflush(nil)
            _exit(1)
        }
        defer { watchdog?.finished() }
        guard let bound = self.bound.value else {
            await self.stopStreams(watchdog)
            await self.backend.shutdown()
            return
        }
        watchdog?.enter("closing the listening socket")
        try? await bound.server.close()
        watchdog?.enter("waiting for in-flight replies (shutdown-grace-ms)")
        let deadline = ContinuousClock.now + grace
        while self.stats.connectedClients.load(ordering: .relaxed) > 0, ContinuousClock.now < deadline, self.stats.pendingReplies.load(ordering: .relaxed) > 0 {
            try? await Task.sleep(for: .milliseconds(10))
        }
        self.gateway.clients.closeAll()
        await self.stopStreams(watchdog)
        watchdog?.enter("closing the connections to redis")
        await self.backend.shutdown()
        watchdog?.enter("closing the admin endpoint")
        await bound.admin.close()
        self.logger.info("pylon-sidecar stopped")
    }

    /// Stops the applier (after its batch in hand) and flushes the producer. The blocking part
    /// runs on a thread of its own and is waited for even when the stopping task is cancelled:
    /// the applier's owed replies and checkpoints, and the producer's last writes, go out.
    private func stopStreams(_ watchdog: ShutdownWatchdog?) async {
        watchdog?.enter("closing the replies and peers subscriptions")
        self.replies?.stop()
        self.peers?.stop()
        await self.failover.value?.forEach { $0.forBoth { $0.close() } }
        await self.peerReplies.value?.forEach { $0.close() }
        let (applier, log, progress) = (self.applier, self.log, self.progress)
        await withCheckedContinuation { (stopped: CheckedContinuation<Void, Never>) in
            Blocking.thread(named: "pylon-stop") {
                watchdog?.enter("stopping the rack-progress measurements")
                progress?.stop()
                watchdog?.enter("stopping the applier")
                applier?.stop()
                watchdog?.enter("flushing the world's log (kafka producer)")
                log?.close()
                stopped.resume()
            }
        }
    }

    /// Runs until graceful shutdown (SIGTERM/SIGINT through a `ServiceGroup`).
    public func run() async throws {
        if self.bound.value == nil { try await self.start() }
        try? await gracefulShutdown()
        await self.stop()
    }
}
