import NIOCore
import Testing

@testable import PylonSidecar

@Suite("Op record")
struct OpRecordTests {
    let record = OpRecord(
        arguments: ["SET", "user:{42}:name", "a\r\nb\0c"].map { ByteBuffer(string: $0) } + [ByteBuffer(bytes: [0xFF, 0x00, 0x80])],
        originRack: "eu-west-1a", originSidecar: "pod-0", timestampMilliseconds: 1_764_000_000_123, slot: HashSlot.of("42")
    )

    @Test func roundTripsArgumentsAsBytes() throws {
        let decoded = try OpRecord(decoding: self.record.encoded)
        #expect(decoded == self.record)
        #expect(Array(decoded.arguments[3].readableBytesView) == [0xFF, 0x00, 0x80])
        var waiting = self.record
        waiting.wantsReply = true
        #expect(try OpRecord(decoding: waiting.encoded) == waiting)
        // Flags never change what an op does: unknown ones are ignored.
        var future = self.record.encoded
        future.setInteger(UInt8(0x80), at: 3)
        #expect(try OpRecord(decoding: future) == self.record)
    }

    @Test func refusesWhatItCannotReadFaithfully() {
        var wrongVersion = self.record.encoded
        wrongVersion.setInteger(OpRecord.version + 1, at: 2)
        #expect(throws: OpRecord.DecodingError.self) { try OpRecord(decoding: wrongVersion) }
        #expect(throws: OpRecord.DecodingError.self) { try OpRecord(decoding: ByteBuffer(string: "XY\u{1}\u{0}")) }
        let encoded = self.record.encoded
        for length in 0..<encoded.readableBytes {
            #expect(throws: OpRecord.DecodingError.self) { try OpRecord(decoding: encoded.getSlice(at: 0, length: length)!) }
        }
        var trailing = encoded
        trailing.writeInteger(UInt8(0))
        #expect(throws: OpRecord.DecodingError.self) { try OpRecord(decoding: trailing) }
    }

    @Test func partitionFollowsTheHashSlot() {
        // Keys sharing a hash tag share a slot, so their ops share a partition whatever the count.
        for partitions in [1, 3, 12, 16384] {
            let a = OpRecord(arguments: [], originRack: "", originSidecar: "", timestampMilliseconds: 0, slot: HashSlot.of("{user1}.a"))
            let b = OpRecord(arguments: [], originRack: "", originSidecar: "", timestampMilliseconds: 0, slot: HashSlot.of("{user1}.b"))
            #expect(a.partition(of: partitions) == b.partition(of: partitions))
            #expect((0..<Int32(partitions)).contains(a.partition(of: partitions)))
        }
        let keyless = OpRecord(arguments: [], originRack: "", originSidecar: "", timestampMilliseconds: 0, slot: OpRecord.noSlot)
        #expect(keyless.partition(of: 8) == 0)
    }
}

@Suite("Applied offsets")
struct AppliedOffsetsTests {
    @Test func everyMarkerLivesInItsOpsSlot() {
        for slot in stride(from: 0, to: HashSlot.count, by: 1) {
            #expect(HashSlot.of(AppliedOffsets.markerKey(topic: "pylon.w.ops", partition: 3, slot: slot)) == slot)
        }
    }

    @Test func readsTheScriptsReplies() throws {
        #expect(try AppliedOffsets.outcomes(of: .array([.integer(2), .integer(7), .error("WRONGTYPE x"), .null])) == [
            .alreadyApplied, .alreadyApplied, .applied(reply: .integer(7)), .rejected(error: "WRONGTYPE x"), .applied(reply: .null),
        ])
        #expect(try AppliedOffsets.outcomes(of: .array([.integer(-1)])) == [.previousMissing])
        // An integer beyond Lua's doubles, read back exactly by the script.
        #expect(try AppliedOffsets.outcomes(of: .array([.integer(0), .simple("PYLON.INT -9223372036854775808")])) == [.applied(reply: .integer(.min))])
        #expect(throws: OpRecord.DecodingError.self) { try AppliedOffsets.outcomes(of: .ok) }
        #expect(throws: OpRecord.DecodingError.self) { try AppliedOffsets.outcomes(of: .array([.integer(-5)])) }
        #expect(throws: OpRecord.DecodingError.self) { try AppliedOffsets.outcomes(of: .array([.bulk("1")])) }
    }
}

@Suite("Op chunks")
struct OpChunkTests {
    let record: ByteBuffer = {
        let value = ByteBuffer(bytes: (0..<250_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        return OpRecord(arguments: [ByteBuffer(string: "SET"), ByteBuffer(string: "k"), value], originRack: "a", originSidecar: "s", timestampMilliseconds: 1, slot: 7).encoded
    }()

    @Test func anOpTravelsInChunksAndIsWholeAtItsLast() throws {
        let chunks = OpChunk.split(self.record, id: 42, maxMessageBytes: 100_000)
        #expect(chunks.count == 3 && chunks.allSatisfy { $0.readableBytes <= 100_000 && OpChunk.isChunk($0) })
        #expect(!OpChunk.isChunk(self.record))
        var assembly = OpChunk.Assembly()
        // Another op's chunk in between, and the chunks out of order: still one whole op, at the last.
        let other = OpChunk.split(self.record, id: 7, maxMessageBytes: 100_000)
        #expect(assembly.add(try OpChunk(decoding: chunks[0]), partition: 1, offset: 10) == nil)
        #expect(assembly.add(try OpChunk(decoding: other[0]), partition: 1, offset: 11) == nil)
        #expect(assembly.add(try OpChunk(decoding: chunks[2]), partition: 1, offset: 12) == nil)
        #expect(assembly.oldestUnfinished(in: 1, next: 13) == 10)
        let whole = try #require(assembly.add(try OpChunk(decoding: chunks[1]), partition: 1, offset: 13))
        #expect(whole == self.record)
        #expect(try OpRecord(decoding: whole).arguments[2].readableBytes == 250_000)
        // The other op is still unfinished: no checkpoint may pass its first chunk, until it is given up.
        #expect(assembly.oldestUnfinished(in: 1, next: 14) == 11)
        #expect(assembly.oldestUnfinished(in: 1, next: 11 + OpChunk.Assembly.abandonAfter + 1) == nil)
        #expect(throws: OpRecord.DecodingError.self) { try OpChunk(decoding: self.record) }
    }
}
