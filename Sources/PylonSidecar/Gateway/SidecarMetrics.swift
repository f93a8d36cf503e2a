import CoreMetrics
import Prometheus
import Synchronization

/// The sidecar's Prometheus metrics (all named `pylon_…`), created up front so the hot path only
/// increments: one counter per command, one latency histogram per disposition class.
public final class SidecarMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let commandCounters: [CoreMetrics.Counter]
    private let unknownCommands: CoreMetrics.Counter
    /// Per-class latency, straight on the registry: a `Double` histogram costs half the CPU of a
    /// swift-metrics `Timer` (a `Duration` histogram) on the per-request path (measured with perf).
    private let latency: [ValueHistogram]
    let connections: CoreMetrics.Gauge
    let connectionsTotal: CoreMetrics.Counter
    let protocolErrors: CoreMetrics.Counter
    private let applierEvents: [CoreMetrics.Counter]
    /// The lag gauge of each partition applied here, made once: the applier records every lag
    /// after each batch, and making a gauge takes the registry's lock and builds its labels.
    private let lagGauges = Mutex<[Int32: CoreMetrics.Gauge]>([:])
    private let factory: PrometheusMetricsFactory

    public init(table: CommandTable, registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        let factory = PrometheusMetricsFactory(registry: registry)
        self.factory = factory
        self.commandCounters = table.all.map { command in
            CoreMetrics.Counter(label: "pylon_commands_total", dimensions: [("command", command.name), ("class", command.disposition.commandClass.name)], factory: factory)
        }
        self.unknownCommands = CoreMetrics.Counter(label: "pylon_commands_total", dimensions: [("command", "unknown"), ("class", "error")], factory: factory)
        let buckets = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1]
        self.latency = CommandClass.allCases.map { commandClass in
            registry.makeValueHistogram(
                descriptor: MetricNameDescriptor(metricName: "pylon_command_duration", unitName: "seconds", helpText: "Time from reading a command to writing its reply."),
                labels: [("class", commandClass.name)], buckets: buckets
            )
        }
        self.connections = CoreMetrics.Gauge(label: "pylon_client_connections", factory: factory)
        self.connectionsTotal = CoreMetrics.Counter(label: "pylon_client_connections_total", factory: factory)
        self.protocolErrors = CoreMetrics.Counter(label: "pylon_protocol_errors_total", factory: factory)
        self.applierEvents = ApplierStats.Outcome.allCases.map { outcome in
            CoreMetrics.Counter(label: "pylon_applier_events_total", dimensions: [("outcome", outcome.name)], factory: factory)
        }
    }

    func counted(_ command: Command?) {
        if let command { self.commandCounters[command.id].increment() } else { self.unknownCommands.increment() }
    }

    func recordLatency(_ commandClass: CommandClass, nanoseconds: Int64) {
        self.latency[commandClass.rawValue].record(Double(nanoseconds) / 1e9)
    }

    /// A gauge per Redis node: 1 when the sidecar holds a connection to it.
    func backendUp(_ address: HostPort, _ up: Bool) {
        CoreMetrics.Gauge(label: "pylon_backend_up", dimensions: [("node", address.description)], factory: self.factory).record(up ? 1 : 0)
    }

    /// What the applier did, by outcome (`pylon_applier_events_total`): ops applied, rejected,
    /// duplicate or undecodable, and partition replays and resyncs.
    func applierOps(_ outcome: ApplierStats.Outcome, _ n: Int) {
        self.applierEvents[outcome.rawValue].increment(by: n)
    }

    /// A catch-up from a snapshot (`SnapshotProgress`): whether one runs, the file's size, how
    /// far through it the load is, keys restored.
    func snapshot(_ state: SnapshotProgress.State) {
        let running = state.phase == .fetching || state.phase == .loading
        CoreMetrics.Gauge(label: "pylon_snapshot_loading", factory: self.factory).record(running ? 1 : 0)
        CoreMetrics.Gauge(label: "pylon_snapshot_file_bytes", factory: self.factory).record(state.fileBytes)
        CoreMetrics.Gauge(label: "pylon_snapshot_bytes_done", factory: self.factory).record(state.bytes)
        CoreMetrics.Gauge(label: "pylon_snapshot_keys_loaded", factory: self.factory).record(state.keys)
    }

    /// Log end minus the next offset to apply, per partition this sidecar applies; nil removes a
    /// partition that went to another sidecar of the rack.
    func applierLag(partition: Int32, lag: Int64?) {
        guard let lag else {
            self.lagGauges.withLock { $0.removeValue(forKey: partition) }?.destroy()
            return
        }
        self.lagGauges.withLock { gauges in
            if let gauge = gauges[partition] { return gauge }
            let gauge = CoreMetrics.Gauge(label: "pylon_applier_lag_ops", dimensions: [("partition", "\(partition)")], factory: self.factory)
            gauges[partition] = gauge
            return gauge
        }.record(lag)
    }

    /// A peer sidecar's state (`pylon_peer_up`, `pylon_peer_rtt_seconds`, `pylon_peer_lag_ops`);
    /// nil removes a peer no longer listed.
    func peer(_ address: HostPort, _ peer: Peers.Peer?) {
        let dimensions = [("peer", address.description)]
        let up = CoreMetrics.Gauge(label: "pylon_peer_up", dimensions: dimensions, factory: self.factory)
        let rtt = CoreMetrics.Gauge(label: "pylon_peer_rtt_seconds", dimensions: dimensions, factory: self.factory)
        let lag = CoreMetrics.Gauge(label: "pylon_peer_lag_ops", dimensions: dimensions, factory: self.factory)
        guard let peer else {
            for gauge in [up, rtt, lag] { gauge.destroy() }
            return
        }
        up.record(peer.up ? 1 : 0)
        if let seconds = peer.rtt { rtt.record(seconds) }
        lag.record(peer.lag ?? -1)
    }

    /// Reads sent to a peer sidecar because the local Redis could not serve them
    /// (`pylon_failover_reads_total{peer}`).
    func failoverRead(to address: HostPort) {
        CoreMetrics.Counter(label: "pylon_failover_reads_total", dimensions: [("peer", address.description)], factory: self.factory).increment()
    }

    /// The Prometheus text exposition.
    public func render() -> String { self.registry.emitToString() }
}
