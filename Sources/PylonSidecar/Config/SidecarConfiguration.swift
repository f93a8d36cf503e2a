import Foundation
import Logging
import Shared
import Yams

/// Everything a sidecar is told at start: from flags, from a YAML file (`--config`), or both
/// (flags win). Keys in the file are the flag names without dashes: `listen`, `redis`, `admin`, …
public struct SidecarConfiguration: Sendable, Equatable {
    public var listen = HostPort(host: "127.0.0.1", port: 6380)
    public var redis = RedisEndpoint.standalone(HostPort(host: "127.0.0.1", port: 6379))
    public var admin = HostPort(host: "127.0.0.1", port: 9480)
    public var readFrom = ReadPreference.master
    public var logLevel = Logger.Level.info
    public var logFormat = LogFormat.text
    public var rack: String?
    public var world: String?
    /// A request to Redis with no reply within this many milliseconds fails.
    public var redisTimeoutMilliseconds = 2000
    public var connectTimeoutMilliseconds = 1000
    /// Unanswered requests a client may pipeline before the sidecar stops reading from it.
    public var maxPendingReplies = 1024
    public var limits = RESPLimits.default
    /// Graceful shutdown waits this long for in-flight replies.
    public var shutdownGraceMilliseconds = 5000
    /// A stop still unfinished this long after the grace period ends the process (status 1),
    /// naming the step it was stuck in (`ShutdownWatchdog`); 0 waits for ever.
    public var stopTimeoutMilliseconds = 15000
    /// Event-loop threads; each serves its clients and holds its own connections to Redis. One,
    /// like twemproxy: a sidecar shares its machine with Redis and the application, and on the
    /// 2-core benchmark machine one loop beat two (BENCHMARKS.md). Raise it where cores are spare.
    public var threads = 1

    // The write path (the world's log). Writes are accepted only when `kafkaBrokers` is set.
    /// Bootstrap servers of the world's Kafka, `host:port[,…]`.
    public var kafkaBrokers: String?
    /// The world's topic; `pylon.<world>.ops` unless set.
    public var topicOverride: String?
    /// Partitions and replication factor used when the sidecar creates a missing topic.
    public var partitions = 8
    public var replicationFactor = 1
    /// librdkafka properties passed through (TLS, SASL, tuning), for the producer and the applier.
    public var kafkaProperties: [String: String] = [:]
    /// A write that Kafka has not taken within this time fails (and is never applied).
    public var writeTimeoutMilliseconds = 5000
    /// The most bytes one write may carry, its arguments together (a larger one is carried by
    /// the log in several messages: `OpChunk`).
    public var maxWriteBytes = 64 << 20
    /// `/readyz` answers 503 while any partition this sidecar applies lags by more ops than this.
    public var maxReadyLag: Int64?
    /// This sidecar's name in the ops it writes; host name and port unless set.
    public var sidecarName: String?
    /// When a write is acknowledged unless a connection chooses (`PYLON CONSISTENCY`).
    public var consistency = Consistency.applied
    /// Keys (Redis glob patterns) whose writes are always acknowledged with their applied reply.
    public var contentiousKeys: [String] = []
    /// An `applied` write whose reply has not come within this time gets an error saying so.
    public var appliedTimeoutMilliseconds = 10000
    /// Per partition, where to start applying when this rack's Redis has no checkpoint of its own
    /// (it was loaded with the data up to there by other means); the log's start otherwise.
    public var catchUpOffsets: [Int32: Int64] = [:]
    /// A Redis of another rack of the world (standalone, a node of a Sentinel set, or a Redis
    /// Cluster for a Redis Cluster rack) whose snapshot a partition this rack's Redis has no checkpoint for is loaded from, instead of
    /// replaying the log (`SnapshotCatchUp`).
    public var snapshotFrom: RedisEndpoint?
    /// Where snapshot files wait until loaded (a killed load resumes from the file).
    public var snapshotDirectory = "/tmp/pylon-snapshots"

    // The world view: peer sidecars of other racks, for read failover.
    /// Peer sidecars, `host:port`; a name resolving to many addresses (a headless Service) is many peers.
    public var peers: [HostPort] = []
    /// How often each peer is probed (`PYLON PING`), and this rack's lag measured.
    public var peerProbeIntervalMilliseconds = 500
    /// Reads never go to a peer whose rack is further behind the log than this many ops.
    public var maxPeerLag: Int64 = 1000
    /// Reads go to a peer while this rack is further behind the log than this many ops (off unless set).
    public var maxLocalLag: Int64?

