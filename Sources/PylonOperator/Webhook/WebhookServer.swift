import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// The admission webhook's HTTPS server: POST bodies to `handler`, its answer back as JSON.
/// Each new connection takes the TLS context current then, so a renewed certificate is served
/// without a restart.
public final class WebhookServer: Sendable {
    public typealias Handler = @Sendable (_ path: String, _ body: Data) async -> (status: HTTPResponseStatus, body: Data)

    /// Larger requests are refused (an AdmissionReview of a pod is a few KiB; the API server
    /// itself caps objects at 3 MiB).
    static let maxBody = 4 << 20

    private let channel: Channel
    private let state: ServerState

    /// The TLS context new connections take, and the connections open (closed with the server).
    private final class ServerState: Sendable {
        let context: Mutex<NIOSSLContext>
        let connections = Mutex<[ObjectIdentifier: Channel]>([:])
        init(_ context: NIOSSLContext) { self.context = Mutex(context) }
    }

    public var localAddress: SocketAddress? { self.channel.localAddress }

    public static func start(host: String, port: Int, group: EventLoopGroup, certificate: WebhookCertificate, handler: @escaping Handler) async throws -> WebhookServer {
        let tls = ServerState(try Self.context(certificate))
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let context = tls.context.withLock { $0 }
                let id = ObjectIdentifier(channel)
                tls.connections.withLock { $0[id] = channel }
                channel.closeFuture.whenComplete { _ in tls.connections.withLock { _ = $0.removeValue(forKey: id) } }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(WebhookHTTPHandler(handler: handler))
                }
            }
            .bind(host: host, port: port).get()
        return WebhookServer(channel: channel, state: tls)
    }

    private init(channel: Channel, state: ServerState) {
        self.channel = channel
        self.state = state
    }

    /// Serves `certificate` to connections from now on.
    public func use(_ certificate: WebhookCertificate) throws {
        let context = try Self.context(certificate)
        self.state.context.withLock { $0 = context }
    }

    static func context(_ certificate: WebhookCertificate) throws -> NIOSSLContext {
        let chain = try NIOSSLCertificate.fromPEMBytes(Array(certificate.certificatePEM.utf8))
        let key = try NIOSSLPrivateKey(bytes: Array(certificate.privateKeyPEM.utf8), format: .pem)
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        return try NIOSSLContext(configuration: configuration)
    }

    /// Stops listening and closes every connection (the API server's kept ones included).
    public func close() async {
        try? await self.channel.close()
        for connection in self.state.connections.withLock({ $0.values }) { try? await connection.close() }
    }
}

private final class WebhookHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let handler: WebhookServer.Handler
    var head: HTTPRequestHead?
    var body = Data()
    var tooLarge = false

    init(handler: @escaping WebhookServer.Handler) { self.handler = handler }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            self.body = Data()
            self.tooLarge = false
        case .body(var chunk):
            if self.body.count + chunk.readableBytes > WebhookServer.maxBody {
                self.tooLarge = true
            } else if let bytes = chunk.readBytes(length: chunk.readableBytes) {
                self.body.append(contentsOf: bytes)
            }
        case .end:
            guard let head = self.head else { return }
            let keepAlive = head.isKeepAlive
            let path = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "")
            if self.tooLarge {
                self.respond(context: context, status: .payloadTooLarge, body: Data("request larger than \(WebhookServer.maxBody) bytes\n".utf8), keepAlive: false)
            } else if head.method != .POST {
                self.respond(context: context, status: .methodNotAllowed, body: Data("POST an AdmissionReview to \(path)\n".utf8), keepAlive: keepAlive)
            } else {
                let (handler, body) = (self.handler, self.body)
                let promise = context.eventLoop.makePromise(of: (status: HTTPResponseStatus, body: Data).self)
                promise.completeWithTask { await handler(path, body) }
                promise.futureResult.assumeIsolated().whenSuccess { answer in
                    self.respond(context: context, status: answer.status, body: answer.body, keepAlive: keepAlive)
                }
            }
        }
    }

    func respond(context: ChannelHandlerContext, status: HTTPResponseStatus, body: Data, keepAlive: Bool) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: status == .ok ? "application/json" : "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: String(body.count))
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A client that failed the TLS handshake or spoke garbage: drop its connection only.
        context.close(promise: nil)
    }
}
