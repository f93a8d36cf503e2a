/// Pylon's custom resources and the names, labels and owner references of what the operator makes.
public enum Pylon {
    public static let worlds = KubeResource(group: "pylon.io", version: "v1alpha1", plural: "pylonworlds")
    public static let racks = KubeResource(group: "pylon.io", version: "v1alpha1", plural: "pylonracks")
    public static let apiVersion = "pylon.io/v1alpha1"

    /// Keeps a rack until it is retired (its consumer group removed, its objects deleted).
    public static let rackFinalizer = "pylon.io/retire-rack"
    /// Keeps a world while racks still belong to it.
    public static let worldFinalizer = "pylon.io/world-in-use"
    /// On a deleted rack whose world's Kafka cannot be reached: retire it without deleting its
    /// consumer group (left in Kafka, named in an Event).
    public static let skipKafkaCleanup = "pylon.io/skip-kafka-cleanup"

    /// The label on everything the operator makes (its informers watch only those).
    public static let managed = ["app.kubernetes.io/managed-by": "pylon-operator"]

    /// The labels on everything made for a rack (and the selector of its pods).
    public static func labels(world: String, rack: String) -> [String: String] {
        managed.merging([
            "app.kubernetes.io/name": "pylon-rack", "app.kubernetes.io/instance": rack, "pylon.io/world": world, "pylon.io/rack": rack,
        ]) { $1 }
    }

    /// Labels as a label selector (`key=value,…`) for list and watch requests.
    public static func labelSelector(_ labels: [String: String]) -> String {
        labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
    }

    public static func selector(rack: String) -> [String: String] {
        ["app.kubernetes.io/name": "pylon-rack", "app.kubernetes.io/instance": rack]
    }

    /// The owner reference that makes an object `owner`'s (garbage-collected with it).
    public static func ownerReference(to owner: some KubeObject) -> OwnerReference {
        OwnerReference(
            apiVersion: owner.apiVersion, kind: owner.kind, name: owner.metadata.name ?? "", uid: owner.metadata.uid ?? "",
            controller: true, blockOwnerDeletion: true
        )
    }
}
