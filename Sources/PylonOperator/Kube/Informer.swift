import Logging
import Synchronization

/// A watched resource's objects kept in memory, as client-go's informers keep them: reconcilers
/// read from here instead of asking the API server, so a settled object costs no request at all.
/// The store follows the watch — a (re)list replaces it, events update it — and each subscriber
/// hears each event after the store has it. One per kind per process (`SharedInformers`).
public final class Informer: Sendable {
    public typealias Handler = @Sendable (KubeWatch.Event) -> Void

    public let resource: KubeResource
    private let state = State()
    private let watch: KubeWatch

    private final class State: Sendable {
        /// The store and the subscribers, under one lock: a subscriber added while events flow
        /// hears the store as it is, then every later event, none twice.
        let store = Mutex<(objects: [String: JSON], handlers: [Int: Handler], nextID: Int)>(([:], [:], 0))
        let synced = Atomic<Bool>(false)
    }

    public init(client: KubeClient, resource: KubeResource, namespace: String?, labelSelector: String? = nil, logger: Logger, onEvent: Handler? = nil) {
        self.resource = resource
        let state = self.state
        self.watch = KubeWatch(client: client, resource: resource, namespace: namespace, labelSelector: labelSelector, logger: logger) { event in
            func key(_ object: JSON) -> String { "\(object[path: "metadata.namespace"]?.string ?? "")/\(object[path: "metadata.name"]?.string ?? "")" }
            let handlers = state.store.withLock { store in
                switch event {
                case .listed(let items): store.objects = Dictionary(items.map { (key($0), $0) }) { $1 }
                case .added(let object), .modified(let object): store.objects[key(object)] = object
                case .deleted(let object): store.objects[key(object)] = nil
                }
                if case .listed = event { state.synced.store(true, ordering: .releasing) }
                return Array(store.handlers.values)
            }
            for handler in handlers { handler(event) }
        }
        if let onEvent { _ = self.subscribe(onEvent) }
    }

    public func start() { self.watch.start() }
    public func stop() { self.watch.stop() }
    func requestStop() -> Bool { self.watch.requestStop() }
    func waitUntilStopped() { self.watch.waitUntilStopped() }

    /// Adds a subscriber; once the informer has listed, it first hears the objects known now
    /// (as a list), as client-go's shared informers replay their store to a late handler.
    public func subscribe(_ handler: @escaping Handler) -> Int {
        let (id, known) = self.state.store.withLock { store -> (Int, [JSON]?) in
            store.nextID += 1
            store.handlers[store.nextID] = handler
            return (store.nextID, self.state.synced.load(ordering: .acquiring) ? Array(store.objects.values) : nil)
        }
        if let known { handler(.listed(known)) }
        return id
    }

    public func unsubscribe(_ id: Int) {
        self.state.store.withLock { _ = $0.handlers.removeValue(forKey: id) }
    }

    /// How many times it listed (the first list, and each relist after a 410).
    public var lists: Int { self.watch.lists.load(ordering: .relaxed) }

    /// True once the first list is in: before, an absent object may merely not be known yet.
    public var hasSynced: Bool { self.state.synced.load(ordering: .acquiring) }

    public func get(namespace: String?, name: String) -> JSON? { self.state.store.withLock { $0.objects["\(namespace ?? "")/\(name)"] } }

    /// The object from memory, or from the API server when the informer does not have it (it
    /// was created a moment ago, or the first list is not in yet).
    public func get<Object: KubeObject>(_ type: Object.Type, namespace: String, name: String, orAsk client: KubeClient) async throws -> Object? {
        if let known = self.get(namespace: namespace, name: name) { return try Object(json: known) }
        return try await client.get(type, namespace: namespace, name: name)
    }

    public var objects: [JSON] { self.state.store.withLock { Array($0.objects.values) } }
}

/// The operator's informers, one per kind per process, shared by the reconcilers (while this
/// replica leads) and the webhook (on every replica): a kind is listed and watched once. Pylon's
/// own kinds are watched whole; the built-in kinds only where the operator's label is.
public final class SharedInformers: Sendable {
    let client: KubeClient
    let namespace: String?
    let logger: Logger
    private let informers = Mutex<[KubeResource: Informer]>([:])

    public init(client: KubeClient, namespace: String?, logger: Logger) {
        self.client = client
        self.namespace = namespace
        self.logger = logger
    }

    /// The kind's informer, started on first use.
    public func informer(_ resource: KubeResource) -> Informer {
        let (informer, made) = self.informers.withLock { informers -> (Informer, Bool) in
            if let informer = informers[resource] { return (informer, false) }
            let informer = Informer(
                client: self.client, resource: resource, namespace: self.namespace,
                labelSelector: resource.group == Pylon.worlds.group ? nil : Pylon.labelSelector(Pylon.managed), logger: self.logger
            )
            informers[resource] = informer
            return (informer, true)
        }
        if made { informer.start() }
        return informer
    }

    /// Watches running, by kind (what the API server is asked to keep open).
    public var watched: [KubeResource] { self.informers.withLock { Array($0.keys) } }

    /// Stops every watch at once (each ends within about a second), then waits for them.
    public func stop() {
        let stopping = self.informers.withLock { $0.values.filter { $0.requestStop() } }
        for informer in stopping { informer.waitUntilStopped() }
    }
}
