import Logging
import ServiceLifecycle
import Shared

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

/// The admission webhook, on every replica: admission must not wait for a leader.
public struct WebhookPart: ServiceLifecycle.Service {
    let webhook: WebhookService

    public init(_ webhook: WebhookService) { self.webhook = webhook }

    public func run() async throws {
        try? await gracefulShutdown()
        await self.webhook.stop()
    }
}

/// The admin endpoints (/healthz, /readyz, /metrics), served until the others have stopped.
public struct AdminPart: ServiceLifecycle.Service {
    let server: AdminServer

    public init(_ server: AdminServer) { self.server = server }

    public func run() async throws {
        try? await gracefulShutdown()
        await self.server.close()
    }
}

/// The process's informers, stopped last: every other part reads from them.
public struct InformersPart: ServiceLifecycle.Service {
    let informers: SharedInformers

    public init(_ informers: SharedInformers) { self.informers = informers }

    public func run() async throws {
        try? await gracefulShutdown()
        self.informers.stop()
    }
}
