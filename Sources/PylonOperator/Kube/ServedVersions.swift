/// The version of each API group Pylon writes, chosen from what the API server serves (its
/// discovery document, `/apis`): for every group the newest version Pylon knows that the server
/// serves. An operator built against one Kubernetes release so keeps working on the next ones,
/// and on a cluster that serves none of the versions it knows for a group it refuses to start,
/// naming them.
///
/// Audited against Kubernetes' deprecated API migration guide up to 1.34: of the groups below
/// only `policy/v1beta1` (PodDisruptionBudget) was removed (in 1.25; `policy/v1` is served since
/// 1.21); every other version Pylon uses has been GA since before 1.20 and is still served. The
/// core group (`v1`: ConfigMap, Secret, Service, Event, Pod, Namespace) and RBAC's
/// `rbac.authorization.k8s.io/v1` (in the manifests only) have no other version.
public struct ServedVersions: Sendable, Equatable {
    /// The groups Pylon writes, the kinds it writes there, and the versions it can speak, newest first.
    public static let known: [(group: String, kinds: String, versions: [String])] = [
        ("apps", "StatefulSet", ["v1"]),
        ("batch", "Job", ["v1"]),
        ("policy", "PodDisruptionBudget", ["v1", "v1beta1"]),
        ("coordination.k8s.io", "Lease", ["v1"]),
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration", ["v1"]),
        ("apiextensions.k8s.io", "CustomResourceDefinition", ["v1"]),
    ]

    /// The chosen version of each group in `known`.
    public private(set) var versions: [String: String]

    /// The newest version of each group: what the types are written for, used before discovery.
    public static let newest = ServedVersions(versions: Dictionary(uniqueKeysWithValues: known.map { ($0.group, $0.versions[0]) }))

    private init(versions: [String: String]) {
        self.versions = versions
    }

    public struct Unserved: Error, CustomStringConvertible {
        public let description: String
    }

    /// Chooses from the API server's group list (`GET /apis`, an `APIGroupList`).
    public init(groupList: JSON) throws {
        var served: [String: Set<String>] = [:]
        for group in groupList["groups"]?.array ?? [] {
            guard let name = group["name"]?.string else { continue }
            served[name] = Set((group["versions"]?.array ?? []).compactMap { $0["version"]?.string })
        }
        var versions: [String: String] = [:]
        var missing: [String] = []
        for (group, kinds, known) in Self.known {
            if let version = known.first(where: { served[group]?.contains($0) == true }) {
                versions[group] = version
            } else {
                let offered = served[group].flatMap { $0.isEmpty ? nil : $0.sorted().map { "\(group)/\($0)" }.joined(separator: ", ") } ?? "no version of \(group)"
                missing.append("\(kinds): needs \(known.map { "\(group)/\($0)" }.joined(separator: " or ")), the API server serves \(offered)")
            }
        }
        guard missing.isEmpty else {
            throw Unserved(description: "this Kubernetes serves no API version pylon knows for: \(missing.joined(separator: "; "))")
        }
        self.versions = versions
    }

    /// `resource` at the chosen version of its group (unchanged for groups not in `known`).
    public func resource(_ resource: KubeResource) -> KubeResource {
        guard let version = self.versions[resource.group] else { return resource }
        var served = resource
        served.version = version
        return served
    }

    /// The `apiVersion` an object of `resource` is written with.
    public func apiVersion(of resource: KubeResource) -> String {
        let served = self.resource(resource)
        return served.group.isEmpty ? served.version : "\(served.group)/\(served.version)"
    }
}
