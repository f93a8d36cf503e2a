import Testing

@testable import PylonOperator

@Suite("Rack renderer")
struct RackRendererTests {
    let rack: JSON = [
        "apiVersion": "pylon.io/v1alpha1", "kind": "PylonRack",
        "metadata": ["name": "eu-1", "namespace": "shop", "uid": "u-1"],
        "spec": ["world": "w", "redis": ["topology": "standalone"], "sidecar": ["settings": ["max-ready-lag": "5"]]],
    ]

    func world(_ kafka: JSON) -> JSON {
        ["metadata": ["name": "w", "namespace": "shop"], "spec": ["kafka": kafka, "partitions": 4]]
    }

    @Test func mountsTheWorldsKafkaSecretsAndKeepsCredentialsOutOfTheConfigMap() throws {
        let objects = try RackRenderer().render(rack: self.rack, world: self.world([
            "bootstrapServers": "k:9093", "tls": ["secretName": "kafka-ca", "clientCertificate": true],
            "sasl": ["mechanism": "SCRAM-SHA-512", "secretName": "kafka-user"],
        ]))
        let config = objects.first { $0.0 == .configMaps }?.1[path: "data"]?["sidecar.yml"]?.string ?? ""
        #expect(config.contains("\"security.protocol\": \"SASL_SSL\"") && config.contains("\"sasl.mechanism\": \"SCRAM-SHA-512\""), "\(config)")
        #expect(config.contains("\"ssl.ca.location\": \"/etc/pylon/kafka-tls/ca.crt\"") && config.contains("ssl.key.location"))
        #expect(config.contains("kafka-property-file: [\"sasl.username=/etc/pylon/kafka-sasl/username\", \"sasl.password=/etc/pylon/kafka-sasl/password\"]"))
        #expect(config.contains("max-ready-lag: 5") && config.contains("partitions: 4") && config.contains("peers: w-sidecars.shop.svc:6380"))
        let pod = objects.first { $0.0 == .statefulSets }?.1[path: "spec.template.spec"]
        let volumes = pod?["volumes"]?.array?.compactMap { $0[path: "secret.secretName"]?.string } ?? []
        #expect(volumes == ["kafka-ca", "kafka-user"])
        let mounts = pod?["containers"]?.array?.last?["volumeMounts"]?.array?.compactMap { $0["mountPath"]?.string } ?? []
        #expect(mounts == ["/etc/pylon/config", "/etc/pylon/kafka-tls", "/etc/pylon/kafka-sasl"])
    }

    @Test func refusesWhatItCannotDeploy() {
        var sentinel = self.rack
        sentinel["spec"]?["redis"] = ["topology": "sentinel"]
        #expect(throws: RackRenderer.RenderError.self) { try RackRenderer().render(rack: sentinel, world: self.world(["bootstrapServers": "k:9092"])) }
        #expect(throws: RackRenderer.RenderError.self) { try RackRenderer().render(rack: self.rack, world: ["metadata": ["name": "w"], "spec": [:]]) }
    }
}
