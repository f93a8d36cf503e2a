import Logging
import NIOCore
import Synchronization

/// Which primary serves each of the 16384 slots, as `CLUSTER SLOTS` last said.
struct ClusterTopology: Sendable {
    var version = 0
    var primaries: [HostPort] = []
    /// Index into `primaries` per slot; -1 when no node serves the slot.
    var owners = [Int16](repeating: -1, count: HashSlot.count)

    func owner(of slot: Int) -> HostPort? {
        let index = Int(self.owners[slot])
        return index >= 0 ? self.primaries[index] : nil
    }

    var coveredSlots: Int { self.owners.lazy.filter { $0 >= 0 }.count }

    /// Parses a `CLUSTER SLOTS` reply. `fallbackHost` stands in for a node that reports an empty host.
    init?(slotsReply: RESPValue, fallbackHost: String, version: Int) {
        guard let ranges = slotsReply.array else { return nil }
        self.version = version
        for range in ranges {
            guard let fields = range.array, fields.count >= 3, let start = fields[0].int, let end = fields[1].int,
                  let node = fields[2].array, node.count >= 2, let port = node[1].int,
                  start >= 0, end < HashSlot.count, start <= end else { return nil }
            let host = node[0].string.flatMap { $0.isEmpty || $0 == "?" ? nil : $0 } ?? fallbackHost
            let address = HostPort(host: host, port: port)
            var index = self.primaries.firstIndex(of: address)
            if index == nil {
                self.primaries.append(address)
                index = self.primaries.count - 1
            }
            for slot in start...end { self.owners[slot] = Int16(index!) }
        }
    }

    init() {}
}

/// A Redis Cluster: reads go to the owner of their key's slot, multi-key reads are split by slot
/// and reassembled (MGET, EXISTS), MOVED and ASK are followed without the client ever seeing them,
/// and the slot map is refreshed after a MOVED.
final class ClusterBackend: RedisBackend {
    let seeds: [HostPort]
    let context: RedisLayerContext
    private let topology = Mutex(ClusterTopology())
    private let topologyVersion = Atomic<Int>(0)
    private let refreshing = Atomic<Bool>(false)
    private let routers = LateBound<PerLoop<ProtocolRouters<ClusterRouter>>>()
    private let refresher = Mutex<Task<Void, Never>?>(nil)
    /// How often the slot map is re-read even without a MOVED (new nodes, failovers).
    let refreshInterval: Duration = .seconds(10)

    /// Every key Pylon may keep in this rack (`Bookkeeping.keys`), which DBSIZE does not count.
    let bookkeepingKeys: [String]

    init(seeds: [HostPort], context: RedisLayerContext, bookkeepingKeys: [String] = []) {
        self.seeds = seeds
        self.context = context
        self.bookkeepingKeys = bookkeepingKeys
    }

    private var logger: Logger { self.context.logger }

