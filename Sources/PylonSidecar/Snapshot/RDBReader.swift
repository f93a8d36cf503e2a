import NIOCore

/// Reads an RDB file — the point-in-time snapshot Redis writes for BGSAVE and sends a replica
/// (`SnapshotSource`) — key by key, without decoding values: each key comes with its value's
/// bytes framed as a DUMP payload, which any Redis of the same or a later RDB version takes with
/// RESTORE, and its absolute expiry. Values are only walked to find where they end, so every
/// encoding Redis writes (listpacks, quicklists, intsets, streams with their groups) passes
/// through unchanged.
///
/// Not copied: functions (a rack's Redis holds the same code as every other: load it there) and
/// values of modules that save with the first module format (no way to find their end).
struct RDBReader {
    struct Entry {
        /// The logical database (SELECT) the key is in.
        var database: Int
        var key: [UInt8]
        /// The RDB value type (0 a string, 2 a set, 19 a stream…).
        var type: UInt8
        /// The value's bytes in the file.
        var value: Range<Int>
        /// When the key expires, in Unix milliseconds.
        var expiresAt: Int64?
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    private let bytes: [UInt8]
    private var position = 9
    private var database = 0
    /// The RDB format version the file was written in (10 for Redis 7.0).
    let version: Int
    /// Functions met in the file (not copied).
    private(set) var functions = 0

    /// Checks the header and, when the file carries one, the checksum: a file cut short or
    /// corrupted is refused before any key is read.
    init(_ bytes: [UInt8]) throws {
        guard bytes.count >= 9, bytes[0..<5].elementsEqual("REDIS".utf8), let version = Int(String(decoding: bytes[5..<9], as: UTF8.self)) else {
            throw Failure(description: "not an RDB file (no REDIS header)")
        }
        guard version <= 12 else { throw Failure(description: "RDB version \(version) is newer than this sidecar knows (up to 12, Redis 7.4)") }
        self.bytes = bytes
        self.version = version
        if version >= 5, bytes.count >= 17 {
            let stored = bytes[(bytes.count - 8)...].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            guard bytes[bytes.count - 9] == 0xFF else { throw Failure(description: "the RDB file is cut short (no end marker)") }
            if stored != 0, CRC64.checksum(bytes[..<(bytes.count - 8)]) != stored {
                throw Failure(description: "the RDB file's checksum does not match its content")
            }
        }
    }

    /// The next key of the file, or nil at its end.
    mutating func next() throws -> Entry? {
        var expiresAt: Int64?
        while true {
            let opcode = try self.byte()
            switch opcode {
            case 0xFF: return nil
            case 0xFE: self.database = Int(try self.length())
            case 0xFD: expiresAt = Int64(try self.littleEndian(4)) * 1000
            case 0xFC: expiresAt = Int64(bitPattern: try self.littleEndian(8))
            case 0xFB: _ = try (self.length(), self.length())
            case 0xFA: try self.skipString(); try self.skipString()
            case 0xF9: try self.skip(1)  // LFU frequency
            case 0xF8: _ = try self.length()  // LRU idle time
            case 0xF7:  // a module's auxiliary data
                _ = try self.length()
                try self.skipModuleData()
            case 0xF5:  // a function library (its code)
                try self.skipString()
                self.functions += 1
            case 0xF6: throw Failure(description: "the RDB file holds functions in the format of a Redis 7.0 release candidate; save it with a released Redis")
            default:
                let key = try self.string()
                let start = self.position
                try self.skipValue(type: opcode)
                return Entry(database: self.database, key: key, type: opcode, value: start..<self.position, expiresAt: expiresAt)
            }
        }
    }

    /// The entry's value as RESTORE takes it: type, value, RDB version, CRC64 of them.
    func dumpPayload(_ entry: Entry) -> ByteBuffer {
        var payload = ByteBuffer()
        self.writeDumpPayload(entry, into: &payload)
        return payload
    }

