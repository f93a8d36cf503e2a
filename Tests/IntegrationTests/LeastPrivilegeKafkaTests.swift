import Foundation
import Shared
import Testing

@testable import PylonSidecar

/// A Kafka user without the right to create topics (least privilege): the sidecar looks its
/// world's topic up and creates it only when it is missing. (The mock cluster creates any topic
/// a metadata request names, so the missing case cannot be shown with it.)
@Suite("Least-privilege Kafka", .serialized, .timeLimit(.minutes(2)))
struct LeastPrivilegeKafkaTests {
    @Test func aSidecarStartsOnAnExistingTopicOfABrokerThatRefusesCreates() async throws {
        let cluster = try MockKafkaCluster(topic: "pylon.granted.ops", partitions: 4)
        defer { cluster.stop() }
        let redis = try RedisServer()
        func join(_ world: String) -> (inout SidecarConfiguration) -> Void {
            { configuration in
                configuration.world = world
                configuration.rack = "a"
                configuration.kafkaBrokers = cluster.bootstrap
                // The configured count differs from the topic's: the topic's is used, as it exists.
                configuration.partitions = 16
                configuration.kafkaProperties = WorldFixture.fastRebalances
            }
        }
        let sidecar = try await SidecarFixture(redis: .standalone(redis.address), configure: join("granted"))
        defer { Task { await sidecar.stop() } }
        let client = try await sidecar.client()
        let info = try await client.send("PYLON", "INFO").string ?? ""
        #expect(info.contains("topic:pylon.granted.ops") && info.contains("partitions:4"), "\(info)")
        // Applied through the log: the write's real reply comes from this rack's applier.
        #expect(try await client.send("INCR", "granted") == .integer(1))
        #expect(try await client.send("INCR", "granted") == .integer(2))
        #expect(try await redis.client().send("GET", "granted") == .bulk("2"))

        // The broker does refuse creates (so the sidecar never asked for one).
        let admin = try KafkaProducer(brokers: cluster.bootstrap)
        defer { admin.close(timeout: .zero) }
        #expect(throws: KafkaError.self) { try admin.createTopic("pylon.other.ops", partitions: 4, replicationFactor: 1) }
    }
}
