import ArgumentParser
import Logging
import NIOPosix
import PylonSidecar
import ServiceLifecycle
import Shared

/// `pylon-sidecar`: a Redis-protocol proxy that serves reads from the local Redis and (with a
/// world configured) sends writes through the world's Kafka log.
@main
struct PylonSidecarCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pylon-sidecar",
        abstract: "Serve Redis clients: reads from the local Redis, writes through the world's log.",
        version: Pylon.version
    )

    @Option(help: "YAML file with the same keys as the flags (flags win).")
    var config: String?
    @Option(help: "Address clients connect to, HOST:PORT (default 127.0.0.1:6380).")
    var listen: String?
    @Option(help: "The local Redis: redis://HOST:PORT, redis-sentinel://HOST:PORT[,…]/MASTER or redis-cluster://HOST:PORT[,…].")
    var redis: String?
    @Option(help: "Admin HTTP address for /metrics, /healthz, /readyz (default 127.0.0.1:9480).")
    var admin: String?
    @Option(name: .customLong("read-from"), help: "With Sentinel: master, replica or nearest (default master).")
    var readFrom: String?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String?
    @Option(name: .customLong("log-format"), help: "text or json.")
    var logFormat: String?
    @Option(help: "This rack's name; its sidecars apply the world's log together.")
    var rack: String?
    @Option(help: "The world's name; its log is the topic pylon.WORLD.ops.")
    var world: String?
    @Option(name: .customLong("kafka-brokers"), help: "The world's Kafka, HOST:PORT[,…]; writes are accepted only with it.")
    var kafkaBrokers: String?
    @Option(help: "The world's topic (default pylon.WORLD.ops).")
    var topic: String?
    @Option(help: "Partitions when the sidecar creates the topic (default 8).")
    var partitions: String?
    @Option(name: .customLong("replication-factor"), help: "Replication factor when the sidecar creates the topic (default 1).")
    var replicationFactor: String?
    @Option(name: .customLong("kafka-property"), help: "A librdkafka property KEY=VALUE (TLS, SASL, tuning); repeatable.")
    var kafkaProperty: [String] = []
    @Option(name: .customLong("kafka-property-file"), help: "A librdkafka property KEY=FILE whose value is read from FILE (a mounted secret); repeatable.")
    var kafkaPropertyFile: [String] = []
    @Option(name: .customLong("catch-up-offsets"), help: "PARTITION=OFFSET: where to start applying a partition this rack's Redis has no checkpoint for (it was loaded up to there); repeatable. Default: the log's start.")
    var catchUpOffsets: [String] = []
    @Option(name: .customLong("snapshot-from"), help: "redis://HOST:PORT of another rack's Redis (redis-cluster://HOST:PORT[,…] of a Redis Cluster rack, into a Cluster rack): a partition this rack's Redis has no checkpoint for is loaded from its snapshot, not replayed from the log.")
    var snapshotFrom: String?
    @Option(name: .customLong("snapshot-dir"), help: "Where snapshot files wait until loaded (default /tmp/pylon-snapshots).")
    var snapshotDirectory: String?
    @Option(name: .customLong("write-timeout-ms"), help: "Fail a write Kafka has not taken in this many ms (default 5000).")
    var writeTimeout: String?
    @Option(name: .customLong("max-ready-lag"), help: "/readyz fails while the applier lags by more ops than this.")
    var maxReadyLag: String?
    @Option(name: .customLong("sidecar-name"), help: "This sidecar's name in the ops it writes (default HOST:PORT).")
    var sidecarName: String?
    @Option(name: .customLong("redis-timeout-ms"), help: "Fail a request Redis has not answered in this many ms (default 2000).")
    var redisTimeout: String?
    @Option(name: .customLong("max-pending-replies"), help: "Pipelined requests per client before reading pauses (default 1024).")
    var maxPendingReplies: String?
    @Option(name: .customLong("max-bulk-length"), help: "Largest argument a client may send, bytes (default 536870912).")
    var maxBulkLength: String?
    @Option(name: .customLong("max-arguments"), help: "Most arguments in one command (default 1048576).")
    var maxArguments: String?
    @Option(name: .customLong("max-inline-length"), help: "Longest inline command, bytes (default 65536).")
    var maxInlineLength: String?
    @Option(name: .customLong("max-write-bytes"), help: "Most bytes one write may carry, its arguments together (default 67108864).")
    var maxWriteBytes: String?
    @Option(name: .customLong("connect-timeout-ms"), help: "Give up connecting to Redis after this many ms (default 1000).")
    var connectTimeout: String?
    @Option(name: .customLong("shutdown-grace-ms"), help: "On SIGTERM, wait this long for in-flight replies (default 5000).")
    var shutdownGrace: String?
    @Option(name: .customLong("stop-timeout-ms"), help: "Exit (status 1) when stopping takes this long after the grace period; 0: wait for ever (default 15000).")
    var stopTimeout: String?
    @Option(help: "Event-loop threads (default 1).")
    var threads: String?
    @Option(help: "When writes are acknowledged: applied (a rack applied it, with the real reply; default) or log (Kafka has it; a placeholder reply).")
    var consistency: String?
    @Option(name: .customLong("contentious-keys"), help: "A key pattern (Redis glob) whose writes are always acknowledged as applied; repeatable.")
    var contentiousKeys: [String] = []
    @Option(name: .customLong("applied-timeout-ms"), help: "Error an applied write whose reply has not come in this many ms (default 10000).")
    var appliedTimeout: String?
    @Option(help: "Peer sidecars of other racks, HOST:PORT[,…] (a name may resolve to many); repeatable.")
    var peers: [String] = []
    @Option(name: .customLong("peer-probe-interval-ms"), help: "Probe each peer (and measure this rack's lag) this often (default 500).")
    var peerProbeInterval: String?
    @Option(name: .customLong("max-peer-lag"), help: "Never read from a peer whose rack lags by more ops than this (default 1000).")
    var maxPeerLag: String?
    @Option(name: .customLong("max-local-lag"), help: "Read from a peer while this rack lags by more ops than this (default: off).")
    var maxLocalLag: String?

    func run() async throws {
        let settings: SidecarConfiguration
        do {
            settings = try SidecarConfiguration.resolve(file: self.config, flags: [
                ("listen", self.listen), ("redis", self.redis), ("admin", self.admin), ("read-from", self.readFrom),
                ("log-level", self.logLevel), ("log-format", self.logFormat), ("rack", self.rack), ("world", self.world),
                ("redis-timeout-ms", self.redisTimeout), ("max-pending-replies", self.maxPendingReplies),
                ("max-bulk-length", self.maxBulkLength), ("threads", self.threads),
                ("kafka-brokers", self.kafkaBrokers), ("topic", self.topic), ("partitions", self.partitions),
                ("replication-factor", self.replicationFactor), ("write-timeout-ms", self.writeTimeout),
                ("max-ready-lag", self.maxReadyLag), ("sidecar-name", self.sidecarName), ("max-arguments", self.maxArguments),
                ("max-inline-length", self.maxInlineLength), ("max-write-bytes", self.maxWriteBytes), ("connect-timeout-ms", self.connectTimeout),
                ("shutdown-grace-ms", self.shutdownGrace), ("stop-timeout-ms", self.stopTimeout), ("consistency", self.consistency), ("applied-timeout-ms", self.appliedTimeout),
                ("peer-probe-interval-ms", self.peerProbeInterval), ("max-peer-lag", self.maxPeerLag), ("max-local-lag", self.maxLocalLag),
                ("snapshot-from", self.snapshotFrom), ("snapshot-dir", self.snapshotDirectory),
            ] + self.kafkaProperty.map { ("kafka-property", $0) } + self.kafkaPropertyFile.map { ("kafka-property-file", $0) } + self.contentiousKeys.map { ("contentious-keys", $0) }
              + self.peers.map { ("peers", $0) } + self.catchUpOffsets.map { ("catch-up-offsets", $0) })
        } catch {
            throw ValidationError("\(error)")
        }
        PylonLogging.bootstrap(format: settings.logFormat, level: settings.logLevel)
        let logger = Logger(label: "pylon.sidecar")
        let group = MultiThreadedEventLoopGroup(numberOfThreads: settings.threads)
        let sidecar: Sidecar
        do {
            sidecar = try await Sidecar(configuration: settings, group: group, logger: logger)
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            try await group.shutdownGracefully()
            throw ExitCode(2)
        }
        // The group installs the signal handlers before the sidecar binds (in its `run`), so a
        // SIGTERM that arrives once the port is open always gets a graceful shutdown.
        let services = ServiceGroup(
            configuration: .init(services: [.init(service: sidecar)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await services.run()
        try await group.shutdownGracefully()
    }
}
