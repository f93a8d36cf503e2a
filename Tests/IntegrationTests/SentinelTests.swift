import Foundation
import NIOCore
import Synchronization
import Testing

@testable import PylonSidecar

/// The read path in front of a Sentinel-managed master and replica.
@Suite("Gateway in front of Redis Sentinel", .serialized, .timeLimit(.minutes(3)))
struct SentinelTests {
    func getCalls(_ server: RedisServer) async throws -> Int {
        let client = try await server.client()
        defer { Task { await client.close() } }
        let stats = try await client.send("INFO", "commandstats").string ?? ""
        guard let line = stats.split(separator: "\r\n").first(where: { $0.hasPrefix("cmdstat_get:") }),
              let calls = line.split(separator: "=").dropFirst().first?.split(separator: ",").first else { return 0 }
        return Int(calls) ?? 0
    }

    @Test func readsFromTheMasterAndFollowAFailover() async throws {
        let fixture = try await SentinelFixture()
        #expect(try await fixture.master.client().send("SET", "k", "v") == .ok)
        let sidecar = try await SidecarFixture(redis: .sentinel([fixture.sentinelAddress], masterName: fixture.masterName))
        #expect(try await eventually { sidecar.sidecar.isReady })
        let client = try await sidecar.client()
        #expect(try await client.send("GET", "k") == .bulk("v"))
        #expect(sidecar.sidecar.infoValue("node0") == "address=\(fixture.master.address),role=master,reads,state=up")

        // A reader keeps going through the failover.
        let reads = Atomic<Int>(0)
        let wrong = Mutex<[String]>([])
        let reader = Task {
            let readerClient = try await sidecar.client()
            while !Task.isCancelled {
                let reply = try await readerClient.send("GET", "k")
                reads.add(1, ordering: .relaxed)
                if reply != .bulk("v") { wrong.withLock { $0.append("\(reply.string ?? "nil")") } }
            }
        }
        let oldMaster = fixture.master.port
        try await fixture.failover()
        #expect(try await eventually(timeout: .seconds(20)) { try await fixture.currentMaster() != oldMaster })
        let newMaster = try await fixture.currentMaster()
        #expect(newMaster == fixture.replica.port)
        // The sidecar follows without a restart.
        #expect(try await eventually(timeout: .seconds(15)) {
            sidecar.sidecar.infoValue("node0") == "address=127.0.0.1:\(newMaster),role=master,reads,state=up"
        })
        let before = try await self.getCalls(fixture.replica)
        #expect(try await client.send("GET", "k") == .bulk("v"))
        #expect(try await self.getCalls(fixture.replica) > before)
        try await Task.sleep(for: .milliseconds(200))
        reader.cancel()
        _ = await reader.result
        #expect(reads.load(ordering: .relaxed) > 100)
        // Reads answered during the switch are correct; at most the ones in flight on the old
        // connection at the switch may report the retry error.
        let errors = wrong.withLock { $0 }
        #expect(errors.allSatisfy { $0.hasPrefix("ERR pylon: local redis unavailable") }, "\(errors)")
        #expect(errors.count <= 2, "\(errors)")
        #expect(sidecar.sidecar.infoValue("sentinel_failovers_seen") == "1")
        await sidecar.stop()
    }

    @Test func readsCanGoToAReplica() async throws {
        let fixture = try await SentinelFixture()
        #expect(try await fixture.master.client().send("SET", "k", "v") == .ok)
        let sidecar = try await SidecarFixture(redis: .sentinel([fixture.sentinelAddress], masterName: fixture.masterName)) {
            $0.readFrom = .replica
        }
        #expect(try await eventually { sidecar.sidecar.isReady })
        let client = try await sidecar.client()
        let masterBefore = try await self.getCalls(fixture.master)
        let replicaBefore = try await self.getCalls(fixture.replica)
        #expect(try await eventually { try await client.send("GET", "k") == .bulk("v") })
        for _ in 0..<20 { #expect(try await client.send("GET", "k") == .bulk("v")) }
        #expect(try await self.getCalls(fixture.replica) - replicaBefore >= 20)
        #expect(try await self.getCalls(fixture.master) == masterBefore)
        #expect(sidecar.sidecar.info.contains("address=\(fixture.replica.address),role=replica,reads,state=up"))
        await sidecar.stop()
    }

    @Test func nearestPicksAReachableNode() async throws {
        let fixture = try await SentinelFixture()
        let sidecar = try await SidecarFixture(redis: .sentinel([fixture.sentinelAddress], masterName: fixture.masterName)) {
            $0.readFrom = .nearest
        }
        #expect(try await eventually { sidecar.sidecar.isReady })
        #expect(sidecar.sidecar.info.contains(",reads,state=up"))
        #expect(try await sidecar.client().send("GET", "nothing") == .null)
        await sidecar.stop()
    }
}
