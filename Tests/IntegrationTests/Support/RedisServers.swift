import Foundation
import PylonSidecar

/// A real redis-server on a free loopback port, for one test.
final class RedisServer: Sendable {
    let port: Int
    let directory: ScratchDirectory
    let process: LocalProcess
    var address: HostPort { HostPort(host: "127.0.0.1", port: self.port) }

    init(port: Int? = nil, extra: [String] = []) throws {
        self.port = try port ?? Ports.free()
        self.directory = try ScratchDirectory()
        self.process = try LocalProcess("redis-server", [
            "--port", "\(self.port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", self.directory.url.path, "--logfile", self.directory.url.appendingPathComponent("redis.log").path,
        ] + extra, name: "redis-server:\(self.port)")
        try Ports.waitUntilOpen(self.port)
    }

    func stop() { self.process.stop() }

    /// A connected client straight to this Redis (bypassing Pylon).
    func client() async throws -> RedisClient {
        try await RedisClient.connect(to: self.address)
    }
}

/// A 3-master Redis Cluster on free loopback ports, created with `redis-cli --cluster create`.
final class RedisClusterFixture: Sendable {
    let nodes: [RedisServer]

    init(masters: Int = 3) async throws {
        var nodes: [RedisServer] = []
        for _ in 0..<masters {
            let port = try Ports.free()
            nodes.append(try RedisServer(port: port, extra: [
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes-\(port).conf", "--cluster-node-timeout", "2000",
                // The bus port defaults to port + 10000, which may be taken or out of range.
                "--cluster-port", "\(try Ports.free())",
            ]))
        }
        self.nodes = nodes
        let create = Process()
        create.executableURL = URL(fileURLWithPath: try LocalProcess.which("redis-cli"))
        create.arguments = ["--cluster", "create"] + nodes.map { "127.0.0.1:\($0.port)" } + ["--cluster-replicas", "0", "--cluster-yes"]
        create.standardOutput = FileHandle.nullDevice
        create.standardError = FileHandle.nullDevice
        try create.run()
        create.waitUntilExit()
        guard create.terminationStatus == 0 else { throw HarnessError("redis-cli --cluster create failed") }
        for node in nodes {
            let client = try await node.client()
            let ok = try await eventually(timeout: .seconds(15)) {
                try await client.send("CLUSTER", "INFO").string?.contains("cluster_state:ok") == true
            }
            await client.close()
            guard ok else { throw HarnessError("cluster did not reach cluster_state:ok") }
        }
    }

    var seeds: [HostPort] { self.nodes.map(\.address) }

    /// The node serving `slot`, and its node id.
    func owner(of slot: Int) async throws -> (server: RedisServer, id: String) {
        for node in self.nodes {
            let client = try await node.client()
            defer { Task { await client.close() } }
            let myID = try await client.send("CLUSTER", "MYID").string!
            let slots = try await client.send("CLUSTER", "SLOTS").array!
            for range in slots {
                let r = range.array!
                if r[0].int! <= slot, slot <= r[1].int!, r[2].array![1].int! == node.port { return (node, myID) }
            }
        }
        throw HarnessError("no owner for slot \(slot)")
    }

    func nodeID(_ server: RedisServer) async throws -> String {
        let client = try await server.client()
        defer { Task { await client.close() } }
        return try await client.send("CLUSTER", "MYID").string!
    }
}

/// A master, a replica and one Sentinel watching them (quorum 1), so `SENTINEL FAILOVER` works.
final class SentinelFixture: Sendable {
    let master: RedisServer
    let replica: RedisServer
    let sentinel: LocalProcess
    let sentinelPort: Int
    let directory: ScratchDirectory
    let masterName = "pylonmaster"

    init() async throws {
        self.master = try RedisServer()
        self.replica = try RedisServer(extra: ["--replicaof", "127.0.0.1", "\(self.master.port)"])
        self.sentinelPort = try Ports.free()
        self.directory = try ScratchDirectory()
        let config = self.directory.url.appendingPathComponent("sentinel.conf")
        try """
        port \(self.sentinelPort)
        bind 127.0.0.1
        sentinel monitor \(self.masterName) 127.0.0.1 \(self.master.port) 1
        sentinel down-after-milliseconds \(self.masterName) 1000
        sentinel failover-timeout \(self.masterName) 5000
        sentinel parallel-syncs \(self.masterName) 1
        """.write(to: config, atomically: true, encoding: .utf8)
        self.sentinel = try LocalProcess("redis-server", [config.path, "--sentinel"], name: "sentinel",
                                         log: self.directory.url.appendingPathComponent("sentinel.log"))
        try Ports.waitUntilOpen(self.sentinelPort)
        // Wait until the Sentinel has discovered the replica and seen it in sync (its INFO refresh runs every 10 s).
        let sentinelClient = try await RedisClient.connect(to: self.sentinelAddress)
        defer { Task { await sentinelClient.close() } }
        let ready = try await eventually(timeout: .seconds(30)) {
            let replicas = try await sentinelClient.send("SENTINEL", "REPLICAS", self.masterName).array ?? []
            guard let fields = replicas.first?.array else { return false }
            func field(_ name: String) -> String? { zip(fields, fields.dropFirst()).first { $0.0.string == name }?.1.string }
            return field("flags") == "slave" && field("master-link-status") == "ok"
        }
        guard ready else { throw HarnessError("sentinel did not discover the replica") }
    }

    var sentinelAddress: HostPort { HostPort(host: "127.0.0.1", port: self.sentinelPort) }

    func failover() async throws {
        let client = try await RedisClient.connect(to: self.sentinelAddress)
        defer { Task { await client.close() } }
        let reply = try await client.send("SENTINEL", "FAILOVER", self.masterName)
        guard !reply.isError else { throw HarnessError("SENTINEL FAILOVER: \(reply.string ?? "")") }
    }

    func currentMaster() async throws -> Int {
        let client = try await RedisClient.connect(to: self.sentinelAddress)
        defer { Task { await client.close() } }
        return try await client.send("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.masterName).array![1].int!
    }
}
