import Prometheus

/// The operator's Prometheus metrics: reconciles and their errors and durations by kind, the
/// work queue's depth, and the requests it sent the API server by verb.
public final class OperatorMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let client: KubeClient
    private let queue: WorkQueue<ReconcileKey>
    private let depth: Gauge

    init(client: KubeClient, queue: WorkQueue<ReconcileKey>) {
        self.client = client
        self.queue = queue
        self.depth = self.registry.makeGauge(descriptor: MetricNameDescriptor(metricName: "pylon_operator_queue_depth", unitName: "", helpText: "Keys waiting to be reconciled."))
    }

    func reconciled(_ key: ReconcileKey, failed: Bool, in duration: Duration) {
        let kind = switch key {
        case .world: "PylonWorld"
        case .rack: "PylonRack"
        }
        self.registry.makeCounter(descriptor: Self.reconciles, labels: [("kind", kind)]).increment()
        if failed {
            self.registry.makeCounter(descriptor: Self.errors, labels: [("kind", kind)]).increment()
        }
        self.registry.makeDurationHistogram(descriptor: Self.duration, labels: [("kind", kind)], buckets: Self.buckets).record(duration)
    }

    private static var reconciles: MetricNameDescriptor { MetricNameDescriptor(metricName: "pylon_operator_reconciles", unitName: "total", helpText: "Reconciles done (failed ones included).") }
    private static var errors: MetricNameDescriptor { MetricNameDescriptor(metricName: "pylon_operator_reconcile_errors", unitName: "total", helpText: "Reconciles that failed (retried with backoff).") }
    private static var duration: MetricNameDescriptor { MetricNameDescriptor(metricName: "pylon_operator_reconcile_duration", unitName: "seconds", helpText: "Time to reconcile one object.") }
    private static let buckets: [Duration] = [.milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
                                              .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10)]

    /// The Prometheus text exposition.
    public func render() -> String {
        self.depth.set(Double(self.queue.depth.load(ordering: .relaxed)))
        let requests = self.client.requests.withLock { $0 }.sorted { $0.key < $1.key }
        return self.registry.emitToString() + "# HELP pylon_operator_api_requests_total Requests sent to the Kubernetes API server.\n"
            + "# TYPE pylon_operator_api_requests_total counter\n"
            + requests.map { "pylon_operator_api_requests_total{verb=\"\($0.key)\"} \($0.value)\n" }.joined()
    }
}
