// The request path the benchmark measures, the same for every mode: the
// middleware binds the request's id (header `x-request-id`) once, and seven
// reads check it from everywhere a request's code runs:
//
//   1  middleware, right after binding
//   2  handler, on entry
//   3  handler, after `await Task.yield()` (may resume on another thread)
//   4  an `async let` child task
//   5  a task-group child task
//   6  handler, after both children are done
//   7  middleware, after the handler returned
//
// A read that differs from the id is a mismatch: counted, and the response
// is a 500 (so wrk counts it too). The counts are printed at exit.
import HTTPTypes
import Hummingbird
import NIOCore
import Synchronization

/// Process-wide tallies. One relaxed add per request (`served`); the others
/// move only when something is wrong.
enum Tally {
    /// Requests that completed all seven reads, every one matching.
    static let served = Atomic<Int>(0)
    /// Reads that did not see their request's id.
    static let mismatches = Atomic<Int>(0)
    /// Requests without an `x-request-id` header (the driver always sends one).
    static let missingHeader = Atomic<Int>(0)
}

/// The reads per request, as listed above.
let readsPerRequest = 7

let requestIDField = HTTPField.Name("x-request-id")!

/// 1 when `read` is not `id`, else 0.
@inline(__always)
func miss(_ read: String?, _ id: String) -> Int { read == id ? 0 : 1 }

let okBody = ByteBuffer(string: "ok\n")
let mismatchBody = ByteBuffer(string: "request id mismatch\n")

/// The middleware's part (reads 1 and 7): binds the request's id with
/// `Binding` for the rest of the request.
///
/// Each mode has its own non-generic middleware type calling this (below):
/// Hummingbird calls middleware through an existential, and the witness of a
/// type generic over `Binding` would be unspecialised generic code, which no
/// application's own middleware is. Inlined into each, everything here is
/// specialised for its binding.
@inline(__always)
func bindAndCheck<Binding: RequestIDBinding>(
    _: Binding.Type, _ request: Request, _ next: () async throws -> Response
) async throws -> Response {
    guard let id = request.headers[requestIDField] else {
        Tally.missingHeader.wrappingAdd(1, ordering: .relaxed)
        return Response(status: .badRequest)
    }
    return try await Binding.bind(
        id,
        {
            var bad = miss(Binding.current, id)  // 1
            var response = try await next()
            bad += miss(Binding.current, id)  // 7
            if bad == 0 && response.status == .ok {
                Tally.served.wrappingAdd(1, ordering: .relaxed)
            } else if bad != 0 {
                Tally.mismatches.wrappingAdd(bad, ordering: .relaxed)
                response = Response(
                    status: .internalServerError, body: ResponseBody(byteBuffer: mismatchBody))
            }
            return response
        })
}

struct TaskLocalMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        try await bindAndCheck(TaskLocalBinding.self, request) { try await next(request, context) }
    }
}

struct ContextKitRunMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        try await bindAndCheck(ContextKitRunBinding.self, request) { try await next(request, context) }
    }
}

struct ContextKitWithValueMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        try await bindAndCheck(ContextKitWithValueBinding.self, request) { try await next(request, context) }
    }
}

struct UnscopedGlobalMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        try await bindAndCheck(UnscopedGlobalBinding.self, request) { try await next(request, context) }
    }
}

/// The handler (reads 2 to 6); each mode's route calls it with its concrete
/// binding (Main.swift), so it is specialised for it.
func respond<Binding: RequestIDBinding>(_ request: Request, _: Binding.Type) async -> Response {
    guard let id = request.headers[requestIDField] else { return Response(status: .badRequest) }
    var bad = miss(Binding.current, id)  // 2
    await Task.yield()
    bad += miss(Binding.current, id)  // 3
    async let childBad = miss(Binding.current, id)  // 4
    let groupBad = await withTaskGroup(of: Int.self) { group in
        group.addTask { miss(Binding.current, id) }  // 5
        return await group.next() ?? 1
    }
    bad += await childBad + groupBad
    bad += miss(Binding.current, id)  // 6
    if bad != 0 {
        Tally.mismatches.wrappingAdd(bad, ordering: .relaxed)
        return Response(status: .internalServerError, body: ResponseBody(byteBuffer: mismatchBody))
    }
    return Response(status: .ok, body: ResponseBody(byteBuffer: okBody))
}
