import NIOCore

/// A command the gateway knows: Redis's metadata with Pylon's disposition.
public final class Command: Sendable {
    /// Dense index, for per-command counters without dictionary lookups.
    public let id: Int
    /// Redis's name: lower case, subcommands as `container|sub`.
    public let name: String
    /// The name as users type it: `GET`, `CLIENT SETNAME`.
    public let displayName: String
    public let arity: Int
    public let disposition: Disposition
    public let keySpecs: [KeySpec]
    public let argumentRule: ArgumentRule?
    /// Subcommands, for containers such as CLIENT or OBJECT.
    public let subcommands: CommandLookup?
    /// Reads data without naming keys (KEYS, SCAN, DBSIZE, RANDOMKEY): Redis's `@read` category.
    public let readsData: Bool

    init(
        id: Int, name: String, arity: Int, disposition: Disposition, keySpecs: [KeySpec], argumentRule: ArgumentRule?, subcommands: CommandLookup?,
        readsData: Bool = false
    ) {
        self.id = id
        self.name = name
        self.displayName = name.uppercased().replacing("|", with: " ")
        self.arity = arity
        self.disposition = disposition
        self.keySpecs = keySpecs
        self.argumentRule = argumentRule
        self.subcommands = subcommands
        self.readsData = readsData
    }

    /// Whether `count` arguments (the name included) fit Redis's arity.
    public func acceptsArgumentCount(_ count: Int) -> Bool {
        self.arity >= 0 ? count == self.arity : count >= -self.arity
    }

    /// The disposition once the arguments are known (SORT … STORE is refused, GEORADIUS … STORE writes).
    public func disposition(for arguments: [ByteBuffer]) -> Disposition {
        guard let rule = self.argumentRule else { return self.disposition }
        switch rule {
        case .refuseWithKeyword(let keywords, let reason):
            return arguments.dropFirst().contains { keywords.contains(where: $0.equalsIgnoringASCIICase) } ? .refused(reason) : self.disposition
        case .writeWithKeyword(let keywords):
            return arguments.dropFirst().contains { keywords.contains(where: $0.equalsIgnoringASCIICase) } ? .write : self.disposition
        case .localWithParameters(let allowed):
            // CONFIG SET name value [name value …]
            let names = stride(from: 2, to: arguments.count, by: 2).map { String(buffer: arguments[$0]).lowercased() }
            return !names.isEmpty && names.allSatisfy(allowed.contains) ? .read : self.disposition
        }
    }

    /// The positions of the keys in `arguments` (the command name at 0), in order; nil when the
    /// arguments contradict the key specification.
    public func keyPositions(in arguments: [ByteBuffer]) -> [Int]? {
        var positions: [Int] = []
        for spec in self.keySpecs {
            let ok = spec.keyPositions(
                in: arguments, into: &positions,
                equals: { $0.equalsIgnoringASCIICase($1) },
                integer: { RESPRequestDecoder.integer($0, $0.readerIndex, $0.writerIndex) }
            )
            if !ok { return nil }
        }
        return positions
    }
}

/// Every command the gateway knows, looked up by the bytes of its name without allocating.
public struct CommandTable: Sendable {
    public let commands: CommandLookup
    /// Every command and subcommand, indexed by `Command.id`.
    public let all: [Command]
    /// The Redis version the table was generated from.
    public let redisVersion: String

    public static let shared = CommandTable()

    /// The commands Pylon adds to Redis's.
    static let pylonCommands = [
        RedisCommandInfo(name: "pylon", arity: -2, flags: [], categories: [], legacyKeys: (0, 0, 0), keySpecs: [], subcommands: [])
    ]

    init(infos: [RedisCommandInfo] = RedisCommandInfo.all + CommandTable.pylonCommands, redisVersion: String = RedisCommandInfo.redisVersion) {
        var all: [Command] = []
        func make(_ info: RedisCommandInfo) -> Command {
            let subcommands = info.subcommands.isEmpty ? nil : CommandLookup(info.subcommands.map { sub in
                (String(sub.name.split(separator: "|").last!), make(sub))
            })
            let disposition = info.name == "pylon" ? Disposition.internal : CommandPolicy.disposition(of: info)
            let command = Command(
                id: all.count, name: info.name, arity: info.arity, disposition: disposition,
                keySpecs: info.keySpecs, argumentRule: CommandPolicy.argumentRules[info.name], subcommands: subcommands,
                readsData: info.categories.contains("@read")
            )
            all.append(command)
            return command
        }
        self.commands = CommandLookup(infos.map { ($0.name, make($0)) })
        self.all = all
        self.redisVersion = redisVersion
    }

