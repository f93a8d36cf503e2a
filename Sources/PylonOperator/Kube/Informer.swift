import Logging
import Synchronization

/// A watched resource's objects kept in memory, as client-go's informers keep them: reconcilers
/// read from here instead of asking the API server, so a settled object costs no request at all.
/// The store follows the watch — a (re)list replaces it, events update it — and `onEvent` hears
/// each event after the store has it.
public final class Informer: Sendable {
    public let resource: KubeResource
    private let state = State()
    private let watch: KubeWatch

    private final class State: Sendable {
        let store = Mutex<[String: JSON]>([:])
        let synced = Atomic<Bool>(false)
    }

    public init(client: KubeClient, resource: KubeResource, namespace: String?, labelSelector: String? = nil, logger: Logger, onEvent: @escaping @Sendable (KubeWatch.Event) -> Void) {
        self.resource = resource
        let state = self.state
        self.watch = KubeWatch(client: client, resource: resource, namespace: namespace, labelSelector: labelSelector, logger: logger) { event in
            func key(_ object: JSON) -> String { "\(object[path: "metadata.namespace"]?.string ?? "")/\(object[path: "metadata.name"]?.string ?? "")" }
            state.store.withLock { store in
                switch event {
                case .listed(let items): store = Dictionary(items.map { (key($0), $0) }) { $1 }
                case .added(let object), .modified(let object): store[key(object)] = object
                case .deleted(let object): store[key(object)] = nil
                }
            }
            if case .listed = event { state.synced.store(true, ordering: .releasing) }
            onEvent(event)
        }
    }

    public func start() { self.watch.start() }
    public func stop() { self.watch.stop() }

    /// How many times it listed (the first list, and each relist after a 410).
    public var lists: Int { self.watch.lists.load(ordering: .relaxed) }

    /// True once the first list is in: before, an absent object may merely not be known yet.
    public var hasSynced: Bool { self.state.synced.load(ordering: .acquiring) }

    public func get(namespace: String?, name: String) -> JSON? { self.state.store.withLock { $0["\(namespace ?? "")/\(name)"] } }

    /// The object from memory, or from the API server when the informer does not have it (it
    /// was created a moment ago, or the first list is not in yet).
    public func get<Object: KubeObject>(_ type: Object.Type, namespace: String, name: String, orAsk client: KubeClient) async throws -> Object? {
        if let known = self.get(namespace: namespace, name: name) { return try Object(json: known) }
        return try await client.get(type, namespace: namespace, name: name)
    }

    public var objects: [JSON] { self.state.store.withLock { Array($0.values) } }
}
