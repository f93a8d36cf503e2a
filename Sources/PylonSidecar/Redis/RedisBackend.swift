import Logging
import NIOCore

/// The Redis layer as the rest of the sidecar sees it, whatever the topology.
protocol RedisBackend: Sendable {
    /// Connects; afterwards `router(on:)` serves every loop of the group.
    func start() async throws
    /// Closes every connection; in-flight requests get an error reply.
    func shutdown() async
    /// The router for client connections on `eventLoop` speaking `version`.
    func router(on eventLoop: EventLoop, version: RESPVersion) -> BackendRouter
    /// True when reads can be served now.
    var isReady: Bool { get }
    /// Topology facts for `PYLON INFO`.
    var description: BackendDescription { get }
    /// The node that takes writes for `slot` (the applier's target): the one master, or on Redis
    /// Cluster the slot's master; nil while unknown.
    func writeNode(forSlot slot: Int) -> HostPort?
    /// Every node that takes writes.
    var writeNodes: [HostPort] { get }
}

extension RedisBackend {
    /// The RESP2 router on `eventLoop` (the sidecar's own requests: markers, PYLON WAIT).
    func router(on eventLoop: EventLoop) -> BackendRouter { self.router(on: eventLoop, version: .resp2) }

    /// Both routers on `eventLoop`.
    func routers(on eventLoop: EventLoop) -> ProtocolRouters<BackendRouter> {
        ProtocolRouters { self.router(on: eventLoop, version: $0) }
    }
}

/// What every backend of the Redis layer is built with: its event loops, connection settings,
/// the shared health view and the logger.
struct RedisLayerContext: Sendable {
    let group: EventLoopGroup
    let settings: BackendConnection.Settings
    let status: BackendStatus
    let logger: Logger

    /// A pipelined connection to `address` for the clients of `eventLoop` speaking `version`.
    func connection(to address: HostPort, on eventLoop: EventLoop, version: RESPVersion = .resp2) -> BackendConnection {
        var settings = self.settings
        settings.version = version
        return BackendConnection(address: address, eventLoop: eventLoop, settings: settings, status: self.status, logger: self.logger)
    }

    /// A request/response client for control queries (CLUSTER SLOTS, SENTINEL …).
    func controlClient(to address: HostPort, onPush: (@Sendable (RESPValue) -> Void)? = nil) async throws -> RedisClient {
        try await RedisClient.connect(to: address, on: self.group.any(), timeout: self.settings.connectTimeout, onPush: onPush)
    }
}

/// What `PYLON INFO` says about the Redis layer.
public struct BackendDescription: Sendable {
    public var topology: String
    /// The nodes reads may go to, with their state.
    public var nodes: [(address: HostPort, role: String, up: Bool)]
    public var details: [(String, String)] = []
}

/// One value per event loop of a group, each confined to its loop: the per-loop routers and
/// connections of the Redis layer. Built on the loops themselves, so nothing crosses threads later.
final class PerLoop<Value>: Sendable {
    private let values: [ObjectIdentifier: NIOLoopBound<Value>]
    let all: [NIOLoopBound<Value>]

    init(group: EventLoopGroup, make: @escaping @Sendable (EventLoop) -> Value) async throws {
        var values: [ObjectIdentifier: NIOLoopBound<Value>] = [:]
        var all: [NIOLoopBound<Value>] = []
        for loop in group.makeIterator() {
            let bound = try await loop.submit { NIOLoopBound(make(loop), eventLoop: loop) }.get()
            values[ObjectIdentifier(loop)] = bound
            all.append(bound)
        }
        self.values = values
        self.all = all
    }

    func value(on eventLoop: EventLoop) -> Value {
        guard let bound = self.values[ObjectIdentifier(eventLoop)] else {
            preconditionFailure("event loop \(eventLoop) is not part of the Redis layer's group")
        }
        return bound.value
    }

    /// Runs `body` on every loop with that loop's value, and waits.
    func forEach(_ body: @escaping @Sendable (Value) -> Void) async {
        for bound in self.all {
            try? await bound.eventLoop.submit { body(bound.value) }.get()
        }
    }
}

/// Routes every read to one node: a standalone Redis or any RESP endpoint (twemproxy, a proxy).
final class StandaloneBackend: RedisBackend {
    private let address: HostPort
    private let context: RedisLayerContext
    private let routers = LateBound<PerLoop<ProtocolRouters<SingleNodeRouter>>>()

    init(address: HostPort, context: RedisLayerContext) {
        self.address = address
        self.context = context
    }

    func start() async throws {
        let (address, context) = (self.address, self.context)
        let routers = try await PerLoop(group: context.group) { loop in
            // RESP3 connections are made on a RESP3 client's first read.
            let routers = ProtocolRouters { SingleNodeRouter(connection: context.connection(to: address, on: loop, version: $0)) }
            routers.resp2.connection.connect()
            return routers
        }
        self.routers.set(routers)
    }

    func shutdown() async {
        await self.routers.value?.forEach { $0.forBoth { $0.connection.close() } }
    }

    func router(on eventLoop: EventLoop, version: RESPVersion) -> BackendRouter {
        self.routers.value!.value(on: eventLoop)[version]
    }

    var isReady: Bool { self.context.status.isUp(self.address) }

    func writeNode(forSlot slot: Int) -> HostPort? { self.address }

    var writeNodes: [HostPort] { [self.address] }

    var description: BackendDescription {
        BackendDescription(topology: "standalone", nodes: [(self.address, "master", self.context.status.isUp(self.address))])
    }
}

/// Sends every request over one connection.
final class SingleNodeRouter: BackendRouter {
    let connection: BackendConnection

    init(connection: BackendConnection) {
        self.connection = connection
    }

    func send(_ request: RedisRequest, command: Command, sink: ReplySink, tag: Int) {
        self.connection.send(request.raw, sink: sink, tag: tag)
    }
}
