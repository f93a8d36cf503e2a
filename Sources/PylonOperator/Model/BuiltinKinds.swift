/// The built-in kinds the operator makes and reads, with the fields Pylon uses.

public struct ConfigMap: KubeObject, Equatable {
    public static let resource = KubeResource.configMaps
    public var apiVersion = "v1"
    public var kind = "ConfigMap"
    public var metadata: ObjectMeta
    public var data: [String: String]?

    public init(metadata: ObjectMeta, data: [String: String]) {
        self.metadata = metadata
        self.data = data
    }
}

public struct Secret: KubeObject, Equatable {
    public static let resource = KubeResource.secrets
    public var apiVersion = "v1"
    public var kind = "Secret"
    public var metadata: ObjectMeta
    public var type: String?
    /// Base64 values, as the API holds them.
    public var data: [String: String]?
}

public struct Service: KubeObject, Equatable {
    public static let resource = KubeResource.services
    public var apiVersion = "v1"
    public var kind = "Service"
    public var metadata: ObjectMeta
    public var spec: Spec

    public struct Spec: Codable, Sendable, Equatable {
        public var clusterIP: String?
        public var publishNotReadyAddresses: Bool?
        public var selector: [String: String]
        public var ports: [Port]
    }

    public struct Port: Codable, Sendable, Equatable {
        public var name: String
        public var port: Int
        public var targetPort: IntOrString
        /// Always named: server-side apply keys port lists by (port, protocol).
        public var `protocol` = "TCP"
    }
}

public struct LabelSelector: Codable, Sendable, Equatable {
    public var matchLabels: [String: String]
}

public struct StatefulSet: KubeObject, Equatable {
    public static let resource = KubeResource.statefulSets
    public var apiVersion = "apps/v1"
    public var kind = "StatefulSet"
    public var metadata: ObjectMeta
    public var spec: Spec
    public var status: Status?

    public struct Spec: Codable, Sendable, Equatable {
        public var serviceName: String
        public var replicas: Int
        public var podManagementPolicy: String?
        public var selector: LabelSelector
        public var template: PodTemplate
        public var volumeClaimTemplates: [PersistentVolumeClaim]?
    }

    public struct Status: Codable, Sendable, Equatable {
        public var replicas: Int?
        public var readyReplicas: Int?
    }
}

public struct PodTemplate: Codable, Sendable, Equatable {
    public var metadata: ObjectMeta
    public var spec: PodSpec
}

public struct PodSpec: Codable, Sendable, Equatable {
    public var initContainers: [Container]?
    public var containers: [Container]
    public var volumes: [Volume]?
    public var restartPolicy: String?
    public var securityContext: PodSecurityContext?
}

public struct PodSecurityContext: Codable, Sendable, Equatable {
    public var runAsNonRoot: Bool?
    public var runAsUser: Int?
    public var fsGroup: Int?
}

public struct Container: Codable, Sendable, Equatable {
    public var name: String
    public var image: String
    public var command: [String]?
    public var args: [String]?
    public var env: [EnvVar]?
    public var ports: [ContainerPort]?
    public var readinessProbe: Probe?
    public var livenessProbe: Probe?
    /// Limits and requests, passed through as the rack gives them.
    public var resources: JSON?
    public var volumeMounts: [VolumeMount]?
    /// `Always` on an init container makes it a native sidecar (Kubernetes 1.29+): started before
    /// the app's containers, kept running beside them, stopped after them.
    public var restartPolicy: String?

    public init(name: String, image: String, command: [String]? = nil, args: [String]? = nil) {
        self.name = name
        self.image = image
        self.command = command
        self.args = args
    }
}

public struct EnvVar: Codable, Sendable, Equatable {
    public var name: String
    public var value: String?
    public var valueFrom: Source?

    public struct Source: Codable, Sendable, Equatable {
        public var fieldRef: FieldRef
    }

    public struct FieldRef: Codable, Sendable, Equatable {
        public var fieldPath: String
    }

