import Foundation
import Testing

@testable import PylonOperator

@Suite("Kubeconfig")
struct KubeConfigTests {
    @Test func readsTheCurrentContext() throws {
        let ca = Data("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".utf8)
        let config = try KubeConfig.parse(kubeconfig: """
        apiVersion: v1
        kind: Config
        current-context: test
        contexts:
          - name: other
            context: {cluster: nowhere, user: nobody}
          - name: test
            context: {cluster: local, user: admin, namespace: shop}
        clusters:
          - name: local
            cluster:
              server: https://127.0.0.1:6443/
              certificate-authority-data: \(ca.base64EncodedString())
        users:
          - name: admin
            user: {token: abc123}
        """, directory: "/tmp")
        #expect(config.server == "https://127.0.0.1:6443")
        #expect(config.tls.caPEM == ca)
        #expect(config.token?.value == "abc123")
        #expect(config.namespace == "shop")
        #expect(throws: KubeConfig.Error.self) { try KubeConfig.parse(kubeconfig: "current-context: missing", directory: "/tmp") }
    }

    @Test func pathsOfResources() {
        #expect(KubeResource.configMaps.path(namespace: "a", name: "b") == "/api/v1/namespaces/a/configmaps/b")
        #expect(KubeResource.statefulSets.path(namespace: "a") == "/apis/apps/v1/namespaces/a/statefulsets")
        #expect(KubeResource.customResourceDefinitions.path(name: "x.pylon.io") == "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.pylon.io")
    }

    @Test func jsonKeepsWhatItWasGiven() throws {
        let text = #"{"a":{"b":[1,2.5,"x",null,true]},"unknown":{"z":1}}"#
        let json = try JSON(data: Data(text.utf8))
        #expect(json[path: "a.b"]?.array?.count == 5)
        #expect(try JSON(data: json.data) == json)
        #expect(String(decoding: json.data, as: UTF8.self) == text)
    }
}
