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

/// Turns PylonWorlds and PylonRacks into running racks: keeps both, and everything it makes, in
/// informers (watched, in memory), queues what changed, and reconciles each key idempotently —
/// render, server-side apply, truthful status — retrying failures with backoff. Reconciles read
/// from the informers, so a settled rack costs the API server nothing.
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

    let client: KubeClient
    let settings: Settings
    let queue = WorkQueue<ReconcileKey>()
    let renderer: RackRenderer
    let logger: Logger
    public let metrics: OperatorMetrics
    /// The process's informers (shared with the webhook); this service's subscriptions to them.
    let informers: SharedInformers
    /// Whether `informers` is this service's own (made by it, stopped with it).
    private let ownsInformers: Bool
    private let subscriptions = Mutex<[(Informer, Int)]>([])
    /// The kinds reconciles read: worlds, racks, and what the operator makes.
    public static let kinds = [Pylon.worlds, Pylon.racks, .statefulSets, .configMaps, .services, .podDisruptionBudgets, .jobs]
    private let workers = Mutex<[Task<Void, Never>]>([])
    /// The generation of each world last seen: its racks are re-rendered only when its spec
    /// changed, not on each of its status updates.
    private let worldGenerations = Mutex<[String: Int]>([:])
    /// Each rack's lag and when it was read: a rack re-rendered because a sibling came or went
    /// does not ask Kafka again so soon.
    private let lagCache = Mutex<[String: (lags: [Int64], at: ContinuousClock.Instant)]>([:])
    /// What the operator last applied to each object and the resourceVersion that left it with
    /// (by "plural/namespace/name"): the same rendering onto an object nobody changed since is
    /// not sent again, so a periodic reconcile of a settled rack sends nothing.
    private let applied = Mutex<[String: (rendering: JSON, resourceVersion: String)]>([:])

    /// With `informers` nil the service makes (and stops) its own.
    public init(client: KubeClient, settings: Settings, informers: SharedInformers? = nil, logger: Logger) {
        self.informers = informers ?? SharedInformers(client: client, namespace: settings.namespace, logger: logger)
        self.ownsInformers = informers == nil
        self.client = client
        self.settings = settings
        self.renderer = RackRenderer(settings: settings.renderer)
        self.logger = logger
        self.metrics = OperatorMetrics(client: client, queue: self.queue)
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
        for rack in self.racks(of: world, in: namespace) { await self.queue.add(.rack(namespace: namespace, name: rack.name)) }
    }

    /// An object as its informer knows it; nil when it does not exist.
    func cached<Object: KubeObject>(_ type: Object.Type, namespace: String?, name: String) throws -> Object? {
        try self.informers.informer(Object.resource).get(namespace: namespace, name: name).map(Object.init(json:))
    }

    /// The racks of a world, as the informer knows them.
    func racks(of world: String, in namespace: String) -> [PylonRack] {
        let objects = self.informers.informer(Pylon.racks).objects
        return objects.compactMap { try? PylonRack(json: $0) }.filter { $0.metadata.namespace == namespace && $0.spec.world == world }
    }

    // MARK: - Reconciling

    /// Reconciles one key; answers when to look at it again though nothing changed (nil: only
    /// when something does).
    func reconcile(_ key: ReconcileKey) async throws -> Duration? {
        switch key {
        case .world(let namespace, let name):
            try await self.reconcileWorld(namespace: namespace, name: name)
            return nil
        case .rack(let namespace, let name):
            return try await self.reconcileRack(namespace: namespace, name: name)
        }
    }

    func reconcileRack(namespace: String, name: String) async throws -> Duration? {
        guard let rack = try self.cached(PylonRack.self, namespace: namespace, name: name) else { return nil }
        let finalizers = rack.metadata.finalizers ?? []
        if rack.metadata.deletionTimestamp != nil {
            guard finalizers.contains(Pylon.rackFinalizer) else { return nil }
            try await self.retire(rack, finalizers: finalizers)
            return nil
        }
        if !finalizers.contains(Pylon.rackFinalizer) {
            try await self.setFinalizers(rack, finalizers + [Pylon.rackFinalizer])
        }
        let generation = rack.metadata.generation ?? 0
        var status = PylonRack.Status(observedGeneration: generation)
        guard let world = try self.cached(PylonWorld.self, namespace: namespace, name: rack.spec.world) else {
            status.phase = "Pending"
            status.ready = "0/0"
            try await self.setStatus(of: rack, status, conditions: [
                Condition(type: "Ready", status: false, reason: "WorldNotFound", message: "PylonWorld \(rack.spec.world) does not exist in \(namespace); create it"),
            ])
            return nil
        }
        let objects: [any KubeObject]
        do { objects = try self.renderer.render(rack: rack, world: world) } catch let error as RackRenderer.RenderError {
            if rack.status?.phase != "Failed" || rack.status?.observedGeneration != generation {
                await self.event(on: rack, type: "Warning", reason: "InvalidSpec", message: error.description)
            }
            status.phase = "Failed"
            try await self.setStatus(of: rack, status, conditions: [Condition(type: "Ready", status: false, reason: "InvalidSpec", message: error.description)])
            return nil
        }
        var statefulSet: StatefulSet?
        for object in objects {
            let current = try await self.apply(object)
            if let current = current as? StatefulSet { statefulSet = current }
        }
        var (wanted, ready) = (statefulSet?.spec.replicas ?? 0, statefulSet?.status?.readyReplicas ?? 0)
        if rack.topology == .injected {
            // The user's own pods, which the webhook gave a sidecar.
            let pods = try await self.client.list(.pods, namespace: namespace, labelSelector: Pylon.labelSelector(SidecarInjector.labels(rack: name))).items
            wanted = pods.count
            ready = pods.filter { pod in pod[path: "status.conditions"]?.array?.contains { $0["type"] == "Ready" && $0["status"] == "True" } == true }.count
        }
        status.ready = "\(ready)/\(wanted)"
        status.phase = ready == wanted && wanted > 0 ? "Running" : "Pending"
        let caughtUp: Condition
        do {
            let lags = try await self.lag(world: world, rack: rack)
            let total = lags.reduce(0, +)
            status.lag = total
            status.partitions = lags.enumerated().map { PylonRack.PartitionLag(partition: $0.offset, lag: $0.element) }
            caughtUp = Condition(
                type: "CaughtUp", status: total <= self.settings.caughtUpLag, reason: total <= self.settings.caughtUpLag ? "LagBelowThreshold" : "Behind",
                message: "\(total) ops behind the world's log (threshold \(self.settings.caughtUpLag))"
            )
        } catch {
            caughtUp = Condition(type: "CaughtUp", status: nil, reason: "KafkaUnreachable", message: "cannot read the rack's progress from Kafka: \(error)")
        }
        if rack.status?.observedGeneration != generation {
            await self.event(on: rack, reason: "Reconciled", message: "generation \(generation): \(objects.count) objects applied")
        }
        try await self.setStatus(of: rack, status, conditions: [
            Condition(type: "Reconciled", status: true, reason: "Applied", message: "\(objects.count) objects applied"),
            Condition(type: "Ready", status: ready == wanted && wanted > 0, reason: ready == wanted ? "PodsReady" : "PodsNotReady", message: "\(ready) of \(wanted) pods ready"),
            caughtUp,
        ])
        // Lag and readiness change without events on the rack: look again later.
        return self.settings.resync
    }

    /// The rack's lag per partition: its consumer group's committed offsets against the log end.
    func lag(world: PylonWorld, rack: PylonRack) async throws -> [Int64] {
        if let cached = self.lagCache.withLock({ $0[rack.key] }), ContinuousClock.now - cached.at < self.settings.resync / 2 { return cached.lags }
        let (measure, brokers, topic, group) = (self.settings.kafka.lag, world.spec.kafka.bootstrapServers, world.topic, world.consumerGroup(rack: rack.name))
        let lags = try await Task.detached { try measure(brokers, topic, group) }.value
        self.lagCache.withLock { $0[rack.key] = (lags, .now) }
        return lags
    }

    /// Records a Kubernetes Event on `object` (best effort: an Event that cannot be written is logged).
    func event(on object: some KubeObject, type: String = "Normal", reason: String, message: String) async {
        guard let namespace = object.metadata.namespace, let name = object.metadata.name else { return }
        let now = Self.now()
        var metadata = ObjectMeta(namespace: namespace)
        metadata.generateName = "\(name)."
        let event = Event(
            metadata: metadata,
            involvedObject: .init(apiVersion: object.apiVersion, kind: object.kind, name: name, namespace: namespace, uid: object.metadata.uid, resourceVersion: object.metadata.resourceVersion),
            reason: reason, message: message, type: type, count: 1, firstTimestamp: now, lastTimestamp: now, source: .init(component: "pylon-operator")
        )
        do { _ = try await self.client.create(event) } catch {
            self.logger.debug("cannot record an event", metadata: ["object": "\(namespace)/\(name)", "reason": "\(reason)", "error": "\(error)"])
        }
    }

    /// A deleted rack: its consumer group leaves Kafka, the objects it owns are deleted, then the
    /// finalizer is released. While the world's Kafka cannot be reached the rack says so
    /// (condition `Retiring` False, reason `KafkaUnreachable`, and a Warning Event) and the
    /// reconcile fails, so it is retried with backoff; the annotation `pylon.io/skip-kafka-cleanup:
    /// "true"` retires it without the Kafka clean-up, saying so in an Event.
    func retire(_ rack: PylonRack, finalizers: [String]) async throws {
        let namespace = rack.metadata.namespace ?? ""
        let group = PylonWorld.consumerGroup(world: rack.spec.world, rack: rack.name)
        var retired = "consumer group \(group) removed from Kafka"
        if let world = try self.cached(PylonWorld.self, namespace: namespace, name: rack.spec.world) {
            let brokers = world.spec.kafka.bootstrapServers
            if rack.metadata.annotations?[Pylon.skipKafkaCleanup] == "true" {
                retired = "consumer group \(group) left in Kafka at \(brokers) (annotation \(Pylon.skipKafkaCleanup)); delete it there once Kafka is back"
                await self.event(on: rack, type: "Warning", reason: "KafkaCleanupSkipped", message: retired)
            } else {
                let retireGroup = self.settings.kafka.retire
                do {
                    try await Task.detached { try retireGroup(brokers, group) }.value
                } catch {
                    let message = "cannot delete consumer group \(group) from Kafka at \(brokers): \(error); retrying with backoff (to retire the rack without it, annotate it \(Pylon.skipKafkaCleanup)=true)"
                    let known = rack.status?.conditions?.contains { $0.type == "Retiring" && $0.status == "False" && $0.reason == "KafkaUnreachable" } == true
                    if !known { await self.event(on: rack, type: "Warning", reason: "RetireBlocked", message: message) }
                    var status = rack.status ?? PylonRack.Status()
                    status.phase = "Retiring"
                    try await self.setStatus(of: rack, status, conditions: [Condition(type: "Retiring", status: false, reason: "KafkaUnreachable", message: message)])
                    throw error
                }
                self.logger.info("retired the rack's consumer group", metadata: ["rack": "\(rack.key)", "group": "\(group)"])
            }
        }
        // What the rack owns, by owner reference — not by name or label, which a world of the
        // same name shares (owner references also let the garbage collector do this, where one
        // runs, though not before the finalizer is released). Listed afresh: a retirement is rare,
        // and an object made a moment ago may not be in an informer yet.
        for resource in [KubeResource.statefulSets, .jobs, .podDisruptionBudgets, .services, .configMaps] {
            let owned = try await self.client.list(resource, namespace: namespace, labelSelector: Pylon.labelSelector(Pylon.managed)).items.filter { object in
                object[path: "metadata.ownerReferences"]?.array?.contains { $0["uid"]?.string == rack.metadata.uid } == true
            }
            for object in owned {
                if let objectName = object[path: "metadata.name"]?.string { try await self.client.delete(resource, namespace: namespace, name: objectName) }
            }
        }
        await self.event(on: rack, reason: "Retired", message: "\(retired) and the rack's objects deleted")
        try await self.setFinalizers(rack, finalizers.filter { $0 != Pylon.rackFinalizer })
    }

    func reconcileWorld(namespace: String, name: String) async throws {
        guard let world = try self.cached(PylonWorld.self, namespace: namespace, name: name) else { return }
        let finalizers = world.metadata.finalizers ?? []
        let generation = world.metadata.generation ?? 0
        let racks = self.racks(of: name, in: namespace).map(\.name).sorted()
        var status = PylonWorld.Status(observedGeneration: generation, topic: world.topic, racks: racks.count)
        if world.metadata.deletionTimestamp != nil {
            guard finalizers.contains(Pylon.worldFinalizer) else { return }
            guard racks.isEmpty else {
                if world.status?.phase != "Terminating" {
                    await self.event(on: world, type: "Warning", reason: "DeletionBlocked", message: "\(racks.count) racks still belong to this world; delete them first")
                }
                status.phase = "Terminating"
                try await self.setStatus(of: world, status, conditions: [
                    Condition(type: "DeletionBlocked", status: true, reason: "RacksRemain", message: "\(racks.count) racks still belong to this world (\(racks.joined(separator: ", "))); delete them first"),
                ])
                return
            }
            try await self.setFinalizers(world, finalizers.filter { $0 != Pylon.worldFinalizer })
            return
        }
        if !finalizers.contains(Pylon.worldFinalizer) {
            try await self.setFinalizers(world, finalizers + [Pylon.worldFinalizer])
        }
        for object in self.renderer.worldObjects(world: world) { _ = try await self.apply(object) }
        status.phase = "Ready"
        try await self.setStatus(of: world, status, conditions: [Condition(type: "Ready", status: true, reason: "Reconciled", message: "\(racks.count) racks")])
    }

    /// Server-side applies a rendered object and answers the object as it is now — without a
    /// write when the same rendering was applied before and nobody changed the object since.
    func apply<Object: KubeObject>(_ object: Object) async throws -> Object {
        let key = "\(Object.resource.plural)/\(object.key)"
        let rendering = object.json
        if let last = self.applied.withLock({ $0[key] }), last.rendering == rendering,
           let current = try self.cached(Object.self, namespace: object.metadata.namespace, name: object.metadata.name ?? ""),
           current.metadata.resourceVersion == last.resourceVersion {
            return current
        }
        let current = try await self.client.apply(object)
        self.applied.withLock { $0[key] = (rendering, current.metadata.resourceVersion ?? "") }
        return current
    }

    /// Replaces an object's finalizers (a merge patch replaces the whole list), on the version
    /// read: if the object changed since (another finalizer came or went), the API server refuses
    /// (409) and the reconcile is retried with the informer's newer copy.
    func setFinalizers(_ object: some KubeObject, _ finalizers: [String]) async throws {
        _ = try await self.client.patch(type(of: object).resource, namespace: object.metadata.namespace, name: object.metadata.name ?? "", merge: [
            "metadata": ["finalizers": .array(finalizers.map { .string($0) }), "resourceVersion": .string(object.metadata.resourceVersion ?? "")],
        ])
    }

    // MARK: - Status

    /// Applies the status subresource when it changed: `status` with these conditions, each
    /// keeping its lastTransitionTime while its status does not change. Only the status is sent.
    func setStatus<Object: PylonObject>(of object: Object, _ status: Object.Status, conditions: [Condition]) async throws {
        var status = status
        status.conditions = conditions.stamped(generation: status.observedGeneration ?? 0, previous: object.status?.conditions ?? [], now: Self.now())
        guard status != object.status else { return }
        var patch = object
        patch.metadata = ObjectMeta(name: object.metadata.name, namespace: object.metadata.namespace)
        patch.status = status
        var body = patch.json
        body["spec"] = nil
        _ = try await self.client.apply(Object.resource, namespace: object.metadata.namespace, name: object.metadata.name ?? "", body, subresource: "status")
    }

    private static func now() -> String { ISO8601DateFormatter().string(from: Date()) }
}
