import Foundation
import Logging
import NIOCore
import Shared
import Synchronization

/// How a rack whose Redis knows nothing of some partitions (new, or emptied) catches up from a
/// snapshot of another rack instead of replaying the whole log: the snapshot (`SnapshotSource`,
/// one instant of the source's keyspace) is restored into whatever topology this rack has, and
/// its markers (`SnapshotTags`) become this rack's, so the log is applied from exactly where
/// the snapshot stands: nothing twice, nothing missed, TTLs as absolute times.
///
/// The copy is chunked and resumable: after each chunk this rack's Redis records how far the
/// load of that snapshot got (`progressKey`), and the snapshot file stays on disk until the
/// load is done, so a loader killed mid-copy continues where it was. Without the file (another
/// disk), the partitions' keys are emptied and a new snapshot is loaded from the start.
struct SnapshotCatchUp: Sendable {
    /// The source rack's Redis: a standalone or Sentinel-managed node (master or replica), or a
    /// Redis Cluster (its seed nodes: every primary sends its own file).
    var source: RedisEndpoint
    /// Where snapshot files wait until loaded.
    var directory: String
    /// Keys restored per chunk: a chunk is also how much a killed loader does again.
    var chunkKeys = 1000
    /// Bytes of a chunk at most (unless one key is larger).
    var chunkBytes = 4 << 20

    static func progressKey(topic: String, partition: Int32) -> String {
        "pylon:snapshot:\(topic):\(partition)"
    }
}

/// A load of some partitions from a snapshot, on a thread of its own with its own connections to
/// this rack's Redis, while the applier goes on with its other partitions and keeps serving the
/// group. It retries (resuming) until it is done or cancelled; once done, the partitions'
/// checkpoints are in Redis and `outcome` names where each continues: the applier resyncs.
/// Its writes are fenced by its claim on the partitions (`LoadFence`): once another sidecar of
/// the rack claimed them, its connections are closed, and it stops.
/// @unchecked: its connections, fence and files are touched by its thread only; the rest is atomic.
final class SnapshotLoad: @unchecked Sendable {
    let partitions: [Int32]
    private let catchUp: SnapshotCatchUp
    private let settings: Applier.Settings
    private let progress: SnapshotProgress
    private let consumer: KafkaConsumer
    private let logger: Logger
    private let redis: RackPipelines
    private var fence: LoadFence
    private let cancelled = Atomic(false)
    private let finished = DispatchSemaphore(value: 0)
    private let result = Mutex<Outcome?>(nil)

    enum Outcome: Equatable {
        /// Loaded: where each partition continues in the log.
        case loaded([Int32: Int64])
        /// Another sidecar of the rack claimed the partitions: this load stopped, writing nothing more.
        case deposed
    }

    struct Cancelled: Error, CustomStringConvertible {
        var description: String { "the load was stopped (the partitions moved, or the sidecar stops)" }
    }

    /// Starts loading `partitions`; `wake` is called once they are loaded.
    init(_ partitions: [Int32], from catchUp: SnapshotCatchUp, applier: Applier, consumer: KafkaConsumer, wake: @escaping @Sendable () -> Void) {
        self.partitions = partitions
        self.catchUp = catchUp
        self.settings = applier.settings
        self.progress = applier.snapshot
        self.consumer = consumer
        self.logger = applier.logger
        self.redis = RackPipelines(
            rack: applier.rack, timeout: applier.settings.redisTimeout,
            name: LoadFence.connectionName(topic: applier.settings.topic, partitions: partitions)
        )
        self.fence = LoadFence(partitions: partitions, topic: applier.settings.topic, perSlot: applier.rack.perSlot, partitionCount: applier.settings.partitions)
        Blocking.thread(named: "pylon-snapshot") { [self] in
            var backoff = Duration.seconds(1)
            while !self.cancelled.load(ordering: .relaxed) {
                do {
                    try self.redis.connectAll()
                    let offsets = try self.load()
                    self.result.withLock { $0 = .loaded(offsets) }
                    wake()
                    break
                } catch let deposed as LoadFence.Deposed {
                    self.logger.warning("the snapshot load stops: another sidecar of the rack claimed its partitions", metadata: ["reason": "\(deposed)"])
                    self.result.withLock { $0 = .deposed }
                    wake()
                    break
                } catch {
                    self.redis.dropConnections()
                    guard !self.cancelled.load(ordering: .relaxed) else { break }
                    self.logger.warning("the snapshot load failed; retrying, resuming where it was", metadata: ["error": "\(error)", "retryIn": "\(backoff)"])
                    let until = ContinuousClock.now + backoff
                    while ContinuousClock.now < until, !self.cancelled.load(ordering: .relaxed) { Thread.sleep(forTimeInterval: 0.05) }
                    backoff = min(backoff * 2, .seconds(30))
                }
            }
            self.redis.dropConnections()
            self.finished.signal()
        }
    }

