import Foundation
import Yams

/// What a PylonRack becomes in Kubernetes, as a pure function of the rack and its world: the
/// sidecar's configuration (a ConfigMap), a headless Service (pod DNS), a client Service (port
/// 6379 → the sidecars), the StatefulSet of Redis pods each with a pylon sidecar (and a Sentinel,
/// for the sentinel topology), a PodDisruptionBudget, and for a Redis Cluster rack the Job that
/// creates the cluster once its pods are up. An `injected` rack's pods are the user's own: it gets
/// the configuration and the Services, and the admission webhook adds `sidecar(…)` to its pods.
/// Every object is owned by the rack and applied with server-side apply, so re-applying is a no-op.
public struct RackRenderer: Sendable {
    public struct Settings: Sendable {
        public var sidecarImage: String
        public init(sidecarImage: String = "ghcr.io/pylon/pylon-sidecar:latest") { self.sidecarImage = sidecarImage }
    }

    public struct RenderError: Error, CustomStringConvertible {
        public let description: String
    }

    public let settings: Settings

    public init(settings: Settings = Settings()) { self.settings = settings }

    /// Where the world's Kafka TLS and SASL Secrets are mounted in the sidecar.
    static let kafkaTLSPath = "/etc/pylon/kafka-tls"
    static let kafkaSASLPath = "/etc/pylon/kafka-sasl"
    static let defaultRedisImage = "redis:7.0"

    /// The rendered objects, in the order to apply them.
    /// `snapshotSource` is the rack named by `spec.catchUp.rack` (nil when there is none).
    public func render(rack: PylonRack, world: PylonWorld, snapshotSource: PylonRack? = nil) throws -> [any KubeObject] {
        let shape = try RackShape(rack: rack)
        let configText = try Self.yaml(self.sidecarConfiguration(rack: rack, world: world, shape: shape, snapshotSource: snapshotSource))
        var ports = [
            Service.Port(name: "pylon", port: 6380, targetPort: "pylon"),
            Service.Port(name: "redis", port: 6379, targetPort: "redis"),
        ]
        if shape.topology == .sentinel { ports.append(Service.Port(name: "sentinel", port: 26379, targetPort: "sentinel")) }
        var objects: [any KubeObject] = [
            ConfigMap(metadata: shape.metadata(Self.configMapName(rack: shape.name)), data: ["sidecar.yml": configText]),
            Service(metadata: shape.metadata(shape.headless), spec: .init(
                clusterIP: "None", publishNotReadyAddresses: true, selector: shape.podSelector, ports: ports
            )),
            // Clients speak to the sidecars on Redis's usual port.
            Service(metadata: shape.metadata(shape.name), spec: .init(
                selector: shape.podSelector, ports: [Service.Port(name: "redis", port: 6379, targetPort: "pylon")]
            )),
        ]
        // The operator's own pods (an injected rack's belong to the user's workload).
        if shape.topology != .injected {
            objects.append(self.statefulSet(rack: rack, world: world, shape: shape, configHash: Self.hash(configText)))
            objects.append(PodDisruptionBudget(metadata: shape.metadata(shape.name), spec: .init(maxUnavailable: 1, selector: LabelSelector(matchLabels: shape.podSelector))))
        }
        if shape.topology == .cluster { objects.append(self.clusterBootstrap(rack: rack, shape: shape)) }
        return objects
    }

