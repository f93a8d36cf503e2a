/// What the gateway does with a command.
public enum Disposition: Sendable, Equatable {
    /// Served by the local Redis.
    case read
    /// Appended to the world's log, applied by every rack.
    case write
    /// Answered with an error saying why, and what to do instead.
    case refused(String)
    /// Accepted and answered `+OK` without effect (`SELECT`: Pylon always serves database 0).
    case ignored
    /// Answered by the sidecar itself (`PING`, `CLIENT SETNAME`, `PYLON …`).
    case `internal`

    public var commandClass: CommandClass {
        switch self {
        case .read: .read
        case .write: .write
        case .refused: .refused
        case .ignored: .ignored
        case .internal: .internal
        }
    }
}

/// The class a command is counted under in metrics: its disposition, or `error` for unknown
/// commands, wrong arities and protocol errors.
public enum CommandClass: Int, CaseIterable, Sendable {
    case read, write, refused, ignored, `internal`, error

    public var name: String {
        switch self {
        case .read: "read"
        case .write: "write"
        case .refused: "refused"
        case .ignored: "ignored"
        case .internal: "internal"
        case .error: "error"
        }
    }
}

/// A refinement that looks at the arguments: some commands change nature with an option.
public enum ArgumentRule: Sendable, Equatable {
    /// Refused when one of the keywords appears after the command name (SORT … STORE, XREAD BLOCK).
    case refuseWithKeyword([String], reason: String)
    /// A write when one of the keywords appears, a read otherwise (GEORADIUS … STORE).
    case writeWithKeyword([String])
    /// Sent to the local Redis when every parameter it sets is one of these (CONFIG SET of a
    /// rack's own memory layout), refused otherwise.
    case localWithParameters(Set<String>)
}

/// Pylon's policy: how every Redis command is handled, and why. The rules read Redis's own
/// metadata (flags, ACL categories) so a new command is classified by what it is, and the few
/// exceptions are named here with their reasons.
public enum CommandPolicy {
    public enum Reason {
        public static let pubsub = "ERR pylon: pub/sub is not supported; every write is in the world's Kafka topic (consume it), or subscribe on the underlying Redis"
        public static let blocking = "ERR pylon: blocking commands are not supported (pylon never parks a connection); poll with the non-blocking form instead, e.g. LPOP for BLPOP"
        public static let transactions = "ERR pylon: transactions (MULTI/EXEC/WATCH) are not supported; the world's log orders each write on its own, so send the commands without MULTI"
        public static let scripting = "ERR pylon: scripts and functions are not supported (their effects cannot be replayed safely on every rack); use plain commands"
        public static let cluster = "ERR pylon: cluster commands are not supported; pylon presents its rack as one Redis, so run them against the underlying Redis directly"
        public static let admin = "ERR pylon: administrative command; run it against the underlying Redis directly"
        public static let auth = "ERR pylon: AUTH is not supported yet; restrict who can reach the sidecar's listen address instead"
        public static let database = "ERR pylon: pylon serves database 0 only; use key prefixes instead of databases"
        public static let clientCaching = "ERR pylon: client-side caching (CLIENT TRACKING) is not supported; read through the sidecar"
        public static let clientReply = "ERR pylon: CLIENT REPLY is not supported; every command gets its reply"
        public static let wait = "ERR pylon: WAIT concerns Redis replication, which pylon replaces with its log; an acknowledged write is already in the world's log"
        public static let migrate = "ERR pylon: MIGRATE moves keys between Redis servers behind pylon's back; let the operator migrate racks instead"
        public static let sortStore = "ERR pylon: SORT … STORE is not supported (SORT is served as a read); SORT without STORE, then write the result"
    }

