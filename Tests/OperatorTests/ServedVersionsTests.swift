import Foundation
import Testing

@testable import PylonOperator

/// The API versions the operator writes, chosen from a server's discovery document (`GET /apis`).
/// `kubernetes-1.20.json` is recorded from the kube-apiserver this project builds
/// (`scripts/install-kube.sh`); the 1.25 and 1.34 documents list the groups and versions those
/// releases serve by default (Kubernetes' API reference and deprecated-API migration guide).
@Suite("Served API versions")
struct ServedVersionsTests {
    static func document(_ release: String) throws -> JSON {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Discovery/kubernetes-\(release).json")
        return try JSON(data: Data(contentsOf: url))
    }

    @Test(arguments: [("1.20", "v1beta1"), ("1.25", "v1"), ("1.34", "v1")])
    func podDisruptionBudgetsAtTheNewestServedVersion(release: String, policy: String) throws {
        let versions = try ServedVersions(groupList: Self.document(release))
        #expect(versions.versions["policy"] == policy)
        #expect(versions.resource(.podDisruptionBudgets).path(namespace: "ns", name: "r") == "/apis/policy/\(policy)/namespaces/ns/poddisruptionbudgets/r")
        #expect(versions.apiVersion(of: .podDisruptionBudgets) == "policy/\(policy)")
        // Every other group Pylon writes is at v1 on each of these releases.
        for group in ["apps", "batch", "coordination.k8s.io", "admissionregistration.k8s.io", "apiextensions.k8s.io"] {
            #expect(versions.versions[group] == "v1", "\(group) on \(release)")
        }
        // The core group and Pylon's own are not chosen: they have one version.
        #expect(versions.resource(.configMaps) == .configMaps)
        #expect(versions.resource(Pylon.racks) == Pylon.racks)
    }

    @Test func aServerWithoutAVersionPylonKnowsIsRefusedNamingTheKind() throws {
        var document = try Self.document("1.34")
        document["groups"] = .array((document["groups"]?.array ?? []).map { group in
            guard group["name"]?.string == "policy" else { return group }
            var changed = group
            changed["versions"] = .array([["groupVersion": "policy/v2", "version": "v2"]])
            return changed
        })
        #expect {
            _ = try ServedVersions(groupList: document)
        } throws: { error in
            let text = "\(error)"
            return text.contains("PodDisruptionBudget") && text.contains("policy/v1 or policy/v1beta1") && text.contains("policy/v2")
        }
        document["groups"] = .array((document["groups"]?.array ?? []).filter { $0["name"]?.string != "apps" })
        #expect {
            _ = try ServedVersions(groupList: document)
        } throws: { error in
            "\(error)".contains("StatefulSet: needs apps/v1, the API server serves no version of apps")
        }
    }

    @Test func beforeDiscoveryTheNewestVersionsAreAssumed() {
        #expect(ServedVersions.newest.versions["policy"] == "v1")
        #expect(ServedVersions.newest.resource(.podDisruptionBudgets) == .podDisruptionBudgets)
    }
}
