import Foundation
import NIOCore

/// Takes a snapshot of a rack's Redis the way a replica gets one: SYNC, and the RDB file the
/// master sends. Redis forks for it, so the file is the keyspace of one instant — Pylon's markers
/// included, which name the exact offset of the log each partition was applied up to — while
/// the source keeps serving reads and applying writes.
enum SnapshotSource {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Takes a snapshot of `source` into `directory`: one file for a standalone or Sentinel
    /// node; for a Redis Cluster, one per primary, each its own SYNC, after the partitions'
    /// checkpoints were read (see `SnapshotTags`). The manifest is written last, once every file
    /// is complete. `progress` gets the bytes received so far.
    static func take(
        _ source: RedisEndpoint, id: String, directory: String, topic: String, partitions: Int, timeout: TimeAmount, progress: (Int) throws -> Void
    ) throws -> SnapshotManifest {
        let nodes: [HostPort]
        var checkpoints: [Int32: Int64]?
        switch source {
        case .standalone(let node):
            nodes = [node]
        case .cluster(let seeds):
            let topology = try self.topology(of: seeds, timeout: timeout)
            nodes = topology.primaries
            checkpoints = try self.checkpoints(topic: topic, partitions: partitions, in: topology, timeout: timeout)
        case .sentinel:
            throw Failure(description: "a snapshot is taken from a node of a Sentinel set (redis://HOST:PORT), not through the Sentinels")
        }
        var snapshot = SnapshotManifest(id: id, files: [], checkpoints: checkpoints)
        var before = 0
        for (index, node) in nodes.enumerated() {
            let file = "\(id).\(index).rdb"
            before += try self.fetch(from: node, to: directory + "/" + file, timeout: timeout) { try progress(before + $0) }
            snapshot.files.append(file)
        }
        try snapshot.write(directory: directory)
        return snapshot
    }

    /// The slot map of a Redis Cluster, from the first seed that answers; every slot must be served.
    private static func topology(of seeds: [HostPort], timeout: TimeAmount) throws -> ClusterTopology {
        var problems: [String] = []
        for seed in seeds {
            do {
                let connection = try BlockingRedisConnection(to: seed, timeout: timeout)
                defer { connection.close() }
                let reply = try connection.exchange(RedisRequest(strings: ["CLUSTER", "SLOTS"]).raw, replies: 1)[0]
                guard let topology = ClusterTopology(slotsReply: reply, fallbackHost: seed.host, version: 0) else {
                    throw Failure(description: "CLUSTER SLOTS answered \(reply)")
                }
                guard topology.coveredSlots == HashSlot.count else {
                    throw Failure(description: "the cluster serves \(topology.coveredSlots) of \(HashSlot.count) slots; a snapshot needs them all")
                }
                return topology
            } catch {
                problems.append("\(seed): \(error)")
            }
        }
        throw Failure(description: "no seed of the source cluster gave its slot map (\(problems.joined(separator: "; ")))")
    }

    /// Each partition's checkpoint on a Redis Cluster, from the node that holds it.
    private static func checkpoints(topic: String, partitions: Int, in topology: ClusterTopology, timeout: TimeAmount) throws -> [Int32: Int64] {
        var connections: [HostPort: BlockingRedisConnection] = [:]
        defer { for connection in connections.values { connection.close() } }
        var checkpoints: [Int32: Int64] = [:]
        for partition in 0..<Int32(partitions) {
            let key = AppliedOffsets.checkpointKey(topic: topic, partition: partition)
            guard let node = topology.owner(of: HashSlot.of(key)) else { continue }
            if connections[node] == nil { connections[node] = try BlockingRedisConnection(to: node, timeout: timeout) }
            let reply = try connections[node]!.exchange(RedisRequest(strings: ["GET", key]).raw, replies: 1)[0]
            if reply.isError { throw Failure(description: "reading the source's checkpoint \(key): redis answered \(reply)") }
            if let offset = reply.string.flatMap({ Int64($0) }) { checkpoints[partition] = offset }
        }
        return checkpoints
    }