    /// How the load ended, once it has.
    var outcome: Outcome? { self.result.withLock { $0 } }

    /// Stops the load (at its next chunk, or its next read of the source) and waits for its thread.
    func cancel() {
        self.cancelled.store(true, ordering: .relaxed)
        self.finished.wait()
    }

    private func checkCancelled() throws {
        if self.cancelled.load(ordering: .relaxed) { throw Cancelled() }
    }

    /// Loads the partitions from a snapshot of the source rack and answers where each continues
    /// in the log. Throws (retried, resuming) when a Redis or a file fails.
    private func load() throws -> [Int32: Int64] {
        let (partitions, catchUp, progress) = (self.partitions, self.catchUp, self.progress)
        let topic = self.settings.topic
        progress.update { $0 = .init(phase: .fetching, source: catchUp.source.description, partitions: partitions, startedAt: .now) }
        do {
            try self.fence.claim(through: self.redis)
            let (snapshot, resumeAt) = try self.prepareSnapshot()
            var files = SnapshotFiles(snapshot, directory: catchUp.directory)
            // The files' tags first: a snapshot that cannot be loaded is refused before any key.
            var tags = SnapshotTags()
            tags.sourceCheckpoints = snapshot.checkpoints
            var fileBytes = 0
            for index in snapshot.files.indices {
                var reader = try files.reader(index)
                fileBytes += reader.size
                while let entry = try reader.next() {
                    guard entry.database == 0, entry.key.starts(with: Bookkeeping.prefix.utf8) else { continue }
                    tags.note(key: String(decoding: entry.key, as: UTF8.self), value: try reader.stringValue(entry).map { String(decoding: $0, as: UTF8.self) }, topic: topic)
                }
            }
            progress.update {
                $0.phase = .loading
                $0.snapshot = snapshot.id
                $0.fileBytes = fileBytes
                $0.startedAt = .now
            }
            self.logger.notice("loading a snapshot of the source rack", metadata: [
                "source": "\(catchUp.source)", "snapshot": "\(snapshot.id)", "files": "\(snapshot.files.count)", "bytes": "\(fileBytes)",
                "partitions": "\(partitions)", "resumingAt": "\(resumeAt)",
            ])
            let logStarts = try self.consumer.logStarts(topic: topic, partitions: partitions)
            if let refusal = tags.refusal(topic: topic, logStarts: logStarts, partitions: self.settings.partitions, perSlot: self.redis.rack.perSlot) {
                files.remove()  // the next attempt takes a new one
                throw SnapshotSource.Failure(description: refusal)
            }
            let wanted = Set(partitions)
            var chunk = RackPipelines.Requests()
            var inChunk = 0
            // The chunk sent before, whose replies are read once the next one is sent: Redis
            // restores one while the loader reads and frames the next.
            var inFlight: (sent: [RackPipelines.Sent], upTo: Int, keys: Int, bytes: Int)?
            var confirmed: Int?
            var index = 0
            var loaded = 0
            var otherDatabases = 0
            var functions = 0
            var bytesBefore = 0  // of the files before the one being read
            func confirm() throws {
                guard let chunk = inFlight.take() else { return }
                for sent in chunk.sent {
                    for (_, reply) in try self.redis.receive(sent) {
                        if reply.isError, reply.string?.contains("payload version") == true {
                            throw SnapshotSource.Failure(description: "restoring the snapshot: redis answered \(reply.string!) (this rack's Redis must be the source's version or newer)")
                        }
                        try Self.check(reply, doing: "restoring the snapshot")
                    }
                }
                loaded += chunk.keys
                confirmed = chunk.upTo
                let keys = loaded
                progress.update {
                    $0.bytes = chunk.bytes
                    $0.keys = keys
                }
            }
            func send(upTo next: Int, bytes: Int) throws {
                try self.checkCancelled()
                // How far the load got, as confirmed by the chunks before: a killed loader resumes there.
                if let confirmed {
                    for partition in partitions {
                        let key = SnapshotCatchUp.progressKey(topic: topic, partition: partition)
                        chunk.add(["SET", key, "\(snapshot.id) \(confirmed)"], to: try self.redis.node(forKey: key), as: .ownTurn)
                    }
                }
                let sent = try self.redis.transmit(chunk)
                try confirm()
                inFlight = (sent, next, inChunk, bytes)
                chunk = RackPipelines.Requests()
                inChunk = 0
            }
            // Entries are numbered across the files, in their order: where a killed load resumes.
            for file in snapshot.files.indices {
                var reader = try files.reader(file)
                while let entry = try reader.next() {
                    defer { index += 1 }
                    guard index >= resumeAt, !entry.key.starts(with: Bookkeeping.prefix.utf8) else { continue }
                    guard entry.database == 0 else {
                        otherDatabases += 1
                        continue
                    }
                    let slot = entry.key.withUnsafeBytes { HashSlot.of(bytes: $0) }
                    let partition = OpRecord.partition(ofSlot: slot, count: self.settings.partitions)
                    guard wanted.contains(partition) else { continue }
                    guard let node = self.redis.rack.node(slot) else { throw RackPipelines.Doubt(description: "the rack's redis node for slot \(slot) is not known yet") }
                    chunk.add(written: { Self.writeRestore(entry, from: reader, into: &$0) }, to: node, as: .ownTurn)
                    inChunk += 1
                    if inChunk >= catchUp.chunkKeys || chunk.byteCount >= catchUp.chunkBytes { try send(upTo: index + 1, bytes: bytesBefore + reader.offset) }
                }
                bytesBefore += reader.size
                functions += reader.functions
            }
            try send(upTo: index, bytes: fileBytes)
            try confirm()
            if otherDatabases > 0 { self.logger.warning("keys of databases other than 0 in the snapshot were not copied (Pylon serves database 0)", metadata: ["keys": "\(otherDatabases)"]) }
            if functions > 0 { self.logger.warning("functions in the snapshot were not copied: load them into this rack's Redis yourself", metadata: ["libraries": "\(functions)"]) }
            let offsets = try self.adoptTags(tags, partitions: partitions, logStarts: logStarts)
            files.remove()
            progress.update {
                $0.phase = .loaded
                $0.bytes = fileBytes
                $0.offsets = offsets
            }
            self.logger.notice("snapshot loaded: applying the log from its offsets", metadata: [
                "snapshot": "\(snapshot.id)", "keys": "\(loaded)", "offsets": "\(offsets.sorted { $0.key < $1.key })",
            ])
            return offsets
        } catch {
            progress.update {
                $0.phase = error is Cancelled || error is LoadFence.Deposed ? .stopped : .failed
                $0.error = "\(error)"
            }
            throw error
        }
    }

