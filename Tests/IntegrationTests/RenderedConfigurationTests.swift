import Foundation
import PylonOperator
import Testing

@testable import PylonSidecar

/// What the operator writes into a rack's ConfigMap is a configuration the sidecar accepts.
@Suite("Rendered sidecar configuration")
struct RenderedConfigurationTests {
    @Test func theSidecarReadsWhatTheOperatorRenders() throws {
        let rack = try PylonRack(json: [
            "apiVersion": "pylon.io/v1alpha1", "kind": "PylonRack", "metadata": ["name": "eu-1", "namespace": "shop", "uid": "u"],
            "spec": ["world": "w", "redis": ["topology": "cluster"], "sidecar": ["settings": ["max-ready-lag": "5"]], "catchUp": ["from": "offsets", "offsets": ["2": 40]]],
        ])
        let world = try PylonWorld(json: [
            "apiVersion": "pylon.io/v1alpha1", "kind": "PylonWorld", "metadata": ["name": "w", "namespace": "shop"],
            "spec": ["kafka": ["bootstrapServers": "k-0:9093,k-1:9093", "properties": ["linger.ms": "0"], "tls": ["secretName": "ca"]],
                     "partitions": 16, "replicationFactor": 3, "consistency": "applied", "contentiousKeys": ["lock:*", "seat:[0-9]*"]],
        ])
        let objects = try RackRenderer().render(rack: rack, world: world)
        let text = objects.compactMap { $0 as? ConfigMap }.first?.data?["sidecar.yml"] ?? ""
        var configuration = SidecarConfiguration()
        try configuration.apply(yaml: text)
        let valid = try configuration.validated()
        #expect(valid.redis == .cluster([HostPort(host: "eu-1-headless.shop.svc", port: 6379)]))
        #expect(valid.kafkaBrokers == "k-0:9093,k-1:9093" && valid.world == "w" && valid.rack == "eu-1" && valid.partitions == 16)
        #expect(valid.consistency == .applied && valid.contentiousKeys == ["lock:*", "seat:[0-9]*"])
        #expect(valid.peers == [HostPort(host: "w-sidecars.shop.svc", port: 6380)])
        #expect(valid.kafkaProperties == ["linger.ms": "0", "security.protocol": "SSL", "ssl.ca.location": "/etc/pylon/kafka-tls/ca.crt"])
        #expect(valid.maxReadyLag == 5 && valid.catchUpOffsets == [2: 40])
    }

    /// Values no string concatenation survives — quotes of both kinds, `: `, a newline, YAML's
    /// indicators, words YAML reads as booleans, nulls or numbers — reach the sidecar exactly.
    @Test func hostileValuesRoundTripThroughTheSidecarsOwnParser() throws {
        let patterns = [#"a:"b'c"#, "x: y", "line\nbreak", "#hash", "- dash", "yes", "null", "~", "1e3", "0x10", " padded ", "{brace}", "[bracket]", "&anchor", "*", "%percent", "@at", "`tick`", "|", ">", "tab\there", "ünï"]
        let jaas = #"org.apache.kafka.common.security.plain.PlainLoginModule required username="a: b" password='c\nd';"#
        let rack = try PylonRack(json: [
            "apiVersion": "pylon.io/v1alpha1", "kind": "PylonRack", "metadata": ["name": "eu-1", "namespace": "shop", "uid": "u"],
            "spec": ["world": "w", "redis": ["topology": "standalone"], "sidecar": ["settings": ["kafka-property": "client.rack=a: b # not a comment"]]],
        ])
        let world = try PylonWorld(json: [
            "apiVersion": "pylon.io/v1alpha1", "kind": "PylonWorld", "metadata": ["name": "w", "namespace": "shop"],
            "spec": ["kafka": ["bootstrapServers": "k:9093", "properties": ["sasl.jaas.config": .string(jaas), "client.id": "true"]],
                     "contentiousKeys": .array(patterns.map { .string($0) })],
        ])
        let objects = try RackRenderer().render(rack: rack, world: world)
        let text = objects.compactMap { $0 as? ConfigMap }.first?.data?["sidecar.yml"] ?? ""
        var configuration = SidecarConfiguration()
        try configuration.apply(yaml: text)
        let valid = try configuration.validated()
        #expect(valid.contentiousKeys == patterns, "\(text)")
        #expect(valid.kafkaProperties["sasl.jaas.config"] == jaas && valid.kafkaProperties["client.id"] == "true")
        #expect(valid.kafkaProperties["client.rack"] == "a: b # not a comment")
    }
}
