import Foundation

/// librdkafka's mock cluster (`scripts/mock-kafka/mock-kafka.c`, built here with the system's
/// librdkafka) with one topic made up front, refusing every CreateTopics request as Kafka refuses
/// a user without the right to create topics.
final class MockKafkaCluster: Sendable {
    let directory: ScratchDirectory
    let process: LocalProcess
    let bootstrap: String

    init(topic: String, partitions: Int) throws {
        self.directory = try ScratchDirectory()
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../scripts/mock-kafka/mock-kafka.c").standardized
        let binary = self.directory.url.appendingPathComponent("mock-kafka")
        let compiler = Process()
        compiler.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        compiler.arguments = ["gcc", "-O2", "-o", binary.path, source.path, "-lrdkafka", "-ldl"]
        try compiler.run()
        compiler.waitUntilExit()
        guard compiler.terminationStatus == 0 else { throw HarnessError("cannot build \(source.path) (gcc and librdkafka-dev: make deps)") }
        let output = self.directory.url.appendingPathComponent("mock-kafka.out")
        self.process = try LocalProcess(binary.path, [topic, String(partitions), "deny-create-topics"], name: "mock-kafka", log: output)
        var address: String?
        for _ in 0..<100 where address == nil {
            let text = (try? String(contentsOf: output, encoding: .utf8)) ?? ""
            address = text.split(separator: "\n").first { $0.contains(":") && !$0.contains(" ") }.map(String.init)
            if address == nil { Thread.sleep(forTimeInterval: 0.05) }
        }
        guard let address else { throw HarnessError("the mock kafka cluster printed no bootstrap address") }
        self.bootstrap = address
    }

    func stop() { self.process.stop() }
}
