import CCurl
import Foundation
import Synchronization

/// One HTTP exchange over libcurl, run on the calling thread (blocking): the Kubernetes client
/// runs these on a thread pool, and watches on threads of their own. libcurl rather than
/// URLSession: on Linux URLSession cannot trust a cluster's own CA, nor present a client
/// certificate.
struct CurlTransfer {
    struct Response: Sendable {
        var status: Int
        var body: Data
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// TLS and authentication for every request to one API server.
    struct TLS: Sendable {
        /// PEM of the CA to trust (nil: the system's).
        var caPEM: Data?
        var clientCertificatePEM: Data?
        var clientKeyPEM: Data?
        var insecureSkipVerify = false
    }

    var method: String
    var url: String
    var headers: [String]
    var body: Data?
    var tls: TLS
    /// The whole exchange must end within this many seconds (0: no limit, for watches).
    var timeoutSeconds: Int
    var connectTimeoutSeconds = 10
    /// Checked while the transfer runs; true aborts it (a watch being stopped).
    var isCancelled: (@Sendable () -> Bool)?

    static let initialized: Void = { curl_global_init(Int(CURL_GLOBAL_DEFAULT)) }()

    /// Easy handles kept between requests: a handle keeps its connections (and TLS sessions)
    /// open, so a request to the same API server does not pay a new TLS handshake.
    private struct Handle: @unchecked Sendable { let curl: UnsafeMutableRawPointer }
    private static let idle = Mutex<[Handle]>([])

    private static func borrow() -> UnsafeMutableRawPointer? {
        if let handle = self.idle.withLock({ $0.popLast() }) { return handle.curl }
        return curl_easy_init()
    }

    private static func giveBack(_ curl: UnsafeMutableRawPointer) {
        curl_easy_reset(curl)  // options go, connections stay
        let kept = self.idle.withLock { idle -> Bool in
            guard idle.count < 8 else { return false }
            idle.append(Handle(curl: curl))
            return true
        }
        if !kept { curl_easy_cleanup(curl) }
    }

    /// Performs the exchange; the body is collected, or handed to `onData` chunk by chunk (then
    /// `Response.body` is empty). `onData` returning false aborts the transfer.
    func perform(onData: ((Data) -> Bool)? = nil) throws -> Response {
        _ = Self.initialized
        // A watch holds its connection for minutes: it gets a handle of its own.
        let keep = self.timeoutSeconds > 0
        guard let curl = keep ? Self.borrow() : curl_easy_init() else { throw Failure(description: "curl_easy_init failed") }
        defer { if keep { Self.giveBack(curl) } else { curl_easy_cleanup(curl) } }
        let sink = Sink(onData: onData, isCancelled: self.isCancelled)
        let context = Unmanaged.passRetained(sink)
        defer { context.release() }
        var headerList: UnsafeMutablePointer<curl_slist>?
        for header in self.headers { headerList = curl_slist_append(headerList, header) }
        defer { curl_slist_free_all(headerList) }

        pylon_curl_set_string(curl, CURLOPT_URL, self.url)
        pylon_curl_set_string(curl, CURLOPT_CUSTOMREQUEST, self.method)
        pylon_curl_set_slist(curl, CURLOPT_HTTPHEADER, headerList)
        pylon_curl_set_long(curl, CURLOPT_NOSIGNAL, 1)
        pylon_curl_set_long(curl, CURLOPT_TIMEOUT, self.timeoutSeconds)
        pylon_curl_set_long(curl, CURLOPT_CONNECTTIMEOUT, self.connectTimeoutSeconds)
        // A watch that stops receiving (even bookmarks) for a minute is considered dead.
        pylon_curl_set_long(curl, CURLOPT_LOW_SPEED_LIMIT, 1)
        pylon_curl_set_long(curl, CURLOPT_LOW_SPEED_TIME, 60)
        pylon_curl_set_long(curl, CURLOPT_TCP_KEEPALIVE, 1)
        pylon_curl_set_pointer(curl, CURLOPT_WRITEDATA, context.toOpaque())
        if self.isCancelled != nil {
            // Polled about once a second even while nothing arrives: a watch stops promptly.
            pylon_curl_set_long(curl, CURLOPT_NOPROGRESS, 0)
            pylon_curl_set_pointer(curl, CURLOPT_XFERINFODATA, context.toOpaque())
            pylon_curl_set_progress(curl) { context, _, _, _, _ in
                Unmanaged<Sink>.fromOpaque(context!).takeUnretainedValue().cancelled() ? 1 : 0
            }
        }
        pylon_curl_set_callback(curl, CURLOPT_WRITEFUNCTION) { data, size, count, context in
            let sink = Unmanaged<Sink>.fromOpaque(context!).takeUnretainedValue()
            let length = size * count
            return sink.take(Data(bytes: data!, count: length)) ? length : 0
        }
        if let caPEM = self.tls.caPEM { try self.blob(curl, CURLOPT_CAINFO_BLOB, caPEM) }
        if let certificate = self.tls.clientCertificatePEM, let key = self.tls.clientKeyPEM {
            try self.blob(curl, CURLOPT_SSLCERT_BLOB, certificate)
            pylon_curl_set_string(curl, CURLOPT_SSLCERTTYPE, "PEM")
            try self.blob(curl, CURLOPT_SSLKEY_BLOB, key)
            pylon_curl_set_string(curl, CURLOPT_SSLKEYTYPE, "PEM")
        }
        if self.tls.insecureSkipVerify {
            pylon_curl_set_long(curl, CURLOPT_SSL_VERIFYPEER, 0)
            pylon_curl_set_long(curl, CURLOPT_SSL_VERIFYHOST, 0)
        }
        var body = self.body ?? Data()
        if self.body != nil {
            pylon_curl_set_long(curl, CURLOPT_POSTFIELDSIZE, body.count)
        }
        let code: CURLcode = body.withUnsafeMutableBytes { bytes in
            if self.body != nil { pylon_curl_set_pointer(curl, CURLOPT_POSTFIELDS, bytes.baseAddress) }
            return curl_easy_perform(curl)
        }
        guard code == CURLE_OK else {
            if code == CURLE_WRITE_ERROR || code == CURLE_ABORTED_BY_CALLBACK, sink.aborted { return Response(status: 0, body: Data()) }
            throw Failure(description: "\(self.method) \(self.url): \(String(cString: curl_easy_strerror(code)))")
        }
        var status = 0
        pylon_curl_response_code(curl, &status)
        return Response(status: status, body: sink.collected)
    }

    private func blob(_ curl: UnsafeMutableRawPointer, _ option: CURLoption, _ data: Data) throws {
        var copy = data
        let code = copy.withUnsafeMutableBytes { pylon_curl_set_blob(curl, option, $0.baseAddress, $0.count) }
        guard code == CURLE_OK else { throw Failure(description: "TLS material: \(String(cString: curl_easy_strerror(code)))") }
    }

    /// Receives the body. Only the transfer's thread touches it.
    private final class Sink {
        let onData: ((Data) -> Bool)?
        let isCancelled: (@Sendable () -> Bool)?
        var collected = Data()
        var aborted = false

        init(onData: ((Data) -> Bool)?, isCancelled: (@Sendable () -> Bool)?) {
            self.onData = onData
            self.isCancelled = isCancelled
        }

        func cancelled() -> Bool {
            if self.isCancelled?() == true { self.aborted = true }
            return self.aborted
        }

        func take(_ data: Data) -> Bool {
            guard let onData = self.onData else {
                self.collected.append(data)
                return true
            }
            if !onData(data) { self.aborted = true }
            return !self.aborted
        }
    }
}