    public init() {}

    /// This sidecar's name: `sidecar-name`, or host name and listening port (a stable identity
    /// across restarts, as a StatefulSet pod name is); a random one when listening on port 0.
    public var resolvedSidecarName: String {
        if let name = self.sidecarName { return name }
        let port = self.listen.port == 0 ? "0-\(UInt32.random(in: 0...UInt32.max))" : "\(self.listen.port)"
        return "\(ProcessInfo.processInfo.hostName):\(port)"
    }

    /// True when this sidecar comes back under the same name after a restart (`sidecar-name`
    /// set, or a fixed listening port).
    public var hasStableName: Bool { self.sidecarName != nil || self.listen.port != 0 }

    /// The topic holding the world's ops.
    public var topic: String? { self.topicOverride ?? self.world.map { "pylon.\($0).ops" } }

    /// A sidecar's place in its world: where its writes go and which rack applies them.
    public struct WorldMembership: Sendable, Equatable {
        public var brokers: String
        public var world: String
        public var rack: String
        public var topic: String
        /// The consumer group of the rack's appliers.
        public var consumerGroup: String { "pylon.\(self.world).\(self.rack)" }
    }

    /// Set with `kafka-brokers` (`validated` makes sure `world` and `rack` come with it); nil
    /// for a sidecar that serves reads only.
    public var membership: WorldMembership? {
        guard let brokers = self.kafkaBrokers, let world = self.world, let rack = self.rack, let topic = self.topic else { return nil }
        return WorldMembership(brokers: brokers, world: world, rack: rack, topic: topic)
    }

    /// Checks the keys that only make sense together.
    public func validated() throws -> SidecarConfiguration {
        if self.kafkaBrokers != nil {
            guard self.world != nil else { throw Error(key: "world", problem: "required with kafka-brokers: the world names the topic and the consumer groups") }
            guard self.rack != nil else { throw Error(key: "rack", problem: "required with kafka-brokers: the rack's sidecars apply the log together as one consumer group") }
        }
        if let partition = self.catchUpOffsets.keys.first(where: { Int($0) >= self.partitions }) {
            throw Error(key: "catch-up-offsets", problem: "partition \(partition) is not one of the topic's \(self.partitions)")
        }
        if self.snapshotFrom != nil, !self.catchUpOffsets.isEmpty {
            throw Error(key: "snapshot-from", problem: "a rack catches up either from a snapshot or from catch-up-offsets, not both")
        }
        if case .cluster = self.snapshotFrom, self.redis.topologyName != "cluster" {
            throw Error(key: "snapshot-from", problem: "a Redis Cluster's snapshot stands at another offset in each slot: only a Redis Cluster rack (redis: redis-cluster://…) can load it; take the snapshot from a standalone or Sentinel rack")
        }
        if !self.peers.isEmpty, self.membership == nil {
            throw Error(key: "peers", problem: "needs kafka-brokers, world and rack: peers are the sidecars of the world's other racks")
        }
        return self
    }

    /// A configuration error, naming the key at fault.
    public struct Error: Swift.Error, CustomStringConvertible, Equatable {
        public let key: String
        public let problem: String
        public var description: String { "configuration: '\(self.key)': \(self.problem)" }
        public init(key: String, problem: String) {
            self.key = key
            self.problem = problem
        }
    }

    /// Every key a file may hold (and flag names may set through `set`).
    public static let keys = [
        "listen", "redis", "admin", "read-from", "log-level", "log-format", "rack", "world",
        "redis-timeout-ms", "connect-timeout-ms", "max-pending-replies", "max-bulk-length",
        "max-arguments", "max-inline-length", "shutdown-grace-ms", "stop-timeout-ms", "threads",
        "kafka-brokers", "topic", "partitions", "replication-factor", "kafka-property", "write-timeout-ms",
        "max-ready-lag", "sidecar-name", "consistency", "contentious-keys", "applied-timeout-ms",
        "peers", "peer-probe-interval-ms", "max-peer-lag", "max-local-lag", "kafka-property-file",
        "catch-up-offsets", "max-write-bytes", "snapshot-from", "snapshot-dir",
    ]

