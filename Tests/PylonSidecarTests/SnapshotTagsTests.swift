import Testing

@testable import PylonSidecar

/// The I/O-free parts of a catch-up from a snapshot: where the log continues, and the formats.
@Suite("Snapshot tags and formats")
struct SnapshotTagsTests {
    @Test func theLogContinuesFromTheSourcesCheckpointElsePastItsMarkerElseFromTheStart() {
        var tags = SnapshotTags()
        let keys: [(String, String?)] = [
            ("pylon:applied:pylon.shop.ops:0", "41"), ("pylon:checkpoint:pylon.shop.ops:0", "40"),  // an op in chunks before 41: its first chunk
            ("pylon:applied:pylon.shop.ops:1", "99"),  // no checkpoint yet
            ("pylon:checkpoint:pylon.shop.ops:3", "7"),  // only passed messages (unreadable, chunks) so far
            ("pylon:owner:pylon.shop.ops:2", "1733000000000"),  // an owner says nothing of the data
            ("pylon:applied:pylon.other.ops:2", "5"), ("pylon:applied:pylon.shop.ops.old:2", "6"),  // other topics
            ("pylon:applied:pylon.shop.ops:4", "not a number"), ("pylon:applied:pylon.shop.ops:5", nil),
        ]
        for (key, value) in keys { tags.note(key: key, value: value, topic: "pylon.shop.ops") }
        #expect(tags.markers == [0: 41, 1: 99])
        #expect(tags.checkpoints == [0: 40, 3: 7])
        #expect(!tags.perSlot)
        let table: [(partition: Int32, start: Int64)] = [(0, 40), (1, 100), (2, 0), (3, 7), (4, 0), (5, 0)]
        for row in table { #expect(tags.startOffset(row.partition) == row.start, "partition \(row.partition)") }
    }

    @Test func aClusterRacksPerSlotMarkersAreRecognized() {
        var tags = SnapshotTags()
        tags.note(key: AppliedOffsets.markerKey(topic: "pylon.other.ops", partition: 1, slot: 9), value: "3", topic: "pylon.shop.ops")
        #expect(!tags.perSlot)
        tags.note(key: AppliedOffsets.markerKey(topic: "pylon.shop.ops", partition: 1, slot: 9), value: "3", topic: "pylon.shop.ops")
        #expect(tags.perSlot)
        #expect(tags.markers.isEmpty)
    }

    @Test func redisCRC64AndLZF() throws {
        // The check value of CRC-64/Jones as Redis computes it (its crc64.c self-test).
        #expect(CRC64.checksum(Array("123456789".utf8)) == 0xE9C6_D914_C4B8_D9CA)
        // A literal run of 3, then a back reference of 6 bytes to distance 3: "abc" + "abcabc".
        #expect(try LZF.decompress([2, 97, 98, 99, 0x80, 2][...], length: 9) == Array("abcabcabc".utf8))
        #expect(throws: RDBReader.Failure.self) { _ = try LZF.decompress([2, 97, 98, 99, 0x80, 9][...], length: 9) }
        #expect(throws: RDBReader.Failure.self) { _ = try LZF.decompress([5, 97][...], length: 6) }
    }
}

extension SnapshotTagsTests {
    @Test func aSnapshotThatCannotBeLoadedIsRefusedWithItsReason() {
        var ours = SnapshotTags()
        ours.note(key: "pylon:applied:pylon.shop.ops:0", value: "41", topic: "pylon.shop.ops")
        ours.note(key: "pylon:checkpoint:pylon.shop.ops:1", value: "10", topic: "pylon.shop.ops")
        #expect(ours.refusal(topic: "pylon.shop.ops", logStarts: [0: 0, 1: 10, 2: 0]) == nil)
        #expect(ours.refusal(topic: "pylon.shop.ops", logStarts: [0: 42, 1: 0]) == nil)  // starts right after the marker
        // A checkpoint behind the marker (written every 10 ms) before the log's start: the marker says what is held.
        ours.note(key: "pylon:checkpoint:pylon.shop.ops:0", value: "30", topic: "pylon.shop.ops")
        #expect(ours.refusal(topic: "pylon.shop.ops", logStarts: [0: 40]) == nil)
        #expect(ours.startOffset(0, logStart: 40) == 40)
        #expect(ours.startOffset(0, logStart: 0) == 30)
        // Retention deleted ops the snapshot does not hold: partition 1 (from 10) and 2 (never applied, from 0).
        #expect(ours.refusal(topic: "pylon.shop.ops", logStarts: [0: 0, 1: 11])?.contains("partition 1 starts at offset 11, after the snapshot's 10") == true)
        #expect(ours.refusal(topic: "pylon.shop.ops", logStarts: [2: 5])?.contains("partition 2") == true)

        var foreign = SnapshotTags()
        foreign.note(key: "pylon:applied:pylon.other.ops:0", value: "3", topic: "pylon.shop.ops")
        #expect(foreign.refusal(topic: "pylon.shop.ops", logStarts: [:])?.contains("another world") == true)
        // Data from before the world (no markers at all): loaded, the log applied from its start.
        #expect(SnapshotTags().refusal(topic: "pylon.shop.ops", logStarts: [0: 0]) == nil)

        var cluster = SnapshotTags()
        cluster.note(key: AppliedOffsets.markerKey(topic: "pylon.shop.ops", partition: 0, slot: 1), value: "3", topic: "pylon.shop.ops")
        #expect(cluster.refusal(topic: "pylon.shop.ops", logStarts: [:])?.contains("Redis Cluster") == true)
    }
}
