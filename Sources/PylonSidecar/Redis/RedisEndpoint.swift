import Foundation

/// A `host:port` pair.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port` (`[v6]:port` for IPv6); nil when malformed.
    public init?(_ text: some StringProtocol) {
        let text = String(text)
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (1...65535).contains(port) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        self.init(host: host, port: port)
    }

    public var description: String { self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)" }
}

/// The local Redis, in whatever topology it has, as named by `--redis URL`.
public enum RedisEndpoint: Sendable, Equatable, CustomStringConvertible {
    /// `redis://host:port`: one Redis, or any RESP endpoint (twemproxy, another proxy).
    case standalone(HostPort)
    /// `redis-sentinel://host:port[,host:port…]/MASTERNAME`.
    case sentinel([HostPort], masterName: String)
    /// `redis-cluster://host:port[,host:port…]`: seed nodes of a Redis Cluster.
    case cluster([HostPort])

    public struct ParseError: Error, CustomStringConvertible {
        public let description: String
    }

    public init(url: String) throws {
        func hosts(_ list: Substring) throws -> [HostPort] {
            let parsed = list.split(separator: ",").map { HostPort($0) }
            guard !parsed.isEmpty, parsed.allSatisfy({ $0 != nil }) else {
                throw ParseError(description: "'\(url)' names no valid host:port list")
            }
            return parsed.map { $0! }
        }
        guard let schemeEnd = url.range(of: "://") else {
            throw ParseError(description: "'\(url)' is not a URL; use redis://HOST:PORT, redis-sentinel://HOST:PORT[,…]/MASTER or redis-cluster://HOST:PORT[,…]")
        }
        let scheme = url[..<schemeEnd.lowerBound]
        var rest = url[schemeEnd.upperBound...]
        switch scheme {
        case "redis":
            if rest.hasSuffix("/0") { rest = rest.dropLast(2) }
            if rest.hasSuffix("/") { rest = rest.dropLast() }
            let list = try hosts(rest)
            guard list.count == 1 else { throw ParseError(description: "'\(url)': redis:// takes one host:port") }
            self = .standalone(list[0])
        case "redis-sentinel":
            guard let slash = rest.firstIndex(of: "/"), rest.index(after: slash) < rest.endIndex else {
                throw ParseError(description: "'\(url)' names no master; use redis-sentinel://HOST:PORT[,…]/MASTERNAME")
            }
            self = .sentinel(try hosts(rest[..<slash]), masterName: String(rest[rest.index(after: slash)...]))
        case "redis-cluster":
            if rest.hasSuffix("/") { rest = rest.dropLast() }
            self = .cluster(try hosts(rest))
        default:
            throw ParseError(description: "'\(url)' has unsupported scheme '\(scheme)'; use redis://, redis-sentinel:// or redis-cluster://")
        }
    }

    public var topologyName: String {
        switch self {
        case .standalone: "standalone"
        case .sentinel: "sentinel"
        case .cluster: "cluster"
        }
    }

    public var description: String {
        switch self {
        case .standalone(let address): "redis://\(address)"
        case .sentinel(let sentinels, let master): "redis-sentinel://\(sentinels.map(\.description).joined(separator: ","))/\(master)"
        case .cluster(let seeds): "redis-cluster://\(seeds.map(\.description).joined(separator: ","))"
        }
    }
}

/// Where reads go when the Redis layer has replicas (Sentinel).
public enum ReadPreference: String, Sendable, CaseIterable {
    case master, replica, nearest
}