    /// Keys that may be given many times (flags repeated, YAML lists); each value adds one.
    static let listKeys: Set<String> = ["kafka-property", "kafka-property-file", "contentious-keys", "peers", "catch-up-offsets"]

    /// Sets one key from its textual value, validating it.
    public mutating func set(_ key: String, _ value: String) throws {
        func bad(_ expected: String) -> Error { Error(key: key, problem: "expected \(expected), got '\(value)'") }
        func integer(_ range: ClosedRange<Int>) throws -> Int {
            guard let n = Int(value), range.contains(n) else { throw bad("an integer in \(range.lowerBound)...\(range.upperBound)") }
            return n
        }
        switch key {
        case "listen":
            guard let address = HostPort(value) else { throw bad("HOST:PORT") }
            self.listen = address
        case "admin":
            guard let address = HostPort(value) else { throw bad("HOST:PORT") }
            self.admin = address
        case "redis":
            do { self.redis = try RedisEndpoint(url: value) } catch {
                throw Error(key: key, problem: "\(error)")
            }
        case "read-from":
            guard let preference = ReadPreference(rawValue: value) else { throw bad("one of master, replica, nearest") }
            self.readFrom = preference
        case "log-level":
            guard let level = Logger.Level(rawValue: value.lowercased()) else {
                throw bad("one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            self.logLevel = level
        case "log-format":
            guard let format = LogFormat(rawValue: value) else { throw bad("text or json") }
            self.logFormat = format
        case "rack":
            guard Self.isName(value) else { throw bad("a name of letters, digits, '-', '_' or '.'") }
            self.rack = value
        case "world":
            guard Self.isName(value) else { throw bad("a name of letters, digits, '-', '_' or '.'") }
            self.world = value
        case "redis-timeout-ms": self.redisTimeoutMilliseconds = try integer(1...3_600_000)
        case "connect-timeout-ms": self.connectTimeoutMilliseconds = try integer(1...600_000)
        case "max-pending-replies": self.maxPendingReplies = try integer(1...1_000_000)
        case "max-bulk-length": self.limits.maxBulkLength = try integer(1...(1 << 40))
        case "max-arguments": self.limits.maxArrayLength = try integer(1...(1 << 30))
        case "max-inline-length": self.limits.maxInlineLength = try integer(16...(1 << 30))
        case "max-write-bytes": self.maxWriteBytes = try integer(1...(1 << 40))
        case "shutdown-grace-ms": self.shutdownGraceMilliseconds = try integer(0...3_600_000)
        case "stop-timeout-ms": self.stopTimeoutMilliseconds = try integer(0...3_600_000)
        case "threads": self.threads = try integer(1...256)
        case "kafka-brokers":
            let brokers = value.split(separator: ",").map(String.init)
            guard !brokers.isEmpty, brokers.allSatisfy({ HostPort($0) != nil }) else { throw bad("HOST:PORT[,HOST:PORT…]") }
            self.kafkaBrokers = value
        case "topic":
            guard Self.isName(value) else { throw bad("a topic name of letters, digits, '-', '_' or '.'") }
            self.topicOverride = value
        case "partitions": self.partitions = try integer(1...100_000)
        case "replication-factor": self.replicationFactor = try integer(1...100)
        case "kafka-property":
            guard let equals = value.firstIndex(of: "="), equals != value.startIndex else { throw bad("KEY=VALUE") }
            self.kafkaProperties[String(value[..<equals])] = String(value[value.index(after: equals)...])
        case "kafka-property-file":
            // A secret (a SASL password) read from a file, e.g. a mounted Kubernetes Secret.
            guard let equals = value.firstIndex(of: "="), equals != value.startIndex else { throw bad("KEY=FILE") }
            let path = String(value[value.index(after: equals)...])
            guard let secret = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw Error(key: key, problem: "cannot read '\(path)' for \(value[..<equals])")
            }
            self.kafkaProperties[String(value[..<equals])] = secret.trimmingCharacters(in: .newlines)
        case "write-timeout-ms": self.writeTimeoutMilliseconds = try integer(100...3_600_000)
        case "max-ready-lag": self.maxReadyLag = Int64(try integer(0...Int(Int32.max)))
        case "consistency":
            guard let level = Consistency(rawValue: value) else { throw bad("log or applied") }
            self.consistency = level
        case "contentious-keys":
            guard !value.isEmpty else { throw bad("a key pattern (Redis glob, e.g. lock:*)") }
            self.contentiousKeys.append(value)
        case "catch-up-offsets":
            let parts = value.split(separator: "=")
            guard parts.count == 2, let partition = Int32(parts[0]), partition >= 0, let offset = Int64(parts[1]), offset >= 0 else { throw bad("PARTITION=OFFSET") }
            self.catchUpOffsets[partition] = offset
        case "snapshot-from":
            let expected = "redis://HOST:PORT of a standalone Redis or a node of a Sentinel set, or redis-cluster://HOST:PORT[,…] of a Redis Cluster"
            guard let url = try? RedisEndpoint(url: value) else { throw bad(expected) }
            if case .sentinel = url { throw bad(expected + " (a snapshot is taken from a node, not through the Sentinels)") }
            self.snapshotFrom = url
        case "snapshot-dir":
            guard !value.isEmpty else { throw bad("a directory") }
            self.snapshotDirectory = value
        case "applied-timeout-ms": self.appliedTimeoutMilliseconds = try integer(100...3_600_000)
        case "peers":
            let peers = value.split(separator: ",").map { HostPort(String($0.trimmingCharacters(in: .whitespaces))) }
            guard !peers.isEmpty, !peers.contains(where: { $0 == nil }) else { throw bad("HOST:PORT[,HOST:PORT…]") }
            self.peers += peers.map { $0! }
        case "peer-probe-interval-ms": self.peerProbeIntervalMilliseconds = try integer(10...60_000)
        case "max-peer-lag": self.maxPeerLag = Int64(try integer(0...Int(Int32.max)))
        case "max-local-lag": self.maxLocalLag = Int64(try integer(0...Int(Int32.max)))
        case "sidecar-name":
            guard Self.isName(value) || HostPort(value) != nil else { throw bad("a name of letters, digits, '-', '_', '.' or ':'") }
            self.sidecarName = value
        default:
            throw Error(key: key, problem: "unknown key; known keys are \(Self.keys.joined(separator: ", "))")
        }
    }

    static func isName(_ value: String) -> Bool {
        !value.isEmpty && value.count <= 200 && value.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
    }

    /// Applies a YAML document: a mapping of keys to scalars.
    public mutating func apply(yaml text: String, source: String = "config") throws {
        let document: Any?
        do { document = try Yams.load(yaml: text) } catch {
            throw Error(key: source, problem: "not valid YAML: \(error)")
        }
        guard let document else { return }
        guard let mapping = document as? [String: Any] else {
            throw Error(key: source, problem: "expected a mapping of keys to values at the top level")
        }
        for key in mapping.keys.sorted() {
            let value = mapping[key]!
            if key == "kafka-properties", let properties = value as? [String: Any] {
                // librdkafka properties as a mapping: `kafka-properties: {security.protocol: ssl}`.
                for (name, setting) in properties.sorted(by: { $0.key < $1.key }) { try self.set("kafka-property", "\(name)=\(setting)") }
                continue
            }
            if Self.listKeys.contains(key), let values = value as? [Any] {
                for item in values { try self.set(key, "\(item)") }
                continue
            }
            guard value is String || value is Int || value is Double || value is Bool else {
                throw Error(key: key, problem: "expected a single value, got \(type(of: value))")
            }
            try self.set(key, "\(value)")
        }
    }

    /// Builds the configuration: the file first (if any), then the flags given on the command line.
    public static func resolve(file: String?, flags: [(String, String?)]) throws -> SidecarConfiguration {
        try self.merge(file: file, flags: flags).validated()
    }

    private static func merge(file: String?, flags: [(String, String?)]) throws -> SidecarConfiguration {
        var configuration = SidecarConfiguration()
        if let file {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw Error(key: "config", problem: "cannot read '\(file)'")
            }
            try configuration.apply(yaml: text, source: file)
        }
        for (key, value) in flags {
            if let value { try configuration.set(key, value) }
        }
        return configuration
    }
}

/// When a write is acknowledged.
public enum Consistency: String, Sendable {
    /// When Kafka has it (the world's log is the sequencer): fire-and-forget, the reply claims
    /// no result (`WriteReply`). Opt-in.
    case log
    /// When a rack applied it, with the command's real reply: the default.
    case applied
}