    func start() async throws {
        if await !self.refresh() {
            self.logger.warning("no cluster node answered CLUSTER SLOTS yet; retrying in the background", metadata: ["seeds": "\(self.seeds)"])
        }
        let routers = try await PerLoop(group: self.context.group) { [self] loop in
            let routers = ProtocolRouters { ClusterRouter(backend: self, eventLoop: loop, version: $0) }
            routers.resp2.connectToPrimaries()
            return routers
        }
        self.routers.set(routers)
        let interval = self.refreshInterval
        self.refresher.withLock {
            $0 = Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    guard let self else { return }
                    if await self.refresh() {
                        await self.routers.value?.forEach { $0.resp2.connectToPrimaries() }
                    }
                }
            }
        }
    }

    func shutdown() async {
        self.refresher.withLock { $0?.cancel() }
        await self.routers.value?.forEach { $0.forBoth { $0.close() } }
    }

    func router(on eventLoop: EventLoop, version: RESPVersion) -> BackendRouter {
        self.routers.value!.value(on: eventLoop)[version]
    }

    var currentTopology: ClusterTopology { self.topology.withLock { $0 } }
    var currentVersion: Int { self.topologyVersion.load(ordering: .acquiring) }

    func writeNode(forSlot slot: Int) -> HostPort? { self.currentTopology.owner(of: slot) }

    var writeNodes: [HostPort] { self.currentTopology.primaries }

    var isReady: Bool {
        let topology = self.currentTopology
        return topology.coveredSlots == HashSlot.count && topology.primaries.allSatisfy { self.context.status.isUp($0) }
    }

    var description: BackendDescription {
        let topology = self.currentTopology
        return BackendDescription(
            topology: "cluster",
            nodes: topology.primaries.map { ($0, "master", self.context.status.isUp($0)) },
            details: [("cluster_slots_covered", "\(topology.coveredSlots)"), ("cluster_topology_version", "\(topology.version)")]
        )
    }

    /// Asks for a new slot map soon (after a MOVED); concurrent requests collapse into one.
    func requestRefresh() {
        guard self.refreshing.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
        Task {
            _ = await self.refresh(alreadyFlagged: true)
        }
    }

    /// Reads `CLUSTER SLOTS` from a known node (or a seed). Returns whether it succeeded.
    @discardableResult
    func refresh(alreadyFlagged: Bool = false) async -> Bool {
        if !alreadyFlagged {
            guard self.refreshing.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return false }
        }
        defer { self.refreshing.store(false, ordering: .releasing) }
        let candidates = self.currentTopology.primaries + self.seeds
        var seen = Set<HostPort>()
        for address in candidates where seen.insert(address).inserted {
            do {
                let client = try await self.context.controlClient(to: address)
                defer { Task { await client.close() } }
                let reply = try await client.send("CLUSTER", "SLOTS")
                let version = self.currentVersion + 1
                guard let topology = ClusterTopology(slotsReply: reply, fallbackHost: address.host, version: version), !topology.primaries.isEmpty else {
                    self.logger.warning("unusable CLUSTER SLOTS reply", metadata: ["node": "\(address)", "reply": "\(reply.string ?? "?")"])
                    continue
                }
                let changed = self.topology.withLock { current -> Bool in
                    guard current.owners != topology.owners || current.primaries != topology.primaries else { return false }
                    current = topology
                    return true
                }
                if changed {
                    self.topologyVersion.store(version, ordering: .releasing)
                    self.logger.info("cluster slot map updated", metadata: [
                        "primaries": "\(topology.primaries.map(\.description).joined(separator: ","))", "slots": "\(topology.coveredSlots)",
                    ])
                }
                return true
            } catch {
                self.logger.debug("CLUSTER SLOTS failed", metadata: ["node": "\(address)", "error": "\(error)"])
            }
        }
        return false
    }
}

/// The cluster router of one event loop: one connection per node, a local copy of the slot map.
final class ClusterRouter: BackendRouter {
    private unowned let backend: ClusterBackend
    private let eventLoop: EventLoop
    private let version: RESPVersion
    private var connections: [HostPort: BackendConnection] = [:]
    private var topology = ClusterTopology()
    private var nextKeyless = 0
    /// Each primary's share of the bookkeeping keys, for the slot map it was made from.
    private var localBookkeeping: (version: Int, keys: [HostPort: [String]])?
    /// Redirects a request may follow before its last error goes to the client.
    static let maxRedirects = 5

    init(backend: ClusterBackend, eventLoop: EventLoop, version: RESPVersion) {
        self.backend = backend
        self.eventLoop = eventLoop
        self.version = version
    }

    func connectToPrimaries() {
        self.syncTopology()
        for primary in self.topology.primaries { self.connection(to: primary).connect() }
    }

    func close() {
        for connection in self.connections.values { connection.close() }
    }

    private func syncTopology() {
        if self.topology.version != self.backend.currentVersion {
            self.topology = self.backend.currentTopology
        }
    }

    private func connection(to address: HostPort) -> BackendConnection {
        if let connection = self.connections[address] { return connection }
        let connection = self.backend.context.connection(to: address, on: self.eventLoop, version: self.version)
        connection.redirectHandler = { [unowned self] reply, request in self.redirect(reply, request) }
        self.connections[address] = connection
        return connection
    }

