import Foundation

/// What a PylonRack becomes in Kubernetes, as a pure function of the rack, its world and the
/// world's other racks: the sidecar's configuration (a ConfigMap), a headless Service (pod DNS,
/// and the peers' address for the other racks), a client Service (port 6379 → the sidecars), the
/// StatefulSet of Redis pods each with a pylon sidecar, a PodDisruptionBudget, and for a Redis
/// Cluster rack the Job that creates the cluster once its pods are up. Every object
/// is owned by the rack and applied with server-side apply, so re-applying is a no-op.
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

    /// The rendered objects, each with its resource type, in the order to apply them.
    public func render(rack: JSON, world: JSON) throws -> [(KubeResource, JSON)] {
        guard let name = rack[path: "metadata.name"]?.string, let namespace = rack[path: "metadata.namespace"]?.string else {
            throw RenderError(description: "the rack has no name or namespace")
        }
        let spec = rack["spec"] ?? [:]
        let worldName = spec["world"]?.string ?? ""
        let topology = spec[path: "redis.topology"]?.string ?? "standalone"
        guard topology != "sentinel" else {
            throw RenderError(description: "spec.redis.topology: sentinel is not deployed by the operator yet; use standalone, cluster, or external with a redis-sentinel:// url")
        }
        let labels = Pylon.labels(world: worldName, rack: name)
        let owner = Pylon.ownerReference(to: rack)
        func metadata(_ objectName: String) -> JSON {
            ["name": .string(objectName), "namespace": .string(namespace), "labels": labels, "ownerReferences": [owner]]
        }
        let headless = "\(name)-headless"
        let configuration = try self.sidecarConfiguration(rack: rack, world: world, name: name, namespace: namespace, headless: headless)
        let configText = configuration.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: "\n") + "\n"

        let configMap: JSON = ["apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata("\(name)-sidecar"), "data": ["sidecar.yml": .string(configText)]]
        let ports: JSON = [
            // Every port names its protocol: server-side apply keys port lists by (port, protocol).
            ["name": "pylon", "port": 6380, "targetPort": "pylon", "protocol": "TCP"],
            ["name": "redis", "port": 6379, "targetPort": "redis", "protocol": "TCP"],
        ]
        let headlessService: JSON = [
            "apiVersion": "v1", "kind": "Service", "metadata": metadata(headless),
            "spec": ["clusterIP": "None", "publishNotReadyAddresses": true, "selector": Pylon.selector(rack: name), "ports": ports],
        ]
        // Clients speak to the sidecars on Redis's usual port.
        let clientService: JSON = [
            "apiVersion": "v1", "kind": "Service", "metadata": metadata(name),
            "spec": ["selector": Pylon.selector(rack: name), "ports": [["name": "redis", "port": 6379, "targetPort": "pylon", "protocol": "TCP"]]],
        ]
        let replicas = topology == "cluster" ? (spec[path: "redis.shards"]?.int ?? 3) * (1 + (spec[path: "redis.replicas"]?.int ?? 1)) : 1
        let secrets = [("kafka-tls", world[path: "spec.kafka.tls.secretName"]?.string, Self.kafkaTLSPath), ("kafka-sasl", world[path: "spec.kafka.sasl.secretName"]?.string, Self.kafkaSASLPath)]
            .compactMap { volume, secret, path in secret.map { (volume: volume, secret: $0, path: path) } }
        let statefulSet = self.statefulSet(
            name: name, metadata: metadata(name), spec: spec, topology: topology, replicas: replicas, headless: headless,
            configHash: Self.hash(configText), secrets: secrets
        )
        let budget: JSON = [
            "apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget", "metadata": metadata(name),
            "spec": ["maxUnavailable": 1, "selector": ["matchLabels": Pylon.selector(rack: name)]],
        ]
        var objects: [(KubeResource, JSON)] = [
            (.configMaps, configMap), (.services, headlessService), (.services, clientService),
            (.statefulSets, statefulSet), (.podDisruptionBudgets, budget),
        ]
        if topology == "cluster" {
            objects.append((.jobs, self.clusterBootstrap(name: name, namespace: namespace, metadata: metadata, spec: spec, replicas: replicas, headless: headless)))
        }
        return objects
    }

    /// A Job that makes the cluster rack's pods one Redis Cluster once they all answer (and does
    /// nothing if they already form one). Its name carries the shape it creates: a Job's pod
    /// template cannot change, and a new shape is a new bootstrap.
    func clusterBootstrap(name: String, namespace: String, metadata: (String) -> JSON, spec: JSON, replicas: Int, headless: String) -> JSON {
        let shardReplicas = spec[path: "redis.replicas"]?.int ?? 1
        let image = spec[path: "redis.image"] ?? "redis:7.0"
        let hosts = (0..<replicas).map { "\(name)-\($0).\(headless).\(namespace).svc" }.joined(separator: " ")
        let script = """
        set -e
        addresses=""
        for host in \(hosts); do
          until redis-cli -h "$host" -p 6379 ping >/dev/null 2>&1; do sleep 2; done
          addresses="$addresses $(getent hosts "$host" | awk '{print $1}'):6379"
        done
        if redis-cli -h \(name)-0.\(headless).\(namespace).svc -p 6379 cluster info | grep -q cluster_state:ok; then exit 0; fi
        redis-cli --cluster create $addresses --cluster-replicas \(shardReplicas) --cluster-yes
        """
        let jobName = "\(name)-bootstrap-\(Self.hash("\(replicas)/\(shardReplicas)/\(image)").prefix(8))"
        return [
            "apiVersion": "batch/v1", "kind": "Job", "metadata": metadata(jobName),
            "spec": [
                "backoffLimit": 20,
                "template": [
                    "metadata": ["labels": ["app.kubernetes.io/name": "pylon-rack-bootstrap", "app.kubernetes.io/instance": .string(name)]],
                    "spec": [
                        "restartPolicy": "OnFailure",
                        "containers": [["name": "bootstrap", "image": image, "command": ["sh", "-c", .string(script)]]],
                    ],
                ],
            ],
        ]
    }

    /// The sidecar's YAML keys: the rack's settings over what the world and the rack imply.
    func sidecarConfiguration(rack: JSON, world: JSON, name: String, namespace: String, headless: String) throws -> [String: String] {
        let spec = rack["spec"] ?? [:]
        let worldSpec = world["spec"] ?? [:]
        guard let brokers = worldSpec[path: "kafka.bootstrapServers"]?.string else {
            throw RenderError(description: "world \(world[path: "metadata.name"]?.string ?? "?") has no spec.kafka.bootstrapServers")
        }
        let redis: String
        switch spec[path: "redis.topology"]?.string ?? "standalone" {
        case "cluster": redis = "redis-cluster://\(headless).\(namespace).svc:6379"
        case "external":
            guard let url = spec[path: "redis.external.url"]?.string else { throw RenderError(description: "spec.redis.external.url is required with the external topology") }
            redis = url
        default: redis = "redis://127.0.0.1:6379"  // the Redis container of the same pod
        }
        var keys: [String: String] = [
            "listen": "0.0.0.0:6380", "admin": "0.0.0.0:9480", "redis": redis, "log-format": "json",
            "world": world[path: "metadata.name"]?.string ?? "", "rack": name, "kafka-brokers": brokers,
            "partitions": "\(worldSpec["partitions"]?.int ?? 8)", "replication-factor": "\(worldSpec["replicationFactor"]?.int ?? 3)",
            "consistency": worldSpec["consistency"]?.string ?? "log",
        ]
        if let topic = worldSpec["topic"]?.string { keys["topic"] = topic }
        let contentious = worldSpec["contentiousKeys"]?.array?.compactMap(\.string) ?? []
        if !contentious.isEmpty { keys["contentious-keys"] = "[" + contentious.map { "\"\($0)\"" }.joined(separator: ", ") + "]" }
        // Every sidecar of the world, through the world's headless Service (`peersService`): racks
        // come and go without a new configuration (nor rolled pods) for the others.
        keys["peers"] = "\(Self.peersService(world: world[path: "metadata.name"]?.string ?? "")).\(namespace).svc:6380"
        var properties = (worldSpec[path: "kafka.properties"]?.object ?? [:]).compactMapValues(\.string)
        var secretFiles: [String] = []
        let tls = worldSpec[path: "kafka.tls.secretName"]?.string != nil
        if tls {
            properties["ssl.ca.location"] = "\(Self.kafkaTLSPath)/ca.crt"
            if worldSpec[path: "kafka.tls.clientCertificate"] == .bool(true) {
                properties["ssl.certificate.location"] = "\(Self.kafkaTLSPath)/tls.crt"
                properties["ssl.key.location"] = "\(Self.kafkaTLSPath)/tls.key"
            }
        }
        if let mechanism = worldSpec[path: "kafka.sasl.mechanism"]?.string {
            properties["sasl.mechanism"] = mechanism
            // Credentials stay in the Secret: the sidecar reads them from the mounted files.
            secretFiles = ["sasl.username=\(Self.kafkaSASLPath)/username", "sasl.password=\(Self.kafkaSASLPath)/password"]
        }
        if tls || !secretFiles.isEmpty {
            properties["security.protocol"] = secretFiles.isEmpty ? "SSL" : tls ? "SASL_SSL" : "SASL_PLAINTEXT"
        }
        if !properties.isEmpty {
            keys["kafka-properties"] = "{" + properties.sorted { $0.key < $1.key }.map { "\"\($0.key)\": \"\($0.value)\"" }.joined(separator: ", ") + "}"
        }
        if !secretFiles.isEmpty { keys["kafka-property-file"] = "[" + secretFiles.map { "\"\($0)\"" }.joined(separator: ", ") + "]" }
        for (key, value) in spec[path: "sidecar.settings"]?.object ?? [:] {
            if let value = value.string { keys[key] = value }
        }
        return keys
    }

    private func statefulSet(
        name: String, metadata: JSON, spec: JSON, topology: String, replicas: Int, headless: String, configHash: String,
        secrets: [(volume: String, secret: String, path: String)]
    ) -> JSON {
        let sidecar: JSON = [
            "name": "pylon-sidecar",
            "image": spec[path: "sidecar.image"] ?? .string(self.settings.sidecarImage),
            "args": ["--config", "/etc/pylon/config/sidecar.yml", "--sidecar-name", "$(POD_NAME)"],
            "env": [["name": "POD_NAME", "valueFrom": ["fieldRef": ["fieldPath": "metadata.name"]]]],
            "ports": [["name": "pylon", "containerPort": 6380, "protocol": "TCP"], ["name": "admin", "containerPort": 9480, "protocol": "TCP"]],
            "readinessProbe": ["httpGet": ["path": "/readyz", "port": "admin"], "periodSeconds": 5],
            "livenessProbe": ["httpGet": ["path": "/healthz", "port": "admin"], "periodSeconds": 10],
            "resources": spec[path: "sidecar.resources"] ?? [:],
            "volumeMounts": .array([["name": "sidecar-config", "mountPath": "/etc/pylon/config"]] + secrets.map { ["name": .string($0.volume), "mountPath": .string($0.path), "readOnly": true] }),
        ]
        var containers: [JSON] = [sidecar]
        var claims: [JSON] = []
        if topology != "external" {
            var command: [JSON] = ["redis-server", "--port", "6379", "--appendonly", "yes", "--dir", "/data"]
            if topology == "cluster" { command += ["--cluster-enabled", "yes", "--cluster-config-file", "/data/nodes.conf"] }
            containers.insert([
                "name": "redis",
                "image": spec[path: "redis.image"] ?? "redis:7.0",
                "command": .array(command),
                "ports": [["name": "redis", "containerPort": 6379, "protocol": "TCP"]],
                "readinessProbe": ["exec": ["command": ["redis-cli", "ping"]], "periodSeconds": 5],
                "resources": spec[path: "redis.resources"] ?? [:],
                "volumeMounts": [["name": "data", "mountPath": "/data"]],
            ], at: 0)
            if let size = spec[path: "redis.storage.size"]?.string {
                var claimSpec: JSON = ["accessModes": ["ReadWriteOnce"], "resources": ["requests": ["storage": .string(size)]]]
                if let storageClass = spec[path: "redis.storage.storageClassName"] { claimSpec["storageClassName"] = storageClass }
                claims.append(["metadata": ["name": "data"], "spec": claimSpec])
            }
        }
        var volumes: [JSON] = [["name": "sidecar-config", "configMap": ["name": .string("\(name)-sidecar")]]]
        volumes += secrets.map { ["name": .string($0.volume), "secret": ["secretName": .string($0.secret)]] }
        if topology != "external", claims.isEmpty { volumes.append(["name": "data", "emptyDir": [:]]) }
        var statefulSetSpec: JSON = [
            "serviceName": .string(headless),
            "replicas": .number(Double(replicas)),
            "podManagementPolicy": "Parallel",
            "selector": ["matchLabels": Pylon.selector(rack: name)],
            "template": [
                "metadata": [
                    "labels": metadata["labels"] ?? [:],
                    // A new configuration rolls the pods.
                    "annotations": ["pylon.io/config-hash": .string(configHash)],
                ],
                "spec": [
                    "containers": .array(containers),
                    "volumes": .array(volumes),
                    "securityContext": ["runAsNonRoot": true, "runAsUser": 999, "fsGroup": 999],
                ],
            ],
        ]
        if !claims.isEmpty { statefulSetSpec["volumeClaimTemplates"] = .array(claims) }
        return ["apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": metadata, "spec": statefulSetSpec]
    }

    /// Where the world's Kafka TLS and SASL Secrets are mounted in the sidecar.
    static let kafkaTLSPath = "/etc/pylon/kafka-tls"
    static let kafkaSASLPath = "/etc/pylon/kafka-sasl"

    /// The headless Service of all the sidecars of a world, which each sidecar probes as its peers.
    public static func peersService(world: String) -> String { "\(world)-sidecars" }

    /// The world's peers Service, owned by the world.
    public func worldObjects(world: JSON) -> [(KubeResource, JSON)] {
        let name = world[path: "metadata.name"]?.string ?? ""
        let service: JSON = [
            "apiVersion": "v1", "kind": "Service",
            "metadata": [
                "name": .string(Self.peersService(world: name)), "namespace": world[path: "metadata.namespace"] ?? "default",
                "labels": ["app.kubernetes.io/name": "pylon-world", "app.kubernetes.io/instance": .string(name), "app.kubernetes.io/managed-by": "pylon-operator"],
                "ownerReferences": [Pylon.ownerReference(to: world)],
            ],
            "spec": [
                "clusterIP": "None", "publishNotReadyAddresses": true,
                "selector": ["app.kubernetes.io/name": "pylon-rack", "pylon.io/world": .string(name)],
                "ports": [["name": "pylon", "port": 6380, "targetPort": "pylon", "protocol": "TCP"]],
            ],
        ]
        return [(.services, service)]
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
