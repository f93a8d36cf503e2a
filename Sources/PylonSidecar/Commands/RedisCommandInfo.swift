/// One command as Redis's `COMMAND` reply describes it. The table of every Redis 7.0 command
/// (`RedisCommands+7.0.swift`) is generated from a live server; Pylon's policy sits on top of it.
public struct RedisCommandInfo: Sendable {
    /// Lower-case name; subcommands are `container|sub`, as Redis names them.
    public let name: String
    /// Redis's arity: exact argument count (name included) when positive, minimum when negative.
    public let arity: Int
    public let flags: [String]
    public let categories: [String]
    /// Redis's legacy (first, last, step) key positions.
    public let legacyKeys: (first: Int, last: Int, step: Int)
    public let keySpecs: [KeySpec]
    public let subcommands: [RedisCommandInfo]

    init(
        name: String, arity: Int, flags: [String], categories: [String],
        legacyKeys: (Int, Int, Int), keySpecs: [KeySpec], subcommands: [RedisCommandInfo]
    ) {
        self.name = name
        self.arity = arity
        self.flags = flags
        self.categories = categories
        self.legacyKeys = legacyKeys
        self.keySpecs = keySpecs
        self.subcommands = subcommands
    }
}

/// Where a command's keys are, as a Redis 7 key specification: a start found by index or
/// keyword, then a range or a count argument.
public struct KeySpec: Sendable, Equatable {
    public enum BeginSearch: Sendable, Equatable {
        case index(Int)
        case keyword(String, startFrom: Int)
        case unknown
    }

    public enum FindKeys: Sendable, Equatable {
        case range(lastKey: Int, step: Int, limit: Int)
        case keyNumber(index: Int, firstKey: Int, step: Int)
        case unknown
    }

    public let flags: [String]
    public let begin: BeginSearch
    public let find: FindKeys

    public init(flags: [String], begin: BeginSearch, find: FindKeys) {
        self.flags = flags
        self.begin = begin
        self.find = find
    }
}

extension KeySpec {
    /// Appends the positions of this spec's keys in `arguments` (the command name at 0), the way
    /// Redis's `getKeysUsingKeySpecs` finds them. Returns false when the arguments contradict the
    /// spec (e.g. a key count beyond the arguments).
    func keyPositions<Arguments: RandomAccessCollection>(
        in arguments: Arguments, into positions: inout [Int], equals: (Arguments.Element, String) -> Bool,
        integer: (Arguments.Element) -> Int?
    ) -> Bool where Arguments.Index == Int {
        let count = arguments.count
        var first: Int
        switch self.begin {
        case .index(let index):
            first = index
        case .keyword(let keyword, let startFrom):
            let start = startFrom > 0 ? startFrom : count + startFrom
            let end = startFrom > 0 ? count - 1 : 1
            let stride = startFrom > 0 ? 1 : -1
            var found: Int?
            var i = start
            while i >= 1, i < count, startFrom > 0 ? i <= end : i >= end {
                if equals(arguments[arguments.startIndex + i], keyword) {
                    found = i + 1
                    break
                }
                i += stride
            }
            guard let found else { return true }  // no keyword: this spec has no keys here
            first = found
        case .unknown:
            return true
        }

        let last: Int
        let step: Int
        switch self.find {
        case .range(let lastKey, let keyStep, let limit):
            if lastKey >= 0 {
                last = first + lastKey
            } else if limit == 0 {
                last = count + lastKey
            } else {
                last = first + ((count - first) / limit + lastKey)
            }
            step = keyStep
        case .keyNumber(let index, let firstKey, let keyStep):
            guard first + index < count, let n = integer(arguments[arguments.startIndex + first + index]), n >= 0 else {
                return false
            }
            first += firstKey
            last = first + (n - 1) * keyStep
            step = keyStep
        case .unknown:
            return true
        }
        guard step > 0 else { return true }
        var i = first
        while i <= last {
            guard i < count else { return self.flags.contains("incomplete") }
            positions.append(i)
            i += step
        }
        return true
    }
}