    /// Writes the entry's DUMP payload (`dumpPayload`) where it is, with no copy in between:
    /// the loader's pipeline.
    func writeDumpPayload(_ entry: Entry, into buffer: inout ByteBuffer) {
        let version = UInt16(self.version)
        var crc = CRC64.checksum(CollectionOfOne(entry.type))
        crc = self.bytes.withUnsafeBufferPointer { CRC64.checksum(UnsafeBufferPointer(rebasing: $0[entry.value]), from: crc) }
        crc = CRC64.checksum([UInt8(truncatingIfNeeded: version), UInt8(truncatingIfNeeded: version >> 8)], from: crc)
        buffer.writeInteger(entry.type)
        self.bytes.withUnsafeBufferPointer { buffer.writeBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer($0)[entry.value])) }
        buffer.writeInteger(version, endianness: .little)
        buffer.writeInteger(crc, endianness: .little)
    }

    /// A string value (type 0) decoded: what GET would answer.
    func stringValue(_ entry: Entry) throws -> [UInt8]? {
        guard entry.type == 0 else { return nil }
        var reader = self
        reader.position = entry.value.lowerBound
        return try reader.string()
    }

    /// How far through the file, in bytes.
    var offset: Int { self.position }

    /// The file's size in bytes.
    var size: Int { self.bytes.count }

    // MARK: - The format

    private mutating func byte() throws -> UInt8 {
        guard self.position < self.bytes.count else { throw Failure(description: "the RDB file ends inside an entry") }
        defer { self.position += 1 }
        return self.bytes[self.position]
    }

    private mutating func skip(_ n: Int) throws {
        guard n >= 0, self.bytes.count - self.position >= n else { throw Failure(description: "the RDB file ends inside an entry") }
        self.position += n
    }

    private mutating func littleEndian(_ n: Int) throws -> UInt64 {
        let start = self.position
        try self.skip(n)
        return self.bytes[start..<start + n].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }

    private mutating func bigEndian(_ n: Int) throws -> UInt64 {
        let start = self.position
        try self.skip(n)
        return self.bytes[start..<start + n].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }

    /// A length, or (`encoded`) the kind of a specially encoded string: 0–2 an integer of 1, 2
    /// or 4 bytes, 3 LZF-compressed.
    private mutating func lengthOrEncoding() throws -> (value: UInt64, encoded: Bool) {
        let first = try self.byte()
        switch first >> 6 {
        case 0: return (UInt64(first & 0x3F), false)
        case 1: return (UInt64(first & 0x3F) << 8 | UInt64(try self.byte()), false)
        case 2:
            switch first {
            case 0x80: return (try self.bigEndian(4), false)
            case 0x81: return (try self.bigEndian(8), false)
            default: throw Failure(description: "unknown length encoding \(first) in the RDB file")
            }
        default: return (UInt64(first & 0x3F), true)
        }
    }

    private mutating func length() throws -> UInt64 {
        let (value, encoded) = try self.lengthOrEncoding()
        guard !encoded else { throw Failure(description: "an encoded string where the RDB file should hold a length") }
        return value
    }

    private mutating func count() throws -> Int {
        let value = try self.length()
        guard value <= UInt64(self.bytes.count) else { throw Failure(description: "a count of \(value) in an RDB file of \(self.bytes.count) bytes") }
        return Int(value)
    }

    private mutating func string() throws -> [UInt8] {
        let (value, encoded) = try self.lengthOrEncoding()
        guard encoded else {
            let start = self.position
            try self.skip(Int(clamping: value))
            return Array(self.bytes[start..<self.position])
        }
        switch value {
        case 0: return Array(String(Int8(bitPattern: try self.byte())).utf8)
        case 1: return Array(String(Int16(truncatingIfNeeded: try self.littleEndian(2))).utf8)
        case 2: return Array(String(Int32(truncatingIfNeeded: try self.littleEndian(4))).utf8)
        case 3:
            let compressed = try self.count()
            let length = try self.count()
            let start = self.position
            try self.skip(compressed)
            return try LZF.decompress(self.bytes[start..<self.position], length: length)
        default: throw Failure(description: "unknown string encoding \(value) in the RDB file")
        }
    }

    private mutating func skipString() throws {
        let (value, encoded) = try self.lengthOrEncoding()
        guard encoded else { return try self.skip(Int(clamping: value)) }
        switch value {
        case 0: try self.skip(1)
        case 1: try self.skip(2)
        case 2: try self.skip(4)
        case 3:
            let compressed = try self.count()
            _ = try self.length()
            try self.skip(compressed)
        default: throw Failure(description: "unknown string encoding \(value) in the RDB file")
        }
    }

    private mutating func skipStrings(_ n: Int) throws {
        for _ in 0..<n { try self.skipString() }
    }

    /// A module's saved data: typed fields up to an end opcode.
    private mutating func skipModuleData() throws {
        while true {
            switch try self.length() {
            case 0: return
            case 1, 2: _ = try self.length()
            case 3: try self.skip(4)
            case 4: try self.skip(8)
            case 5: try self.skipString()
            case let opcode: throw Failure(description: "unknown module field \(opcode) in the RDB file")
            }
        }
    }

    private mutating func skipValue(type: UInt8) throws {
        switch type {
        case 0, 9, 10, 11, 12, 13, 16, 17, 20: try self.skipString()  // a string, or one encoded blob
        case 1, 2, 14: try self.skipStrings(try self.count())  // list, set, quicklist of ziplists
        case 3:  // sorted set, scores as text
            for _ in 0..<(try self.count()) {
                try self.skipString()
                let length = try self.byte()
                if length < 253 { try self.skip(Int(length)) }
            }
        case 4: try self.skipStrings(2 * (try self.count()))  // hash
        case 5:  // sorted set, binary scores
            for _ in 0..<(try self.count()) {
                try self.skipString()
                try self.skip(8)
            }
        case 7:
            _ = try self.length()  // module id
            try self.skipModuleData()
        case 18:  // quicklist of listpacks, each with its container kind
            for _ in 0..<(try self.count()) {
                _ = try self.length()
                try self.skipString()
            }
        case 15, 19, 21: try self.skipStream(type: type)
        case 6: throw Failure(description: "a module value in the first module format (RDB type 6) cannot be copied")
        default: throw Failure(description: "unknown RDB value type \(type)")
        }
    }

    private mutating func skipStream(type: UInt8) throws {
        try self.skipStrings(2 * (try self.count()))  // listpacks, each under its master ID
        _ = try self.length()  // entries
        _ = try (self.length(), self.length())  // last ID
        if type >= 19 { for _ in 0..<5 { _ = try self.length() } }  // first ID, max deleted ID, entries added
        for _ in 0..<(try self.count()) {  // consumer groups
            try self.skipString()
            _ = try (self.length(), self.length())  // last delivered ID
            if type >= 19 { _ = try self.length() }  // entries read
            for _ in 0..<(try self.count()) {  // pending entries: ID, delivery time, delivery count
                try self.skip(24)
                _ = try self.length()
            }
            for _ in 0..<(try self.count()) {  // consumers: name, seen (and active) time, pending IDs
                try self.skipString()
                try self.skip(type >= 21 ? 16 : 8)
                try self.skip(16 * (try self.count()))
            }
        }
    }
}

