import Foundation
import Shared
import Synchronization

/// A resource type of the Kubernetes API: where its objects live.
public struct KubeResource: Sendable, Hashable {
    public var group: String
    public var version: String
    public var plural: String
    public var namespaced: Bool

    public init(group: String, version: String, plural: String, namespaced: Bool = true) {
        self.group = group
        self.version = version
        self.plural = plural
        self.namespaced = namespaced
    }

    /// `/api/v1/namespaces/NS/PLURAL[/NAME]` or `/apis/GROUP/VERSION/…`.
    public func path(namespace: String? = nil, name: String? = nil) -> String {
        var path = self.group.isEmpty ? "/api/\(self.version)" : "/apis/\(self.group)/\(self.version)"
        if self.namespaced, let namespace { path += "/namespaces/\(namespace)" }
        path += "/\(self.plural)"
        if let name { path += "/\(name)" }
        return path
    }

    public static let namespaces = KubeResource(group: "", version: "v1", plural: "namespaces", namespaced: false)
    public static let pods = KubeResource(group: "", version: "v1", plural: "pods")
    public static let configMaps = KubeResource(group: "", version: "v1", plural: "configmaps")
    public static let secrets = KubeResource(group: "", version: "v1", plural: "secrets")
    public static let services = KubeResource(group: "", version: "v1", plural: "services")
    public static let events = KubeResource(group: "", version: "v1", plural: "events")
    public static let statefulSets = KubeResource(group: "apps", version: "v1", plural: "statefulsets")
    public static let podDisruptionBudgets = KubeResource(group: "policy", version: "v1", plural: "poddisruptionbudgets")
    public static let jobs = KubeResource(group: "batch", version: "v1", plural: "jobs")
    public static let leases = KubeResource(group: "coordination.k8s.io", version: "v1", plural: "leases")
    public static let customResourceDefinitions = KubeResource(group: "apiextensions.k8s.io", version: "v1", plural: "customresourcedefinitions", namespaced: false)
}

/// An answer of the API server other than success: its HTTP status and the `Status` object's
/// reason and message (which name what is wrong, e.g. a validation failure).
public struct KubeError: Error, CustomStringConvertible, Sendable {
    public let status: Int
    public let reason: String
    public let message: String
    public var description: String { "kubernetes API: \(self.status) \(self.reason): \(self.message)" }

    public var isNotFound: Bool { self.status == 404 }
    public var isConflict: Bool { self.status == 409 }
    /// The resourceVersion asked for is too old (a watch must list again).
    public var isGone: Bool { self.status == 410 }
}

/// A small client of the Kubernetes API over libcurl: get, list, create, merge-patch, server-side
/// apply, the status subresource, delete, and watches (`KubeWatch`). Requests run on a thread
/// pool, each bounded by `timeoutSeconds`. Every request goes to the version of its group the
/// server serves (`ServedVersions`, from `discoverVersions`); callers name resources and write
/// objects at the newest version Pylon knows.
public final class KubeClient: Sendable {
    public let config: KubeConfig
    public let fieldManager: String
    let timeoutSeconds: Int
    /// Requests sent, by verb (GET, POST, PATCH, PUT, DELETE, WATCH): what each reconcile costs
    /// the API server.
    public let requests = Mutex<[String: Int]>([:])
    private let served = Mutex(ServedVersions.newest)

    public init(config: KubeConfig, fieldManager: String = "pylon-operator", timeoutSeconds: Int = 30) {
        self.config = config
        self.fieldManager = fieldManager
        self.timeoutSeconds = timeoutSeconds
    }

    /// Reads the API server's discovery document and chooses the version of each group Pylon
    /// writes; throws, naming the kinds, when the server serves none Pylon knows for one.
    @discardableResult
    public func discoverVersions() async throws -> ServedVersions {
        let versions = try ServedVersions(groupList: try await self.call("GET", "/apis"))
        self.served.withLock { $0 = versions }
        return versions
    }

    /// The versions requests go to.
    public var servedVersions: ServedVersions { self.served.withLock { $0 } }

    /// The same client whose requests give up after `seconds` (the served versions kept).
    public func timingOut(after seconds: Int) -> KubeClient {
        let client = KubeClient(config: self.config, fieldManager: self.fieldManager, timeoutSeconds: seconds)
        client.served.withLock { $0 = self.servedVersions }
        return client
    }

    /// Where `resource`'s objects live at the served version.
    func path(_ resource: KubeResource, namespace: String? = nil, name: String? = nil) -> String {
        self.servedVersions.resource(resource).path(namespace: namespace, name: name)
    }

    /// `object` with the `apiVersion` of the served version of `resource`.
    private func atServedVersion(_ object: JSON, of resource: KubeResource) -> JSON {
        guard object["apiVersion"] != nil else { return object }
        var object = object
        object["apiVersion"] = .string(self.servedVersions.apiVersion(of: resource))
        return object
    }

