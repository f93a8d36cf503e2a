import NIOCore
import Testing

@testable import PylonSidecar

@Suite("Write replies")
struct WriteReplyTests {
    func reply(_ arguments: String...) throws -> String {
        let buffers = arguments.map { ByteBuffer(string: $0) }
        guard case .command(let command) = CommandTable.shared.lookup(buffers) else { throw CancellationError() }
        return String(buffer: WriteReply.of(command, arguments: buffers).encoded)
    }

    @Test func answersTheTypeEachCommandsClientsExpect() throws {
        #expect(try self.reply("SET", "k", "v") == "+OK\r\n")
        #expect(try self.reply("SET", "k", "v", "NX", "PX", "100") == "+OK\r\n")
        #expect(try self.reply("MSET", "a", "1") == "+OK\r\n")
        #expect(try self.reply("XGROUP", "CREATE", "s", "g", "$") == "+OK\r\n")
        #expect(try self.reply("LPOP", "l") == "$-1\r\n")
        #expect(try self.reply("RPOPLPUSH", "a", "b") == "$-1\r\n")
        #expect(try self.reply("INCRBYFLOAT", "n", "1.5") == "$-1\r\n")
        #expect(try self.reply("ZADD", "z", "INCR", "1", "m") == "$-1\r\n")
        #expect(try self.reply("ZPOPMIN", "z") == "*0\r\n")
        #expect(try self.reply("SET", "k", "v", "GET") == "$-1\r\n")
        #expect(try self.reply("GETSET", "k", "v") == "$-1\r\n")
        #expect(try self.reply("SPOP", "s") == "$-1\r\n")
        #expect(try self.reply("SPOP", "s", "3") == "*0\r\n")
        #expect(try self.reply("INCR", "n") == ":0\r\n")
        #expect(try self.reply("DEL", "a", "b") == ":0\r\n")
        #expect(try self.reply("ZADD", "z", "1", "m") == ":0\r\n")
        #expect(try self.reply("XGROUP", "DESTROY", "s", "g") == ":0\r\n")
    }

    @Test func everyNamedCommandIsAWriteOfTheTable() {
        for name in WriteReply.byCommand.keys {
            guard let command = CommandTable.shared.all.first(where: { $0.name == name }) else {
                Issue.record("\(name) is not in the command table")
                continue
            }
            #expect(command.disposition == .write || name == "restore-asking", "\(name) is \(command.disposition)")
        }
    }

    @Test func repliesAreGivenTheShapesRedisGivesEachProtocol() throws {
        func forClient(_ reply: String, _ arguments: String..., version: RESPVersion) throws -> String {
            let buffers = arguments.map { ByteBuffer(string: $0) }
            guard case .command(let command) = CommandTable.shared.lookup(buffers) else { throw CancellationError() }
            return String(buffer: WriteReply.forClient(ByteBuffer(string: reply), command: command, arguments: buffers, version: version))
        }
        #expect(try forClient("$-1\r\n", "LMPOP", "1", "l", "LEFT", version: .resp2) == "*-1\r\n")
        #expect(try forClient("$-1\r\n", "LMPOP", "1", "l", "LEFT", version: .resp3) == "_\r\n")
        #expect(try forClient("$-1\r\n", "LPOP", "l", version: .resp2) == "$-1\r\n")
        // Given a count, LPOP and RPOP answer a list of popped elements: nil is a null array.
        #expect(try forClient("$-1\r\n", "LPOP", "l", "1", version: .resp2) == "*-1\r\n")
        #expect(try forClient("$-1\r\n", "RPOP", "l", "0", version: .resp2) == "*-1\r\n")
        #expect(try forClient("$-1\r\n", "RPOP", "l", "1", version: .resp3) == "_\r\n")
        #expect(try forClient("$3\r\n2.5\r\n", "ZINCRBY", "z", "1", "m", version: .resp3) == ",2.5\r\n")
        #expect(try forClient("*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n", "ZPOPMIN", "z", "2", version: .resp3)
            == "*2\r\n*2\r\n$1\r\na\r\n,1\r\n*2\r\n$1\r\nb\r\n,2\r\n")
        #expect(try forClient(":7\r\n", "INCR", "n", version: .resp3) == ":7\r\n")
    }

    @Test func anAppliedWriteSplitBySlotAnswersTheSumOfItsParts() {
        func raw(_ value: RESPValue) -> ByteBuffer { value.encoded }
        #expect(WriteReply.applied([raw(.integer(7))]) == raw(.integer(7)))
        #expect(WriteReply.applied([raw(.integer(1)), raw(.integer(0)), raw(.integer(2))]) == raw(.integer(3)))
        #expect(WriteReply.applied([raw(.ok), raw(.ok)]) == raw(.ok))
        #expect(WriteReply.applied([raw(.integer(1)), raw(.error("OOM no room"))]) == raw(.error("OOM no room")))
    }
}
