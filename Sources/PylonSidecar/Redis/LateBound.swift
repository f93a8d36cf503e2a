import Synchronization

/// A value set once after initialisation (when a service starts), read from any thread.
final class LateBound<Value: Sendable>: Sendable {
    private let storage = Mutex<Value?>(nil)

    init() {}

    func set(_ value: Value) { self.storage.withLock { $0 = value } }

    var value: Value? { self.storage.withLock { $0 } }
}
