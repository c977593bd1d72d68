import CContextCore

extension Context {
    /// Runs the asynchronous `body` in this context (Python's `Context.run`
    /// for a coroutine), then leaves it — also when `body` throws.
    ///
    /// The task enters the context: `body` may suspend and resume on any
    /// thread, and every ``ContextVar/set(_:)`` / ``ContextVar/reset(_:)``
    /// inside it changes this context and is visible after each `await` and
    /// through the context after `run` returns. Child tasks created inside
    /// (`async let`, task groups, `Task {}`) see this context (read-only);
    /// to give a child a context it can write, use `Context.task(priority:operation:)`
    /// or a `run` of its own. `body` keeps the caller's isolation.
    ///
    /// - Throws: ``ContextError/contextAlreadyEntered`` if the context is
    ///   already entered (by a thread, another task, or an enclosing `run`);
    ///   `body` does not run then. Errors thrown by `body` propagate.
    @discardableResult
    public func run<R>(
        _ body: () async throws -> R,
        isolation: isolated (any Actor)? = #isolation
    ) async throws -> R {
        try check(cctx_context_claim(handle))
        defer { unclaim() }
        return try await withFrame(origin: .run, body, isolation: isolation)
    }

    /// As ``run(_:isolation:)`` for a context the caller has just created,
    /// which nobody else can have entered.
    package func runFresh<R>(
        origin: FrameOrigin,
        _ body: () async throws -> R,
        isolation: isolated (any Actor)?
    ) async rethrows -> R {
        checkOrTrap(cctx_context_claim(handle), "claiming a new Context")
        defer { unclaim() }
        return try await withFrame(origin: origin, body, isolation: isolation)
    }

    /// Binds a new frame for the task's async scope; notifies watchers of
    /// `entered` at its start and `exited` (with the enclosing frame's
    /// context, or none) at its end, on whatever thread each happens.
    private func withFrame<R>(
        origin: FrameOrigin,
        _ body: () async throws -> R,
        isolation: isolated (any Actor)?
    ) async rethrows -> R {
        let parent = TaskFrame.current
        let frame = TaskFrame(context: self, owner: currentTaskIdentity(), origin: origin, parent: parent)
        cctx_notify_watchers(CCTX_EVENT_ENTERED, handle)
        defer {
            frame.deactivate()
            notifyExited(returningTo: parent)
        }
        return try await TaskFrame.$current.withValue(frame, operation: body, isolation: isolation)
    }
}
