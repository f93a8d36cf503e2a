import NIOCore

/// Redis Cluster's key → slot mapping: CRC16 (XMODEM) of the key, or of its hash tag (the part
/// between the first `{` and the next `}`, when not empty), modulo 16384.
public enum HashSlot {
    public static let count = 16384

    public static func of(_ key: ByteBuffer) -> Int {
        key.withUnsafeReadableBytes { self.of(bytes: $0) }
    }

    public static func of(_ key: String) -> Int {
        var key = key
        return key.withUTF8 { self.of(bytes: UnsafeRawBufferPointer($0)) }
    }

    static func of(bytes: UnsafeRawBufferPointer) -> Int {
        var start = 0
        var end = bytes.count
        if let open = bytes.firstIndex(of: UInt8(ascii: "{")),
           let close = bytes[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1 {
            start = open + 1
            end = close
        }
        var crc: UInt16 = 0
        for i in start..<end {
            crc = (crc << 8) ^ table[Int((crc >> 8) ^ UInt16(bytes[i])) & 0xFF]
        }
        return Int(crc) & (count - 1)
    }

    private static let table: [UInt16] = (0..<256).map { byte in
        var crc = UInt16(byte) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }
}
