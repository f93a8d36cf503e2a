import Foundation
import Logging
import Synchronization

/// What the operator reconciles.
public enum ReconcileKey: Hashable, Sendable, CustomStringConvertible {
    case world(namespace: String, name: String)
    case rack(namespace: String, name: String)

    public var description: String {
        switch self {
        case .world(let namespace, let name): "PylonWorld \(namespace)/\(name)"
        case .rack(let namespace, let name): "PylonRack \(namespace)/\(name)"
        }
    }
}

/// The reconcilers' manager: turns PylonWorlds and PylonRacks into running racks. Hears every
/// change of both, and of everything the operator makes, from the process's informers; queues
/// the keys concerned (an owned object's owner, by owner reference); and hands each key to its
/// kind's reconciler (`WorldReconciler`, `RackReconciler`) — render, server-side apply, truthful
/// status — retrying failures with backoff and looking again when the reconcile asks. Reconciles
/// read from the informers, so a settled rack costs the API server nothing.
public final class PylonOperatorService: Sendable {
    public struct Settings: Sendable {
        /// The namespace to watch; nil: every namespace.
        public var namespace: String?
        public var renderer: RackRenderer.Settings
        /// The world's Kafka: retiring consumer groups, reading racks' lag.
        public var kafka: WorldKafka
        /// A rack is CaughtUp while its consumer group lags by at most this many ops in all.
        public var caughtUpLag: Int64
        /// Racks are reconciled again this often (their lag and readiness change without events).
        public var resync: Duration
        /// Keys reconciled at the same time (never the same key twice at once).
        public var workers: Int

        public init(
            namespace: String? = nil, renderer: RackRenderer.Settings = .init(), kafka: WorldKafka = WorldKafka(), caughtUpLag: Int64 = 1000,
            resync: Duration = .seconds(15), workers: Int = 4
        ) {
            self.namespace = namespace
            self.renderer = renderer
            self.kafka = kafka
            self.caughtUpLag = caughtUpLag
            self.resync = resync
            self.workers = workers
        }
    }

    let settings: Settings
    let queue = WorkQueue<ReconcileKey>()
    let logger: Logger
    public let metrics: OperatorMetrics
    /// The process's informers (shared with the webhook); this manager's subscriptions to them.
    let informers: SharedInformers
    /// Whether `informers` is this manager's own (made by it, stopped with it).
    private let ownsInformers: Bool
    private let subscriptions = Mutex<[(Informer, Int)]>([])
    /// The kinds reconciles read: worlds, racks, and what the operator makes.
    public static let kinds = [Pylon.worlds, Pylon.racks, .statefulSets, .configMaps, .services, .podDisruptionBudgets, .jobs]
    private let workers = Mutex<[Task<Void, Never>]>([])
    /// The generation of each world last seen: its racks are re-rendered only when its spec
    /// changed, not on each of its status updates.
    private let worldGenerations = Mutex<[String: Int]>([:])
    /// One reconciler per kind, and what they share.
    let context: ReconcileContext
    let worlds: WorldReconciler
    let racks: RackReconciler

    /// With `informers` nil the service makes (and stops) its own.
    public init(client: KubeClient, settings: Settings, informers shared: SharedInformers? = nil, logger: Logger) {
        let informers = shared ?? SharedInformers(client: client, namespace: settings.namespace, logger: logger)
        self.ownsInformers = shared == nil
        self.informers = informers
        self.settings = settings
        self.logger = logger
        self.metrics = OperatorMetrics(client: client, queue: self.queue)
        let renderer = RackRenderer(settings: settings.renderer)
        self.context = ReconcileContext(client: client, informers: informers, logger: logger)
        self.worlds = WorldReconciler(context: self.context, renderer: renderer)
        self.racks = RackReconciler(context: self.context, renderer: renderer, settings: settings)
    }

    // MARK: - Running

