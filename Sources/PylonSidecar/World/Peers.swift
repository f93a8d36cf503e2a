import Foundation
import Logging
import NIOCore
import NIOPosix
import Shared
import Synchronization

/// This sidecar's view of the other sidecars of its world: who they are, whether they answer,
/// how fast, whether their Redis is up and how far their rack is behind the log. Filled by
/// probing each peer with `PYLON PING` over the Redis protocol every `interval`; peers come from
/// `peers` (a name resolving to many addresses — a headless Service — counts as many peers).
final class Peers: Sendable {
    struct Peer: Sendable, Equatable {
        var address: HostPort
        /// From the peer's last answer.
        var name: String?
        var rack: String?
        var world: String?
        var redisReady = false
        /// Ops its rack has not applied yet; nil when it does not know.
        var lag: Int64?
        /// Answered its last probe.
        var up = false
        /// Round trip of the last probe, in seconds.
        var rtt: Double?
        var failures = 0

        /// A peer of the same world in another rack, answering, with its Redis up.
        func canServeReads(of identity: Identity, maxLag: Int64) -> Bool {
            self.up && self.redisReady && self.world == identity.world && self.rack != identity.rack && (self.lag ?? .max) <= maxLag
        }
    }

    /// Who this sidecar is, to recognise itself and its own rack among the peers.
    struct Identity: Sendable {
        var name: String
        var rack: String?
        var world: String?
    }

    struct Settings: Sendable {
        /// `host:port` entries; a host name may resolve to many addresses.
        var seeds: [HostPort]
        var interval: Duration
        /// Reads go only to peers whose rack lags by at most this many ops.
        var maxLag: Int64
    }

    let settings: Settings
    let identity: Identity
    private let table = Mutex<[HostPort: Peer]>([:])
    private let metrics: SidecarMetrics
    private let logger: Logger
    private let prober = Mutex<Task<Void, Never>?>(nil)
    /// Seed addresses that turned out to be this sidecar: not probed again.
    private let own = Mutex<Set<HostPort>>([])

    init(settings: Settings, identity: Identity, metrics: SidecarMetrics, logger: Logger) {
        self.settings = settings
        self.identity = identity
        self.metrics = metrics
        self.logger = logger
    }

    /// Every peer known, by address.
    var all: [Peer] { self.table.withLock { $0.values.sorted { "\($0.address)" < "\($1.address)" } } }

    /// The fastest peer that may serve this sidecar's reads now, if any.
    var bestForReads: HostPort? {
        self.table.withLock { table in
            table.values.filter { $0.canServeReads(of: self.identity, maxLag: self.settings.maxLag) }.min { ($0.rtt ?? .infinity) < ($1.rtt ?? .infinity) }?.address
        }
    }

    // MARK: - Probing

    func start(group: EventLoopGroup) {
        let task = Task { [self] in
            var clients: [HostPort: RedisClient] = [:]
            var addresses: [HostPort] = []
            var resolvedAt = ContinuousClock.now - .seconds(3600)
            while !Task.isCancelled {
                let round = ContinuousClock.now
                // Names are resolved again now and then: a headless Service's addresses change.
                if round - resolvedAt > .seconds(5) {
                    addresses = await self.resolve()
                    resolvedAt = round
                    self.forget(allBut: addresses)
                    for (address, client) in clients where !addresses.contains(address) { client.channel.close(promise: nil) }
                    clients = clients.filter { addresses.contains($0.key) }
                }
                await withTaskGroup(of: (HostPort, RedisClient?).self) { probes in
                    for address in addresses where !self.own.withLock({ $0.contains(address) }) {
                        let client = clients[address]
                        probes.addTask { (address, await self.probe(address, client: client, on: group.any())) }
                    }
                    for await (address, client) in probes { clients[address] = client }
                }
                try? await Task.sleep(until: round + self.settings.interval)
            }
            for client in clients.values { client.channel.close(promise: nil) }
        }
        self.prober.withLock { $0 = task }
    }

    func stop() {
        self.prober.withLock { $0?.cancel() }
    }