    /// The outcome of looking a request up.
    public enum Lookup {
        case command(Command)
        /// An error reply, worded as Redis words it (unknown command, wrong arity, unknown subcommand).
        case error(String)
    }

    /// Finds the command (or subcommand) a request names and checks its arity.
    public func lookup(_ arguments: [ByteBuffer]) -> Lookup {
        guard let name = arguments.first, let command = self.commands.find(name) else {
            let name = arguments.first.map { String(buffer: $0) } ?? ""
            let rest = arguments.dropFirst().prefix(20).map { "'\(String(buffer: $0).prefix(128))' " }.joined()
            return .error("ERR unknown command '\(name.prefix(128))', with args beginning with: \(rest)")
        }
        if let subcommands = command.subcommands, !(arguments.count == 1 && command.acceptsArgumentCount(1)) {
            guard arguments.count >= 2, let sub = subcommands.find(arguments[1]) else {
                let given = arguments.count >= 2 ? String(buffer: arguments[1]) : ""
                if arguments.count < 2 { return .error("ERR wrong number of arguments for '\(command.name)' command") }
                return .error("ERR unknown subcommand '\(given.prefix(128))'. Try \(command.displayName) HELP.")
            }
            guard sub.acceptsArgumentCount(arguments.count) else {
                return .error("ERR wrong number of arguments for '\(sub.name)' command")
            }
            return .command(sub)
        }
        guard command.acceptsArgumentCount(arguments.count) else {
            return .error("ERR wrong number of arguments for '\(command.name)' command")
        }
        return .command(command)
    }
}

/// A case-insensitive table from command names to commands, searched with the request's bytes
/// (open addressing over an FNV-1a hash of the lower-cased name): no String per request.
public struct CommandLookup: Sendable {
    private let slots: [Int32]
    private let nameBytes: [[UInt8]]
    private let commands: [Command]
    private let mask: Int

    init(_ entries: [(String, Command)]) {
        var size = 16
        while size < entries.count * 4 { size *= 2 }
        var slots = [Int32](repeating: -1, count: size)
        self.mask = size - 1
        self.nameBytes = entries.map { Array($0.0.lowercased().utf8) }
        self.commands = entries.map(\.1)
        for (index, name) in self.nameBytes.enumerated() {
            var slot = Self.hash(name) & self.mask
            while slots[slot] >= 0 { slot = (slot + 1) & self.mask }
            slots[slot] = Int32(index)
        }
        self.slots = slots
    }

    /// Every name in the table, lower case.
    public var names: [String] { self.nameBytes.map { String(decoding: $0, as: UTF8.self) } }

    public func find(_ name: ByteBuffer) -> Command? {
        name.withUnsafeReadableBytes { bytes -> Command? in
            var slot = Self.hash(bytes) & self.mask
            while true {
                let index = Int(self.slots[slot])
                if index < 0 { return nil }
                if Self.equalsLowercased(bytes, self.nameBytes[index]) { return self.commands[index] }
                slot = (slot + 1) & self.mask
            }
        }
    }

    private static func hash<Bytes: Sequence>(_ bytes: Bytes) -> Int where Bytes.Element == UInt8 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash = (hash ^ UInt64(lowercase(byte))) &* 0x100_0000_01b3
        }
        return Int(truncatingIfNeeded: hash >> 1)
    }

    private static func equalsLowercased(_ bytes: UnsafeRawBufferPointer, _ name: [UInt8]) -> Bool {
        guard bytes.count == name.count else { return false }
        for i in 0..<name.count where lowercase(bytes[i]) != name[i] { return false }
        return true
    }

    @inline(__always)
    static func lowercase(_ byte: UInt8) -> UInt8 {
        byte >= 65 && byte <= 90 ? byte | 0x20 : byte
    }
}

extension ByteBuffer {
    /// Compares with ASCII text, ignoring case (command names, keywords).
    public func equalsIgnoringASCIICase(_ text: String) -> Bool {
        let utf8 = text.utf8
        guard self.readableBytes == utf8.count else { return false }
        return self.withUnsafeReadableBytes { bytes in
            zip(bytes, utf8).allSatisfy { CommandLookup.lowercase($0) == CommandLookup.lowercase($1) }
        }
    }
}
