// How a request id is bound for the length of one request: the only thing
// that differs between the benchmark's modes. The middleware and the handler
// (RequestIDProbe.swift) are generic over it, so every mode runs the same
// code around the binding and the reads.
import ContextKit
import Synchronization

/// One way to make a request id readable from everything a request runs:
/// the middleware, the handler, code after each `await`, and child tasks.
protocol RequestIDBinding: Sendable {
    /// The `--mode` argument that selects it.
    static var mode: String { get }

    /// Runs `body` with `id` bound; `body` and every child task it creates
    /// read `id` through ``current``.
    nonisolated(nonsending) static func bind<R>(
        _ id: String, _ body: nonisolated(nonsending) () async throws -> R
    ) async throws -> R

    /// The id bound for the running request; nil outside any request.
    static var current: String? { get }
}

/// The `@TaskLocal` baseline: `withValue` per request.
enum TaskLocalBinding: RequestIDBinding {
    @TaskLocal static var requestID: String?

    static let mode = "tasklocal"

    nonisolated(nonsending) static func bind<R>(
        _ id: String, _ body: nonisolated(nonsending) () async throws -> R
    ) async throws -> R {
        try await $requestID.withValue(id, operation: body)
    }

    static var current: String? { requestID }
}

/// ContextKit as a Python user writes it: a fresh context per request,
/// entered with `run`, and the id `set` in it.
enum ContextKitRunBinding: RequestIDBinding {
    static let requestID = ContextVar<String>("request_id")

    static let mode = "contextkit-run"

    nonisolated(nonsending) static func bind<R>(
        _ id: String, _ body: nonisolated(nonsending) () async throws -> R
    ) async throws -> R {
        // Inside a Hummingbird middleware `Context` names Hummingbird's
        // generic parameter; here it would not, but spell it as the
        // middleware must.
        try await ContextKit.Context().run(
            {
                _ = requestID.set(id)
                return try await body()
            })
    }

    static var current: String? { requestID.value }
}

/// ContextKit's scoped form, the direct peer of `TaskLocal.withValue`.
enum ContextKitWithValueBinding: RequestIDBinding {
    static let requestID = ContextVar<String>("request_id")

    static let mode = "contextkit-withvalue"

    nonisolated(nonsending) static func bind<R>(
        _ id: String, _ body: nonisolated(nonsending) () async throws -> R
    ) async throws -> R {
        try await requestID.withValue(id, operation: body)
    }

    static var current: String? { requestID.value }
}

/// Deliberately wrong, for the driver's self-check only (never measured): one
/// process-wide slot, as code that keeps request state in a global or a
/// thread-local ends up with under concurrency. With several requests in
/// flight their ids cross, and the reads must report mismatches; if they
/// did not, the check would be proving nothing.
enum UnscopedGlobalBinding: RequestIDBinding {
    static let slot = Mutex<String?>(nil)

    static let mode = "unscoped-global"

    nonisolated(nonsending) static func bind<R>(
        _ id: String, _ body: nonisolated(nonsending) () async throws -> R
    ) async throws -> R {
        slot.withLock { $0 = id }
        return try await body()
    }

    static var current: String? { slot.withLock { $0 } }
}

let allBindings: [any RequestIDBinding.Type] = [
    TaskLocalBinding.self, ContextKitRunBinding.self, ContextKitWithValueBinding.self,
    UnscopedGlobalBinding.self,
]
