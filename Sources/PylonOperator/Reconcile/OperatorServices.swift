import ServiceLifecycle

/// The operator's parts as Services of one `ServiceGroup` (swift-service-lifecycle), as the
/// sidecar runs: started in order, stopped in reverse on SIGTERM or SIGINT.

/// The reconcilers. With leader election they run only while this replica holds the Lease, and
/// stop — informer subscriptions dropped, queue closed, workers finished — before the Lease can
/// pass to another replica (`LeaderElection.renewDeadline`).
public struct ReconcilerService: ServiceLifecycle.Service {
    let reconcilers: PylonOperatorService
    let election: LeaderElection?

    public init(_ reconcilers: PylonOperatorService, election: LeaderElection?) {
        self.reconcilers = reconcilers
        self.election = election
    }

    public func run() async throws {
        let reconcilers = self.reconcilers
        guard let election = self.election else {
            reconcilers.start()
            try? await gracefulShutdown()
            await reconcilers.stop()
            return
        }
        await cancelWhenGracefulShutdown {
            await election.run {
                reconcilers.start()
                while !Task.isCancelled { try? await Task.sleep(for: .milliseconds(200)) }
                await reconcilers.stop()
            }
        }
    }
}

/// A part that needs nothing but stopping — the admission webhook (on every replica: admission
/// must not wait for a leader), the admin endpoints, the process's informers: runs until the
/// group's graceful shutdown reaches it, then stops its part.
public struct StoppedOnShutdown: ServiceLifecycle.Service, CustomStringConvertible {
    public let description: String
    let stop: @Sendable () async -> Void

    public init(_ description: String, stop: @escaping @Sendable () async -> Void) {
        self.description = description
        self.stop = stop
    }

    public func run() async throws {
        try? await gracefulShutdown()
        await self.stop()
    }
}
