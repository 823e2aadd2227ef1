// One server's services behind one RequestHandler: CAS now; IOS and SYNC with the data image.
import TesseraCore
import TesseraEngine

/// Dispatches each request to the service that owns it.
public struct ServerNode: RequestHandler {
    public let catalogues: CatalogueService

    public init(engine: Engine) {
        catalogues = CatalogueService(engine: engine)
    }

    public func handle(_ request: Request) async -> Response {
        do {
            switch request.opcode {
            case .createIndexes, .dropIndexes, .listIndexes, .get, .put, .delete, .next:
                return try await catalogues.handle(request)
            case .sync:
                guard case .sync(let transactions) = request else { return .failure(.internalError, "opcode mismatch") }
                if let newest = transactions.max(), newest > 0 { try await catalogues.engine.waitLogged(TxId(group: newest)) }
                return .done
            case .write, .read, .free:
                return .failure(.invalidArgument, "this server has no IO service yet")
            }
        } catch {
            return Response(error)
        }
    }
}