    public func start() {
        let informers = Self.kinds.map { self.informers.informer($0) }
        self.subscriptions.withLock { subscriptions in
            subscriptions = informers.map { informer in (informer, informer.subscribe { [self] in self.observed($0, as: informer.resource) }) }
        }
        self.workers.withLock {
            $0 = (0..<max(1, self.settings.workers)).map { _ in Task { [self] in
                // Nothing is reconciled before every informer has listed once: an object it does
                // not know yet is not an object that does not exist.
                while !informers.allSatisfy(\.hasSynced) {
                    guard await !self.queue.isClosed else { return }
                    try? await Task.sleep(for: .milliseconds(50))
                }
                while let key = await self.queue.next() {
                    let started = ContinuousClock.now
                    var failed = false
                        var again: Duration?
                    do { again = try await self.reconcile(key) } catch {
                        failed = true
                        self.logger.warning("reconcile failed; retrying with backoff", metadata: ["object": "\(key)", "error": "\(error)"])
                    }
                    self.metrics.reconciled(key, failed: failed, in: .now - started)
                    await self.queue.done(key, failed: failed)
                    if let again { await self.queue.add(key, after: again) }
                }
            } }
        }
    }

    public func stop() async {
        for (informer, id) in self.subscriptions.withLock({ $0 }) { informer.unsubscribe(id) }
        if self.ownsInformers { self.informers.stop() }
        await self.queue.close()
        for worker in self.workers.withLock({ $0 }) { await worker.value }
    }

    /// Queues what a watch event concerns: the object itself; for a rack, its world (its rack
    /// count); for a world whose spec changed, every rack of it (their configuration); for an
    /// object the operator made, the rack or world its owner reference names (so a change someone
    /// else made is set right at once).
    private func observed(_ event: KubeWatch.Event, as resource: KubeResource) {
        let objects: [JSON]
        switch event {
        case .listed(let items): objects = items
        case .added(let object), .modified(let object), .deleted(let object): objects = [object]
        }
        for object in objects {
            guard let metadata = try? object["metadata"]?.decode(ObjectMeta.self), let namespace = metadata.namespace, let name = metadata.name else { continue }
            Task {
                switch resource {
                case Pylon.worlds:
                    await self.queue.add(.world(namespace: namespace, name: name))
                    let changed = self.worldGenerations.withLock { seen in
                        defer { seen["\(namespace)/\(name)"] = metadata.generation }
                        return seen["\(namespace)/\(name)"] != metadata.generation
                    }
                    if changed { await self.queueRacks(of: name, in: namespace) }
                case Pylon.racks:
                    await self.queue.add(.rack(namespace: namespace, name: name))
                    if let world = object[path: "spec.world"]?.string { await self.queue.add(.world(namespace: namespace, name: world)) }
                default:
                    switch metadata.ownerReferences?.first(where: { $0.controller == true && $0.apiVersion.hasPrefix(Pylon.worlds.group + "/") }) {
                    case let owner? where owner.kind == "PylonRack": await self.queue.add(.rack(namespace: namespace, name: owner.name))
                    case let owner? where owner.kind == "PylonWorld": await self.queue.add(.world(namespace: namespace, name: owner.name))
                    default: break
                    }
                }
            }
        }
    }

    private func queueRacks(of world: String, in namespace: String) async {
        for rack in self.context.racks(of: world, in: namespace) { await self.queue.add(.rack(namespace: namespace, name: rack.name)) }
    }

    // MARK: - Reconciling

    /// Hands a key to its kind's reconciler; answers when to look at it again though nothing
    /// changed (nil: only when something does).
    func reconcile(_ key: ReconcileKey) async throws -> Duration? {
        switch key {
        case .world(let namespace, let name): try await self.worlds.reconcile(namespace: namespace, name: name)
        case .rack(let namespace, let name): try await self.racks.reconcile(namespace: namespace, name: name)
        }
    }
}
