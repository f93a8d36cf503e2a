import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// A small HTTP/1.1 server for operators and Kubernetes: `/metrics`, `/healthz`, `/readyz`.
/// Each route is a closure evaluated per request.
public final class AdminServer: Sendable {
    public struct Response: Sendable {
        public var status: HTTPResponseStatus
        public var contentType: String
        public var body: String

        public init(status: HTTPResponseStatus = .ok, contentType: String = "text/plain; charset=utf-8", body: String) {
            self.status = status
            self.contentType = contentType
            self.body = body
        }
    }

    public typealias Route = @Sendable () -> Response

    private let routes: [String: Route]
    private let channel: Channel

    /// The bound address (useful when started on port 0).
    public var localAddress: SocketAddress? { self.channel.localAddress }

    public static func start(host: String, port: Int, group: EventLoopGroup, routes: [String: Route]) async throws -> AdminServer {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(AdminHTTPHandler(routes: routes))
                }
            }
            .bind(host: host, port: port).get()
        return AdminServer(routes: routes, channel: channel)
    }

    private init(routes: [String: Route], channel: Channel) {
        self.routes = routes
        self.channel = channel
    }

    public func close() async {
        try? await self.channel.close()
    }
}

private final class AdminHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let routes: [String: AdminServer.Route]
    var path: String?
    var keepAlive = true

    init(routes: [String: AdminServer.Route]) { self.routes = routes }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.path = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "")
            self.keepAlive = head.isKeepAlive
        case .body:
            break
        case .end:
            let response = self.path.flatMap { self.routes[$0] }?() ?? AdminServer.Response(status: .notFound, body: "not found; try /metrics, /healthz or /readyz\n")
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: response.contentType)
            headers.add(name: "Content-Length", value: String(response.body.utf8.count))
            if !self.keepAlive { headers.add(name: "Connection", value: "close") }
            context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: response.status, headers: headers))), promise: nil)
            context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: response.body)))), promise: nil)
            let keepAlive = self.keepAlive
            context.writeAndFlush(self.wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                if !keepAlive { context.close(promise: nil) }
            }
        }
    }
}
