import CoreMetrics
import Prometheus

/// The sidecar's Prometheus metrics (all named `pylon_…`), created up front so the hot path only
/// increments: one counter per command, one latency histogram per disposition class.
public final class SidecarMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let commandCounters: [CoreMetrics.Counter]
    private let unknownCommands: CoreMetrics.Counter
    private let latency: [String: CoreMetrics.Timer]
    let connections: CoreMetrics.Gauge
    let connectionsTotal: CoreMetrics.Counter
    let protocolErrors: CoreMetrics.Counter
    private let factory: PrometheusMetricsFactory

    public init(table: CommandTable, registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500),
            .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
            .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5),
        ]
        self.factory = factory
        self.commandCounters = table.all.map { command in
            CoreMetrics.Counter(label: "pylon_commands_total", dimensions: [("command", command.name), ("class", command.disposition.className)], factory: factory)
        }
        self.unknownCommands = CoreMetrics.Counter(label: "pylon_commands_total", dimensions: [("command", "unknown"), ("class", "error")], factory: factory)
        var latency: [String: CoreMetrics.Timer] = [:]
        for name in ["read", "write", "refused", "ignored", "internal", "error"] {
            latency[name] = CoreMetrics.Timer(label: "pylon_command_duration_seconds", dimensions: [("class", name)], factory: factory)
        }
        self.latency = latency
        self.connections = CoreMetrics.Gauge(label: "pylon_client_connections", factory: factory)
        self.connectionsTotal = CoreMetrics.Counter(label: "pylon_client_connections_total", factory: factory)
        self.protocolErrors = CoreMetrics.Counter(label: "pylon_protocol_errors_total", factory: factory)
    }

    func counted(_ command: Command?) {
        if let command { self.commandCounters[command.id].increment() } else { self.unknownCommands.increment() }
    }

    func recordLatency(className: String, nanoseconds: Int64) {
        self.latency[className]?.recordNanoseconds(nanoseconds)
    }

    /// A gauge per Redis node: 1 when the sidecar holds a connection to it.
    func backendUp(_ address: HostPort, _ up: Bool) {
        CoreMetrics.Gauge(label: "pylon_backend_up", dimensions: [("node", address.description)], factory: self.factory).record(up ? 1 : 0)
    }

    /// The Prometheus text exposition.
    public func render() -> String { self.registry.emitToString() }
}