    /// Where to take up loading `partitions`: the snapshot a killed load had begun, when every
    /// partition recorded it and its files are still here; otherwise a new snapshot, taken now,
    /// after the partitions' keys are emptied (what a load of another snapshot left).
    private func prepareSnapshot() throws -> (SnapshotManifest, resumeAt: Int) {
        let (partitions, catchUp) = (self.partitions, self.catchUp)
        var requests = RackPipelines.Requests()
        for partition in partitions {
            let key = SnapshotCatchUp.progressKey(topic: self.settings.topic, partition: partition)
            try requests.add(["GET", key], to: self.redis.node(forKey: key), as: .ownTurn)
        }
        let recorded = try self.redis.exchange(requests).compactMap { $0.1.string?.split(separator: " ") }.filter { $0.count == 2 }
        if recorded.count == partitions.count, Set(recorded.map { $0[0] }).count == 1, let done = recorded.compactMap({ Int($0[1]) }).min(),
           let snapshot = SnapshotManifest.read(id: String(recorded[0][0]), directory: catchUp.directory) {
            self.logger.notice("resuming the load of a snapshot", metadata: ["snapshot": "\(snapshot.id)", "entries": "\(done)"])
            return (snapshot, done)
        }
        try self.emptyPartitions()
        try FileManager.default.createDirectory(atPath: catchUp.directory, withIntermediateDirectories: true)
        let prefix = self.settings.sidecarName + "-"
        for old in (try? FileManager.default.contentsOfDirectory(atPath: catchUp.directory)) ?? [] where old.hasPrefix(prefix) {
            try? FileManager.default.removeItem(atPath: catchUp.directory + "/" + old)
        }
        let id = prefix + String(Int64(Date().timeIntervalSince1970 * 1000))
        self.logger.notice("taking a snapshot of the source rack's redis", metadata: ["source": "\(catchUp.source)", "snapshot": "\(id)"])
        let snapshot = try SnapshotSource.take(
            catchUp.source, id: id, directory: catchUp.directory, topic: self.settings.topic, partitions: self.settings.partitions, timeout: self.settings.redisTimeout
        ) { bytes in
            try self.checkCancelled()
            self.progress.update { $0.bytes = bytes }
        }
        var start = RackPipelines.Requests()
        for partition in partitions {
            let key = SnapshotCatchUp.progressKey(topic: self.settings.topic, partition: partition)
            try start.add(["SET", key, "\(id) 0"], to: self.redis.node(forKey: key), as: .ownTurn)
        }
        try self.write(start, doing: "recording the snapshot to load")
        return (snapshot, 0)
    }

