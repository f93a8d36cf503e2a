import Shared
import NIOCore

/// The commands a sidecar answers itself: connection commands (as Redis answers them) and PYLON.
enum LocalCommands {
    static func answer(_ arguments: [ByteBuffer], command: Command, connection: GatewayConnection) -> RESPValue {
        let gateway = connection.gateway
        switch command.name {
        case "ping":
            // The command table allows any count (as Redis's does); PING itself takes one message at most.
            guard arguments.count <= 2 else { return .error("ERR wrong number of arguments for 'ping' command") }
            return arguments.count > 1 ? .bulkString(arguments[1]) : .simple("PONG")
        case "echo":
            return .bulkString(arguments[1])
        case "quit":
            connection.closeAfterReplies()
            return .ok
        case "reset":
            connection.name = ""
            gateway.clients.rename(connection.clientID, to: "")
            connection.version = .resp2
            gateway.clients.speaks(connection.clientID, .resp2)
            return .simple("RESET")
        case "hello":
            return self.hello(arguments, connection: connection)
        case "client|setname":
            return self.setName(arguments[2], connection: connection)
        case "client|getname":
            return connection.name.isEmpty ? .null : .bulk(connection.name)
        case "client|id":
            return .integer(connection.clientID)
        case "client|info":
            guard let client = gateway.clients.client(connection.clientID) else { return .null }
            return .bulk(ClientRegistry.describe(client, lastCommand: "client|info") + "\n")
        case "client|list":
            return .bulk(gateway.clients.all.map { ClientRegistry.describe($0, lastCommand: $0.id == connection.clientID ? "client|list" : "NULL") + "\n" }.joined())
        case "client|help":
            return .array([
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands handled by pylon are:",
                "GETNAME", "    Return the name of the current connection.",
                "ID", "    Return the ID of the current connection.",
                "INFO", "    Return information about the current client connection.",
                "LIST", "    Return information about client connections to this sidecar.",
                "SETNAME <name>", "    Assign the name <name> to the current connection.",
                "HELP", "    Print this help.",
            ].map { .simple($0) })
        case "pylon":
            return PylonCommands.answer(arguments, connection: connection)
        default:
            return .error("ERR pylon: '\(command.displayName)' has no local handler (a bug in pylon; please report it)")
        }
    }

