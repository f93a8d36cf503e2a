import Crypto
import Foundation
import SwiftASN1
import X509

/// The webhook's serving certificate and the CA the API server trusts it by (the caBundle of the
/// MutatingWebhookConfiguration), as PEM. Made by the operator itself — a P-256 CA and a leaf it
/// signs for the webhook's host names — or read from files another tool keeps (cert-manager).
public struct WebhookCertificate: Sendable, Equatable {
    public var certificatePEM: String
    public var privateKeyPEM: String
    /// The CAs to trust: the current one first, then the previous one while it is still valid,
    /// so that replicas serving the old certificate stay trusted during a rotation.
    public var caBundlePEM: String
    /// The current CA's key (nil when the certificate comes from elsewhere).
    public var caKeyPEM: String?

    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
    }

    /// A new CA and a serving certificate for `hosts` (DNS names or IP addresses), both valid for
    /// `validity` from now; the previous certificate's CA stays in the bundle until it expires.
    public static func issue(hosts: [String], validity: TimeInterval, previous: WebhookCertificate? = nil) throws -> WebhookCertificate {
        guard let first = hosts.first else { throw Invalid(description: "the webhook certificate needs at least one host name") }
        let now = Date()
        // A little slack for clocks that are behind ours.
        let notBefore = now.addingTimeInterval(-300)
        let notAfter = now.addingTimeInterval(validity)
        let caKey = P256.Signing.PrivateKey()
        let caName = try DistinguishedName { CommonName("pylon-webhook-ca") }
        let ca = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(caKey.publicKey), notValidBefore: notBefore, notValidAfter: notAfter,
            issuer: caName, subject: caName, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            },
            issuerPrivateKey: .init(caKey)
        )
        let key = P256.Signing.PrivateKey()
        let names = hosts.map { host -> GeneralName in
            if let address = Self.ipAddress(host) { return .ipAddress(ASN1OctetString(contentBytes: ArraySlice(address))) }
            return .dnsName(host)
        }
        let leaf = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey), notValidBefore: notBefore, notValidAfter: notAfter,
            issuer: caName, subject: try DistinguishedName { CommonName(first) }, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames(names)
            },
            issuerPrivateKey: .init(caKey)
        )
        var bundle = try ca.serializeAsPEM().pemString + "\n"
        if let previous, let previousCA = try previous.caCertificates().first, previousCA.notValidAfter > now {
            bundle += try previousCA.serializeAsPEM().pemString + "\n"
        }
        return WebhookCertificate(
            certificatePEM: try leaf.serializeAsPEM().pemString + "\n", privateKeyPEM: key.pemRepresentation + "\n",
            caBundlePEM: bundle, caKeyPEM: caKey.pemRepresentation + "\n"
        )
    }

    /// The serving certificate.
    public func certificate() throws -> Certificate { try Certificate(pemEncoded: self.certificatePEM) }

    /// The CAs of the bundle, current first.
    public func caCertificates() throws -> [Certificate] {
        try PEMDocument.parseMultiple(pemString: self.caBundlePEM).map { try Certificate(derEncoded: $0.derBytes) }
    }

    /// When to make a new one: two thirds into the serving certificate's life, as cert-manager
    /// renews by default.
    public func renewalDate() throws -> Date {
        let certificate = try self.certificate()
        let life = certificate.notValidAfter.timeIntervalSince(certificate.notValidBefore)
        return certificate.notValidBefore.addingTimeInterval(life * 2 / 3)
    }

    /// The address bytes of an IPv4 or IPv6 literal; nil for a DNS name.
    static func ipAddress(_ host: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }
}
