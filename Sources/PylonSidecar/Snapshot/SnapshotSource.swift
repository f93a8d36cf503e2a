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

    /// Writes the snapshot of `node` to `path` (through a `.part` file renamed once complete)
    /// and answers its size. `timeout` bounds each wait; a master preparing the file sends a
    /// newline every second meanwhile.
    static func fetch(from node: HostPort, to path: String, timeout: TimeAmount, progress: (Int) -> Void = { _ in }) throws -> Int {
        let connection = try BlockingRedisConnection(to: node, timeout: timeout)
        defer { connection.close() }
        // A file streamed as it is made (the source writes nothing to disk when configured for
        // diskless replication), and only the file, not the replication stream after it (Redis
        // 7.0 and later; an older one refuses that, harmlessly).
        _ = try connection.exchange(RedisRequest(strings: ["REPLCONF", "capa", "eof"]).raw, replies: 1)
        _ = try connection.exchange(RedisRequest(strings: ["REPLCONF", "rdb-only", "1"]).raw, replies: 1)
        _ = try connection.send(RedisRequest(strings: ["SYNC"]).raw, replies: 0)
        var header = ""
        while header.isEmpty { header = try connection.readLine() }  // newlines while the master saves
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
                progress(written)
            }
            written -= mark.count
            try file.truncate(atOffset: UInt64(written))
        } else {
            guard let size = Int(header.dropFirst()), size >= 0 else { throw Failure(description: "redis at \(node) announced a snapshot of '\(header)' bytes") }
            while written < size {
                written += try connection.readRaw(limit: size - written) { file.write(Data($0)) }
                progress(written)
            }
        }
        try file.synchronize()
        if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
        try FileManager.default.moveItem(atPath: part, toPath: path)
        return written
    }
}