/// Redis's CRC-64 (Jones polynomial, reflected, no final xor): RDB files and DUMP payloads end in it.
enum CRC64 {
    static let table: [UInt64] = (0..<256).map { byte in
        (0..<8).reduce(UInt64(byte)) { crc, _ in crc & 1 == 1 ? (crc >> 1) ^ 0x95AC_9329_AC4B_C9B5 : crc >> 1 }
    }

    static func checksum(_ bytes: some Sequence<UInt8>, from crc: UInt64 = 0) -> UInt64 {
        var crc = crc
        Self.table.withUnsafeBufferPointer { table in
            for byte in bytes { crc = table[Int(UInt8(truncatingIfNeeded: crc) ^ byte)] ^ (crc >> 8) }
        }
        return crc
    }
}

/// LZF, as Redis compresses long strings in RDB files.
enum LZF {
    static func decompress(_ input: ArraySlice<UInt8>, length: Int) throws -> [UInt8] {
        var output = [UInt8]()
        output.reserveCapacity(length)
        var index = input.startIndex
        func next() throws -> Int {
            guard index < input.endIndex else { throw RDBReader.Failure(description: "an LZF string of the RDB file is cut short") }
            defer { index += 1 }
            return Int(input[index])
        }
        while index < input.endIndex {
            let control = try next()
            if control < 32 {
                let run = control + 1
                guard input.endIndex - index >= run else { throw RDBReader.Failure(description: "an LZF string of the RDB file is cut short") }
                output.append(contentsOf: input[index..<index + run])
                index += run
            } else {
                var run = control >> 5
                if run == 7 { run += try next() }
                let back = ((control & 0x1F) << 8) + (try next()) + 1
                guard back <= output.count else { throw RDBReader.Failure(description: "an LZF string of the RDB file refers before its start") }
                let start = output.count - back
                for i in 0..<(run + 2) { output.append(output[start + i]) }
            }
        }
        guard output.count == length else { throw RDBReader.Failure(description: "an LZF string of the RDB file has \(output.count) bytes, not \(length)") }
        return output
    }
}
