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
    /// The connections' client name (`CLIENT SETNAME`), if any: a snapshot loader's
    /// (`LoadFence.connectionName`), which the claims of other sidecars close.
    let name: String?
    private(set) var connections: [HostPort: BlockingRedisConnection] = [:]
    /// The apply script's SHA1 (`AppliedOffsets.script`), loaded on every node.
    private(set) var sha = ""

    init(rack: RackRedis, timeout: TimeAmount, name: String? = nil) {
        self.rack = rack
        self.timeout = timeout
        self.name = name
    }

    /// Requests for several nodes, each node's in one pipeline.
    struct Requests {
        private(set) var byNode: [HostPort: (bytes: ByteBuffer, entries: [Entry])] = [:]
        /// The requests' bytes, on every node (kept as they are added: a snapshot load asks after each key).
        private(set) var byteCount = 0

        var isEmpty: Bool { self.byNode.isEmpty }

        mutating func add(_ command: [String], to node: HostPort, as entry: Entry) {
            self.add(command.map { ByteBuffer(string: $0) }, to: node, as: entry)
        }

        mutating func add(_ command: [ByteBuffer], to node: HostPort, as entry: Entry) {
            self.add(written: { $0.writeRESPCommand(command) }, to: node, as: entry)
        }

        mutating func add(written: (inout ByteBuffer) -> Void, to node: HostPort, as entry: Entry) {
            self.byNode[node, default: (ByteBuffer(), [])].entries.append(entry)
            let before = self.byNode[node]!.bytes.readableBytes
            written(&self.byNode[node]!.bytes)
            self.byteCount += self.byNode[node]!.bytes.readableBytes - before
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
    /// A claim ends by closing, on each node claimed on, the connections of the snapshot loaders
    /// of those partitions (other than the caller's own): a loader that lost them writes no more
    /// (`LoadFence`).
    func own(_ claims: [(unit: ApplierStateMachine.Unit, mode: String, value: Int)], topic: String) throws -> [(unit: ApplierStateMachine.Unit, epoch: Int)] {
        var pipeline = Requests()
        var claimed: [HostPort: Set<Int32>] = [:]
        for (unit, mode, value) in claims {
            let node = try self.node(forKey: unit.markerKey(topic: topic))
            try pipeline.add(["EVAL", AppliedOffsets.ownerScript, "1", unit.ownerKey(topic: topic), mode, String(value)], to: node, as: .claim(unit))
            if mode == "claim" { claimed[node, default: []].insert(unit.partition) }
        }
        let epochs = try self.exchange(pipeline).map { entry, reply in
            guard case .claim(let unit) = entry, case .integer(let epoch) = reply else {
                throw Doubt(description: "claiming a partition: redis answered \(reply)")
            }
            return (unit: unit, epoch: epoch)
        }
        for (node, partitions) in claimed { try self.closeLoaders(of: partitions, topic: topic, on: node) }
        return epochs
    }

    /// Closes the connections to `node` of the snapshot loaders of any of `partitions`, except
    /// this one (`SKIPME`): Redis drops what they sent and did not run yet.
    private func closeLoaders(of partitions: Set<Int32>, topic: String, on node: HostPort) throws {
        var list = Requests()
        list.add(["CLIENT", "LIST", "TYPE", "normal"], to: node, as: .ownTurn)
        let reply = try self.exchange(list)[0].1
        guard !reply.isError, let text = reply.string else {
            throw Doubt(description: "listing the snapshot loaders to fence off (CLIENT LIST; Pylon needs it and CLIENT KILL): redis answered \(reply)")
        }
        var kills = Requests()
        for id in LoadFence.loaders(in: text, topic: topic, partitions: partitions) {
            kills.add(["CLIENT", "KILL", "ID", String(id), "SKIPME", "yes"], to: node, as: .ownTurn)
        }
        for (_, reply) in try self.exchange(kills) where reply.isError {
            throw Doubt(description: "closing a snapshot loader's connection (CLIENT KILL): redis answered \(reply)")
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
            var setUp = ByteBuffer()
            if let name = self.name { setUp.writeRESPCommand(["CLIENT", "SETNAME", name].map { ByteBuffer(string: $0) }) }
            setUp.writeRESPCommand(["SCRIPT", "LOAD", AppliedOffsets.script].map { ByteBuffer(string: $0) })
            let replies = try client.exchange(setUp, replies: self.name == nil ? 1 : 2)
            guard let sha = replies.last?.string, sha.count == 40, !replies.contains(where: \.isError) else {
                client.close()
                throw Doubt(description: "setting up a connection to redis at \(node) (CLIENT SETNAME, SCRIPT LOAD): redis answered \(replies)")
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
