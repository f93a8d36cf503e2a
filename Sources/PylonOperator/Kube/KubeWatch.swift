import Foundation
import Logging
import Shared
import Synchronization

/// Keeps an informed view of one resource: lists it, then watches from the list's
/// resourceVersion with bookmarks; reconnects from the last version seen after a dropped
/// connection (backing off up to 8 s), and lists again when the server says that version is
/// gone (410) — so no change is missed, whatever happens to the connection or the server.
/// Runs on a thread of its own; `handler` is called on it, one event at a time.
public final class KubeWatch: Sendable {
    public enum Event: Sendable {
        /// Every object, after a (re)list: the handler should treat objects it knew and that are
        /// missing here as deleted.
        case listed([JSON])
        case added(JSON)
        case modified(JSON)
        case deleted(JSON)
    }

    private let client: KubeClient
    private let resource: KubeResource
    private let namespace: String?
    /// Only objects with these labels (`key=value,…`).
    private let labelSelector: String?
    private let handler: @Sendable (Event) -> Void
    private let logger: Logger
    private let running = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)
    /// Signalled by `stop`: ends a backoff wait at once.
    private let stopping = DispatchSemaphore(value: 0)
    /// How many times it listed (the first list included): for tests and metrics.
    public let lists = Atomic<Int>(0)

    public init(
        client: KubeClient, resource: KubeResource, namespace: String? = nil, labelSelector: String? = nil, logger: Logger,
        handler: @escaping @Sendable (Event) -> Void
    ) {
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.labelSelector = labelSelector
        self.handler = handler
        self.logger = logger
    }

    public func start() {
        self.running.store(true, ordering: .releasing)
        Blocking.thread(named: "pylon-watch-\(self.resource.plural)") { [self] in
            self.run()
            self.finished.signal()
        }
    }

    /// Stops and waits for the watch thread (within about a second).
    public func stop() {
        if self.requestStop() { self.finished.wait() }
    }

    /// Tells the watch thread to stop, without waiting; true when it was running (then
    /// `waitUntilStopped` must follow).
    func requestStop() -> Bool {
        guard self.running.exchange(false, ordering: .acquiringAndReleasing) else { return false }
        self.stopping.signal()
        return true
    }

    func waitUntilStopped() { self.finished.wait() }

    private var isRunning: Bool { self.running.load(ordering: .acquiring) }

    private func run() {
        var version = ""
        var backoff = 0.5
        while self.isRunning {
            do {
                if version.isEmpty {
                    version = try self.list()
                }
                version = try self.watch(from: version)
                backoff = 0.5
            } catch let error as KubeError where error.isGone {
                self.logger.info("watch: resourceVersion too old, listing again", metadata: ["resource": "\(self.resource.plural)"])
                version = ""
            } catch {
                guard self.isRunning else { break }
                self.logger.warning("watch: connection lost, reconnecting", metadata: ["resource": "\(self.resource.plural)", "error": "\(error)", "backoff_s": "\(backoff)"])
                _ = self.stopping.wait(timeout: .now() + backoff)
                backoff = min(backoff * 2, 8)
            }
        }
    }

    private func list() throws -> String {
        let path = self.client.path(self.resource, namespace: self.namespace) + (self.labelSelector.map { "?labelSelector=\(KubeClient.escape($0))" } ?? "")
        let response = try self.client.transfer("GET", path, timeoutSeconds: self.client.timeoutSeconds).perform()
        let list = try KubeClient.decode(response, method: "GET", path: path)
        self.lists.add(1, ordering: .relaxed)
        self.handler(.listed(list["items"]?.array ?? []))
        return list[path: "metadata.resourceVersion"]?.string ?? ""
    }

    /// One watch request, until the server ends it; returns the last resourceVersion seen.
    private func watch(from version: String) throws -> String {
        let path = self.client.path(self.resource, namespace: self.namespace) + "?watch=1&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion=\(version)"
            + (self.labelSelector.map { "&labelSelector=\(KubeClient.escape($0))" } ?? "")
        var transfer = self.client.transfer("GET", path, timeoutSeconds: 0)
        transfer.isCancelled = { [self] in !self.isRunning }
        var latest = version
        var pending = Data()
        var failure: Error?
        let response = try transfer.perform { chunk in
            // Events are JSON lines; a chunk may end in the middle of one.
            pending.append(chunk)
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = pending[pending.startIndex..<newline]
                pending.removeSubrange(pending.startIndex...newline)
                guard !line.isEmpty, let event = try? JSON(data: Data(line)) else { continue }
                let object = event["object"] ?? .null
                switch event["type"]?.string {
                case "ADDED": self.handler(.added(object))
                case "MODIFIED": self.handler(.modified(object))
                case "DELETED": self.handler(.deleted(object))
                case "BOOKMARK": break
                case "ERROR":
                    failure = KubeError(status: object["code"]?.int ?? 500, reason: object["reason"]?.string ?? "", message: object["message"]?.string ?? "watch error")
                    return false
                default: continue
                }
                if let version = object[path: "metadata.resourceVersion"]?.string { latest = version }
            }
            return true
        }
        if let failure { throw failure }
        if response.status >= 300 {
            throw KubeError(status: response.status, reason: "", message: "watch \(path) answered \(response.status)")
        }
        return latest
    }
}