    func send(_ request: RedisRequest, command: Command, sink: ReplySink, tag: Int) {
        self.syncTopology()
        // Keys the specification cannot find, Redis cannot either: as in Redis Cluster itself, the
        // node that gets such a request answers it (with its own error).
        let positions = command.keyPositions(in: request.arguments) ?? []
        if positions.isEmpty {
            guard !self.topology.primaries.isEmpty else { return Self.fail(sink, tag, Self.noSlotMap) }
            // Reads of the whole keyspace ask every primary; other keyless reads (INFO, TIME…) one, in turn.
            switch command.name {
            case "keys": return self.keys(request, sink: sink, tag: tag)
            case "dbsize": return self.dbsize(sink: sink, tag: tag)
            case "scan": return self.scan(request, sink: sink, tag: tag)
            case "randomkey": return self.randomKey(sink: sink, tag: tag)
            default: break
            }
            self.nextKeyless = (self.nextKeyless + 1) % self.topology.primaries.count
            self.connection(to: self.topology.primaries[self.nextKeyless]).send(request.raw, sink: sink, tag: tag)
            return
        }
        let slots = positions.map { HashSlot.of(request.arguments[$0]) }
        if slots.allSatisfy({ $0 == slots[0] }) {
            return self.send(request.raw, slot: slots[0], sink: sink, tag: tag)
        }
        switch command.name {
        case "mget":
            self.split(request, positions: positions, slots: slots, merge: .mget, sink: sink, tag: tag)
        case "exists", "touch":
            self.split(request, positions: positions, slots: slots, merge: .sum, sink: sink, tag: tag)
        default:
            Self.fail(sink, tag, "CROSSSLOT Keys in request don't hash to the same slot (pylon fronts a Redis Cluster: use hash tags, e.g. {user1}.a and {user1}.b, to keep the keys of one command in one slot)")
        }
    }

    private func send(_ raw: ByteBuffer, slot: Int, sink: ReplySink, tag: Int) {
        guard let owner = self.topology.owner(of: slot) else {
            self.backend.requestRefresh()
            return Self.fail(sink, tag, "CLUSTERDOWN Hash slot not served (pylon: slot \(slot) has no owner in the cluster's slot map)")
        }
        self.connection(to: owner).send(raw, sink: sink, tag: tag)
    }

    /// Sends one sub-request per slot; the assembler answers the client once all are in.
    private func split(_ request: RedisRequest, positions: [Int], slots: [Int], merge: SplitReplyAssembler.Merge, sink: ReplySink, tag: Int) {
        var groups: [Int: [Int]] = [:]  // slot → indexes into positions
        var order: [Int] = []
        for (index, slot) in slots.enumerated() {
            if groups[slot] == nil { order.append(slot) }
            groups[slot, default: []].append(index)
        }
        let assembler = SplitReplyAssembler(merge: merge, keyCount: positions.count, parts: order.map { groups[$0]! }, target: sink, targetTag: tag)
        for (part, slot) in order.enumerated() {
            let arguments = [request.arguments[0]] + groups[slot]!.map { request.arguments[positions[$0]] }
            self.send(RedisRequest(arguments).raw, slot: slot, sink: assembler, tag: part)
        }
    }

    /// Follows `-MOVED slot host:port` and `-ASK slot host:port`, and splits a multi-key read that
    /// meets `-TRYAGAIN` (its keys are on both sides of a migrating slot) into one read per key.
    /// Other errors go to the client.
    private func redirect(_ reply: ByteBuffer, _ request: InFlightRequest) -> Bool {
        guard request.redirects < Self.maxRedirects, let sink = request.sink else { return false }
        if reply.readableBytesView.starts(with: "-TRYAGAIN".utf8) {
            return self.splitPerKey(request, sink: sink)
        }
        let isMoved = reply.readableBytesView.starts(with: "-MOVED ".utf8)
        let isAsk = !isMoved && reply.readableBytesView.starts(with: "-ASK ".utf8)
        guard isMoved || isAsk else { return false }
        let fields = String(buffer: reply).dropFirst().split(separator: " ")
        guard fields.count >= 3, let target = HostPort(fields[2].trimmingCharacters(in: .whitespacesAndNewlines)) else { return false }
        let connection = self.connection(to: target)
        if isMoved {
            self.backend.requestRefresh()
        } else {
            connection.send(RedisRequest("ASKING").raw, sink: nil, tag: 0)
        }
        connection.send(request.request, sink: sink, tag: request.tag, redirects: request.redirects + 1)
        return true
    }

