import Foundation
import NIOCore
import Shared

/// A connection's writes, and what its reads wait for: a write goes to the world's log and is
/// answered with the reply a rack gave it (from another rack while this one's Redis is away);
/// a read is held until the connection's earlier writes to its partitions are applied here.
extension GatewayConnection {
    /// Appends a write to the world's log. Its reply comes when Kafka acknowledged it (`log`), or
    /// when this rack applied it, with the real reply (`applied`).
    func write(_ request: RedisRequest, command: Command, tag: Int) {
        guard let log = self.gateway.log, let replies = self.gateway.writes.replies else {
            self.complete(tag, error: Gateway.noWorldError)
            return
        }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let ops: [WritePlanner.PlannedOp]
        do {
            ops = try WritePlanner.plan(request.arguments, command: command, now: now, partitions: log.partitions, maxWriteBytes: self.gateway.writes.maxWriteBytes)
        } catch {
            self.complete(tag, error: "\(error)")
            return
        }
        let applied = ops.contains(where: \.keysUnknown)
            || self.gateway.writes.level(of: request.arguments, command: command, chosen: self.consistency) == .applied
        let partitions = ops.map { OpRecord.partition(ofSlot: $0.slot, count: log.partitions) }
        self.session.sent(to: partitions)
        let loop = self.context.eventLoop
        log.append(ops, now: now, wantsReply: applied, on: loop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let deliveries):
                let positions = deliveries.map { AppliedReplies.Position(partition: $0.partition, offset: $0.offset) }
                if applied {
                    self.awaitApplied(positions, partitions: partitions, replies: replies, command: command, arguments: request.arguments, tag: tag)
                    return
                }
                self.deliver(self.forClient(WriteReply.of(command, arguments: request.arguments).encoded, command: command, arguments: request.arguments), tag: tag)
                self.answered(partitions, positions: positions, appliedHere: false)
            case .failure(let error):
                self.complete(tag, error: WorldLog.errorReply(for: error))
                self.answered(partitions, positions: [], appliedHere: false)
            }
            self.flushSoon()
        }
    }

    /// A write was answered: a read held behind it may go.
    private func answered(_ partitions: [Int32], positions: [AppliedReplies.Position], appliedHere: Bool) {
        self.session.answered(partitions, positions: positions, appliedHere: appliedHere)
        self.releaseHeldRead()
    }

    /// Answers an `applied` write with its real reply once this rack's applier handed it over,
    /// or another rack's (`PeerReplies`: while this rack's Redis is away, or the reply is late).
    private func awaitApplied(
        _ positions: [AppliedReplies.Position], partitions: [Int32], replies: AppliedReplies, command: Command, arguments: [ByteBuffer], tag: Int
    ) {
        let timeout = self.gateway.writes.appliedTimeout
        let deadline = NIODeadline.now() + timeout
        let waits = positions.map { replies.reply(for: $0, on: self.context.eventLoop) }
        let watches = self.peerReplies.map { peerReplies in positions.map { peerReplies.watch($0, until: deadline) } } ?? []
        let finished = { (result: Result<[ByteBuffer], Error>) in
            for watch in watches { watch.done = true }
            switch result {
            case .success(let replies):
                self.deliver(self.forClient(WriteReply.applied(replies), command: command, arguments: arguments), tag: tag)
                self.answered(partitions, positions: positions, appliedHere: !watches.contains(where: \.asked))
            case .failure:
                let token = positions.map(\.description).joined(separator: ",")
                self.complete(tag, error: "ERR pylon: the write is in the world's log (\(token)) but this rack has not applied it within \(timeout.nanoseconds / 1_000_000) ms (applied-timeout-ms); it will be: PYLON WAIT \(token) <ms>, then read the key")
                self.answered(partitions, positions: positions, appliedHere: false)
            }
            self.flushSoon()
        }
        // Most writes are one op: their one reply is taken as it is, without the combinator
        // (measured: `whenAllSucceed` was 4 % of the sidecar's CPU under 50 writing clients).
        if waits.count == 1 {
            waits[0].assumeIsolated().whenComplete { finished($0.map { [$0] }) }
        } else {
            EventLoopFuture.whenAllSucceed(waits, on: self.context.eventLoop).assumeIsolated().whenComplete(finished)
        }
    }

    /// `PYLON REPLY <partition:offset> <timeout-ms>`, asked by a sidecar of another rack whose
    /// Redis is away (`PeerReplies`): the reply this rack gave that op, as a bulk string holding
    /// it raw, once this sidecar's applier applied it; an error when it does not apply the
    /// partition or the time ran out.
    func replyForPeer(_ arguments: [ByteBuffer], tag: Int) {
        guard let applier = self.gateway.applier, arguments.count == 4, let positions = AppliedWait.positions(String(buffer: arguments[2])),
              positions.count == 1, let milliseconds = Int64(String(buffer: arguments[3])), milliseconds >= 0 else {
            self.complete(tag, error: "ERR pylon: usage: PYLON REPLY <partition:offset> <timeout-ms> (asked by the sidecars of other racks)")
            return
        }
        let position = positions[0]
        guard applier.partitions.contains(where: { $0.partition == position.partition && !$0.deposed }) else {
            self.complete(tag, error: "ERR pylon: this sidecar does not apply partition \(position.partition)")
            return
        }
        applier.recent.reply(for: position, on: self.context.eventLoop, timeout: .milliseconds(milliseconds)).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let reply): self.complete(tag, value: .bulkString(reply))
            case .failure: self.complete(tag, error: "ERR pylon: this rack has not applied \(position) within \(milliseconds) ms")
            }
            self.flushSoon()
        }
    }

    /// A write's reply in this client's protocol.
    private func forClient(_ reply: ByteBuffer, command: Command, arguments: [ByteBuffer]) -> ByteBuffer {
        WriteReply.forClient(reply, command: command, arguments: arguments, version: self.version)
    }

    // MARK: - Read-your-writes

    /// Sends a read now, or holds it until this rack applied the connection's earlier writes to
    /// the partitions it reads (those of `original`, the request the client sent).
    func read(
        _ request: RedisRequest, command: Command, tag: Int, sink: ReplySink, partitionsOf clientCommand: Command, original: RedisRequest? = nil
    ) {
        guard !self.session.isEmpty, let log = self.gateway.log else {
            return self.router.send(request, command: command, sink: sink, tag: tag)
        }
        let partitions = self.partitions(readBy: (original ?? request).arguments, command: clientCommand, count: log.partitions)
        self.heldRead = HeldRead(request: request, command: command, tag: tag, sink: sink, partitions: partitions)
        self.releaseHeldRead()
    }

    /// The partitions a read sees: those of its keys; every one for a keyless read of the data
    /// (KEYS, SCAN, DBSIZE…); none for other keyless reads (INFO, TIME).
    private func partitions(readBy arguments: [ByteBuffer], command: Command, count: Int) -> Set<Int32> {
        let keys = command.keyPositions(in: arguments) ?? []
        if keys.isEmpty { return command.readsData ? Set(0..<Int32(count)) : [] }
        return Set(keys.map { OpRecord.partition(ofSlot: HashSlot.of(arguments[$0]), count: count) })
    }

    /// Sends the held read once nothing of this connection's earlier writes to its partitions is
    /// in flight and this rack applied them (its markers, read for at most `applied-timeout-ms`);
    /// then the requests behind it go on.
    private func releaseHeldRead() {
        guard let held = self.heldRead, !self.heldForMarkers, let log = self.gateway.log else { return }
        if let applier = self.gateway.applier {
            // This sidecar's own applier tells at no cost where it is.
            for status in applier.partitions { self.session.applied(below: status.next, in: status.partition) }
        }
        switch self.session.wait(forReading: held.partitions) {
        case .inFlight:
            return  // asked again when the write is answered
        case .nothing:
            self.sendHeldRead()
        case .applied(let positions):
            let timeout = self.gateway.writes.appliedTimeout
            let token = positions.map(\.description).joined(separator: ",")
            let loop = self.context.eventLoop
            let local = self.gateway.backend.isReady
            self.heldForMarkers = true
            let finished = { (result: Result<Bool, Error>) in
                self.heldForMarkers = false
                switch result {
                case .success(true):
                    if local { for position in positions { self.session.applied(below: position.offset + 1, in: position.partition) } }
                    self.sendHeldRead()
                case .success(false):
                    self.failHeldRead("ERR pylon: this connection's write (\(token)) is in the world's log but the rack serving this read has not applied it within \(timeout.nanoseconds / 1_000_000) ms (applied-timeout-ms), so the read could miss it; retry, or use PYLON WAIT \(token) <ms>")
                case .failure(let error):
                    self.failHeldRead("ERR pylon: cannot tell whether the rack serving this read applied this connection's write (\(token)), so the read could miss it: \(error); retry shortly")
                }
            }
            if local {
                AppliedWait(
                    positions: positions, topic: log.topic, deadline: .now() + timeout, gateway: self.gateway, router: self.gateway.backend.router(on: loop),
                    eventLoop: loop, completion: finished
                ).poll()
            } else {
                // This rack's Redis is away, so the read goes to a peer (`FailoverRouter`): that
                // peer's rack is the one that must have applied the writes — it is asked first.
                let wait = RedisRequest(strings: ["PYLON", "WAIT", token, String(timeout.nanoseconds / 1_000_000)])
                self.router.send(wait, command: self.gateway.pylon, sink: ReplyCallback { reply in
                    var bytes = reply
                    switch try? RESPValue.decode(from: &bytes) {
                    case .integer(let done)?: finished(.success(done == 1))
                    default: finished(.failure(AppliedWait.Failure(description: String(buffer: reply).trimmingCharacters(in: .whitespacesAndNewlines))))
                    }
                }, tag: 0)
            }
        }
    }

    private func sendHeldRead() {
        guard let held = self.heldRead.take() else { return }
        self.router.send(held.request, command: held.command, sink: held.sink, tag: held.tag)
        self.resumeReadingIfPossible()
    }

    private func failHeldRead(_ error: String) {
        guard let held = self.heldRead.take() else { return }
        self.complete(held.tag, error: error)
        self.flushSoon()
        self.resumeReadingIfPossible()
    }

    /// `PYLON WAIT <partition:offset[,…]> <timeout-ms>`: answers 1 once this rack applied every
    /// position (a token from `PYLON LASTWRITE` on any rack), 0 when the time ran out.
    func waitApplied(_ arguments: [ByteBuffer], tag: Int) {
        guard let log = self.gateway.log else {
            self.complete(tag, error: Gateway.noWorldError)
            return
        }
        guard arguments.count == 4, let positions = AppliedWait.positions(String(buffer: arguments[2])),
              let milliseconds = Int64(String(buffer: arguments[3])), milliseconds >= 0 else {
            self.complete(tag, error: "ERR pylon: usage: PYLON WAIT <partition:offset[,partition:offset…]> <timeout-ms> (the token PYLON LASTWRITE gives)")
            return
        }
        let loop = self.context.eventLoop
        AppliedWait(positions: positions, topic: log.topic, deadline: .now() + .milliseconds(milliseconds), gateway: self.gateway, router: self.gateway.backend.router(on: loop), eventLoop: loop) { result in
            switch result {
            case .success(let done): self.complete(tag, value: .integer(done ? 1 : 0))
            case .failure(let error): self.complete(tag, error: "ERR pylon: cannot read this rack's applied offsets: \(error)")
            }
            self.flushSoon()
        }.poll()
    }
}