    private static func setName(_ name: ByteBuffer, connection: GatewayConnection) -> RESPValue {
        // Redis refuses spaces, newlines and other non-printable characters in names.
        guard name.readableBytesView.allSatisfy({ $0 > 32 && $0 < 127 }) else {
            return .error("ERR Client names cannot contain spaces, newlines or special characters.")
        }
        connection.name = String(buffer: name)
        connection.gateway.clients.rename(connection.clientID, to: connection.name)
        return .ok
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`: RESP2 or RESP3, as Redis. The reply
    /// is in the protocol chosen; the client's later reads go over connections of it.
    private static func hello(_ arguments: [ByteBuffer], connection: GatewayConnection) -> RESPValue {
        var chosen = connection.version
        if arguments.count > 1 {
            guard let number = Int(String(buffer: arguments[1])) else {
                return .error("ERR Protocol version is not an integer or out of range")
            }
            guard let version = RESPVersion(rawValue: number) else {
                return .error("NOPROTO unsupported protocol version")
            }
            chosen = version
            var index = 2
            while index < arguments.count {
                if arguments[index].equalsIgnoringASCIICase("AUTH") {
                    return .error(CommandPolicy.Reason.auth)
                } else if arguments[index].equalsIgnoringASCIICase("SETNAME"), index + 1 < arguments.count {
                    if case .error(let error) = self.setName(arguments[index + 1], connection: connection) { return .error(error) }
                    index += 2
                } else {
                    return .error("ERR Syntax error in HELLO option '\(String(buffer: arguments[index]))'")
                }
            }
        }
        connection.version = chosen
        connection.gateway.clients.speaks(connection.clientID, chosen)
        return .map([
            .bulk("server"), .bulk("redis"),
            .bulk("version"), .bulk(connection.gateway.table.redisVersion),
            .bulk("proto"), .integer(chosen.rawValue),
            .bulk("id"), .integer(connection.clientID),
            .bulk("mode"), .bulk("standalone"),
            .bulk("role"), .bulk("master"),
            .bulk("modules"), .array([]),
        ])
    }
}

/// `PYLON …`: the sidecar's own commands.
enum PylonCommands {
    static let help: [String] = [
        "PYLON <subcommand> [<arg> ...]. Subcommands are:",
        "INFO",
        "    Version, uptime, rack and world, the Redis layer's topology and health, clients, command counts.",
        "PING",
        "    This sidecar as its peers see it: name, rack, world, whether its Redis is up, its rack's lag.",
        "PEERS",
        "    The peer sidecars: address, name, rack, state, round trip, lag, whether reads may fail over to them.",
        "CONSISTENCY [log|applied]",
        "    When this connection's writes are acknowledged: when Kafka has them (log), or when this rack applied them, with the real reply (applied).",
        "LASTWRITE",
        "    Where this connection's writes are in the world's log: a token for PYLON WAIT on any rack.",
        "WAIT <token> <timeout-ms>",
        "    Block until this rack applied the writes of a PYLON LASTWRITE token: 1, or 0 when the time ran out.",
        "REPLY <partition:offset> <timeout-ms>",
        "    The reply this rack gave another rack's write (asked by sidecars whose Redis is away).",
        "HELP",
        "    Print this help.",
    ]

    static func answer(_ arguments: [ByteBuffer], connection: GatewayConnection) -> RESPValue {
        let gateway = connection.gateway
        let sub = String(buffer: arguments[1]).uppercased()
        switch sub {
        case "INFO":
            return .bulk(self.info(gateway))
        case "PING":
            return .array([
                .bulk("name"), .bulk(gateway.log?.sidecar ?? ""), .bulk("rack"), .bulk(gateway.identity.rack ?? ""),
                .bulk("world"), .bulk(gateway.identity.world ?? ""), .bulk("redis"), .integer(gateway.backend.isReady ? 1 : 0),
                .bulk("lag"), .integer(Int(gateway.progress?.lag ?? -1)),
            ])
        case "PEERS":
            return .bulk(self.peers(gateway).joined(separator: "\r\n") + "\r\n")
        case "CONSISTENCY" where arguments.count == 2:
            return .bulk((connection.consistency ?? gateway.writes.consistency).rawValue)
        case "CONSISTENCY" where arguments.count == 3:
            guard let level = Consistency(rawValue: String(buffer: arguments[2]).lowercased()) else {
                return .error("ERR pylon: consistency is log or applied")
            }
            connection.consistency = level
            return .ok
        case "LASTWRITE":
            guard !connection.session.written.isEmpty else { return .null }
            return .bulk(connection.session.written.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ","))
        case "HELP":
            return .array(self.help.map { .simple($0) })
        default:
            return .error("ERR unknown subcommand '\(sub.prefix(128))'. Try PYLON HELP.")
        }
    }

    /// One line per peer, as `PYLON PEERS` and `PYLON INFO` show them.
    static func peers(_ gateway: Gateway) -> [String] {
        guard let peers = gateway.peers else { return [] }
        return peers.all.enumerated().map { index, peer in
            let rtt = peer.rtt.map { String(format: "%.3f", $0 * 1000) } ?? "?"
            let reads = peer.canServeReads(of: peers.identity, maxLag: peers.settings.maxLag) ? "yes" : "no"
            return "peer\(index):address=\(peer.address),name=\(peer.name ?? "?"),rack=\(peer.rack ?? "?"),state=\(peer.up ? "up" : "down"),redis=\(peer.redisReady ? "up" : "down"),rtt_ms=\(rtt),lag=\(peer.lag.map(String.init) ?? "?"),reads=\(reads)"
        }
    }

    static func info(_ gateway: Gateway) -> String {
        let stats = gateway.stats
        let backend = gateway.backend.description
        var lines: [String] = [
            "# Pylon",
            "pylon_version:\(Pylon.version)",
            "redis_command_table:\(gateway.table.redisVersion)",
            "uptime_in_seconds:\(stats.uptimeSeconds)",
            "rack:\(gateway.identity.rack ?? "")",
            "world:\(gateway.identity.world ?? "")",
            "",
            "# Backend",
            "redis:\(gateway.identity.redis)",
            "topology:\(backend.topology)",
            "backend_ready:\(gateway.backend.isReady ? 1 : 0)",
            "read_from:\(gateway.identity.readFrom.rawValue)",
        ]
        for (key, value) in backend.details { lines.append("\(key):\(value)") }
        for (index, node) in backend.nodes.enumerated() {
            lines.append("node\(index):address=\(node.address),role=\(node.role),state=\(node.up ? "up" : "down")")
        }
        lines += [
            "",
            "# Clients",
            "connected_clients:\(stats.connectedClients.load(ordering: .relaxed))",
            "total_connections_received:\(stats.totalConnections.load(ordering: .relaxed))",
            "protocol_errors:\(stats.protocolErrors.load(ordering: .relaxed))",
            "",
            "# Commands",
            "commands_read:\(stats.reads.load(ordering: .relaxed))",
            "commands_write:\(stats.writes.load(ordering: .relaxed))",
            "commands_refused:\(stats.refused.load(ordering: .relaxed))",
            "commands_ignored:\(stats.ignored.load(ordering: .relaxed))",
            "commands_internal:\(stats.internalCommands.load(ordering: .relaxed))",
            "commands_unknown:\(stats.unknown.load(ordering: .relaxed))",
        ]
        if let log = gateway.log {
            lines += [
                "", "# Log", "topic:\(log.topic)", "partitions:\(log.partitions)", "sidecar_name:\(log.sidecar)",
                "consistency:\(gateway.writes.consistency.rawValue)",
                "contentious_keys:\(gateway.writes.contentious.map(\.description).joined(separator: " "))",
            ]
        }
        if let progress = gateway.progress {
            lines += ["", "# World", "rack_lag:\(progress.lag.map(String.init) ?? "?")"]
            if let peers = gateway.peers {
                let all = peers.all
                let best = peers.bestForReads
                lines += [
                    "peers:\(all.count)", "peers_up:\(all.filter(\.up).count)",
                    "reads_from:\(gateway.backend.isReady ? "local" : best.map { "peer \($0)" } ?? "local (no peer may serve)")",
                ] + self.peers(gateway)
            }
        }
        if let applier = gateway.applier {
            let partitions = applier.partitions
            lines += [
                "", "# Applier",
                "consumer_group:\(applier.settings.groupID)",
                "applied_partitions:\(partitions.map { String($0.partition) }.joined(separator: ","))",
            ]
            lines += ApplierStats.Outcome.allCases.map { "applier_\($0.name):\(applier.stats[$0])" }
            lines += applier.snapshot.infoLines
            for status in partitions {
                lines.append("partition\(status.partition):next_offset=\(status.next),log_end=\(status.logEnd.map(String.init) ?? "?"),lag=\(status.lag.map(String.init) ?? "?")\(status.deposed ? ",deposed=1" : "")")
            }
        }
        return lines.joined(separator: "\r\n") + "\r\n"
    }
}
