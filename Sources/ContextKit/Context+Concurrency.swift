import CContextCore
import CContextKitShims

extension Context {
    /// Runs the asynchronous `body` in this context (Python's `Context.run`
    /// for a coroutine), then leaves it — also when `body` throws.
    ///
    /// The task enters the context: `body` may suspend and resume on any
    /// thread, and every ``ContextVar/set(_:)`` / ``ContextVar/reset(_:)``
    /// inside it changes this context and is visible after each `await` and
    /// through the context after `run` returns. Child tasks created inside
    /// (`async let`, task groups, `Task {}`) read this context; their own
    /// `set` gives them a private copy. `body` keeps the caller's isolation.
    ///
    /// - Throws: ``ContextError/contextAlreadyEntered`` if the context is
    ///   already entered (by a thread, another task, or an enclosing `run`);
    ///   `body` does not run then. Errors thrown by `body` propagate.
    ///
    /// `nonisolated(nonsending)`: the call runs on the caller's executor (no
    /// hop in or out), which an `isolated` parameter defaulted to
    /// `#isolation` did not guarantee for a nonisolated caller.
    ///
    /// `@inlinable`: inlined into the caller, the scope's code runs in the
    /// caller's async frame and a body closure the caller wrote can be
    /// called directly, where an outlined `run` cost two task-allocator
    /// frames (its own and the body's) per call (docs/performance.md).
    @inlinable @discardableResult
    public nonisolated(nonsending) func run<R>(
        _ body: nonisolated(nonsending) () async throws -> R,
        file: StaticString = #fileID, line: UInt = #line
    ) async throws -> R {
        let scope = try ContextScope.enter(self, origin: .run)
        defer { scope.leave(file: file, line: line) }
        return try await TaskBinding.withCurrent(scope.binding, body)
    }

    /// As `run` for a context the caller has just created,
    /// which nobody else can have entered.
    nonisolated(nonsending) func runFresh<R>(
        origin: consuming FrameOrigin,
        _ body: nonisolated(nonsending) () async throws -> R,
        file: StaticString = #fileID, line: UInt = #line
    ) async rethrows -> R {
        try await Context.runFresh(
            adopting: cctx_context_retain(handle)!, origin: origin, body, file: file, line: line)
    }

    /// As `run` for a C context the caller has just made (one reference,
    /// which the scope's binding takes over). `@inlinable` for
    /// `ContextVar.withValue` (see `run`).
    @inlinable
    nonisolated(nonsending) static func runFresh<R>(
        adopting handle: OpaquePointer,
        place: cctx_shim_place? = nil,
        origin: consuming FrameOrigin,
        _ body: nonisolated(nonsending) () async throws -> R,
        file: StaticString = #fileID, line: UInt = #line
    ) async rethrows -> R {
        let scope = ContextScope.enterFresh(adopting: handle, place: place, origin: origin, file: file, line: line)
        defer { scope.leave(file: file, line: line) }
        return try await TaskBinding.withCurrent(scope.binding, body)
    }

    /// As `run` for a context the caller has just created,
    /// run with the given isolation (the spawn helpers and the
    /// ServiceContext bridge).
    package func runFresh<R>(
        origin: consuming FrameOrigin,
        _ body: () async throws -> R,
        isolation: isolated (any Actor)?,
        file: StaticString = #fileID, line: UInt = #line
    ) async rethrows -> R {
        let scope = ContextScope.enterFresh(
            adopting: cctx_context_retain(handle)!, origin: origin, file: file, line: line)
        defer { scope.leave(file: file, line: line) }
        return try await TaskBinding.$current.withValue(scope.object, operation: body, isolation: isolation)
    }
}