    /// Deletes the user keys of `partitions`' slots on every node (nothing applies them meanwhile:
    /// this loader holds them, and its applier has not started).
    private func emptyPartitions() throws {
        let wanted = Set(self.partitions)
        for node in self.redis.rack.nodes() {
            let connection = try self.redis.sameConnection(to: node)
            var cursor = "0"
            repeat {
                let reply = try connection.exchange(RedisRequest(strings: ["SCAN", cursor, "COUNT", "1000"]).raw, replies: 1)[0]
                guard let parts = reply.array, parts.count == 2, let next = parts[0].string, let keys = parts[1].array else {
                    throw RackPipelines.Doubt(description: "SCAN answered \(reply)")
                }
                cursor = next
                var doomed = RackPipelines.Requests()
                for case .bulkString(let name?) in keys where !Bookkeeping.isBookkeeping(name) {
                    let slot = HashSlot.of(name)
                    let partition = OpRecord.partition(ofSlot: slot, count: self.settings.partitions)
                    guard wanted.contains(partition) else { continue }
                    doomed.add([ByteBuffer(string: "UNLINK"), name], to: node, as: .ownTurn)
                }
                if !doomed.isEmpty { try self.write(doomed, doing: "emptying the partitions to load") }
            } while cursor != "0"
        }
    }

    /// Makes the snapshot's markers this rack's (`SnapshotTags.adoption`), sets each
    /// partition's checkpoint and ends the load's records.
    private func adoptTags(_ tags: SnapshotTags, partitions: [Int32], logStarts: [Int32: Int64]) throws -> [Int32: Int64] {
        let topic = self.settings.topic
        var markers = RackPipelines.Requests()
        var offsets: [Int32: Int64] = [:]
        for partition in partitions {
            let adoption = tags.adoption(of: partition, partitions: self.settings.partitions, logStart: logStarts[partition] ?? 0, perSlot: self.redis.rack.perSlot)
            offsets[partition] = adoption.start
            for (slot, marker) in adoption.markers {
                let key = slot == SnapshotTags.partitionMarker
                    ? AppliedOffsets.markerKey(topic: topic, partition: partition)
                    : AppliedOffsets.markerKey(topic: topic, partition: partition, slot: slot)
                try markers.add(["SET", key, String(marker)], to: self.redis.node(forKey: key), as: .ownTurn)
            }
        }
        try self.write(markers, doing: "writing the snapshot's markers")
        // The checkpoints last: a load killed before them is loaded again, resuming.
        var checkpoints = RackPipelines.Requests()
        for (partition, start) in offsets {
            let key = AppliedOffsets.checkpointKey(topic: topic, partition: partition)
            try checkpoints.add(["SET", key, String(start)], to: self.redis.node(forKey: key), as: .ownTurn)
        }
        try self.write(checkpoints, doing: "writing the snapshot's checkpoints")
        var done = RackPipelines.Requests()
        for partition in partitions {
            let key = SnapshotCatchUp.progressKey(topic: topic, partition: partition)
            try done.add(["DEL", key], to: self.redis.node(forKey: key), as: .ownTurn)
        }
        try self.write(done, doing: "ending the load's records")
        return offsets
    }

    /// Sends writes and waits until Redis took every one.
    private func write(_ writes: RackPipelines.Requests, doing what: String) throws {
        for (_, reply) in try self.redis.exchange(writes) { try Self.check(reply, doing: what) }
    }

    /// A write's reply, read: an error fails the attempt (retried, resuming).
    private static func check(_ reply: RESPValue, doing what: String) throws {
        if reply.isError { throw RackPipelines.Doubt(description: "\(what): redis answered \(reply.string ?? "")") }
    }

    /// `RESTORE key expiry payload REPLACE ABSTTL` (expiry 0: none), written straight from the file.
    private static func writeRestore(_ entry: RDBReader.Entry, from reader: RDBReader, into buffer: inout ByteBuffer) {
        buffer.writeStaticString("*6\r\n$7\r\nRESTORE\r\n")
        buffer.writeRESPLine(UInt8(ascii: "$"), entry.key.count)
        buffer.writeBytes(entry.key)
        buffer.writeString("\r\n")
        buffer.writeRESPBulkString(Int(entry.expiresAt ?? 0))
        buffer.writeRESPLine(UInt8(ascii: "$"), entry.value.count + 11)
        reader.writeDumpPayload(entry, into: &buffer)
        buffer.writeStaticString("\r\n$7\r\nREPLACE\r\n$6\r\nABSTTL\r\n")
    }
}
