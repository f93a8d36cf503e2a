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

/// Turns PylonWorlds and PylonRacks into running racks: watches both (and the StatefulSets it
/// owns), queues what changed, and reconciles each key idempotently — render, server-side
/// apply, truthful status — retrying failures with backoff.
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
    private let watches = Mutex<[KubeWatch]>([])
    private let workers = Mutex<[Task<Void, Never>]>([])
    /// The generation of each world last seen: its racks are re-rendered only when its spec
    /// changed, not on each of its status updates.
    private let worldGenerations = Mutex<[String: Int]>([:])
    /// Every rack, as the watch last saw it (by "namespace/name"): who a world's racks are,
    /// without listing them from the API server on each reconcile.
    private let knownRacks = Mutex<[String: JSON]>([:])
    /// Each rack's lag and when it was read: a rack re-rendered because a sibling came or went
    /// does not ask Kafka again so soon.
    private let lagCache = Mutex<[String: (lags: [Int64], at: ContinuousClock.Instant)]>([:])
    /// Reconciles done and failed, for metrics and tests.
    public let reconciles = Atomic<Int>(0)
    public let failures = Atomic<Int>(0)
    /// Total time spent reconciling, in microseconds (with `reconciles`, the mean duration).
    public let reconcileMicroseconds = Atomic<Int>(0)

    public init(client: KubeClient, settings: Settings, logger: Logger) {
        self.client = client
        self.settings = settings
        self.renderer = RackRenderer(settings: settings.renderer)
        self.logger = logger
    }

    // MARK: - Running

    public func start() {
        let namespace = self.settings.namespace
        let watches = [
            KubeWatch(client: self.client, resource: Pylon.worlds, namespace: namespace, logger: self.logger) { [self] in self.observed($0, as: Pylon.worlds) },
            KubeWatch(client: self.client, resource: Pylon.racks, namespace: namespace, logger: self.logger) { [self] in self.observed($0, as: Pylon.racks) },
            KubeWatch(client: self.client, resource: .statefulSets, namespace: namespace, logger: self.logger) { [self] in self.observed($0, as: .statefulSets) },
        ]
        self.watches.withLock { $0 = watches }
        for watch in watches { watch.start() }
        self.workers.withLock {
            $0 = (0..<max(1, self.settings.workers)).map { _ in Task { [self] in
                while let key = await self.queue.next() {
                    let started = ContinuousClock.now
                    defer {
                        let elapsed = ContinuousClock.now - started
                        self.reconcileMicroseconds.add(Int(elapsed.components.seconds) * 1_000_000 + Int(elapsed.components.attoseconds / 1_000_000_000_000), ordering: .relaxed)
                    }
                    var failed = false
                    do { try await self.reconcile(key) } catch {
                        failed = true
                        self.failures.add(1, ordering: .relaxed)
                        self.logger.warning("reconcile failed; retrying with backoff", metadata: ["object": "\(key)", "error": "\(error)"])
                    }
                    self.reconciles.add(1, ordering: .relaxed)
                    await self.queue.done(key, failed: failed)
                }
            } }
        }
    }

    /// Prometheus text: reconciles, failures, time spent, queue depth.
    public var metrics: String {
        let depth = self.queue.depth.load(ordering: .relaxed)
        return """
        # TYPE pylon_operator_reconciles_total counter
        pylon_operator_reconciles_total \(self.reconciles.load(ordering: .relaxed))
        # TYPE pylon_operator_reconcile_errors_total counter
        pylon_operator_reconcile_errors_total \(self.failures.load(ordering: .relaxed))
        # TYPE pylon_operator_reconcile_seconds_total counter
        pylon_operator_reconcile_seconds_total \(Double(self.reconcileMicroseconds.load(ordering: .relaxed)) / 1e6)
        # TYPE pylon_operator_queue_depth gauge
        pylon_operator_queue_depth \(depth)

        """
    }

    public func stop() async {
        for watch in self.watches.withLock({ $0 }) { watch.stop() }
        await self.queue.close()
        for worker in self.workers.withLock({ $0 }) { await worker.value }
    }

    /// Queues what a watch event concerns: the object itself; for a rack, its world (its rack
    /// count); for a world whose spec changed, every rack of it (their configuration); for a
    /// StatefulSet, its rack.
    private func observed(_ event: KubeWatch.Event, as resource: KubeResource) {
        let objects: [JSON]
        switch event {
        case .listed(let items): objects = items
        case .added(let object), .modified(let object), .deleted(let object): objects = [object]
        }
        if resource == Pylon.racks { self.remember(event) }
        for object in objects {
            guard let namespace = object[path: "metadata.namespace"]?.string, let name = object[path: "metadata.name"]?.string else { continue }
            Task {
                switch resource {
                case Pylon.worlds:
                    await self.queue.add(.world(namespace: namespace, name: name))
                    let generation = object[path: "metadata.generation"]?.int ?? 0
                    let changed = self.worldGenerations.withLock { seen in
                        defer { seen["\(namespace)/\(name)"] = generation }
                        return seen["\(namespace)/\(name)"] != generation
                    }
                    if changed { await self.queueRacks(of: name, in: namespace) }
                case Pylon.racks:
                    await self.queue.add(.rack(namespace: namespace, name: name))
                    if let world = object[path: "spec.world"]?.string { await self.queue.add(.world(namespace: namespace, name: world)) }
                default:
                    if let rack = object[path: "metadata.labels"]?["pylon.io/rack"]?.string { await self.queue.add(.rack(namespace: namespace, name: rack)) }
                }
            }
        }
    }

    private func queueRacks(of world: String, in namespace: String) async {
        for rack in self.racks(of: world, in: namespace) {
            if let name = rack[path: "metadata.name"]?.string { await self.queue.add(.rack(namespace: namespace, name: name)) }
        }
    }

    private func remember(_ event: KubeWatch.Event) {
        func key(_ object: JSON) -> String { "\(object[path: "metadata.namespace"]?.string ?? "")/\(object[path: "metadata.name"]?.string ?? "")" }
        self.knownRacks.withLock { racks in
            switch event {
            case .listed(let items): racks = Dictionary(items.map { (key($0), $0) }) { $1 }
            case .added(let object), .modified(let object): racks[key(object)] = object
            case .deleted(let object): racks[key(object)] = nil
            }
        }
    }

    /// The racks of a world, as the watch knows them.
    func racks(of world: String, in namespace: String) -> [JSON] {
        self.knownRacks.withLock { racks in
            racks.values.filter { $0[path: "metadata.namespace"]?.string == namespace && $0[path: "spec.world"]?.string == world }
        }
    }

    // MARK: - Reconciling

    func reconcile(_ key: ReconcileKey) async throws {
        switch key {
        case .world(let namespace, let name): try await self.reconcileWorld(namespace: namespace, name: name)
        case .rack(let namespace, let name): try await self.reconcileRack(namespace: namespace, name: name)
        }
    }

    func reconcileRack(namespace: String, name: String) async throws {
        let rack: JSON
        do { rack = try await self.client.get(Pylon.racks, namespace: namespace, name: name) } catch let error as KubeError where error.isNotFound {
            return
        }
        let finalizers = rack[path: "metadata.finalizers"]?.array?.compactMap(\.string) ?? []
        if rack[path: "metadata.deletionTimestamp"] != nil {
            guard finalizers.contains(Pylon.rackFinalizer) else { return }
            try await self.retire(rack, namespace: namespace, name: name, finalizers: finalizers)
            return
        }
        if !finalizers.contains(Pylon.rackFinalizer) {
            try await self.setFinalizers(Pylon.racks, namespace: namespace, name: name, finalizers + [Pylon.rackFinalizer])
        }
        let worldName = rack[path: "spec.world"]?.string ?? ""
        let generation = rack[path: "metadata.generation"]?.int ?? 0
        let world: JSON
        do { world = try await self.client.get(Pylon.worlds, namespace: namespace, name: worldName) } catch let error as KubeError where error.isNotFound {
            try await self.setStatus(Pylon.racks, rack, phase: "Pending", generation: generation, extra: ["ready": "0/0"], conditions: [
                Condition(type: "Ready", status: false, reason: "WorldNotFound", message: "PylonWorld \(worldName) does not exist in \(namespace); create it"),
            ])
            return
        }
        let objects: [(KubeResource, JSON)]
        do { objects = try self.renderer.render(rack: rack, world: world) } catch let error as RackRenderer.RenderError {
            await self.event(on: rack, type: "Warning", reason: "InvalidSpec", message: error.description)
            try await self.setStatus(Pylon.racks, rack, phase: "Failed", generation: generation, extra: [:], conditions: [
                Condition(type: "Ready", status: false, reason: "InvalidSpec", message: error.description),
            ])
            return
        }
        var statefulSet: JSON = [:]
        for (resource, object) in objects {
            let applied = try await self.apply(resource, object)
            if resource == .statefulSets { statefulSet = applied }
        }
        let wanted = statefulSet[path: "spec.replicas"]?.int ?? 0
        let ready = statefulSet[path: "status.readyReplicas"]?.int ?? 0
        var extra: [String: JSON] = ["ready": .string("\(ready)/\(wanted)")]
        let caughtUp: Condition
        do {
            let lags = try await self.lag(world: world, rack: name)
            let total = lags.reduce(0, +)
            extra["lag"] = .number(Double(total))
            extra["partitions"] = .array(lags.enumerated().map { ["partition": .number(Double($0.offset)), "lag": .number(Double($0.element))] })
            caughtUp = Condition(
                type: "CaughtUp", status: total <= self.settings.caughtUpLag, reason: total <= self.settings.caughtUpLag ? "LagBelowThreshold" : "Behind",
                message: "\(total) ops behind the world's log (threshold \(self.settings.caughtUpLag))"
            )
        } catch {
            caughtUp = Condition(type: "CaughtUp", status: nil, reason: "KafkaUnreachable", message: "cannot read the rack's progress from Kafka: \(error)")
        }
        if rack[path: "status.observedGeneration"]?.int != generation {
            await self.event(on: rack, reason: "Reconciled", message: "generation \(generation): \(objects.count) objects applied")
        }
        try await self.setStatus(Pylon.racks, rack, phase: ready == wanted && wanted > 0 ? "Running" : "Pending", generation: generation, extra: extra, conditions: [
            Condition(type: "Reconciled", status: true, reason: "Applied", message: "\(objects.count) objects applied"),
            Condition(type: "Ready", status: ready == wanted && wanted > 0, reason: ready == wanted ? "PodsReady" : "PodsNotReady", message: "\(ready) of \(wanted) pods ready"),
            caughtUp,
        ])
        // Lag and readiness change without events on the rack: look again later.
        await self.queue.add(.rack(namespace: namespace, name: name), after: self.settings.resync)
    }

    /// The rack's lag per partition: its consumer group's committed offsets against the log end.
    func lag(world: JSON, rack: String) async throws -> [Int64] {
        guard let brokers = world[path: "spec.kafka.bootstrapServers"]?.string, let worldName = world[path: "metadata.name"]?.string else { return [] }
        let topic = world[path: "spec.topic"]?.string ?? "pylon.\(worldName).ops"
        let key = "\(world[path: "metadata.namespace"]?.string ?? "")/\(rack)"
        if let cached = self.lagCache.withLock({ $0[key] }), ContinuousClock.now - cached.at < self.settings.resync / 2 { return cached.lags }
        let measure = self.settings.kafka.lag
        let lags = try await Task.detached { try measure(brokers, topic, "pylon.\(worldName).\(rack)") }.value
        self.lagCache.withLock { $0[key] = (lags, .now) }
        return lags
    }

    /// Records a Kubernetes Event on `object` (best effort: an Event that cannot be written is logged).
    func event(on object: JSON, type: String = "Normal", reason: String, message: String) async {
        guard let namespace = object[path: "metadata.namespace"]?.string, let name = object[path: "metadata.name"]?.string else { return }
        let now = ISO8601DateFormatter().string(from: Date())
        let event: JSON = [
            "apiVersion": "v1", "kind": "Event", "metadata": ["generateName": .string("\(name)."), "namespace": .string(namespace)],
            "involvedObject": [
                "apiVersion": object["apiVersion"] ?? "", "kind": object["kind"] ?? "", "name": .string(name), "namespace": .string(namespace),
                "uid": object[path: "metadata.uid"] ?? "", "resourceVersion": object[path: "metadata.resourceVersion"] ?? "",
            ],
            "reason": .string(reason), "message": .string(message), "type": .string(type), "count": 1,
            "firstTimestamp": .string(now), "lastTimestamp": .string(now), "source": ["component": "pylon-operator"],
        ]
        do { _ = try await self.client.create(.events, namespace: namespace, event) } catch {
            self.logger.debug("cannot record an event", metadata: ["object": "\(namespace)/\(name)", "reason": "\(reason)", "error": "\(error)"])
        }
    }

    /// A deleted rack: its consumer group leaves Kafka, its objects are deleted, then the
    /// finalizer is released.
    func retire(_ rack: JSON, namespace: String, name: String, finalizers: [String]) async throws {
        let worldName = rack[path: "spec.world"]?.string ?? ""
        if let world = try? await self.client.get(Pylon.worlds, namespace: namespace, name: worldName), let brokers = world[path: "spec.kafka.bootstrapServers"]?.string {
            let group = "pylon.\(worldName).\(name)"
            let retireGroup = self.settings.kafka.retire
            try await Task.detached { try retireGroup(brokers, group) }.value
            self.logger.info("retired the rack's consumer group", metadata: ["rack": "\(namespace)/\(name)", "group": "\(group)"])
        }
        await self.event(on: rack, reason: "Retired", message: "consumer group pylon.\(worldName).\(name) removed from Kafka and the rack's objects deleted")
        // Everything made for the rack carries its labels (owner references would let the garbage
        // collector do this too, where one runs).
        let selector = "app.kubernetes.io/instance=\(name),app.kubernetes.io/managed-by=pylon-operator"
        for resource in [KubeResource.statefulSets, .jobs, .podDisruptionBudgets, .services, .configMaps] {
            for object in try await self.client.list(resource, namespace: namespace, labelSelector: selector).items {
                if let objectName = object[path: "metadata.name"]?.string { try await self.client.delete(resource, namespace: namespace, name: objectName) }
            }
        }
        try await self.setFinalizers(Pylon.racks, namespace: namespace, name: name, finalizers.filter { $0 != Pylon.rackFinalizer })
    }

    func reconcileWorld(namespace: String, name: String) async throws {
        let world: JSON
        do { world = try await self.client.get(Pylon.worlds, namespace: namespace, name: name) } catch let error as KubeError where error.isNotFound {
            return
        }
        let finalizers = world[path: "metadata.finalizers"]?.array?.compactMap(\.string) ?? []
        let generation = world[path: "metadata.generation"]?.int ?? 0
        let racks = self.racks(of: name, in: namespace).compactMap { $0[path: "metadata.name"]?.string }.sorted()
        if world[path: "metadata.deletionTimestamp"] != nil {
            guard finalizers.contains(Pylon.worldFinalizer) else { return }
            guard racks.isEmpty else {
                if world[path: "status.phase"]?.string != "Terminating" {
                    await self.event(on: world, type: "Warning", reason: "DeletionBlocked", message: "\(racks.count) racks still belong to this world; delete them first")
                }
                try await self.setStatus(Pylon.worlds, world, phase: "Terminating", generation: generation, extra: ["racks": .number(Double(racks.count))], conditions: [
                    Condition(type: "DeletionBlocked", status: true, reason: "RacksRemain", message: "\(racks.count) racks still belong to this world (\(racks.joined(separator: ", "))); delete them first"),
                ])
                return
            }
            try await self.setFinalizers(Pylon.worlds, namespace: namespace, name: name, finalizers.filter { $0 != Pylon.worldFinalizer })
            return
        }
        if !finalizers.contains(Pylon.worldFinalizer) {
            try await self.setFinalizers(Pylon.worlds, namespace: namespace, name: name, finalizers + [Pylon.worldFinalizer])
        }
        for (resource, object) in self.renderer.worldObjects(world: world) { _ = try await self.apply(resource, object) }
        try await self.setStatus(Pylon.worlds, world, phase: "Ready", generation: generation, extra: [
            "racks": .number(Double(racks.count)), "topic": world[path: "spec.topic"] ?? .string("pylon.\(name).ops"),
        ], conditions: [Condition(type: "Ready", status: true, reason: "Reconciled", message: "\(racks.count) racks")])
    }

    /// Server-side applies a rendered object (it names its namespace and name).
    func apply(_ resource: KubeResource, _ object: JSON) async throws -> JSON {
        try await self.client.apply(resource, namespace: object[path: "metadata.namespace"]?.string, name: object[path: "metadata.name"]?.string ?? "", object)
    }

    /// Replaces an object's finalizers (a merge patch replaces the whole list).
    func setFinalizers(_ resource: KubeResource, namespace: String, name: String, _ finalizers: [String]) async throws {
        _ = try await self.client.patch(resource, namespace: namespace, name: name, merge: ["metadata": ["finalizers": .array(finalizers.map { .string($0) })]])
    }

    // MARK: - Status

    struct Condition {
        var type: String
        /// nil: Unknown.
        var status: Bool?
        var reason: String
        var message: String
    }

    /// Applies the status subresource: phase, observedGeneration, extra fields and conditions;
    /// a condition keeps its lastTransitionTime while its status does not change.
    func setStatus(_ resource: KubeResource, _ object: JSON, phase: String, generation: Int, extra: [String: JSON], conditions: [Condition]) async throws {
        let previous = Dictionary((object[path: "status.conditions"]?.array ?? []).compactMap { condition in
            condition["type"]?.string.map { ($0, condition) }
        }) { $1 }
        let now = ISO8601DateFormatter().string(from: Date())
        var status: [String: JSON] = extra
        status["phase"] = .string(phase)
        status["observedGeneration"] = .number(Double(generation))
        status["conditions"] = .array(conditions.map { condition in
            let value: JSON = condition.status.map { $0 ? "True" : "False" } ?? "Unknown"
            let since = previous[condition.type].flatMap { $0["status"] == value ? $0["lastTransitionTime"] : nil } ?? .string(now)
            return [
                "type": .string(condition.type), "status": value, "reason": .string(condition.reason), "message": .string(condition.message),
                "lastTransitionTime": since, "observedGeneration": .number(Double(generation)),
            ]
        })
        let patch: JSON = [
            "apiVersion": .string(Pylon.apiVersion), "kind": object["kind"] ?? "", "metadata": ["name": object[path: "metadata.name"] ?? "", "namespace": object[path: "metadata.namespace"] ?? ""],
            "status": .object(status),
        ]
        _ = try await self.client.apply(resource, namespace: object[path: "metadata.namespace"]?.string, name: object[path: "metadata.name"]?.string ?? "", patch, subresource: "status")
    }
}