    public func get(_ resource: KubeResource, namespace: String? = nil, name: String) async throws -> JSON {
        try await self.call("GET", self.path(resource, namespace: namespace, name: name))
    }

    /// Every object (`items`) and the list's resourceVersion, in one request.
    public func list(_ resource: KubeResource, namespace: String? = nil, labelSelector: String? = nil) async throws -> (items: [JSON], resourceVersion: String) {
        var path = self.path(resource, namespace: namespace)
        if let labelSelector { path += "?labelSelector=\(Self.escape(labelSelector))" }
        let list = try await self.call("GET", path)
        return (list["items"]?.array ?? [], list[path: "metadata.resourceVersion"]?.string ?? "")
    }

    public func create(_ resource: KubeResource, namespace: String? = nil, _ object: JSON) async throws -> JSON {
        try await self.call("POST", self.path(resource, namespace: namespace), body: self.atServedVersion(object, of: resource), contentType: "application/json")
    }

    /// Server-side apply as `fieldManager`: the object holds only the fields Pylon owns; applying
    /// the same object again changes nothing.
    public func apply(_ resource: KubeResource, namespace: String? = nil, name: String, _ object: JSON, force: Bool = true, subresource: String? = nil) async throws -> JSON {
        let path = self.path(resource, namespace: namespace, name: name) + (subresource.map { "/\($0)" } ?? "")
        return try await self.call("PATCH", "\(path)?fieldManager=\(self.fieldManager)&force=\(force)", body: self.atServedVersion(object, of: resource), contentType: "application/apply-patch+yaml")
    }

    /// A JSON merge patch (e.g. removing a finalizer).
    public func patch(_ resource: KubeResource, namespace: String? = nil, name: String, merge: JSON, subresource: String? = nil) async throws -> JSON {
        let path = self.path(resource, namespace: namespace, name: name) + (subresource.map { "/\($0)" } ?? "")
        return try await self.call("PATCH", path, body: merge, contentType: "application/merge-patch+json")
    }

    /// Deletes; an object already gone is fine (nil).
    @discardableResult
    public func delete(_ resource: KubeResource, namespace: String? = nil, name: String, propagation: String = "Background") async throws -> JSON? {
        do {
            return try await self.call("DELETE", self.path(resource, namespace: namespace, name: name), body: ["kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": .string(propagation)], contentType: "application/json")
        } catch let error as KubeError where error.isNotFound {
            return nil
        }
    }

    /// Any request: the decoded answer, or `KubeError` naming what the server refused.
    public func call(_ method: String, _ path: String, body: JSON? = nil, contentType: String? = nil, accept: String = "application/json") async throws -> JSON {
        let transfer = self.transfer(method, path, body: body?.data, contentType: contentType, accept: accept, timeoutSeconds: self.timeoutSeconds)
        let response = try await Blocking.run { try transfer.perform() }
        return try Self.decode(response, method: method, path: path)
    }

    func transfer(_ method: String, _ path: String, body: Data? = nil, contentType: String? = nil, accept: String = "application/json", timeoutSeconds: Int) -> CurlTransfer {
        self.requests.withLock { $0[path.contains("watch=1") ? "WATCH" : method, default: 0] += 1 }
        var headers = ["Accept: \(accept)", "User-Agent: pylon-operator"]
        if let contentType { headers.append("Content-Type: \(contentType)") }
        if let token = self.config.token?.value { headers.append("Authorization: Bearer \(token)") }
        return CurlTransfer(method: method, url: self.config.server + path, headers: headers, body: body, tls: self.config.tls, timeoutSeconds: timeoutSeconds)
    }

    static func decode(_ response: CurlTransfer.Response, method: String, path: String) throws -> JSON {
        let object = (try? JSON(data: response.body)) ?? .null
        guard (200..<300).contains(response.status) else {
            throw KubeError(
                status: response.status, reason: object["reason"]?.string ?? "",
                message: object["message"]?.string ?? "\(method) \(path): \(String(decoding: response.body.prefix(300), as: UTF8.self))"
            )
        }
        return object
    }

    static func escape(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? text
    }
}

/// Typed requests: the object's resource comes from its type.
extension KubeClient {
    /// The object, or nil when it does not exist.
    public func get<Object: KubeObject>(_ type: Object.Type, namespace: String?, name: String) async throws -> Object? {
        do { return try Object(json: try await self.get(Object.resource, namespace: namespace, name: name)) } catch let error as KubeError where error.isNotFound {
            return nil
        }
    }

    public func create<Object: KubeObject>(_ object: Object) async throws -> Object {
        try Object(json: try await self.create(Object.resource, namespace: object.metadata.namespace, object.json))
    }

    /// Server-side applies `object` (which holds only the fields Pylon owns) and answers the
    /// whole object as stored.
    public func apply<Object: KubeObject>(_ object: Object) async throws -> Object {
        try Object(json: try await self.apply(Object.resource, namespace: object.metadata.namespace, name: object.metadata.name ?? "", object.json))
    }
}
