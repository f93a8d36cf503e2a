import Glibc
import NIOCore

/// A connection to one Redis node for a thread of its own that may block: the applier's.
/// Requests are written and replies read with blocking system calls bounded by the timeout (the
/// socket's send and receive timeouts, which also bound `connect`), so a batch of ops costs the
/// applier one write and a read or two — no hand-off to an event loop and back, which under load
/// queued behind the gateway's clients and cost more than the batch itself (measured: ~350 µs per
/// batch of seven ops, now a tenth of it). Not thread-safe: one thread owns it.
///
/// Pipelines may be read out of order: a pipeline sent while an earlier one's replies are unread
/// gets its own replies (`Ticket`), the earlier ones kept for their reader, as Redis answers in
/// the order it was asked.
final class BlockingRedisConnection {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Which replies a sent pipeline is owed: the connection's `count` replies from `first` on.
    struct Ticket {
        let first: Int
        let count: Int
    }

    let node: HostPort
    private var socket: Int32
    /// Bytes read and not yet decoded.
    private var input = ByteBuffer()
    /// Replies asked for and read since the connection opened.
    private var asked = 0
    private var read = 0
    /// Replies read for a ticket not received yet, by number.
    private var kept: [Int: RESPValue] = [:]

    /// Connects within `timeout`, which then bounds every write and every wait for a reply.
    init(to node: HostPort, timeout: TimeAmount) throws {
        self.node = node
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(node.host, String(node.port), &hints, &found)
        guard status == 0, let first = found else {
            throw Failure(description: "cannot resolve redis at \(node): \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(found) }
        var lastError = ECONNREFUSED
        var address: UnsafeMutablePointer<addrinfo>? = first
        var connected: Int32 = -1
        while let candidate = address, connected < 0 {
            address = candidate.pointee.ai_next
            let fd = Glibc.socket(candidate.pointee.ai_family, candidate.pointee.ai_socktype, candidate.pointee.ai_protocol)
            guard fd >= 0 else { continue }
            Self.configure(fd, timeout: timeout)
            if connect(fd, candidate.pointee.ai_addr, candidate.pointee.ai_addrlen) == 0 {
                connected = fd
            } else {
                lastError = errno
                Glibc.close(fd)
            }
        }
        guard connected >= 0 else {
            throw Failure(description: "cannot connect to redis at \(node): \(String(cString: strerror(lastError)))")
        }
        self.socket = connected
    }

    deinit { self.close() }

    private static func configure(_ fd: Int32, timeout: TimeAmount) {
        let microseconds = max(timeout.nanoseconds / 1000, 1000)
        var interval = timeval(tv_sec: Int(microseconds / 1_000_000), tv_usec: Int(microseconds % 1_000_000))
        var on: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &interval, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &interval, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Whether the connection is still up: Redis did not close it (it restarted) and no call failed.
    var isOpen: Bool {
        guard self.socket >= 0 else { return false }
        var byte: UInt8 = 0
        let peeked = recv(self.socket, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
        return peeked > 0 || (peeked < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
    }

    /// Writes raw bytes (pipelined commands owed `replies` replies) completely.
    func send(_ bytes: ByteBuffer, replies: Int) throws -> Ticket {
        guard self.socket >= 0 else { throw Failure(description: "the connection to redis at \(self.node) is closed") }
        try bytes.withUnsafeReadableBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = Glibc.send(self.socket, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if written < 0 {
                    if errno == EINTR { continue }
                    throw self.failed("writing to")
                }
                offset += written
            }
        }
        defer { self.asked += replies }
        return Ticket(first: self.asked, count: replies)
    }

    /// Reads a sent pipeline's replies, in order (and those of pipelines sent before it, kept).
    func receive(_ ticket: Ticket) throws -> [RESPValue] {
        if ticket.first == self.read, self.kept.isEmpty {
            var replies: [RESPValue] = []
            replies.reserveCapacity(ticket.count)
            for _ in 0..<ticket.count { replies.append(try self.next()) }
            return replies
        }
        while self.read < ticket.first + ticket.count {
            let number = self.read
            self.kept[number] = try self.next()
        }
        return (ticket.first..<ticket.first + ticket.count).map { self.kept.removeValue(forKey: $0)! }
    }

    /// Reads the next reply off the connection.
    private func next() throws -> RESPValue {
        while true {
            if let reply = try RESPValue.decode(from: &self.input) {
                self.read += 1
                return reply
            }
            try self.fill()
        }
    }

    /// Reads up to the next CRLF (or a lone LF, as a master sends while a replica waits for its
    /// snapshot) of a stream that is not replies — a replica's snapshot transfer (`SnapshotSource`).
    func readLine() throws -> String {
        while true {
            if let end = self.input.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                let line = self.input.readString(length: end - self.input.readerIndex)!
                self.input.moveReaderIndex(forwardBy: 1)
                return line.hasSuffix("\r") ? String(line.dropLast()) : line
            }
            try self.fill()
        }
    }

    /// Hands `body` the next bytes of the stream (at most `limit`) and answers how many.
    func readRaw(limit: Int, _ body: (ByteBufferView) throws -> Void) throws -> Int {
        if self.input.readableBytes == 0 { try self.fill() }
        let n = min(limit, self.input.readableBytes)
        try body(self.input.readableBytesView.prefix(n))
        self.input.moveReaderIndex(forwardBy: n)
        return n
    }

    /// Reads what the socket has into `input` (waiting up to the timeout).
    private func fill() throws {
        guard self.socket >= 0 else { throw Failure(description: "the connection to redis at \(self.node) is closed") }
        if self.input.readableBytes == 0 { self.input.clear() } else if self.input.readerIndex > 64 * 1024 { self.input.discardReadBytes() }
        while true {
            var read = 0
            self.input.writeWithUnsafeMutableBytes(minimumWritableBytes: 64 * 1024) { buffer in
                read = recv(self.socket, buffer.baseAddress, buffer.count, 0)
                return max(0, read)
            }
            if read < 0 {
                if errno == EINTR { continue }
                throw self.failed("reading from")
            }
            if read == 0 {
                self.close()
                throw Failure(description: "redis at \(self.node) closed the connection")
            }
            return
        }
    }

    /// Sends and waits for the replies.
    func exchange(_ bytes: ByteBuffer, replies: Int) throws -> [RESPValue] {
        try self.receive(self.send(bytes, replies: replies))
    }

    func close() {
        guard self.socket >= 0 else { return }
        Glibc.close(self.socket)
        self.socket = -1
    }

    /// Closes the connection after a failed call (a late reply must never be taken for the
    /// answer to a later request) and says what failed.
    private func failed(_ doing: String) -> Failure {
        let reason = errno == EAGAIN || errno == EWOULDBLOCK ? "no answer within the redis timeout" : String(cString: strerror(errno))
        self.close()
        return Failure(description: "\(doing) redis at \(self.node): \(reason)")
    }
}
