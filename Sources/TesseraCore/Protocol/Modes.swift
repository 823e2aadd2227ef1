// Modes shared by the engine and the catalogue service: how a put treats an existing key,
// what it did, and which way a scan goes.

/// How a put treats an existing key.
public enum PutMode: UInt8, Sendable {
    /// Insert or replace.
    case overwrite
    /// Insert only; an existing key is left alone and reported as `.exists`.
    case createOnly
}

/// What a put did.
public enum PutOutcome: Sendable, Equatable {
    case inserted, replaced, exists
}

/// Direction of a scan.
public enum ScanDirection: Sendable {
    /// Ascending keys: NEXT.
    case forward
    /// Descending keys: PREV.
    case backward
}

