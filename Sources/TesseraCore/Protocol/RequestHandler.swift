// The one protocol every server-side service and every remote stub implements.

/// Answers requests. The services of a server implement it over the engine; the RPC client
/// implements it by sending the request over the network, so code above the RPC layer works
/// the same against a local server (in tests) and a remote one.
public protocol RequestHandler: Sendable {
    /// Never throws for a failed request: failures travel as `.failure(status, message)`, so
    /// they cross the network the same way they arise locally.
    func handle(_ request: Request) async -> Response

    /// Answers at once, without suspending, the requests that need no waiting (a catalogue
    /// lookup or a change that replies at close); nil for the rest, which go to `handle`.
    /// Lets a server answer on its network thread and skip two thread hand-offs.
    func handleImmediately(_ request: Request) -> Response?

    /// Answers at once, in order, the leading requests of `requests` that need no waiting,
    /// stopping at the first that does; returns their responses. A server hands it the
    /// requests of one network read, so it may do their work together (one transaction for
    /// a run of changes) as long as each gets the response it would get alone.
    func handleImmediately(_ requests: ArraySlice<Request>) -> [Response]

    /// Answers a READ by filling `destination`, which is exactly the length asked and stays
    /// valid until this returns: nil once it is filled, else the failure. A server reads
    /// its data image straight into the outgoing frame this way.
    func read(_ request: Request, into destination: UnsafeMutableRawBufferPointer) async -> Response?
}

extension RequestHandler {
    public func handleImmediately(_ request: Request) -> Response? { nil }

    /// Answers through `handle` and copies the data.
    public func read(_ request: Request, into destination: UnsafeMutableRawBufferPointer) async -> Response? {
        let response = await handle(request)
        guard case .data(let bytes) = response else { return response }
        guard bytes.count == destination.count else {
            return .failure(.internalError, "READ answered \(bytes.count) bytes, \(destination.count) asked")
        }
        bytes.withUnsafeBytes { destination.copyMemory(from: $0) }
        return nil
    }

    public func handleImmediately(_ requests: ArraySlice<Request>) -> [Response] {
        var out: [Response] = []
        for r in requests {
            guard let response = handleImmediately(r) else { break }
            out.append(response)
        }
        return out
    }
}

extension Response {
    /// The response for a thrown error.
    public init(_ error: Error) {
        if let e = error as? TesseraError {
            self = .failure(Status(e.code), e.message)
        } else {
            self = .failure(.internalError, "\(error)")
        }
    }

    /// Throws the error a `.failure` carries; returns any other response unchanged.
    public func unwrap() throws -> Response {
        if case .failure(let status, let message) = self {
            throw TesseraError(status.code ?? .internalError, message)
        }
        return self
    }
}

/// A connection to another server (an RPC client): whether it is still open, and closing it.
public protocol PeerConnection: Sendable {
    var isActive: Bool { get }
    func close() async
}
