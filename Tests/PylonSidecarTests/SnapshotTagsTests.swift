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
        #expect(tags.markers == [0: [-1: 41], 1: [-1: 99]])
        #expect(tags.checkpoints == [0: 40, 3: 7])
        #expect(!tags.perSlot)
        let table: [(partition: Int32, start: Int64)] = [(0, 40), (1, 100), (2, 0), (3, 7), (4, 0), (5, 0)]
        for row in table { #expect(tags.adoption(of: row.partition, partitions: 8, perSlot: false).start == row.start, "partition \(row.partition)") }
        // Its marker becomes the loading rack's: the partition's, or on Redis Cluster every slot's
        // of the partition (and the keyless ops', in the partition that has them).
        #expect(tags.adoption(of: 1, partitions: 8, perSlot: false).markers == [-1: 99])
        let slots = tags.adoption(of: 0, partitions: 8, perSlot: true).markers
        #expect(slots.count == HashSlot.count / 8 + 1)
        #expect(slots[OpRecord.noSlot] == 41)
        #expect(Set(slots.values) == [41])
        #expect(tags.adoption(of: 1, partitions: 8, perSlot: true).markers[OpRecord.noSlot] == nil)
        #expect(tags.adoption(of: 2, partitions: 8, perSlot: true).markers.isEmpty)
    }

    /// A Redis Cluster rack's snapshot: a file per node, each of its own instant; each slot stands
    /// past its own marker, and every slot at least at the checkpoint read before the files.
    @Test func aClusterSnapshotStandsAtEachSlotsMarkerAndAtLeastAtTheCheckpointReadBeforeIt() {
        let topic = "pylon.shop.ops"
        let busy = SnapshotTags.units(of: 0, partitions: 4)[0]
        var tags = SnapshotTags()
        tags.note(key: AppliedOffsets.markerKey(topic: topic, partition: 0, slot: busy), value: "20", topic: topic)
        tags.note(key: AppliedOffsets.markerKey(topic: topic, partition: 0, slot: OpRecord.noSlot), value: "5", topic: topic)
        tags.note(key: AppliedOffsets.markerKey(topic: "pylon.other.ops", partition: 0, slot: busy), value: "99", topic: topic)
        // The checkpoint inside a node's file is of that node's instant only: not used.
        tags.note(key: AppliedOffsets.checkpointKey(topic: topic, partition: 0), value: "30", topic: topic)
        #expect(tags.perSlot)
        #expect(tags.markers == [0: [busy: 20, OpRecord.noSlot: 5]])
        #expect(tags.refusal(topic: topic, logStarts: [0: 0], partitions: 4, perSlot: true)?.contains("one node of a Redis Cluster rack") == true)

        tags.sourceCheckpoints = [0: 10]
        let adoption = tags.adoption(of: 0, partitions: 4, perSlot: true)
        #expect(adoption.start == 10)
        #expect(adoption.markers.count == HashSlot.count / 4 + 1)
        #expect(adoption.markers[busy] == 20)
        #expect(adoption.markers[OpRecord.noSlot] == 9)  // its marker is behind the checkpoint
        #expect(adoption.markers.filter { $0.key != busy }.values.allSatisfy { $0 == 9 })
        #expect(tags.adoption(of: 0, partitions: 4, logStart: 12, perSlot: true).start == 12)
        // Without a checkpoint: from the log's start, every op at or below a slot's marker skipped.
        #expect(tags.adoption(of: 1, partitions: 4, perSlot: true) == (markers: [:], start: 0))

        #expect(tags.refusal(topic: topic, logStarts: [0: 10, 1: 0], partitions: 4, perSlot: true) == nil)
        #expect(tags.refusal(topic: topic, logStarts: [0: 11], partitions: 4, perSlot: true)?.contains("partition 0 starts at offset 11, after the snapshot's 10") == true)
        #expect(tags.refusal(topic: topic, logStarts: [0: 0], partitions: 4, perSlot: false)?.contains("only a Redis Cluster rack can load it") == true)
    }

    @Test func aClusterRacksPerSlotMarkersAreRecognized() {
        var tags = SnapshotTags()
        tags.note(key: AppliedOffsets.markerKey(topic: "pylon.other.ops", partition: 1, slot: 9), value: "3", topic: "pylon.shop.ops")
        #expect(!tags.perSlot)
        tags.note(key: AppliedOffsets.markerKey(topic: "pylon.shop.ops", partition: 1, slot: 9), value: "3", topic: "pylon.shop.ops")
        #expect(tags.perSlot)
        #expect(tags.markers == [1: [9: 3]])
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
        func refusal(_ tags: SnapshotTags, _ logStarts: [Int32: Int64]) -> String? {
            tags.refusal(topic: "pylon.shop.ops", logStarts: logStarts, partitions: 8, perSlot: false)
        }
        #expect(refusal(ours, [0: 0, 1: 10, 2: 0]) == nil)
        #expect(refusal(ours, [0: 42, 1: 0]) == nil)  // starts right after the marker
        // A checkpoint behind the marker (written every 10 ms) before the log's start: the marker says what is held.
        ours.note(key: "pylon:checkpoint:pylon.shop.ops:0", value: "30", topic: "pylon.shop.ops")
        #expect(refusal(ours, [0: 40]) == nil)
        #expect(ours.adoption(of: 0, partitions: 8, logStart: 40, perSlot: false).start == 40)
        #expect(ours.adoption(of: 0, partitions: 8, logStart: 0, perSlot: false).start == 30)
        // Retention deleted ops the snapshot does not hold: partition 1 (from 10) and 2 (never applied, from 0).
        #expect(refusal(ours, [0: 0, 1: 11])?.contains("partition 1 starts at offset 11, after the snapshot's 10") == true)
        #expect(refusal(ours, [2: 5])?.contains("partition 2") == true)

        var foreign = SnapshotTags()
        foreign.note(key: "pylon:applied:pylon.other.ops:0", value: "3", topic: "pylon.shop.ops")
        #expect(refusal(foreign, [:])?.contains("another world") == true)
        // Data from before the world (no markers at all): loaded, the log applied from its start.
        #expect(refusal(SnapshotTags(), [0: 0]) == nil)
    }
}