    /// A Job that makes the cluster rack's pods one Redis Cluster once they all answer (and does
    /// nothing if they already form one). Its name carries the shape it creates: a Job's pod
    /// template cannot change, and a new shape is a new bootstrap.
    func clusterBootstrap(rack: PylonRack, shape: RackShape) -> Job {
        let shardReplicas = rack.spec.redis.replicas ?? 1
        let image = rack.spec.redis.image ?? Self.defaultRedisImage
        let script = """
        set -e
        addresses=""
        for host in \(shape.podHosts.joined(separator: " ")); do
          until redis-cli -h "$host" -p 6379 ping >/dev/null 2>&1; do sleep 2; done
          addresses="$addresses $(getent hosts "$host" | awk '{print $1}'):6379"
        done
        if redis-cli -h \(shape.podHosts[0]) -p 6379 cluster info | grep -q cluster_state:ok; then exit 0; fi
        redis-cli --cluster create $addresses --cluster-replicas \(shardReplicas) --cluster-yes
        """
        let jobName = "\(shape.name)-bootstrap-\(Self.hash("\(shape.pods)/\(shardReplicas)/\(image)").prefix(8))"
        return Job(metadata: shape.metadata(jobName), spec: .init(
            backoffLimit: 20,
            template: PodTemplate(
                metadata: ObjectMeta(labels: ["app.kubernetes.io/name": "pylon-rack-bootstrap", "app.kubernetes.io/instance": shape.name]),
                spec: PodSpec(containers: [Container(name: "bootstrap", image: image, command: ["sh", "-c", script])], restartPolicy: "OnFailure")
            )
        ))
    }

    /// One key of the sidecar's YAML file, as data: rendered by Yams, so no value (a key pattern
    /// with quotes, a setting holding `: ` or a newline) can change the document's shape.
    enum Setting: Equatable {
        case value(String)
        case list([String])
        case map([String: String])
    }

    /// The sidecar's YAML file: its keys in order, every value a string (quoted where YAML would
    /// read it as something else).
    static func yaml(_ settings: [String: Setting]) throws -> String {
        // Quoted where YAML would read the text as a boolean, a null or a number (`yes`, `~`, `1e3`).
        func string(_ text: String) -> Node {
            Node(text, Tag(.str), Resolver.default.resolveTag(of: Node(text)) == .str ? .any : .singleQuoted)
        }
        let pairs = settings.sorted { $0.key < $1.key }.map { key, setting -> (Node, Node) in
            switch setting {
            case .value(let value): (string(key), string(value))
            case .list(let items): (string(key), Node(items.map(string)))
            case .map(let entries): (string(key), Node(entries.sorted { $0.key < $1.key }.map { (string($0.key), string($0.value)) }))
            }
        }
        return try Yams.serialize(node: Node(pairs), width: -1)
    }