    /// Commands whose handling is not what their flags alone say.
    static let exceptions: [String: Disposition] = [
        "ping": .internal, "echo": .internal, "quit": .internal, "reset": .internal, "hello": .internal,
        "client|setname": .internal, "client|getname": .internal, "client|id": .internal,
        "client|info": .internal, "client|list": .internal, "client|help": .internal,
        "select": .ignored,
        // No function can be loaded through a sidecar (FUNCTION LOAD is refused), so through it
        // there is never one to flush: test suites' set-up (`FUNCTION FLUSH`) succeeds.
        "function|flush": .ignored,
        "command": .read, "command|count": .read, "command|docs": .read, "command|getkeys": .read,
        "command|getkeysandflags": .read, "command|help": .read, "command|info": .read, "command|list": .read,
        // CONFIG GET reads the local Redis's settings (clients and test suites read them);
        // CONFIG SET stays refused: a setting would change one rack only.
        "config|get": .read,
        "info": .read, "time": .read, "lastsave": .read, "role": .read,
        "object|help": .read, "memory|help": .read, "xinfo|help": .read, "xgroup|help": .read,
        // SORT and GEORADIUS are flagged as writes for their STORE option; without it they read.
        "sort": .read, "georadius": .read, "georadiusbymember": .read,
        "xread": .read, "xreadgroup": .write,
        "auth": .refused(Reason.auth),
        "move": .refused(Reason.database), "swapdb": .refused(Reason.database),
        "asking": .refused(Reason.cluster), "readonly": .refused(Reason.cluster),
        "readwrite": .refused(Reason.cluster), "restore-asking": .refused(Reason.cluster),
        "wait": .refused(Reason.wait),
        "migrate": .refused(Reason.migrate),
        "pubsub|help": .refused(Reason.pubsub),
        "client|tracking": .refused(Reason.clientCaching), "client|caching": .refused(Reason.clientCaching),
        "client|getredir": .refused(Reason.clientCaching), "client|trackinginfo": .refused(Reason.clientCaching),
        "client|reply": .refused(Reason.clientReply),
    ]

    /// Command families refused as a whole, whatever their subcommand.
    static let refusedFamilies: [String: String] = [
        "cluster": Reason.cluster,
        "acl": Reason.admin, "config": Reason.admin, "debug": Reason.admin, "latency": Reason.admin,
        "module": Reason.admin, "slowlog": Reason.admin,
    ]

    static let argumentRules: [String: ArgumentRule] = [
        "sort": .refuseWithKeyword(["STORE"], reason: Reason.sortStore),
        "xread": .refuseWithKeyword(["BLOCK"], reason: Reason.blocking),
        "xreadgroup": .refuseWithKeyword(["BLOCK"], reason: Reason.blocking),
        "georadius": .writeWithKeyword(["STORE", "STOREDIST"]),
        "georadiusbymember": .writeWithKeyword(["STORE", "STOREDIST"]),
        "config|set": .localWithParameters(rackLocalParameters),
    ]

    /// Settings of a rack's own Redis that change no reply, only how it keeps data in memory or
    /// on disk: CONFIG SET of them goes to this rack's Redis only (each rack may lay out its data
    /// as it likes; test suites tune them). Stream node sizes are not among them: they change
    /// what XADD … MAXLEN ~ trims.
    static let rackLocalParameters: Set<String> = [
        "hash-max-listpack-entries", "hash-max-listpack-value", "hash-max-ziplist-entries", "hash-max-ziplist-value",
        "list-max-listpack-size", "list-max-ziplist-size", "list-compress-depth", "set-max-intset-entries",
        "zset-max-listpack-entries", "zset-max-listpack-value", "zset-max-ziplist-entries", "zset-max-ziplist-value",
        "save", "activerehashing",
    ]

    /// Classifies one command (or subcommand) of Redis's table.
    public static func disposition(of info: RedisCommandInfo) -> Disposition {
        if let exception = exceptions[info.name] { return exception }
        let family = String(info.name.split(separator: "|").first ?? "")
        if let reason = refusedFamilies[family] { return .refused(reason) }
        let flags = Set(info.flags)
        let categories = Set(info.categories)
        if flags.contains("pubsub") || categories.contains("@pubsub") { return .refused(Reason.pubsub) }
        if categories.contains("@scripting") { return .refused(Reason.scripting) }
        if categories.contains("@transaction") { return .refused(Reason.transactions) }
        if categories.contains("@blocking") { return .refused(Reason.blocking) }
        if flags.contains("admin") { return .refused(Reason.admin) }
        if flags.contains("write") { return .write }
        if flags.contains("readonly") { return .read }
        // A command that neither reads nor writes data and is not named above is an operator's tool.
        return .refused(Reason.admin)
    }
}
