/// Pylon's custom resources (`manifests/crds`), typed. Defaults mirror the CRDs' schema
/// defaults, which the API server has normally filled in already.

/// A Pylon resource: a status with conditions, as of a generation.
public protocol PylonObject: KubeObject {
    associatedtype Status: Codable, Sendable, Equatable, ObservedStatus
    var status: Status? { get set }
}

public protocol ObservedStatus {
    var observedGeneration: Int? { get }
    var conditions: [Condition]? { get set }
}

public struct PylonWorld: PylonObject, Equatable {
    public static let resource = Pylon.worlds
    public var apiVersion = Pylon.apiVersion
    public var kind = "PylonWorld"
    public var metadata: ObjectMeta
    public var spec: Spec
    public var status: Status?

    public struct Spec: Codable, Sendable, Equatable {
        public var kafka: Kafka
        public var topic: String?
        public var partitions: Int?
        public var replicationFactor: Int?
        public var consistency: String?
        public var contentiousKeys: [String]?
    }

    public struct Kafka: Codable, Sendable, Equatable {
        public var bootstrapServers: String
        /// librdkafka properties for every sidecar (tuning; secrets go through `tls`/`sasl`).
        public var properties: [String: String]?
        public var tls: TLS?
        public var sasl: SASL?
    }

    public struct TLS: Codable, Sendable, Equatable {
        /// A Secret with ca.crt, and tls.crt/tls.key for mutual TLS.
        public var secretName: String?
        public var clientCertificate: Bool?
    }

    public struct SASL: Codable, Sendable, Equatable {
        public var mechanism: String
        /// A Secret with username and password.
        public var secretName: String
    }

    public struct Status: Codable, Sendable, Equatable, ObservedStatus {
        public var observedGeneration: Int?
        public var phase: String?
        public var topic: String?
        public var racks: Int?
        public var conditions: [Condition]?
    }

    public var name: String { self.metadata.name ?? "" }
    /// The world's log.
    public var topic: String { self.spec.topic ?? "pylon.\(self.name).ops" }

    /// The consumer group of a rack of this world (its sidecars share it).
    public func consumerGroup(rack: String) -> String { Self.consumerGroup(world: self.name, rack: rack) }

    public static func consumerGroup(world: String, rack: String) -> String { "pylon.\(world).\(rack)" }
}

public struct PylonRack: PylonObject, Equatable {
    public static let resource = Pylon.racks
    public var apiVersion = Pylon.apiVersion
    public var kind = "PylonRack"
    public var metadata: ObjectMeta
    public var spec: Spec
    public var status: Status?

    public struct Spec: Codable, Sendable, Equatable {
        public var world: String
        public var redis: Redis
        public var sidecar: Sidecar?
        public var catchUp: CatchUp?
    }

    public enum Topology: String, Codable, Sendable {
        /// The operator runs the Redis pods, each with a sidecar.
        case standalone, sentinel, cluster
        /// Sidecars in front of a Redis that runs elsewhere (`redis.external.url`).
        case external
        /// The user's own Redis pods, which get the sidecar from the admission webhook.
        case injected
    }

    public struct Redis: Codable, Sendable, Equatable {
        public var topology: Topology
        /// Masters of a Redis Cluster.
        public var shards: Int?
        /// Replicas per master (sentinel and cluster).
        public var replicas: Int?
        public var image: String?
        public var resources: JSON?
        public var storage: Storage?
        public var external: External?
    }

    public struct Storage: Codable, Sendable, Equatable {
        public var size: String?
        public var storageClassName: String?
    }

    public struct External: Codable, Sendable, Equatable {
        public var url: String
    }

    public struct Sidecar: Codable, Sendable, Equatable {
        public var image: String?
        public var resources: JSON?
        /// pylon-sidecar configuration keys, as in its YAML file.
        public var settings: [String: String]?
    }

    /// Where a new rack starts reading the log.
    public struct CatchUp: Codable, Sendable, Equatable {
        public enum Source: String, Codable, Sendable {
            /// Replay the whole log (retained) into an empty Redis.
            case logStart
            /// The Redis already holds the data up to these offsets (e.g. loaded from a backup).
            case offsets
            /// A snapshot of another rack of the world (`rack`): its keys at one instant, and the
            /// log after the offsets they reflect.
            case snapshot
        }

        public var from: Source?
        /// Per partition ("0", "1", …), the first offset to apply.
        public var offsets: [String: Int64]?
        /// With `from: snapshot`, the rack (standalone, Sentinel or external) whose snapshot this one starts from.
        public var rack: String?
    }

    public struct Status: Codable, Sendable, Equatable, ObservedStatus {
        public var observedGeneration: Int?
        public var phase: String?
        /// "ready/wanted" pods.
        public var ready: String?
        /// Ops of the log the rack's consumer group has not committed yet, all partitions.
        public var lag: Int64?
        public var partitions: [PartitionLag]?
        public var conditions: [Condition]?
    }

    public struct PartitionLag: Codable, Sendable, Equatable {
        public var partition: Int
        public var lag: Int64
    }

    public var name: String { self.metadata.name ?? "" }
    public var topology: Topology { self.spec.redis.topology }
}