    /// The sidecar's YAML keys: the rack's settings over what the world and the rack imply.
    func sidecarConfiguration(rack: PylonRack, world: PylonWorld, shape: RackShape, snapshotSource: PylonRack? = nil) throws -> [String: Setting] {
        let kafka = world.spec.kafka
        let redis: String
        switch shape.topology {
        case .standalone, .injected: redis = "redis://127.0.0.1:6379"  // the Redis container of the same pod
        case .sentinel: redis = "redis-sentinel://\(shape.podHosts.map { "\($0):26379" }.joined(separator: ","))/\(shape.name)"
        case .cluster: redis = "redis-cluster://\(shape.headless).\(shape.namespace).svc:6379"
        case .external:
            guard let url = rack.spec.redis.external?.url else { throw RenderError(description: "spec.redis.external.url is required with the external topology") }
            redis = url
        }
        let partitions = world.spec.partitions ?? 8
        var keys: [String: Setting] = [
            "listen": .value("0.0.0.0:6380"), "admin": .value("0.0.0.0:9480"), "redis": .value(redis), "log-format": .value("json"),
            "world": .value(world.name), "rack": .value(shape.name), "kafka-brokers": .value(kafka.bootstrapServers), "topic": .value(world.topic),
            "partitions": .value("\(partitions)"), "replication-factor": .value("\(world.spec.replicationFactor ?? 3)"),
            "consistency": .value(world.spec.consistency ?? "applied"),
            // Every sidecar of the world, through the world's headless Service (`peersService`):
            // racks come and go without a new configuration (nor rolled pods) for the others.
            "peers": .value("\(Self.peersService(world: world.name)).\(shape.namespace).svc:6380"),
        ]
        if let contentious = world.spec.contentiousKeys, !contentious.isEmpty { keys["contentious-keys"] = .list(contentious) }
        if let offsets = try Self.catchUpOffsets(rack.spec.catchUp, partitions: partitions) {
            keys["catch-up-offsets"] = .list(offsets.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" })
        }
        if let source = try Self.snapshotSource(rack: rack, source: snapshotSource) {
            keys["snapshot-from"] = .value(source)
            keys["snapshot-dir"] = .value(Self.snapshotPath)
        }
        var properties = kafka.properties ?? [:]
        var secretFiles: [String] = []
        let tls = kafka.tls?.secretName != nil
        if tls {
            properties["ssl.ca.location"] = "\(Self.kafkaTLSPath)/ca.crt"
            if kafka.tls?.clientCertificate == true {
                properties["ssl.certificate.location"] = "\(Self.kafkaTLSPath)/tls.crt"
                properties["ssl.key.location"] = "\(Self.kafkaTLSPath)/tls.key"
            }
        }
        if let sasl = kafka.sasl {
            properties["sasl.mechanism"] = sasl.mechanism
            // Credentials stay in the Secret: the sidecar reads them from the mounted files.
            secretFiles = ["sasl.username=\(Self.kafkaSASLPath)/username", "sasl.password=\(Self.kafkaSASLPath)/password"]
        }
        if tls || !secretFiles.isEmpty {
            properties["security.protocol"] = secretFiles.isEmpty ? "SSL" : tls ? "SASL_SSL" : "SASL_PLAINTEXT"
        }
        if !properties.isEmpty { keys["kafka-properties"] = .map(properties) }
        if !secretFiles.isEmpty { keys["kafka-property-file"] = .list(secretFiles) }
        // The rack's settings are single values, taken as they are written.
        keys.merge((rack.spec.sidecar?.settings ?? [:]).mapValues(Setting.value)) { $1 }
        return keys
    }

    /// The first offset to apply per partition, when the rack's Redis is loaded up to there by
    /// other means; nil: the log's start.
    static func catchUpOffsets(_ catchUp: PylonRack.CatchUp?, partitions: Int) throws -> [Int: Int64]? {
        switch catchUp?.from ?? .logStart {
        case .logStart: return nil
        case .snapshot: return nil  // `snapshotSource`
        case .offsets:
            var offsets: [Int: Int64] = [:]
            for (key, offset) in catchUp?.offsets ?? [:] {
                guard let partition = Int(key), (0..<partitions).contains(partition) else {
                    throw RenderError(description: "spec.catchUp.offsets: '\(key)' is not a partition of the world (0…\(partitions - 1))")
                }
                offsets[partition] = offset
            }
            guard !offsets.isEmpty else { throw RenderError(description: "spec.catchUp.offsets: name the first offset to apply for each partition (\"0\": N, …) with from: offsets") }
            return offsets
        }
    }

    /// Where the sidecar keeps a snapshot until it is loaded: a volume of the pod, so a sidecar
    /// restarted mid-load resumes.
    static let snapshotPath = "/var/lib/pylon/snapshots"

    /// The Redis a rack catching up from a snapshot takes it from: a node of the source rack
    /// (pod 0's Redis: a standalone rack's, or a Sentinel rack's master or replica — either holds
    /// the whole keyspace), or its external Redis. nil unless `catchUp.from` is `snapshot`, and
    /// once the rack has caught up and its source is gone (a retired source does not fail the
    /// rack it seeded; a Redis that comes back empty then replays the log).
    static func snapshotSource(rack: PylonRack, source: PylonRack?) throws -> String? {
        guard rack.spec.catchUp?.from == .snapshot else { return nil }
        guard let name = rack.spec.catchUp?.rack, !name.isEmpty else {
            throw RenderError(description: "spec.catchUp.rack: name the rack whose snapshot this rack starts from (with from: snapshot)")
        }
        guard let source else {
            if rack.status?.conditions?.contains(where: { $0.type == "CaughtUp" && $0.status == "True" }) == true { return nil }
            throw RenderError(description: "spec.catchUp.rack: PylonRack \(name) does not exist in \(rack.metadata.namespace ?? "the namespace"); it must stay until this rack is CaughtUp")
        }
        guard source.spec.world == rack.spec.world else {
            throw RenderError(description: "spec.catchUp.rack: \(name) is a rack of world \(source.spec.world), not \(rack.spec.world)")
        }
        // A Redis Cluster's snapshot stands at another offset in each slot: only a Cluster loads it.
        let clusterOnly = "spec.catchUp.rack: \(name) is a Redis Cluster rack, whose snapshot only a Redis Cluster rack can load; take it from a standalone or Sentinel rack"
        switch source.topology {
        case .standalone, .sentinel:
            return "redis://\(try RackShape(rack: source).podHosts[0]):6379"
        case .cluster:
            guard Self.isCluster(rack) else { throw RenderError(description: clusterOnly) }
            let shape = try RackShape(rack: source)
            return "redis-cluster://\(shape.headless).\(shape.namespace).svc:6379"
        case .external:
            guard let url = source.spec.redis.external?.url, url.hasPrefix("redis://") || url.hasPrefix("redis-cluster://") else {
                throw RenderError(description: "spec.catchUp.rack: \(name)'s external Redis is not a redis:// or redis-cluster:// URL; a snapshot is taken from a standalone Redis, a node of a Sentinel set, or a Redis Cluster")
            }
            guard url.hasPrefix("redis://") || Self.isCluster(rack) else { throw RenderError(description: clusterOnly) }
            return url
        case .injected:
            throw RenderError(description: "spec.catchUp.rack: \(name) is an injected rack, whose Redis the operator does not know; name a standalone, Sentinel, Cluster or external rack")
        }
    }

    /// Whether a rack's Redis is a Redis Cluster (its own, or an external one).
    static func isCluster(_ rack: PylonRack) -> Bool {
        rack.topology == .cluster || (rack.topology == .external && rack.spec.redis.external?.url.hasPrefix("redis-cluster://") == true)
    }

    static func configMapName(rack: String) -> String { "\(rack)-sidecar" }

    /// The pylon sidecar container of a rack's pods and the volumes it mounts (its configuration,
    /// the world's Kafka Secrets): in the operator's StatefulSets and in pods the webhook injects.
    public func sidecar(rack: PylonRack, world: PylonWorld) -> (container: Container, volumes: [Volume]) {
        var secrets: [(volume: String, secret: String, path: String)] = []
        if let secret = world.spec.kafka.tls?.secretName { secrets.append(("pylon-kafka-tls", secret, Self.kafkaTLSPath)) }
        if let secret = world.spec.kafka.sasl?.secretName { secrets.append(("pylon-kafka-sasl", secret, Self.kafkaSASLPath)) }
        var sidecar = Container(
            name: Self.sidecarName, image: rack.spec.sidecar?.image ?? self.settings.sidecarImage,
            args: ["--config", "/etc/pylon/config/sidecar.yml", "--sidecar-name", "$(POD_NAME)"]
        )
        sidecar.env = [.field("POD_NAME", "metadata.name")]
        sidecar.ports = [ContainerPort(name: "pylon", containerPort: 6380), ContainerPort(name: "pylon-admin", containerPort: 9480)]
        sidecar.readinessProbe = .http("/readyz", port: "pylon-admin", every: 5)
        sidecar.livenessProbe = .http("/healthz", port: "pylon-admin", every: 10)
        sidecar.resources = rack.spec.sidecar?.resources
        sidecar.volumeMounts = [VolumeMount(name: "pylon-sidecar-config", mountPath: "/etc/pylon/config")]
            + secrets.map { VolumeMount(name: $0.volume, mountPath: $0.path, readOnly: true) }
        var volumes = [Volume(name: "pylon-sidecar-config", configMap: .init(name: Self.configMapName(rack: rack.name)))]
            + secrets.map { Volume(name: $0.volume, secret: .init(secretName: $0.secret)) }
        if rack.spec.catchUp?.from == .snapshot {
            // Outlives a restarted sidecar container, so a load resumes from the file.
            sidecar.volumeMounts?.append(VolumeMount(name: "pylon-snapshots", mountPath: Self.snapshotPath))
            volumes.append(Volume(name: "pylon-snapshots", emptyDir: [:]))
        }
        return (sidecar, volumes)
    }

    /// The sidecar container's name (a pod that has one is not injected again).
    public static let sidecarName = "pylon-sidecar"

    func statefulSet(rack: PylonRack, world: PylonWorld, shape: RackShape, configHash: String) -> StatefulSet {
        let (sidecar, sidecarVolumes) = self.sidecar(rack: rack, world: world)
        var volumes = sidecarVolumes
        var claims: [PersistentVolumeClaim]?
        var containers = [sidecar]
        if shape.topology != .external {
            containers = self.redisContainers(rack: rack, shape: shape) + containers
            if let size = rack.spec.redis.storage?.size {
                claims = [PersistentVolumeClaim(metadata: ObjectMeta(name: "data"), spec: .init(
                    accessModes: ["ReadWriteOnce"], resources: .init(requests: ["storage": size]), storageClassName: rack.spec.redis.storage?.storageClassName
                ))]
            } else {
                volumes.append(Volume(name: "data", emptyDir: [:]))
            }
        }
        return StatefulSet(metadata: shape.metadata(shape.name), spec: .init(
            serviceName: shape.headless, replicas: shape.pods, podManagementPolicy: "Parallel",
            selector: LabelSelector(matchLabels: shape.podSelector),
            template: PodTemplate(
                // A new configuration rolls the pods.
                metadata: ObjectMeta(labels: shape.labels, annotations: ["pylon.io/config-hash": configHash]),
                spec: PodSpec(
                    containers: containers, volumes: volumes,
                    securityContext: PodSecurityContext(runAsNonRoot: true, runAsUser: 999, fsGroup: 999)
                )
            ),
            volumeClaimTemplates: claims
        ))
    }

    /// Redis (and, for the sentinel topology, a Sentinel beside it) in each pod.
    func redisContainers(rack: PylonRack, shape: RackShape) -> [Container] {
        let image = rack.spec.redis.image ?? Self.defaultRedisImage
        var server = ["redis-server", "--port", "6379", "--appendonly", "yes", "--dir", "/data"]
        var redis = Container(name: "redis", image: image, command: server)
        switch shape.topology {
        case .cluster:
            server += ["--cluster-enabled", "yes", "--cluster-config-file", "/data/nodes.conf"]
            redis.command = server
        case .sentinel:
            // A pod starts as a replica of the master the Sentinels name; with no Sentinel
            // answering yet (the first start), pod 0 is the master and the others replicate it.
            let me = "$(hostname).\(shape.headless).\(shape.namespace).svc"
            redis.command = ["sh", "-c", """
            me=\(me)
            master=$(redis-cli -h \(shape.headless).\(shape.namespace).svc -p 26379 sentinel get-master-addr-by-name \(shape.name) 2>/dev/null | head -1)
            if [ -z "$master" ] && [ "${HOSTNAME##*-}" != 0 ]; then master=\(shape.podHosts[0]); fi
            set -- \(server.joined(separator: " ")) --replica-announce-ip "$me"
            if [ -n "$master" ] && [ "$master" != "$me" ]; then set -- "$@" --replicaof "$master" 6379; fi
            exec "$@"
            """]
        case .standalone, .external, .injected: break
        }
        redis.ports = [ContainerPort(name: "redis", containerPort: 6379)]
        redis.readinessProbe = .exec(["redis-cli", "ping"], every: 5)
        redis.resources = rack.spec.redis.resources
        redis.volumeMounts = [VolumeMount(name: "data", mountPath: "/data")]
        guard shape.topology == .sentinel else { return [redis] }

        // The Sentinel's file lives on the data volume: Sentinel rewrites it with what it learns
        // (the current master, the other Sentinels), which must survive a restart.
        let quorum = shape.pods / 2 + 1
        var sentinel = Container(name: "sentinel", image: image, command: ["sh", "-c", """
        conf=/data/sentinel.conf
        if [ ! -f "$conf" ]; then
          cat > "$conf" <<EOF
        port 26379
        sentinel resolve-hostnames yes
        sentinel announce-hostnames yes
        sentinel announce-ip $(hostname).\(shape.headless).\(shape.namespace).svc
        sentinel monitor \(shape.name) \(shape.podHosts[0]) 6379 \(quorum)
        sentinel down-after-milliseconds \(shape.name) 5000
        sentinel failover-timeout \(shape.name) 60000
        EOF
        fi
        exec redis-sentinel "$conf"
        """])
        sentinel.ports = [ContainerPort(name: "sentinel", containerPort: 26379)]
        sentinel.readinessProbe = .exec(["redis-cli", "-p", "26379", "ping"], every: 5)
        sentinel.volumeMounts = [VolumeMount(name: "data", mountPath: "/data")]
        return [redis, sentinel]
    }

    /// The headless Service of all the sidecars of a world, which each sidecar probes as its peers.
    public static func peersService(world: String) -> String { "\(world)-sidecars" }

    /// The world's peers Service, owned by the world.
    public func worldObjects(world: PylonWorld) -> [any KubeObject] {
        let metadata = ObjectMeta(
            name: Self.peersService(world: world.name), namespace: world.metadata.namespace ?? "default",
            labels: Pylon.managed.merging(["app.kubernetes.io/name": "pylon-world", "app.kubernetes.io/instance": world.name]) { $1 },
            ownerReferences: [Pylon.ownerReference(to: world)]
        )
        return [Service(metadata: metadata, spec: .init(
            clusterIP: "None", publishNotReadyAddresses: true,
            selector: ["pylon.io/world": world.name],
            ports: [Service.Port(name: "pylon", port: 6380, targetPort: "pylon")]
        ))]
    }


    /// A short stable digest of the configuration (FNV-1a, hex).
    static func hash(_ text: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x100_0000_01b3
        }
        return String(hash, radix: 16)
    }
}