    private func splitPerKey(_ request: InFlightRequest, sink: ReplySink) -> Bool {
        var decoder = RESPRequestDecoder()
        var bytes = request.request
        guard let decoded = try? decoder.decode(buffer: &bytes), decoded.arguments.count > 2 else { return false }
        let merge: SplitReplyAssembler.Merge
        if decoded.arguments[0].equalsIgnoringASCIICase("MGET") {
            merge = .mget
        } else if decoded.arguments[0].equalsIgnoringASCIICase("EXISTS") || decoded.arguments[0].equalsIgnoringASCIICase("TOUCH") {
            merge = .sum
        } else {
            return false
        }
        let keys = Array(decoded.arguments.dropFirst())
        let owners = keys.compactMap { self.topology.owner(of: HashSlot.of($0)) }
        guard owners.count == keys.count else { return false }
        let assembler = SplitReplyAssembler(merge: merge, keyCount: keys.count, parts: keys.indices.map { [$0] }, target: sink, targetTag: request.tag)
        for (part, key) in keys.enumerated() {
            let single = RedisRequest([decoded.arguments[0], key]).raw
            self.connection(to: owners[part]).send(single, sink: assembler, tag: part, redirects: request.redirects + 1)
        }
        return true
    }

    static let noSlotMap = "CLUSTERDOWN pylon: the cluster's slot map is not known yet (no node answered CLUSTER SLOTS); retry shortly"

    private static func fail(_ sink: ReplySink, _ tag: Int, _ message: String) {
        sink.deliver(.respError(message), tag: tag)
    }

    // MARK: - The whole keyspace

    /// The primaries in a fixed order (by address), which a SCAN cursor's node index refers to.
    private var orderedPrimaries: [HostPort] { self.topology.primaries.sorted { ($0.host, $0.port) < ($1.host, $1.port) } }

    /// KEYS: every primary's keys, together.
    private func keys(_ request: RedisRequest, sink: ReplySink, tag: Int) {
        let nodes = self.orderedPrimaries
        let assembler = SplitReplyAssembler(merge: .concatenate, keyCount: 0, parts: nodes.map { _ in [] }, target: sink, targetTag: tag)
        for (part, node) in nodes.enumerated() { self.connection(to: node).send(request.raw, sink: assembler, tag: part) }
    }

    /// DBSIZE: the sum of every primary's, less the bookkeeping keys each holds.
    private func dbsize(sink: ReplySink, tag: Int) {
        if self.localBookkeeping?.version != self.topology.version {
            var local: [HostPort: [String]] = [:]
            for key in self.backend.bookkeepingKeys {
                if let owner = self.topology.owner(of: HashSlot.of(key)) { local[owner, default: []].append(key) }
            }
            self.localBookkeeping = (self.topology.version, local)
        }
        let nodes = self.orderedPrimaries
        let assembler = SplitReplyAssembler(merge: .sum, keyCount: 0, parts: nodes.map { _ in [] }, target: sink, targetTag: tag)
        for (part, node) in nodes.enumerated() {
            let request = RedisRequest(strings: ["EVAL", Bookkeeping.clusterDBSizeScript, "0"] + (self.localBookkeeping?.keys[node] ?? []))
            self.connection(to: node).send(request.raw, sink: assembler, tag: part)
        }
    }

    /// SCAN: the primaries one after another, the cursor naming the node and its own cursor
    /// (`node cursor × primaries + node index`). A cursor from before a change of the primaries
    /// may skip or repeat keys, as Redis allows a SCAN to.
    private func scan(_ request: RedisRequest, sink: ReplySink, tag: Int) {
        let nodes = self.orderedPrimaries
        let count = UInt64(nodes.count)
        guard request.arguments.count >= 2, let cursor = UInt64(String(buffer: request.arguments[1])) else {
            return Self.fail(sink, tag, "ERR invalid cursor")
        }
        let (index, nodeCursor) = (Int(cursor % count), cursor / count)
        let forward = ScanCursorSink(node: UInt64(index), nodes: count, target: sink)
        let arguments = [request.arguments[0], ByteBuffer(string: String(nodeCursor))] + request.arguments.dropFirst(2)
        self.connection(to: nodes[index]).send(RedisRequest(arguments).raw, sink: forward, tag: tag)
    }

