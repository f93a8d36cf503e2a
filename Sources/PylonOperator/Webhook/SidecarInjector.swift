import Foundation

/// Decides what the admission webhook does to a pod being created, and writes the JSON patch: a
/// pod that opted in (label `pylon.io/inject: "true"` on itself or its namespace — the webhook's
/// selectors make that choice) and names its rack (`pylon.io/rack`) gets the rack's pylon sidecar,
/// the volumes it mounts and the labels that put it behind the rack's and the world's Services.
/// The annotation `pylon.io/inject: "false"` opts a pod out whatever its labels or namespace say;
/// a pod that already has the sidecar is left as it is, so admitting a pod twice changes nothing.
public struct SidecarInjector: Sendable {
    public enum Outcome: Sendable, Equatable {
        /// Admit with this JSON patch.
        case inject([JSON])
        /// Admit as it is, and why.
        case unchanged(String)
        /// Refuse the pod, saying what to do instead.
        case refused(String)
    }

    public static let injectKey = "pylon.io/inject"
    public static let rackLabel = "pylon.io/rack"

    /// The labels of an injected rack's pods (its Services select them).
    public static func labels(rack: String) -> [String: String] { [Self.rackLabel: rack, "pylon.io/sidecar": "injected"] }

    let renderer: RackRenderer
    /// Add the sidecar as a native sidecar (a restartable init container, Kubernetes 1.29+)
    /// rather than as one more container.
    public let nativeSidecars: Bool

    public init(renderer: RackRenderer, nativeSidecars: Bool) {
        self.renderer = renderer
        self.nativeSidecars = nativeSidecars
    }

    /// What to do before knowing the rack: nil to go on and look the rack up (`rackName`).
    public func precheck(pod: JSON) -> Outcome? {
        if pod[path: "metadata.annotations"]?[Self.injectKey]?.string == "false" {
            return .unchanged("opted out by the annotation \(Self.injectKey): \"false\"")
        }
        let containers = (pod[path: "spec.containers"]?.array ?? []) + (pod[path: "spec.initContainers"]?.array ?? [])
        if containers.contains(where: { $0["name"]?.string == RackRenderer.sidecarName }) {
            return .unchanged("the pod already has the \(RackRenderer.sidecarName) container")
        }
        if Self.rackName(pod) == nil {
            return .refused("the pod asks for a pylon sidecar (\(Self.injectKey)) but names no rack: label it \(Self.rackLabel): <PylonRack name>, or annotate it \(Self.injectKey): \"false\"")
        }
        return nil
    }

    public static func rackName(_ pod: JSON) -> String? {
        pod[path: "metadata.labels"]?[Self.rackLabel]?.string.flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The outcome for a pod whose rack (and the rack's world) was looked up in its namespace.
    public func outcome(pod: JSON, namespace: String, rack: PylonRack?, world: PylonWorld?) -> Outcome {
        if let early = self.precheck(pod: pod) { return early }
        let name = Self.rackName(pod) ?? ""
        guard let rack else {
            return .refused("PylonRack \(name) does not exist in namespace \(namespace): create it (topology: injected) before its pods, or remove the pod's \(Self.injectKey) label")
        }
        guard rack.topology == .injected else {
            return .refused("PylonRack \(name) has topology \(rack.topology.rawValue): the operator runs its pods; a rack for pods of your own needs topology: injected")
        }
        guard let world else {
            return .refused("PylonWorld \(rack.spec.world) of PylonRack \(name) does not exist in namespace \(namespace); create it")
        }
        return .inject(self.patch(pod: pod, rack: rack, world: world))
    }

    /// The JSON patch (RFC 6902) that adds the sidecar, its volumes and the rack's labels.
    func patch(pod: JSON, rack: PylonRack, world: PylonWorld) -> [JSON] {
        var operations: [JSON] = []
        func add(_ path: String, _ value: JSON) { operations.append(["op": "add", "path": .string(path), "value": value]) }
        /// Appends to a list, creating it when the pod has none.
        func append(_ list: String, _ items: [JSON]) {
            if pod[path: list.split(separator: "/").joined(separator: ".")]?.array == nil {
                add(list, .array(items))
            } else {
                for item in items { add("\(list)/-", item) }
            }
        }
        var (sidecar, volumes) = self.renderer.sidecar(rack: rack, world: world)
        if self.nativeSidecars {
            sidecar.restartPolicy = "Always"
            append("/spec/initContainers", [sidecar.json])
        } else {
            append("/spec/containers", [sidecar.json])
        }
        append("/spec/volumes", volumes.map(\.json))
        var labels = Self.labels(rack: rack.name)
        labels["pylon.io/world"] = rack.spec.world
        // The pod has labels: it names its rack with one.
        for (key, value) in labels.sorted(by: { $0.key < $1.key }) where pod[path: "metadata.labels"]?[key]?.string != value {
            add("/metadata/labels/\(Self.escape(key))", .string(value))
        }
        return operations
    }

    /// A JSON pointer segment (`/` and `~` escaped).
    static func escape(_ key: String) -> String {
        key.replacingOccurrences(of: "~", with: "~0").replacingOccurrences(of: "/", with: "~1")
    }
}