/// The names and size a rack's objects share.
struct RackShape {
    let name: String
    let namespace: String
    let topology: PylonRack.Topology
    let labels: [String: String]
    let owner: OwnerReference
    /// Redis pods: 1 (standalone, external: sidecars only), 1 + replicas (sentinel), shards ×
    /// (1 + replicas) (cluster).
    let pods: Int

    init(rack: PylonRack) throws {
        guard let name = rack.metadata.name, let namespace = rack.metadata.namespace else {
            throw RackRenderer.RenderError(description: "the rack has no name or namespace")
        }
        self.name = name
        self.namespace = namespace
        self.topology = rack.topology
        self.labels = Pylon.labels(world: rack.spec.world, rack: name)
        self.owner = Pylon.ownerReference(to: rack)
        let replicas = rack.spec.redis.replicas ?? 1
        switch rack.topology {
        case .standalone, .external: self.pods = 1
        case .injected: self.pods = 0
        case .sentinel:
            guard replicas >= 2 else {
                throw RackRenderer.RenderError(description: "spec.redis.replicas: the sentinel topology needs at least 2 replicas (three pods, so their Sentinels can reach a quorum); got \(replicas)")
            }
            self.pods = 1 + replicas
        case .cluster: self.pods = (rack.spec.redis.shards ?? 3) * (1 + replicas)
        }
    }

    var headless: String { "\(self.name)-headless" }

    /// What selects the rack's pods: the operator's, or the user's own with an injected sidecar.
    var podSelector: [String: String] {
        self.topology == .injected ? SidecarInjector.labels(rack: self.name) : Pylon.selector(rack: self.name)
    }

    /// Each pod's stable DNS name (through the headless Service).
    var podHosts: [String] { (0..<self.pods).map { "\(self.name)-\($0).\(self.headless).\(self.namespace).svc" } }

    func metadata(_ objectName: String) -> ObjectMeta {
        ObjectMeta(name: objectName, namespace: self.namespace, labels: self.labels, ownerReferences: [self.owner])
    }
}
