import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Logging
import NIOCore
import PylonSidecar

/// An in-process sidecar on free loopback ports in front of the given Redis.
final class SidecarFixture: Sendable {
    let sidecar: Sidecar

    init(redis: RedisEndpoint, configure: (inout SidecarConfiguration) -> Void = { _ in }) async throws {
        var configuration = SidecarConfiguration()
        configuration.listen = HostPort(host: "127.0.0.1", port: 0)
        configuration.admin = HostPort(host: "127.0.0.1", port: 0)
        configuration.redis = redis
        configure(&configuration)
        var logger = Logger(label: "pylon.test")
        logger.logLevel = ProcessInfo.processInfo.environment["PYLON_TEST_LOG"] == nil ? .critical : .debug
        self.sidecar = try await Sidecar(configuration: configuration, logger: logger)
        try await self.sidecar.start()
        self.address = HostPort(host: "127.0.0.1", port: self.sidecar.listenAddress!.port!)
        self.adminPort = self.sidecar.adminAddress!.port!
    }

    let address: HostPort
    let adminPort: Int

    func client() async throws -> RedisClient {
        try await RedisClient.connect(to: self.address)
    }

    func stop() async { await self.sidecar.stop() }

    /// GET on the admin endpoint: status code and body.
    func admin(_ path: String) async throws -> (Int, String) {
        let url = URL(string: "http://127.0.0.1:\(self.adminPort)\(path)")!
        let (data, response) = try await URLSession.shared.data(from: url)
        return ((response as! HTTPURLResponse).statusCode, String(decoding: data, as: UTF8.self))
    }
}
