import NIOCore

/// A Redis glob pattern over keys, matched as Redis's `KEYS` and `SCAN MATCH` match them: `*`,
/// `?`, `[abc]`, `[^a-z]` and `\` escapes, byte by byte.
struct KeyPattern: Sendable, Equatable, CustomStringConvertible {
    let description: String
    private let pattern: [UInt8]

    init(_ pattern: String) {
        self.description = pattern
        self.pattern = Array(pattern.utf8)
    }

    func matches(_ key: ByteBuffer) -> Bool {
        key.withUnsafeReadableBytes { Self.match(self.pattern[...], Array($0)[...]) }
    }

    private static func match(_ pattern: ArraySlice<UInt8>, _ key: ArraySlice<UInt8>) -> Bool {
        var p = pattern.startIndex
        var k = key.startIndex
        while p < pattern.endIndex {
            switch pattern[p] {
            case UInt8(ascii: "*"):
                while p + 1 < pattern.endIndex, pattern[p + 1] == UInt8(ascii: "*") { p += 1 }
                if p + 1 == pattern.endIndex { return true }
                for start in k...key.endIndex where self.match(pattern[(p + 1)...], key[start...]) { return true }
                return false
            case UInt8(ascii: "?"):
                guard k < key.endIndex else { return false }
                k += 1
            case UInt8(ascii: "[") where k < key.endIndex:
                var i = p + 1
                let negate = i < pattern.endIndex && pattern[i] == UInt8(ascii: "^")
                if negate { i += 1 }
                var found = false
                while i < pattern.endIndex, pattern[i] != UInt8(ascii: "]") {
                    if pattern[i] == UInt8(ascii: "\\"), i + 1 < pattern.endIndex {
                        i += 1
                        found = found || pattern[i] == key[k]
                    } else if i + 2 < pattern.endIndex, pattern[i + 1] == UInt8(ascii: "-"), pattern[i + 2] != UInt8(ascii: "]") {
                        let (low, high) = (min(pattern[i], pattern[i + 2]), max(pattern[i], pattern[i + 2]))
                        found = found || (low...high).contains(key[k])
                        i += 2
                    } else {
                        found = found || pattern[i] == key[k]
                    }
                    i += 1
                }
                guard found != negate else { return false }
                p = min(i, pattern.endIndex - 1)
                k += 1
            case UInt8(ascii: "\\") where p + 1 < pattern.endIndex:
                p += 1
                guard k < key.endIndex, pattern[p] == key[k] else { return false }
                k += 1
            default:
                guard k < key.endIndex, pattern[p] == key[k] else { return false }
                k += 1
            }
            p += 1
        }
        return k == key.endIndex
    }
}
