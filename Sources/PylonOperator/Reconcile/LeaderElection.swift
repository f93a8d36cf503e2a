import Foundation
import Logging
import Synchronization

/// One active operator among many (`--leader-elect`), through a `coordination.k8s.io/v1` Lease
/// as client-go's leader election uses it: the holder renews `renewTime` every `retryPeriod`;
/// another candidate takes the Lease once `leaseDuration` passed without a renewal. Updates carry
/// the Lease's resourceVersion, so two candidates can never both win (the API server refuses the
/// stale write with 409). A leader that cannot renew within `renewDeadline` (two thirds of the
/// duration, as client-go's 10 s of 15) steps down — its work stopped before the Lease expires
/// for the other candidates, so two replicas never reconcile at once.
public final class LeaderElection: Sendable {
    public struct Settings: Sendable {
        public var namespace: String
        public var name: String
        public var identity: String
        public var leaseDuration: Duration
        public var retryPeriod: Duration

        public init(namespace: String, name: String = "pylon-operator", identity: String, leaseDuration: Duration = .seconds(15), retryPeriod: Duration = .seconds(2)) {
            self.namespace = namespace
            self.name = name
            self.identity = identity
            self.leaseDuration = leaseDuration
            self.retryPeriod = retryPeriod
        }
    }

    let client: KubeClient
    let settings: Settings
    let logger: Logger
    private let leading = Atomic<Bool>(false)

    public init(client: KubeClient, settings: Settings, logger: Logger) {
        // A renewal must fail in time to step down by the renew deadline: an API server that
        // stopped answering must not hold it for the client's usual 30 s, past the Lease's
        // expiry, while another replica takes over.
        self.client = client.timingOut(after: max(1, Int(settings.leaseDuration.components.seconds) / 3))
        self.settings = settings
        self.logger = logger
    }

    public var isLeader: Bool { self.leading.load(ordering: .acquiring) }

    /// How long a leader keeps leading without a renewal.
    public var renewDeadline: Duration { self.settings.leaseDuration * 2 / 3 }

    /// Campaigns until cancelled: `lead` runs while this candidate holds the Lease and is
    /// cancelled when it loses it.
    public func run(lead: @escaping @Sendable () async -> Void) async {
        var leadership: Task<Void, Never>?
        var lastRenewal = ContinuousClock.now
        while !Task.isCancelled {
            let held: Bool
            do { held = try await self.tryAcquireOrRenew() } catch {
                self.logger.warning("leader election: cannot read or write the lease", metadata: ["error": "\(error)"])
                held = false
            }
            if held {
                lastRenewal = .now
                if leadership == nil {
                    self.logger.info("became the leader", metadata: ["lease": "\(self.settings.namespace)/\(self.settings.name)", "identity": "\(self.settings.identity)"])
                    self.leading.store(true, ordering: .releasing)
                    leadership = Task { await lead() }
                }
            } else if leadership != nil, ContinuousClock.now - lastRenewal > self.renewDeadline {
                self.logger.warning("lost the lease: stepping down", metadata: ["lease": "\(self.settings.name)"])
                self.leading.store(false, ordering: .releasing)
                leadership?.cancel()
                await leadership?.value
                leadership = nil
            }
            try? await Task.sleep(for: self.settings.retryPeriod)
        }
        self.leading.store(false, ordering: .releasing)
        leadership?.cancel()
        await leadership?.value
        // Stopped on purpose (SIGTERM), with the work done: hand the Lease over at once instead
        // of making the next leader wait for it to expire — also when this replica had stepped
        // down but is still named its holder. In a task of its own: this one is cancelled, and
        // the release must still be sent.
        await Task { await self.release() }.value
    }

    /// Gives the Lease up (its holder emptied), if this candidate still holds it.
    func release() async {
        do {
            guard let lease = try await self.client.get(Lease.self, namespace: self.settings.namespace, name: self.settings.name),
                  lease.spec.holderIdentity == self.settings.identity else { return }
            _ = try await self.client.patch(Lease.resource, namespace: self.settings.namespace, name: self.settings.name, merge: [
                "metadata": ["resourceVersion": .string(lease.metadata.resourceVersion ?? "")], "spec": ["holderIdentity": ""],
            ])
            self.logger.info("released the lease", metadata: ["lease": "\(self.settings.namespace)/\(self.settings.name)"])
        } catch {
            self.logger.warning("cannot release the lease; it expires by itself", metadata: ["error": "\(error)"])
        }
    }

    /// Lease times are MicroTime: RFC 3339 with exactly six fractional digits.
    static func microTime(_ date: Date) -> String {
        let seconds = ISO8601DateFormatter().string(from: date).dropLast()  // "…:SS" without "Z"
        let micros = Int((date.timeIntervalSince1970 - date.timeIntervalSince1970.rounded(.down)) * 1_000_000)
        return "\(seconds).\(String(format: "%06d", micros))Z"
    }

    private static func formatter() -> ISO8601DateFormatter {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter
    }

    /// Takes the Lease if it is free or expired, renews it if held; false when another holds it.
    func tryAcquireOrRenew() async throws -> Bool {
        let now = Date()
        let stamp = Self.microTime(now)
        let seconds = Int(self.settings.leaseDuration.components.seconds)
        guard let lease = try await self.client.get(Lease.self, namespace: self.settings.namespace, name: self.settings.name) else {
            let lease = Lease(metadata: ObjectMeta(name: self.settings.name, namespace: self.settings.namespace), spec: .init(
                holderIdentity: self.settings.identity, leaseDurationSeconds: seconds, acquireTime: stamp, renewTime: stamp, leaseTransitions: 0
            ))
            do { _ = try await self.client.create(lease) } catch let error as KubeError where error.isConflict {
                return false  // another candidate created it first
            }
            return true
        }
        let holder = lease.spec.holderIdentity ?? ""
        let renewed = lease.spec.renewTime.flatMap { Self.formatter().date(from: $0) ?? ISO8601DateFormatter().date(from: $0) } ?? .distantPast
        let duration = TimeInterval(lease.spec.leaseDurationSeconds ?? seconds)
        if holder != self.settings.identity, !holder.isEmpty, now.timeIntervalSince(renewed) < duration { return false }
        var spec: JSON = ["renewTime": .string(stamp), "leaseDurationSeconds": .number(Double(seconds))]
        if holder != self.settings.identity {
            spec["holderIdentity"] = .string(self.settings.identity)
            spec["acquireTime"] = .string(stamp)
            spec["leaseTransitions"] = .number(Double((lease.spec.leaseTransitions ?? 0) + 1))
        }
        do {
            // The resourceVersion read is a precondition of the patch: whoever writes first
            // wins, the other gets 409. A merge patch leaves the Lease's other fields as they are.
            _ = try await self.client.patch(Lease.resource, namespace: self.settings.namespace, name: self.settings.name, merge: [
                "metadata": ["resourceVersion": .string(lease.metadata.resourceVersion ?? "")], "spec": spec,
            ])
            return true
        } catch let error as KubeError where error.isConflict {
            return false
        }
    }
}
