import NIOCore
import Testing

@testable import PylonSidecar

@Suite("Key patterns")
struct KeyPatternTests {
    func matches(_ pattern: String, _ key: String) -> Bool {
        KeyPattern(pattern).matches(ByteBuffer(string: key))
    }

    @Test func matchLikeRedisGlobs() {
        #expect(self.matches("lock:*", "lock:"))
        #expect(self.matches("lock:*", "lock:order:7"))
        #expect(!self.matches("lock:*", "locks:1"))
        #expect(self.matches("*:seat", "a:b:seat"))
        #expect(!self.matches("*:seat", "a:b:seats"))
        #expect(self.matches("h?llo", "hello") && self.matches("h?llo", "hallo") && !self.matches("h?llo", "hllo"))
        #expect(self.matches("h[ae]llo", "hallo") && !self.matches("h[ae]llo", "hillo"))
        #expect(self.matches("h[^e]llo", "hallo") && !self.matches("h[^e]llo", "hello"))
        #expect(self.matches("seat:[0-9]", "seat:7") && !self.matches("seat:[0-9]", "seat:x"))
        #expect(self.matches("a\\*b", "a*b") && !self.matches("a\\*b", "axb"))
        #expect(self.matches("*", "") && self.matches("**x", "abx"))
        #expect(self.matches("{user1}.*", "{user1}.cart") && !self.matches("{user1}.*", "{user2}.cart"))
    }
}
