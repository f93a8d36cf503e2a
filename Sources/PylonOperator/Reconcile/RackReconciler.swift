import Foundation
import Logging
import Shared
import Synchronization

/// Reconciles PylonRacks: renders a rack into its objects and applies them, reports truthful
/// status (pods ready, lag from Kafka, conditions), and retires a deleted rack. Answers when to
/// look again: a rack's lag and readiness change without events.
final class RackReconciler: Sendable {
    let context: ReconcileContext
    let renderer: RackRenderer
    let settings: PylonOperatorService.Settings
    /// Each rack's lag and when it was read: a rack re-rendered because a sibling came or went
    /// does not ask Kafka again so soon.
    private let lagCache = Mutex<[String: (lags: [Int64], at: ContinuousClock.Instant)]>([:])

    init(context: ReconcileContext, renderer: RackRenderer, settings: PylonOperatorService.Settings) {
        self.context = context
        self.renderer = renderer
        self.settings = settings
    }

    func reconcile(namespace: String, name: String) async throws -> Duration? {
        guard let rack = try self.context.cached(PylonRack.self, namespace: namespace, name: name) else { return nil }
        let finalizers = rack.metadata.finalizers ?? []
        if rack.metadata.deletionTimestamp != nil {
            guard finalizers.contains(Pylon.rackFinalizer) else { return nil }
            try await self.retire(rack, finalizers: finalizers)
            return nil
        }
        if !finalizers.contains(Pylon.rackFinalizer) {
            try await self.context.setFinalizers(rack, finalizers + [Pylon.rackFinalizer])
        }
        let generation = rack.metadata.generation ?? 0
        var status = PylonRack.Status(observedGeneration: generation)
        guard let world = try self.context.cached(PylonWorld.self, namespace: namespace, name: rack.spec.world) else {
            status.phase = "Pending"
            status.ready = "0/0"
            try await self.context.setStatus(of: rack, status, conditions: [
                Condition(type: "Ready", status: false, reason: "WorldNotFound", message: "PylonWorld \(rack.spec.world) does not exist in \(namespace); create it"),
            ])
            return nil
        }
        let objects: [any KubeObject]
        let snapshotSource = try rack.spec.catchUp?.from == .snapshot
            ? rack.spec.catchUp?.rack.flatMap { try self.context.cached(PylonRack.self, namespace: namespace, name: $0) } : nil
        do { objects = try self.renderer.render(rack: rack, world: world, snapshotSource: snapshotSource) } catch let error as RackRenderer.RenderError {
            if rack.status?.phase != "Failed" || rack.status?.observedGeneration != generation {
                await self.context.event(on: rack, type: "Warning", reason: "InvalidSpec", message: error.description)
            }
            status.phase = "Failed"
            try await self.context.setStatus(of: rack, status, conditions: [Condition(type: "Ready", status: false, reason: "InvalidSpec", message: error.description)])
            return nil
        }
        var statefulSet: StatefulSet?
        for object in objects {
            let current = try await self.context.apply(object)
            if let current = current as? StatefulSet { statefulSet = current }
        }
        var (wanted, ready) = (statefulSet?.spec.replicas ?? 0, statefulSet?.status?.readyReplicas ?? 0)
        if rack.topology == .injected {
            // The user's own pods, which the webhook gave a sidecar.
            let pods = try await self.context.client.list(.pods, namespace: namespace, labelSelector: Pylon.labelSelector(SidecarInjector.labels(rack: name))).items
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
            await self.context.event(on: rack, reason: "Reconciled", message: "generation \(generation): \(objects.count) objects applied")
        }
        var conditions = [
            Condition(type: "Reconciled", status: true, reason: "Applied", message: "\(objects.count) objects applied"),
            Condition(type: "Ready", status: ready == wanted && wanted > 0, reason: ready == wanted ? "PodsReady" : "PodsNotReady", message: "\(ready) of \(wanted) pods ready"),
            caughtUp,
        ]
        if let source = rack.spec.catchUp?.rack, rack.spec.catchUp?.from == .snapshot {
            conditions.append(Self.snapshotCondition(source: source, caughtUp: caughtUp))
        }
        try await self.context.setStatus(of: rack, status, conditions: conditions)
        // Lag and readiness change without events on the rack: look again later.
        return self.settings.resync
    }

