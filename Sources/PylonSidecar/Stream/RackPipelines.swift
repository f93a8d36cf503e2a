import NIOCore
import Shared

/// Pipelined requests to the nodes of this rack's Redis that take writes, on blocking sockets:
/// one connection per node. Only `connectAll` opens connections — a new one may reach a Redis
/// that restarted empty, which only a resync (or the snapshot loader, before it starts) may find
/// out — and a failure closes them all, so a late reply is never taken for another request's.
/// Used from one thread: the applier's driver, or the snapshot loader's (each has its own).
final class RackPipelines {
    typealias Entry = ApplierStateMachine.Entry

    struct Doubt: Error, CustomStringConvertible {
        let description: String
    }

    let rack: RackRedis
    let timeout: TimeAmount
    private(set) var connections: [HostPort: BlockingRedisConnection] = [:]
    /// The apply script's SHA1 (`AppliedOffsets.script`), loaded on every node.
    private(set) var sha = ""

    init(rack: RackRedis, timeout: TimeAmount) {
        self.rack = rack
        self.timeout = timeout
    }

    /// Requests for several nodes, each node's in one pipeline.
    struct Requests {
        var byNode: [HostPort: (bytes: ByteBuffer, entries: [Entry])] = [:]

        mutating func add(_ command: [String], to node: HostPort, as entry: Entry) {
            self.add(command.map { ByteBuffer(string: $0) }, to: node, as: entry)
        }

        mutating func add(_ command: [ByteBuffer], to node: HostPort, as entry: Entry) {
            self.byNode[node, default: (ByteBuffer(), [])].bytes.writeRESPCommand(command)
            self.byNode[node]!.entries.append(entry)
        }

        mutating func add(written: (inout ByteBuffer) -> Void, to node: HostPort, as entry: Entry) {
            written(&self.byNode[node, default: (ByteBuffer(), [])].bytes)
            self.byNode[node]!.entries.append(entry)
        }
    }

    /// One node's pipeline, sent: its replies are still to be read.
    struct Sent {
        var connection: BlockingRedisConnection
        var ticket: BlockingRedisConnection.Ticket
        var entries: [Entry]
    }

    /// Sends each node its pipeline; the replies are read by `receive`.
    func transmit(_ requests: Requests) throws -> [Sent] {
        try requests.byNode.map { node, request in
            let connection = try self.sameConnection(to: node)
            do {
                return Sent(connection: connection, ticket: try connection.send(request.bytes, replies: request.entries.count), entries: request.entries)
            } catch {
                self.dropConnections()
                throw error
            }
        }
    }

    /// Reads a sent pipeline's replies, with what each answers. A failure (Redis closed the
    /// connection, or did not answer within the timeout) closes every connection.
    func receive(_ sent: Sent) throws -> [(Entry, RESPValue)] {
        do { return zip(sent.entries, try sent.connection.receive(sent.ticket)).map { ($0, $1) } } catch {
            self.dropConnections()
            throw error
        }
    }

    /// Sends and waits.
    func exchange(_ requests: Requests) throws -> [(Entry, RESPValue)] {
        try self.transmit(requests).flatMap { try self.receive($0) }
    }

    /// Runs the owner script (`AppliedOffsets.ownerScript`) for each unit — `claim` with the
    /// claimant's clock in ms, or `keep` with the epoch held — on the node of its marker, and
    /// answers the epoch each owner key holds now. Used by the applier and the snapshot loader.
    func own(_ claims: [(unit: ApplierStateMachine.Unit, mode: String, value: Int)], topic: String) throws -> [(unit: ApplierStateMachine.Unit, epoch: Int)] {
        var pipeline = Requests()
        for (unit, mode, value) in claims {
            try pipeline.add(
                ["EVAL", AppliedOffsets.ownerScript, "1", unit.ownerKey(topic: topic), mode, String(value)],
                to: self.node(forKey: unit.markerKey(topic: topic)), as: .claim(unit)
            )
        }
        return try self.exchange(pipeline).map { entry, reply in
            guard case .claim(let unit) = entry, case .integer(let epoch) = reply else {
                throw Doubt(description: "claiming a partition: redis answered \(reply)")
            }
            return (unit, epoch)
        }
    }

    /// The node that takes writes for `key`.
    func node(forKey key: String) throws -> HostPort {
        guard let node = self.rack.node(HashSlot.of(key)) else { throw Doubt(description: "the rack's redis node for \(key) is not known yet") }
        return node
    }

    /// Connects to every node that takes writes, keeping live connections to the same nodes,
    /// and loads the apply script on each.
    func connectAll() throws {
        let nodes = self.rack.nodes()
        guard !nodes.isEmpty else { throw Doubt(description: "the rack's redis master is not known yet") }
        for (node, connection) in self.connections where !nodes.contains(node) || !connection.isOpen {
            connection.close()
            self.connections[node] = nil
        }
        for node in nodes where self.connections[node] == nil {
            let client = try BlockingRedisConnection(to: node, timeout: self.timeout)
            let reply = try client.exchange(RedisRequest(strings: ["SCRIPT", "LOAD", AppliedOffsets.script]).raw, replies: 1)[0]
            guard let sha = reply.string, sha.count == 40 else {
                client.close()
                throw Doubt(description: "SCRIPT LOAD answered \(reply)")
            }
            self.sha = sha
            self.connections[node] = client
        }
    }

    /// The connection to `node` opened by the last `connectAll`; a closed or missing one (Redis
    /// restarted, a failover moved the master, a slot moved) calls for reconnecting.
    func sameConnection(to node: HostPort) throws -> BlockingRedisConnection {
        guard let client = self.connections[node], client.isOpen else {
            throw Doubt(description: "no open connection to redis at \(node)")
        }
        return client
    }

    func dropConnections() {
        for client in self.connections.values { client.close() }
        self.connections = [:]
    }
}
