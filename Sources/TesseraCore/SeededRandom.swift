// A small deterministic random generator (SplitMix64), so a failing seed can be rerun.
import Glibc

/// SplitMix64: fast, 64-bit state, good enough for tests, stress tools and sampling; not for
/// anything secret.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension SeededRandom {
    /// A seed for a randomized run (a test, a stress tool): `$TESSERA_SEED` if set, to replay
    /// a run, else a new one. Whoever uses it prints it, so a failure can be replayed.
    static func runSeed() -> UInt64 {
        if let text = getenv("TESSERA_SEED"), let seed = UInt64(String(cString: text)) { return seed }
        var system = SystemRandomNumberGenerator()
        return system.next()
    }

    /// A generator seeded with `runSeed()`, its seed printed for `what`.
    public static func forRun(_ what: String) -> SeededRandom {
        let seed = runSeed()
        print("\(what): seed \(seed) (replay with TESSERA_SEED=\(seed))")
        return SeededRandom(seed: seed)
    }
}
