import Foundation

/// Reconciles PylonWorlds: the world's own objects (its sidecars' headless Service), its rack
/// count, and a deletion held while racks still belong to it.
final class WorldReconciler: Sendable {
    let context: ReconcileContext
    let renderer: RackRenderer

    init(context: ReconcileContext, renderer: RackRenderer) {
        self.context = context
        self.renderer = renderer
    }

    func reconcile(namespace: String, name: String) async throws -> Duration? {
        guard let world = try self.context.cached(PylonWorld.self, namespace: namespace, name: name) else { return nil }
        let finalizers = world.metadata.finalizers ?? []
        let generation = world.metadata.generation ?? 0
        let racks = self.context.racks(of: name, in: namespace).map(\.name).sorted()
        var status = PylonWorld.Status(observedGeneration: generation, topic: world.topic, racks: racks.count)
        if world.metadata.deletionTimestamp != nil {
            guard finalizers.contains(Pylon.worldFinalizer) else { return nil }
            guard racks.isEmpty else {
                if world.status?.phase != "Terminating" {
                    await self.context.event(on: world, type: "Warning", reason: "DeletionBlocked", message: "\(racks.count) racks still belong to this world; delete them first")
                }
                status.phase = "Terminating"
                try await self.context.setStatus(of: world, status, conditions: [
                    Condition(type: "DeletionBlocked", status: true, reason: "RacksRemain", message: "\(racks.count) racks still belong to this world (\(racks.joined(separator: ", "))); delete them first"),
                ])
                return nil
            }
            try await self.context.setFinalizers(world, finalizers.filter { $0 != Pylon.worldFinalizer })
            return nil
        }
        if !finalizers.contains(Pylon.worldFinalizer) {
            try await self.context.setFinalizers(world, finalizers + [Pylon.worldFinalizer])
        }
        for object in self.renderer.worldObjects(world: world) { _ = try await self.context.apply(object) }
        status.phase = "Ready"
        try await self.context.setStatus(of: world, status, conditions: [Condition(type: "Ready", status: true, reason: "Reconciled", message: "\(racks.count) racks")])
        return nil
    }
}
