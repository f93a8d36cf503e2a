public enum Pylon { public static let version = "0.1.0" }