    /// Every address the seeds resolve to (IPv4 and IPv6), this sidecar's own excluded later by name.
    private func resolve() async -> [HostPort] {
        let seeds = self.settings.seeds
        let resolved: [HostPort] = (try? await Blocking.run {
            seeds.flatMap { seed -> [HostPort] in
                var hints = addrinfo()
                hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
                var result: UnsafeMutablePointer<addrinfo>?
                guard getaddrinfo(seed.host, String(seed.port), &hints, &result) == 0 else { return [seed] }
                defer { freeaddrinfo(result) }
                var addresses: [HostPort] = []
                var entry = result
                while let info = entry?.pointee {
                    if let ip = Self.numericHost(info) { addresses.append(HostPort(host: ip, port: seed.port)) }
                    entry = info.ai_next
                }
                return addresses.isEmpty ? [seed] : addresses
            }
        }) ?? seeds
        var unique: [HostPort] = []
        for address in resolved where !unique.contains(address) { unique.append(address) }
        return unique
    }

    /// The numeric address of one getaddrinfo result.
    private static func numericHost(_ info: addrinfo) -> String? {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let written: UnsafePointer<CChar>?
        switch info.ai_family {
        case AF_INET:
            written = info.ai_addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { address in
                withUnsafePointer(to: address.pointee.sin_addr) { inet_ntop(AF_INET, $0, &text, socklen_t(text.count)) }
            }
        case AF_INET6:
            written = info.ai_addr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { address in
                withUnsafePointer(to: address.pointee.sin6_addr) { inet_ntop(AF_INET6, $0, &text, socklen_t(text.count)) }
            }
        default:
            written = nil
        }
        return written.map { _ in String(cString: text) }
    }

    private func forget(allBut addresses: [HostPort]) {
        let gone = self.table.withLock { table -> [HostPort] in
            let gone = table.keys.filter { !addresses.contains($0) }
            for address in gone { table.removeValue(forKey: address) }
            return gone
        }
        for address in gone { self.metrics.peer(address, nil) }
    }

    /// One probe: `PYLON PING` on the kept connection (made when missing); returns the
    /// connection to keep, nil when the peer did not answer in time.
    private func probe(_ address: HostPort, client: RedisClient?, on eventLoop: EventLoop) async -> RedisClient? {
        // A busy peer (or box) may miss one probe: it is marked down after two misses in a row.
        let timeout = TimeAmount.milliseconds(max(self.settings.interval.milliseconds, 250))
        var peer = self.table.withLock { $0[address] } ?? Peer(address: address)
        var client = client
        do {
            if client == nil || client?.channel.isActive != true {
                client = try await RedisClient.connect(to: address, on: eventLoop, timeout: timeout)
            }
            let started = ContinuousClock.now
            let reply = try await client!.pipeline(RedisRequest(strings: ["PYLON", "PING"]).raw, replies: 1, timeout: timeout).get()[0]
            let elapsed = ContinuousClock.now - started
            guard let fields = reply.array, fields.count % 2 == 0 else { throw RedisClient.Error(description: "PYLON PING answered \(reply)") }
            var answer: [String: RESPValue] = [:]
            for index in stride(from: 0, to: fields.count, by: 2) { answer[fields[index].string ?? ""] = fields[index + 1] }
            peer.name = answer["name"]?.string
            peer.rack = answer["rack"]?.string.flatMap { $0.isEmpty ? nil : $0 }
            peer.world = answer["world"]?.string.flatMap { $0.isEmpty ? nil : $0 }
            peer.redisReady = answer["redis"] == .integer(1)
            peer.lag = answer["lag"].flatMap { if case .integer(let n) = $0, n >= 0 { Int64(n) } else { nil } }
            peer.rtt = Double(elapsed.components.attoseconds) / 1e18 + Double(elapsed.components.seconds)
            peer.failures = 0
            if !peer.up { self.logger.info("peer sidecar up", metadata: ["peer": "\(address)", "name": "\(peer.name ?? "?")", "rack": "\(peer.rack ?? "?")"]) }
            peer.up = true
        } catch {
            client?.channel.close(promise: nil)
            client = nil
            peer.failures += 1
            if peer.up, peer.failures >= 2 {
                self.logger.warning("peer sidecar down", metadata: ["peer": "\(address)", "error": "\(error)"])
                peer.up = false
            }
        }
        // A seed may be this sidecar itself (a headless Service lists every pod): never a peer.
        if peer.name == self.identity.name {
            self.own.withLock { _ = $0.insert(address) }
            self.table.withLock { $0.removeValue(forKey: address) }
            client?.channel.close(promise: nil)
            return nil
        }
        self.table.withLock { [peer] in $0[address] = peer }
        self.metrics.peer(address, peer)
        return client
    }
}