    /// Writes the snapshot of `node` to `path` (through a `.part` file renamed once complete)
    /// and answers its size. `timeout` bounds each wait; a master preparing the file sends a
    /// newline every second meanwhile.
    static func fetch(from node: HostPort, to path: String, timeout: TimeAmount, progress: (Int) throws -> Void = { _ in }) throws -> Int {
        let connection = try BlockingRedisConnection(to: node, timeout: timeout)
        defer { connection.close() }
        // A file streamed as it is made (the source writes nothing to disk when configured for
        // diskless replication), and only the file, not the replication stream after it (Redis
        // 7.0 and later; an older one refuses that, harmlessly).
        _ = try connection.exchange(RedisRequest(strings: ["REPLCONF", "capa", "eof"]).raw, replies: 1)
        _ = try connection.exchange(RedisRequest(strings: ["REPLCONF", "rdb-only", "1"]).raw, replies: 1)
        _ = try connection.send(RedisRequest(strings: ["SYNC"]).raw, replies: 0)
        var header = ""
        while header.isEmpty {  // newlines while the master saves
            try progress(0)
            header = try connection.readLine()
        }
        guard header.hasPrefix("$") else {
            throw Failure(description: "redis at \(node) refused to send a snapshot: \(header.dropFirst()) (the sidecar needs the SYNC command there)")
        }
        let part = path + ".part"
        _ = FileManager.default.createFile(atPath: part, contents: nil)
        guard let file = FileHandle(forWritingAtPath: part) else { throw Failure(description: "cannot write the snapshot to \(part)") }
        defer { try? file.close() }
        var written = 0
        if header.hasPrefix("$EOF:") {
            // Diskless: the file ends where this mark appears.
            let mark = Array(header.utf8.dropFirst(5))
            var tail: [UInt8] = []
            while tail.count < mark.count || !tail.suffix(mark.count).elementsEqual(mark) {
                written += try connection.readRaw(limit: 1 << 20) { bytes in
                    file.write(Data(bytes))
                    tail = Array((tail + bytes).suffix(mark.count))
                }
                try progress(written)
            }
            written -= mark.count
            try file.truncate(atOffset: UInt64(written))
        } else {
            guard let size = Int(header.dropFirst()), size >= 0 else { throw Failure(description: "redis at \(node) announced a snapshot of '\(header)' bytes") }
            while written < size {
                written += try connection.readRaw(limit: size - written) { file.write(Data($0)) }
                try progress(written)
            }
        }
        try file.synchronize()
        if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
        try FileManager.default.moveItem(atPath: part, toPath: path)
        return written
    }
}

/// A snapshot on disk: its files (one per node of the source) and, for a Redis Cluster source,
/// the checkpoints read before the files were begun. Written once every file is complete, so a
/// load that finds it can resume from it.
struct SnapshotManifest: Codable, Equatable {
    var id: String
    var files: [String]
    var checkpoints: [Int32: Int64]?

    static func path(id: String, directory: String) -> String { directory + "/" + id + ".manifest" }

    /// The manifest of snapshot `id`, when it and all its files are there.
    static func read(id: String, directory: String) -> SnapshotManifest? {
        guard let data = FileManager.default.contents(atPath: self.path(id: id, directory: directory)),
              let snapshot = try? JSONDecoder().decode(SnapshotManifest.self, from: data),
              snapshot.files.allSatisfy({ FileManager.default.fileExists(atPath: directory + "/" + $0) }) else { return nil }
        return snapshot
    }

    func write(directory: String) throws {
        try JSONEncoder().encode(self).write(to: URL(fileURLWithPath: Self.path(id: self.id, directory: directory)), options: .atomic)
    }
}

/// The files of a snapshot being loaded, read one at a time (the last one kept: the tags pass
/// and the load both read them in order, so a snapshot of one file is read once).
struct SnapshotFiles {
    let snapshot: SnapshotManifest
    let directory: String
    private var last: (index: Int, reader: RDBReader)?

    init(_ snapshot: SnapshotManifest, directory: String) {
        self.snapshot = snapshot
        self.directory = directory
    }

    /// A reader at the start of the file at `index`, its checksum checked.
    mutating func reader(_ index: Int) throws -> RDBReader {
        if let last, last.index == index { return last.reader }
        let path = self.directory + "/" + self.snapshot.files[index]
        guard let data = FileManager.default.contents(atPath: path) else { throw SnapshotSource.Failure(description: "cannot read the snapshot file \(path)") }
        let reader = try RDBReader([UInt8](data))
        self.last = (index, reader)
        return reader
    }

    /// Deletes the snapshot: loaded, or refused (the next attempt takes a new one).
    func remove() {
        try? FileManager.default.removeItem(atPath: SnapshotManifest.path(id: self.snapshot.id, directory: self.directory))
        for file in self.snapshot.files { try? FileManager.default.removeItem(atPath: self.directory + "/" + file) }
    }
}