    /// A variable holding a field of the pod (`metadata.name`).
    public static func field(_ name: String, _ path: String) -> EnvVar {
        EnvVar(name: name, valueFrom: Source(fieldRef: FieldRef(fieldPath: path)))
    }
}

public struct ContainerPort: Codable, Sendable, Equatable {
    public var name: String
    public var containerPort: Int
    public var `protocol` = "TCP"
}

public struct Probe: Codable, Sendable, Equatable {
    public var httpGet: HTTPGet?
    public var exec: Exec?
    public var periodSeconds: Int?

    public struct HTTPGet: Codable, Sendable, Equatable {
        public var path: String
        public var port: IntOrString
    }

    public struct Exec: Codable, Sendable, Equatable {
        public var command: [String]
    }

    public static func http(_ path: String, port: IntOrString, every seconds: Int) -> Probe {
        Probe(httpGet: HTTPGet(path: path, port: port), periodSeconds: seconds)
    }

    public static func exec(_ command: [String], every seconds: Int) -> Probe {
        Probe(exec: Exec(command: command), periodSeconds: seconds)
    }
}

public struct VolumeMount: Codable, Sendable, Equatable {
    public var name: String
    public var mountPath: String
    public var readOnly: Bool?
}

public struct Volume: Codable, Sendable, Equatable {
    public var name: String
    public var configMap: ConfigMapSource?
    public var secret: SecretSource?
    public var emptyDir: JSON?

    public struct ConfigMapSource: Codable, Sendable, Equatable { public var name: String }
    public struct SecretSource: Codable, Sendable, Equatable { public var secretName: String }
}

public struct PersistentVolumeClaim: Codable, Sendable, Equatable {
    public var metadata: ObjectMeta
    public var spec: Spec

    public struct Spec: Codable, Sendable, Equatable {
        public var accessModes: [String]
        public var resources: Resources
        public var storageClassName: String?
    }

    public struct Resources: Codable, Sendable, Equatable { public var requests: [String: String] }
}

public struct PodDisruptionBudget: KubeObject, Equatable {
    public static let resource = KubeResource.podDisruptionBudgets
    public var apiVersion = "policy/v1"
    public var kind = "PodDisruptionBudget"
    public var metadata: ObjectMeta
    public var spec: Spec

    public struct Spec: Codable, Sendable, Equatable {
        public var maxUnavailable: IntOrString
        public var selector: LabelSelector
    }
}

public struct Job: KubeObject, Equatable {
    public static let resource = KubeResource.jobs
    public var apiVersion = "batch/v1"
    public var kind = "Job"
    public var metadata: ObjectMeta
    public var spec: Spec

    public struct Spec: Codable, Sendable, Equatable {
        public var backoffLimit: Int?
        public var template: PodTemplate
    }
}

public struct Lease: KubeObject, Equatable {
    public static let resource = KubeResource.leases
    public var apiVersion = "coordination.k8s.io/v1"
    public var kind = "Lease"
    public var metadata: ObjectMeta
    public var spec: Spec

    public struct Spec: Codable, Sendable, Equatable {
        public var holderIdentity: String?
        public var leaseDurationSeconds: Int?
        /// MicroTime: RFC 3339 with six fractional digits.
        public var acquireTime: String?
        public var renewTime: String?
        public var leaseTransitions: Int?
    }
}

public struct Event: KubeObject, Equatable {
    public static let resource = KubeResource.events
    public var apiVersion = "v1"
    public var kind = "Event"
    public var metadata: ObjectMeta
    public var involvedObject: ObjectReference
    public var reason: String
    public var message: String
    public var type: String
    public var count: Int
    public var firstTimestamp: String
    public var lastTimestamp: String
    public var source: Source

    public struct ObjectReference: Codable, Sendable, Equatable {
        public var apiVersion: String
        public var kind: String
        public var name: String
        public var namespace: String?
        public var uid: String?
        public var resourceVersion: String?
    }

    public struct Source: Codable, Sendable, Equatable { public var component: String }
}
