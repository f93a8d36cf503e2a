import Foundation

/// A Kubernetes object Pylon reads or writes, typed: where it lives (`resource`), its
/// `apiVersion`/`kind`, and its metadata. Decoding ignores fields Pylon does not model; Pylon
/// never writes such an object back whole — it server-side applies the fields it owns, or
/// merge-patches one field — so what other controllers and users set is never lost.
public protocol KubeObject: Codable, Sendable {
    static var resource: KubeResource { get }
    var apiVersion: String { get }
    var kind: String { get }
    var metadata: ObjectMeta { get set }
}

extension KubeObject {
    /// "namespace/name": the key of the object in caches and logs.
    public var key: String { "\(self.metadata.namespace ?? "")/\(self.metadata.name ?? "")" }

    /// The object decoded from the API server's JSON.
    public init(json: JSON) throws { self = try json.decode(Self.self) }
}

public struct ObjectMeta: Codable, Sendable, Equatable {
    public var name: String?
    public var generateName: String?
    public var namespace: String?
    public var uid: String?
    public var resourceVersion: String?
    public var generation: Int?
    public var creationTimestamp: String?
    public var deletionTimestamp: String?
    public var labels: [String: String]?
    public var annotations: [String: String]?
    public var ownerReferences: [OwnerReference]?
    public var finalizers: [String]?

    public init(name: String? = nil, namespace: String? = nil, labels: [String: String]? = nil, annotations: [String: String]? = nil, ownerReferences: [OwnerReference]? = nil) {
        self.name = name
        self.namespace = namespace
        self.labels = labels
        self.annotations = annotations
        self.ownerReferences = ownerReferences
    }
}

public struct OwnerReference: Codable, Sendable, Equatable {
    public var apiVersion: String
    public var kind: String
    public var name: String
    public var uid: String
    public var controller: Bool?
    public var blockOwnerDeletion: Bool?
}

/// A field that is an integer or a string (`targetPort: 6380` or `targetPort: pylon`).
public enum IntOrString: Codable, Sendable, Equatable, ExpressibleByIntegerLiteral, ExpressibleByStringLiteral {
    case int(Int)
    case string(String)

    public init(integerLiteral value: Int) { self = .int(value) }
    public init(stringLiteral value: String) { self = .string(value) }

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let value = try? container.decode(Int.self) { self = .int(value) } else { self = .string(try container.decode(String.self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .int(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        }
    }
}

/// A condition of an object's status, as Kubernetes conventions define it.
public struct Condition: Codable, Sendable, Equatable {
    public var type: String
    /// "True", "False" or "Unknown".
    public var status: String
    public var reason: String
    public var message: String
    public var lastTransitionTime: String?
    public var observedGeneration: Int?

    /// `status` nil: Unknown.
    public init(type: String, status: Bool?, reason: String, message: String) {
        self.type = type
        self.status = status.map { $0 ? "True" : "False" } ?? "Unknown"
        self.reason = reason
        self.message = message
    }

    public var isTrue: Bool { self.status == "True" }
}

extension [Condition] {
    /// These conditions as of `generation`, each keeping the lastTransitionTime it had in
    /// `previous` while its status did not change (so an unchanged status is an equal value and
    /// is not written again).
    func stamped(generation: Int, previous: [Condition], now: String) -> [Condition] {
        self.map { condition in
            var condition = condition
            let before = previous.first { $0.type == condition.type }
            condition.lastTransitionTime = before?.status == condition.status ? before?.lastTransitionTime ?? now : now
            condition.observedGeneration = generation
            return condition
        }
    }
}

extension Encodable {
    /// The value as JSON (what goes on the wire).
    public var json: JSON { (try? JSON(encoding: self)) ?? .null }
}

extension JSON {
    /// Any Encodable value as JSON.
    public init(encoding value: some Encodable) throws {
        self = try JSON(data: JSONEncoder().encode(value))
    }

    /// This JSON as a Decodable type.
    public func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try JSONDecoder().decode(type, from: self.data)
    }
}
