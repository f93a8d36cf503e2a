import Foundation
import Synchronization

/// Where this sidecar's catch-up from a snapshot stands, as `PYLON INFO`, `/metrics` and the
/// logs show it. Written by the applier's thread, read by anyone.
final class SnapshotProgress: Sendable {
    enum Phase: String, Sendable {
        /// No snapshot loaded by this sidecar since it started.
        case none
        /// Receiving the snapshot from the source rack's Redis.
        case fetching
        /// Restoring its keys into this rack's Redis.
        case loading
        /// Loaded; the log is applied from the snapshot's offsets on.
        case loaded
        /// Stopped before its end: the partitions moved to another sidecar of the rack (which
        /// resumes or starts over), or this one stops.
        case stopped
        /// The last attempt failed (`error`); the applier tries again.
        case failed
    }

    struct State: Sendable, Equatable {
        var phase = Phase.none
        var source = ""
        var snapshot = ""
        var partitions: [Int32] = []
        var fileBytes = 0
        /// Bytes of the file received (fetching) or gone through (loading).
        var bytes = 0
        var keys = 0
        /// Keys restored per second since the load began.
        var keysPerSecond = 0.0
        var offsets: [Int32: Int64] = [:]
        var error = ""
        var startedAt: ContinuousClock.Instant?
    }

    private let state = Mutex(State())
    private let metrics: SidecarMetrics?

    init(metrics: SidecarMetrics? = nil) { self.metrics = metrics }

    var current: State { self.state.withLock { $0 } }

    func update(_ change: (inout State) -> Void) {
        let state = self.state.withLock { state in
            change(&state)
            if let started = state.startedAt, state.phase == .loading {
                let elapsed = (ContinuousClock.now - started).components
                let seconds = Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
                state.keysPerSecond = seconds > 0 ? Double(state.keys) / seconds : 0
            }
            return state
        }
        self.metrics?.snapshot(state)
    }

    /// The lines of `PYLON INFO`.
    var infoLines: [String] {
        let state = self.current
        guard state.phase != .none else { return ["snapshot_phase:none"] }
        return [
            "snapshot_phase:\(state.phase.rawValue)", "snapshot_source:\(state.source)", "snapshot_id:\(state.snapshot)",
            "snapshot_partitions:\(state.partitions.map(String.init).joined(separator: ","))",
            "snapshot_file_bytes:\(state.fileBytes)", "snapshot_bytes_done:\(state.bytes)", "snapshot_keys_loaded:\(state.keys)",
            "snapshot_keys_per_second:\(Int(state.keysPerSecond))",
            "snapshot_offsets:\(state.offsets.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","))",
        ] + (state.error.isEmpty ? [] : ["snapshot_error:\(state.error)"])
    }
}
