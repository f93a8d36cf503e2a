import NIOCore

/// One write as the world's log records it: the raw command arguments (bytes, never re-split
/// strings), where it came from and when, and the hash slot that chose its partition.
///
/// Wire format, versions 1 and 2 (integers big-endian):
///
///     "PY" | version u8 | flags u8 (bit 0: the origin waits for the reply)
///     timestamp ms i64 | slot u16 (0xFFFF: no key)
///     rack u16-length + UTF-8 | sidecar u16-length + UTF-8
///     argument count u32 | per argument: u32-length + bytes
///
/// Version 2 is the same layout for ops only the applier of version 2 knows how to apply (the
/// `PYLON.` ops such as SPOP's, `AppliedOffsets.script`); every other op is written as version
/// 1, so sidecars of both versions apply it while a world is being upgraded.
///
/// A reader refuses versions it does not know rather than guess: a rack must never apply an op
/// differently from another. Flags never change what an op does, so unknown flags are ignored.
public struct OpRecord: Sendable, Equatable {
    /// The newest version this sidecar reads and writes.
    public static let version: UInt8 = 2

    /// The version this op is written as: the oldest that can apply it.
    var wireVersion: UInt8 {
        self.arguments.first.map { $0.readableBytesView.starts(with: "PYLON.".utf8) } == true ? 2 : 1
    }
    /// The slot value of ops that name no key (FLUSHALL): they go to partition 0.
    public static let noSlot = 0xFFFF

    public var arguments: [ByteBuffer]
    public var originRack: String
    public var originSidecar: String
    /// Milliseconds since the Unix epoch at the gateway that accepted the write.
    public var timestampMilliseconds: Int64
    /// The Redis Cluster hash slot of the op's key(s), or `noSlot`.
    public var slot: Int
    /// The origin sidecar waits for the op's reply from its rack's applier (`applied` consistency).
    public var wantsReply: Bool

    public init(arguments: [ByteBuffer], originRack: String, originSidecar: String, timestampMilliseconds: Int64, slot: Int, wantsReply: Bool = false) {
        self.arguments = arguments
        self.originRack = originRack
        self.originSidecar = originSidecar
        self.timestampMilliseconds = timestampMilliseconds
        self.slot = slot
        self.wantsReply = wantsReply
    }

    /// The Kafka partition of this op: every op on a slot lands in one partition, so per-key
    /// order holds whatever the partition count.
    public func partition(of partitionCount: Int) -> Int32 {
        Self.partition(ofSlot: self.slot, count: partitionCount)
    }

    /// The partition of the ops on `slot` (`noSlot`: partition 0).
    public static func partition(ofSlot slot: Int, count partitionCount: Int) -> Int32 {
        precondition(partitionCount > 0)
        return slot == Self.noSlot ? 0 : Int32(slot % partitionCount)
    }

    public struct DecodingError: Error, Equatable, CustomStringConvertible {
        public let description: String
    }

    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeStaticString("PY")
        buffer.writeInteger(self.wireVersion)
        buffer.writeInteger(UInt8(self.wantsReply ? 1 : 0))
        buffer.writeInteger(self.timestampMilliseconds)
        buffer.writeInteger(UInt16(truncatingIfNeeded: self.slot))
        Self.writeShortString(self.originRack, into: &buffer)
        Self.writeShortString(self.originSidecar, into: &buffer)
        buffer.writeInteger(UInt32(self.arguments.count))
        for var argument in self.arguments {
            buffer.writeInteger(UInt32(argument.readableBytes))
            buffer.writeBuffer(&argument)
        }
    }

    public var encoded: ByteBuffer {
        var buffer = ByteBuffer()
        self.encode(into: &buffer)
        return buffer
    }

    /// Decodes a whole record; arguments are slices of `buffer`.
    public init(decoding buffer: ByteBuffer) throws {
        var buffer = buffer
        func fail(_ what: String) -> DecodingError { DecodingError(description: "op record: \(what)") }
        guard buffer.readString(length: 2) == "PY" else { throw fail("not a Pylon op (bad magic)") }
        guard let version = buffer.readInteger(as: UInt8.self), let flags = buffer.readInteger(as: UInt8.self) else {
            throw fail("truncated header")
        }
        guard (1...Self.version).contains(version) else {
            throw fail("version \(version) is not understood by this sidecar (it reads versions 1 to \(Self.version)); upgrade the sidecar")
        }
        guard let timestamp = buffer.readInteger(as: Int64.self), let slot = buffer.readInteger(as: UInt16.self) else {
            throw fail("truncated header")
        }
        guard let rack = Self.readShortString(&buffer), let sidecar = Self.readShortString(&buffer) else {
            throw fail("truncated origin")
        }
        guard let count = buffer.readInteger(as: UInt32.self), Int(count) <= buffer.readableBytes / 4 else {
            throw fail("bad argument count")
        }
        var arguments: [ByteBuffer] = []
        arguments.reserveCapacity(Int(count))
        for _ in 0..<count {
            guard let length = buffer.readInteger(as: UInt32.self), let argument = buffer.readSlice(length: Int(length)) else {
                throw fail("truncated argument")
            }
            arguments.append(argument)
        }
        guard buffer.readableBytes == 0 else { throw fail("\(buffer.readableBytes) trailing bytes") }
        self.init(arguments: arguments, originRack: rack, originSidecar: sidecar, timestampMilliseconds: timestamp, slot: Int(slot), wantsReply: flags & 1 != 0)
    }

    private static func writeShortString(_ string: String, into buffer: inout ByteBuffer) {
        let bytes = string.utf8.prefix(Int(UInt16.max))
        buffer.writeInteger(UInt16(bytes.count))
        buffer.writeBytes(bytes)
    }

    private static func readShortString(_ buffer: inout ByteBuffer) -> String? {
        guard let length = buffer.readInteger(as: UInt16.self) else { return nil }
        return buffer.readString(length: Int(length))
    }
}
