import NIOCore

/// An op too large for one Kafka message (a 64 MB SET), carried as several chunks in its
/// partition. Each chunk is a message of its own:
///
///     "PY" | version u8 (2) | flags u8 (bit 1: a chunk) | op id u64 | index u32 | count u32 | bytes
///
/// and the chunks' bytes, in index order, are the op's record (`OpRecord`). The op takes its place
/// in the log at its last chunk: the applier keeps the chunks it has read (`OpChunk.Assembly`),
/// applies the op when the last arrives, and never checkpoints past the first chunk of an op it
/// has not finished, so a restart reads every chunk again.
public struct OpChunk: Sendable, Equatable {
    public static let flag: UInt8 = 0x02
    static let headerBytes = 2 + 1 + 1 + 8 + 4 + 4

    public var id: UInt64
    public var index: Int
    public var count: Int
    public var bytes: ByteBuffer

    /// The chunks of an encoded op, each at most `maxMessageBytes` long.
    public static func split(_ record: ByteBuffer, id: UInt64, maxMessageBytes: Int) -> [ByteBuffer] {
        let size = maxMessageBytes - headerBytes
        precondition(size > 0)
        let count = (record.readableBytes + size - 1) / size
        return (0..<count).map { index in
            var chunk = ByteBuffer()
            chunk.reserveCapacity(headerBytes + size)
            chunk.writeStaticString("PY")
            chunk.writeInteger(UInt8(2))
            chunk.writeInteger(flag)
            chunk.writeInteger(id)
            chunk.writeInteger(UInt32(index))
            chunk.writeInteger(UInt32(count))
            var piece = record.getSlice(at: record.readerIndex + index * size, length: min(size, record.readableBytes - index * size))!
            chunk.writeBuffer(&piece)
            return chunk
        }
    }

    /// Whether a message is a chunk (and not a whole op).
    public static func isChunk(_ message: ByteBuffer) -> Bool {
        message.getInteger(at: message.readerIndex + 2, as: UInt8.self) == 2
            && (message.getInteger(at: message.readerIndex + 3, as: UInt8.self) ?? 0) & flag != 0
    }

    public init(decoding message: ByteBuffer) throws {
        var message = message
        guard message.readString(length: 2) == "PY", message.readInteger(as: UInt8.self) == 2,
              let flags = message.readInteger(as: UInt8.self), flags & Self.flag != 0,
              let id = message.readInteger(as: UInt64.self), let index = message.readInteger(as: UInt32.self),
              let count = message.readInteger(as: UInt32.self), index < count else {
            throw OpRecord.DecodingError(description: "op chunk: bad header")
        }
        self.init(id: id, index: Int(index), count: Int(count), bytes: message)
    }

    init(id: UInt64, index: Int, count: Int, bytes: ByteBuffer) {
        self.id = id
        self.index = index
        self.count = count
        self.bytes = bytes
    }

    /// The chunks of the ops a partition's applier has begun and not finished.
    struct Assembly {
        private struct Parts {
            var firstOffset: Int64
            var pieces: [ByteBuffer?]
            var received = 0
        }

        private var parts: [Int32: [UInt64: Parts]] = [:]

        /// How far past an unfinished op's first chunk a partition may go before the op is given
        /// up: its writer failed part-way (the client was told), so the rest never comes.
        static let abandonAfter: Int64 = 100_000

        /// Adds a chunk read at `offset`; the whole op's record when it was the last one missing.
        mutating func add(_ chunk: OpChunk, partition: Int32, offset: Int64) -> ByteBuffer? {
            var entry = self.parts[partition, default: [:]][chunk.id] ?? Parts(firstOffset: offset, pieces: Array(repeating: nil, count: chunk.count))
            guard chunk.count == entry.pieces.count, entry.pieces[chunk.index] == nil else { return nil }
            entry.pieces[chunk.index] = chunk.bytes
            entry.received += 1
            guard entry.received == entry.pieces.count else {
                self.parts[partition, default: [:]][chunk.id] = entry
                return nil
            }
            self.parts[partition]?[chunk.id] = nil
            var whole = ByteBuffer()
            whole.reserveCapacity(entry.pieces.reduce(0) { $0 + $1!.readableBytes })
            for var piece in entry.pieces { whole.writeBuffer(&piece!) }
            return whole
        }

        /// The offset of the oldest chunk of an unfinished op in `partition` (no checkpoint may
        /// pass it); unfinished ops begun more than `abandonAfter` before `next` are dropped.
        mutating func oldestUnfinished(in partition: Int32, next: Int64) -> Int64? {
            guard var ops = self.parts[partition], !ops.isEmpty else { return nil }
            ops = ops.filter { next - $0.value.firstOffset <= Self.abandonAfter }
            self.parts[partition] = ops
            return ops.values.map(\.firstOffset).min()
        }

        mutating func removeAll() { self.parts = [:] }
    }
}
