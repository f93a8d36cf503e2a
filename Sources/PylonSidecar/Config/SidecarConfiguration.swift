import Foundation
import Logging
import Shared
import Yams

/// Everything a sidecar is told at start: from flags, from a YAML file (`--config`), or both
/// (flags win). Keys in the file are the flag names without dashes: `listen`, `redis`, `admin`, …
public struct SidecarConfiguration: Sendable, Equatable {
    public var listen = HostPort(host: "127.0.0.1", port: 6380)
    public var redis = RedisEndpoint.standalone(HostPort(host: "127.0.0.1", port: 6379))
    public var admin = HostPort(host: "127.0.0.1", port: 9480)
    public var readFrom = ReadPreference.master
    public var logLevel = Logger.Level.info
    public var logFormat = LogFormat.text
    public var rack: String?
    public var world: String?
    /// A request to Redis with no reply within this many milliseconds fails.
    public var redisTimeoutMilliseconds = 2000
    public var connectTimeoutMilliseconds = 1000
    /// Unanswered requests a client may pipeline before the sidecar stops reading from it.
    public var maxPendingReplies = 1024
    public var limits = RESPLimits.default
    /// Graceful shutdown waits this long for in-flight replies.
    public var shutdownGraceMilliseconds = 5000
    /// Event-loop threads; each serves its clients and holds its own connections to Redis. One,
    /// like twemproxy: a sidecar shares its machine with Redis and the application, and on the
    /// 2-core benchmark machine one loop beat two (BENCHMARKS.md). Raise it where cores are spare.
    public var threads = 1

    public init() {}

    /// A configuration error, naming the key at fault.
    public struct Error: Swift.Error, CustomStringConvertible, Equatable {
        public let key: String
        public let problem: String
        public var description: String { "configuration: '\(self.key)': \(self.problem)" }
        public init(key: String, problem: String) {
            self.key = key
            self.problem = problem
        }
    }

    /// Every key a file may hold (and flag names may set through `set`).
    public static let keys = [
        "listen", "redis", "admin", "read-from", "log-level", "log-format", "rack", "world",
        "redis-timeout-ms", "connect-timeout-ms", "max-pending-replies", "max-bulk-length",
        "max-arguments", "max-inline-length", "shutdown-grace-ms", "threads",
    ]

    /// Sets one key from its textual value, validating it.
    public mutating func set(_ key: String, _ value: String) throws {
        func bad(_ expected: String) -> Error { Error(key: key, problem: "expected \(expected), got '\(value)'") }
        func integer(_ range: ClosedRange<Int>) throws -> Int {
            guard let n = Int(value), range.contains(n) else { throw bad("an integer in \(range.lowerBound)...\(range.upperBound)") }
            return n
        }
        switch key {
        case "listen":
            guard let address = HostPort(value) else { throw bad("HOST:PORT") }
            self.listen = address
        case "admin":
            guard let address = HostPort(value) else { throw bad("HOST:PORT") }
            self.admin = address
        case "redis":
            do { self.redis = try RedisEndpoint(url: value) } catch {
                throw Error(key: key, problem: "\(error)")
            }
        case "read-from":
            guard let preference = ReadPreference(rawValue: value) else { throw bad("one of master, replica, nearest") }
            self.readFrom = preference
        case "log-level":
            guard let level = Logger.Level(rawValue: value.lowercased()) else {
                throw bad("one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            self.logLevel = level
        case "log-format":
            guard let format = LogFormat(rawValue: value) else { throw bad("text or json") }
            self.logFormat = format
        case "rack":
            guard Self.isName(value) else { throw bad("a name of letters, digits, '-', '_' or '.'") }
            self.rack = value
        case "world":
            guard Self.isName(value) else { throw bad("a name of letters, digits, '-', '_' or '.'") }
            self.world = value
        case "redis-timeout-ms": self.redisTimeoutMilliseconds = try integer(1...3_600_000)
        case "connect-timeout-ms": self.connectTimeoutMilliseconds = try integer(1...600_000)
        case "max-pending-replies": self.maxPendingReplies = try integer(1...1_000_000)
        case "max-bulk-length": self.limits.maxBulkLength = try integer(1...(1 << 40))
        case "max-arguments": self.limits.maxArrayLength = try integer(1...(1 << 30))
        case "max-inline-length": self.limits.maxInlineLength = try integer(16...(1 << 30))
        case "shutdown-grace-ms": self.shutdownGraceMilliseconds = try integer(0...3_600_000)
        case "threads": self.threads = try integer(1...256)
        default:
            throw Error(key: key, problem: "unknown key; known keys are \(Self.keys.joined(separator: ", "))")
        }
    }

    static func isName(_ value: String) -> Bool {
        !value.isEmpty && value.count <= 200 && value.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
    }

    /// Applies a YAML document: a mapping of keys to scalars.
    public mutating func apply(yaml text: String, source: String = "config") throws {
        let document: Any?
        do { document = try Yams.load(yaml: text) } catch {
            throw Error(key: source, problem: "not valid YAML: \(error)")
        }
        guard let document else { return }
        guard let mapping = document as? [String: Any] else {
            throw Error(key: source, problem: "expected a mapping of keys to values at the top level")
        }
        for key in mapping.keys.sorted() {
            let value = mapping[key]!
            guard value is String || value is Int || value is Double || value is Bool else {
                throw Error(key: key, problem: "expected a single value, got \(type(of: value))")
            }
            try self.set(key, "\(value)")
        }
    }

    /// Builds the configuration: the file first (if any), then the flags given on the command line.
    public static func resolve(file: String?, flags: [(String, String?)]) throws -> SidecarConfiguration {
        var configuration = SidecarConfiguration()
        if let file {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw Error(key: "config", problem: "cannot read '\(file)'")
            }
            try configuration.apply(yaml: text, source: file)
        }
        for (key, value) in flags {
            if let value { try configuration.set(key, value) }
        }
        return configuration
    }
}