    /// How a rack catching up from a snapshot stands: the sidecars load it, then apply the log
    /// from its offsets; done once the rack is CaughtUp. The load's own progress (keys, bytes,
    /// rate) is each sidecar's: `PYLON INFO`, the `pylon_snapshot_*` metrics, its logs.
    static func snapshotCondition(source: String, caughtUp: Condition) -> Condition {
        caughtUp.status == "True"
            ? Condition(type: "SnapshotCatchUp", status: true, reason: "CaughtUp", message: "started from a snapshot of rack \(source); now applies the log")
            : Condition(
                type: "SnapshotCatchUp", status: false, reason: "Loading",
                message: "the sidecars load a snapshot of rack \(source), then apply the log from its offsets (progress: PYLON INFO snapshot_*, metrics pylon_snapshot_*)"
            )
    }

    /// The rack's lag per partition: its consumer group's committed offsets against the log end.
    func lag(world: PylonWorld, rack: PylonRack) async throws -> [Int64] {
        if let cached = self.lagCache.withLock({ $0[rack.key] }), ContinuousClock.now - cached.at < self.settings.resync / 2 { return cached.lags }
        let (measure, brokers, topic, group) = (self.settings.kafka.lag, world.spec.kafka.bootstrapServers, world.topic, world.consumerGroup(rack: rack.name))
        let lags = try await Blocking.run { try measure(brokers, topic, group) }
        self.lagCache.withLock { $0[rack.key] = (lags, .now) }
        return lags
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
        if let world = try self.context.cached(PylonWorld.self, namespace: namespace, name: rack.spec.world) {
            let brokers = world.spec.kafka.bootstrapServers
            if rack.metadata.annotations?[Pylon.skipKafkaCleanup] == "true" {
                retired = "consumer group \(group) left in Kafka at \(brokers) (annotation \(Pylon.skipKafkaCleanup)); delete it there once Kafka is back"
                await self.context.event(on: rack, type: "Warning", reason: "KafkaCleanupSkipped", message: retired)
            } else {
                let retireGroup = self.settings.kafka.retire
                do {
                    try await Blocking.run { try retireGroup(brokers, group) }
                } catch {
                    let message = "cannot delete consumer group \(group) from Kafka at \(brokers): \(error); retrying with backoff (to retire the rack without it, annotate it \(Pylon.skipKafkaCleanup)=true)"
                    let known = rack.status?.conditions?.contains { $0.type == "Retiring" && $0.status == "False" && $0.reason == "KafkaUnreachable" } == true
                    if !known { await self.context.event(on: rack, type: "Warning", reason: "RetireBlocked", message: message) }
                    var status = rack.status ?? PylonRack.Status()
                    status.phase = "Retiring"
                    try await self.context.setStatus(of: rack, status, conditions: [Condition(type: "Retiring", status: false, reason: "KafkaUnreachable", message: message)])
                    throw error
                }
                self.context.logger.info("retired the rack's consumer group", metadata: ["rack": "\(rack.key)", "group": "\(group)"])
            }
        }
        // What the rack owns, by owner reference — not by name or label, which a world of the
        // same name shares (owner references also let the garbage collector do this, where one
        // runs, though not before the finalizer is released). Listed afresh: a retirement is rare,
        // and an object made a moment ago may not be in an informer yet.
        for resource in [KubeResource.statefulSets, .jobs, .podDisruptionBudgets, .services, .configMaps] {
            let owned = try await self.context.client.list(resource, namespace: namespace, labelSelector: Pylon.labelSelector(Pylon.managed)).items.filter { object in
                object[path: "metadata.ownerReferences"]?.array?.contains { $0["uid"]?.string == rack.metadata.uid } == true
            }
            for object in owned {
                if let objectName = object[path: "metadata.name"]?.string { try await self.context.client.delete(resource, namespace: namespace, name: objectName) }
            }
        }
        await self.context.event(on: rack, reason: "Retired", message: "\(retired) and the rack's objects deleted")
        try await self.context.setFinalizers(rack, finalizers.filter { $0 != Pylon.rackFinalizer })
    }
}