    /// RANDOMKEY: a random primary's random user key; the next primary's when it has none.
    private func randomKey(sink: ReplySink, tag: Int) {
        let nodes = self.orderedPrimaries
        let first = Int.random(in: 0..<nodes.count)
        let request = RedisRequest(strings: ["EVAL", Bookkeeping.randomKeyScript, "0"]).raw
        func ask(_ attempt: Int) {
            self.connection(to: nodes[(first + attempt) % nodes.count]).send(request, sink: ReplyCallback { reply in
                if attempt + 1 < nodes.count, reply.readableBytesView.starts(with: "$-1".utf8) || reply.readableBytesView.starts(with: "_".utf8) {
                    ask(attempt + 1)
                } else {
                    sink.deliver(reply, tag: tag)
                    sink.flushReplies()
                }
            }, tag: 0)
        }
        ask(0)
    }
}

/// Turns one primary's SCAN reply into the cluster-wide one: its cursor becomes the composite
/// cursor, or the next primary's start once this one is done, or 0 after the last.
final class ScanCursorSink: ReplySink {
    private let node: UInt64
    private let nodes: UInt64
    private let target: ReplySink
    var flushRequested = false

    init(node: UInt64, nodes: UInt64, target: ReplySink) {
        self.node = node
        self.nodes = nodes
        self.target = target
    }

    func deliver(_ reply: ByteBuffer, tag: Int) {
        var bytes = reply
        guard case .array(let page?)? = try? RESPValue.decode(from: &bytes), page.count == 2,
              let cursor = page[0].string.flatMap({ UInt64($0) }) else {
            return self.target.deliver(reply, tag: tag)
        }
        let next: UInt64
        if cursor != 0 {
            let (product, overflow) = cursor.multipliedReportingOverflow(by: self.nodes)
            guard !overflow else { return self.target.deliver(.respError("ERR pylon: a node's SCAN cursor is too large to combine with the node's index"), tag: tag) }
            next = product + self.node
        } else {
            next = self.node + 1 < self.nodes ? self.node + 1 : 0
        }
        self.target.deliver(RESPValue.array([.bulkString(ByteBuffer(string: String(next))), page[1]]).encoded, tag: tag)
    }

    func flushReplies() {
        self.target.flushReplies()
    }
}

/// Collects the replies of a request split by slot (or sent to every primary) and answers the
/// client once, in key order.
final class SplitReplyAssembler: ReplySink {
    enum Merge {
        /// An array with one element per key, in the order of the keys (MGET).
        case mget
        /// The sum of integer replies (EXISTS, TOUCH; DBSIZE of every primary).
        case sum
        /// The arrays, one part's after another (KEYS of every primary).
        case concatenate
    }

    private let merge: Merge
    private let parts: [[Int]]
    private let target: ReplySink
    private let targetTag: Int
    private var elements: [RESPValue]
    private var sum = 0
    private var error: RESPValue?
    private var remaining: Int
    var flushRequested = false

    init(merge: Merge, keyCount: Int, parts: [[Int]], target: ReplySink, targetTag: Int) {
        self.merge = merge
        self.parts = parts
        self.target = target
        self.targetTag = targetTag
        self.elements = Array(repeating: .null, count: keyCount)
        self.remaining = parts.count
    }

    func deliver(_ reply: ByteBuffer, tag part: Int) {
        var reply = reply
        let value = (try? RESPValue.decode(from: &reply)) ?? .error("ERR pylon: unreadable reply from redis")
        switch (value, self.merge) {
        case (.error, _):
            if self.error == nil { self.error = value }
        case (.array(let values?), .mget) where values.count == self.parts[part].count:
            for (index, element) in zip(self.parts[part], values) { self.elements[index] = element }
        case (.integer(let n), .sum):
            self.sum += n
        case (.array(let values?), .concatenate):
            self.elements += values
        default:
            if self.error == nil { self.error = .error("ERR pylon: unexpected reply from redis to a split request") }
        }
        self.remaining -= 1
        guard self.remaining == 0 else { return }
        let result = self.error ?? (self.merge == .sum ? .integer(self.sum) : .array(self.elements))
        self.target.deliver(result.encoded, tag: self.targetTag)
    }

    func flushReplies() {
        self.target.flushReplies()
    }
}
