import Foundation
import Logging
import Synchronization

/// What the reconcilers share: the API client, the process's informers, and the writes every
/// kind's reconcile makes the same way — server-side apply (skipped when nothing changed),
/// finalizers on the version read, status only when it differs, Events.
final class ReconcileContext: Sendable {
    let client: KubeClient
    let informers: SharedInformers
    let logger: Logger
    /// What the operator last applied to each object and the resourceVersion that left it with
    /// (by "plural/namespace/name"): the same rendering onto an object nobody changed since is
    /// not sent again, so a periodic reconcile of a settled rack sends nothing.
    private let applied = Mutex<[String: (rendering: JSON, resourceVersion: String)]>([:])

    init(client: KubeClient, informers: SharedInformers, logger: Logger) {
        self.client = client
        self.informers = informers
        self.logger = logger
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

    static func now() -> String { ISO8601DateFormatter().string(from: Date()) }
}
