import Foundation
import NIOCore

/// `PYLON WAIT`: reads this rack's markers and checkpoints through the client's own connection
/// to Redis until they reach the positions waited for, or the deadline passes. (On Redis
/// Cluster the markers are per slot: there the partition's checkpoint tells.)
/// Loop-bound, like the client connection that made it.
final class AppliedWait: ReplySink {
    typealias Completion = (Result<Bool, Error>) -> Void

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// How often the markers are read while waiting.
    static let interval = TimeAmount.milliseconds(2)

    private let positions: [AppliedReplies.Position]
    private let request: RedisRequest
    private let command: Command
    private let deadline: NIODeadline
    private let router: BackendRouter
    private let eventLoop: EventLoop
    private var completion: Completion?
    var flushRequested = false

    init(
        positions: [AppliedReplies.Position], topic: String, deadline: NIODeadline, gateway: Gateway, router: BackendRouter, eventLoop: EventLoop,
        completion: @escaping Completion
    ) {
        self.positions = positions
        let arguments = ["MGET"] + positions.flatMap {
            [AppliedOffsets.markerKey(topic: topic, partition: $0.partition), AppliedOffsets.checkpointKey(topic: topic, partition: $0.partition)]
        }
        self.request = RedisRequest(strings: arguments)
        guard case .command(let mget) = gateway.table.lookup(self.request.arguments) else { preconditionFailure("MGET is in every command table") }
        self.command = mget
        self.deadline = deadline
        self.router = router
        self.eventLoop = eventLoop
        self.completion = completion
    }

    /// Parses `partition:offset[,partition:offset…]`.
    static func positions(_ token: String) -> [AppliedReplies.Position]? {
        let positions = token.split(separator: ",").map { entry -> AppliedReplies.Position? in
            let fields = entry.split(separator: ":")
            guard fields.count == 2, let partition = Int32(fields[0]), partition >= 0, let offset = Int64(fields[1]), offset >= 0 else { return nil }
            return AppliedReplies.Position(partition: partition, offset: offset)
        }
        guard !positions.isEmpty, !positions.contains(where: { $0 == nil }) else { return nil }
        return positions.map { $0! }
    }

    func poll() {
        self.router.send(self.request, command: self.command, sink: self, tag: 0)
    }

    func deliver(_ reply: ByteBuffer, tag: Int) {
        var bytes = reply
        guard let value = try? RESPValue.decode(from: &bytes), let values = value.array, values.count == 2 * self.positions.count else {
            self.finish(.failure(Failure(description: String(buffer: reply).trimmingCharacters(in: .whitespacesAndNewlines).prefix(300).description)))
            return
        }
        let applied = self.positions.enumerated().allSatisfy { index, position in
            let next = AppliedOffsets.nextOffset(marker: values[2 * index].string.flatMap { Int64($0) }, checkpoint: values[2 * index + 1].string.flatMap { Int64($0) })
            return next > position.offset
        }
        if applied || NIODeadline.now() >= self.deadline {
            self.finish(.success(applied))
        } else {
            self.eventLoop.assumeIsolated().scheduleTask(in: Self.interval) { self.poll() }
        }
    }

    private func finish(_ result: Result<Bool, Error>) {
        self.completion?(result)
        self.completion = nil
    }

    func flushReplies() {}
}
