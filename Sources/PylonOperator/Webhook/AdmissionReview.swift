import Foundation

/// `admission.k8s.io/v1` AdmissionReview: the request the API server sends a webhook and the
/// response it expects back (same uid; a JSON patch in base64 to mutate).
public struct AdmissionReview: Codable, Sendable {
    public var apiVersion = "admission.k8s.io/v1"
    public var kind = "AdmissionReview"
    public var request: Request?
    public var response: Response?

    public struct Request: Codable, Sendable {
        public var uid: String
        public var kind: GroupVersionKind
        public var namespace: String?
        public var operation: String
        public var object: JSON?
    }

    public struct GroupVersionKind: Codable, Sendable, Equatable {
        public var group: String
        public var version: String
        public var kind: String
    }

    public struct Response: Codable, Sendable {
        public var uid: String
        public var allowed: Bool
        public var patchType: String?
        /// The JSON patch, base64.
        public var patch: String?
        public var status: Status?
        public var warnings: [String]?
    }

    public struct Status: Codable, Sendable {
        public var code: Int?
        public var message: String
    }

    /// A review holding only `response`.
    static func answer(_ response: Response) -> AdmissionReview { AdmissionReview(response: response) }
}

/// The webhook's handler: an AdmissionReview in, an AdmissionReview out. Whatever arrives —
/// malformed JSON, another kind, an operation other than CREATE — is answered with a response
/// saying what was wrong (never a crash); a pod is allowed unchanged whenever it is not Pylon's
/// business, and refused only when it asked for a sidecar that cannot be given.
public struct PodAdmission: Sendable {
    public let injector: SidecarInjector
    /// Looks up a rack and its world in a namespace (nil: not found).
    let lookup: @Sendable (_ namespace: String, _ rack: String) async throws -> (PylonRack?, PylonWorld?)

    public init(injector: SidecarInjector, lookup: @escaping @Sendable (_ namespace: String, _ rack: String) async throws -> (PylonRack?, PylonWorld?)) {
        self.injector = injector
        self.lookup = lookup
    }

    /// The response body for a request body; `uid` is echoed whenever it could be read.
    public func review(_ body: Data) async -> AdmissionReview {
        let review: AdmissionReview
        do { review = try JSONDecoder().decode(AdmissionReview.self, from: body) } catch {
            return .answer(.init(uid: Self.uid(in: body), allowed: false, status: .init(code: 400, message: "pylon webhook: not an admission.k8s.io/v1 AdmissionReview: \(Self.describe(error))")))
        }
        guard let request = review.request else {
            return .answer(.init(uid: "", allowed: false, status: .init(code: 400, message: "pylon webhook: the AdmissionReview has no request")))
        }
        // Allowed unchanged, saying why (the API server's audit log shows it).
        func allow(_ why: String) -> AdmissionReview { .answer(.init(uid: request.uid, allowed: true, status: .init(code: 200, message: why))) }
        guard request.kind == Self.pod else {
            return allow("pylon webhook: only pods get a sidecar; \(request.kind.kind) admitted unchanged")
        }
        guard request.operation == "CREATE", let pod = request.object else {
            return allow("pylon webhook: sidecars are added when a pod is created; \(request.operation) admitted unchanged")
        }
        let namespace = request.namespace ?? pod[path: "metadata.namespace"]?.string ?? "default"
        var outcome = self.injector.precheck(pod: pod)
        if outcome == nil, let rackName = SidecarInjector.rackName(pod) {
            do {
                let (rack, world) = try await self.lookup(namespace, rackName)
                outcome = self.injector.outcome(pod: pod, namespace: namespace, rack: rack, world: world)
            } catch {
                outcome = .refused("pylon webhook: cannot read PylonRack \(rackName) from the API server (\(error)); retry")
            }
        }
        switch outcome {
        case .inject(let patch):
            return .answer(.init(uid: request.uid, allowed: true, patchType: "JSONPatch", patch: JSON.array(patch).data.base64EncodedString()))
        case .unchanged(let why):
            return allow(why)
        case .refused(let message):
            return .answer(.init(uid: request.uid, allowed: false, status: .init(code: 403, message: message)))
        case nil:
            return allow("pylon webhook: nothing to do")
        }
    }

    private static let pod = AdmissionReview.GroupVersionKind(group: "", version: "v1", kind: "Pod")

    /// The request's uid from a body that did not decode as a whole, so the answer can still
    /// be matched to it.
    static func uid(in body: Data) -> String {
        (try? JSON(data: body))?[path: "request.uid"]?.string ?? ""
    }

    static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, let context): "missing \((context.codingPath + [key]).map(\.stringValue).joined(separator: "."))"
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context): "wrong type at \(context.codingPath.map(\.stringValue).joined(separator: "."))"
        case DecodingError.dataCorrupted(let context): context.debugDescription
        default: "\(error)"
        }
    }
}
