// Spawning tasks in a copy of the current context: Python's
// `asyncio.create_task`, which runs the new task in `copy_context()` taken at
// the moment of the call. A task started this way owns its copy, so `set`
// inside it works as in Python and changes nothing outside it.

import CContextKitShims

extension Context {
    /// Starts a task that runs `operation` in a copy of the current context
    /// taken now (Python's `asyncio.create_task`).
    ///
    /// The task sees every value the caller sees at the moment of the call —
    /// later changes by the caller do not show — and may ``ContextVar/set(_:)``
    /// freely: the copy is its own. Like `Task {}` it is unstructured; unlike
    /// `Task {}` it does not keep the caller's actor isolation.
    @discardableResult
    public static func task<Success: Sendable>(
        priority: TaskPriority? = nil,
        operation: sending @escaping () async -> Success
    ) -> Task<Success, Never> {
        let context = copyCurrentForSpawn()
        let transfer = SendingTransfer(operation)
        return withoutBinding {
            Task(priority: priority) {
                await context.runFresh(origin: .helper("Context.task"), transfer.value, isolation: nil)
            }
        }
    }

    /// Starts a throwing task that runs `operation` in a copy of the current
    /// context taken now (Python's `asyncio.create_task`). See
    /// ``task(priority:operation:)-swift.type.method`` for the rules.
    @discardableResult
    public static func task<Success: Sendable>(
        priority: TaskPriority? = nil,
        operation: sending @escaping () async throws -> Success
    ) -> Task<Success, any Error> {
        let context = copyCurrentForSpawn()
        let transfer = SendingTransfer(operation)
        return withoutBinding {
            Task(priority: priority) {
                try await context.runFresh(origin: .helper("Context.task"), transfer.value, isolation: nil)
            }
        }
    }
}

/// Runs `body` (which creates an unstructured task) with no ContextKit
/// binding current, so that the new task's copy of the task-locals holds
/// none: it gets its context from the helper, and must not keep the
/// spawner's binding (and the values in it) alive for its whole life.
private func withoutBinding<R>(_ body: () -> R) -> R {
    // On a thread, what `TaskBinding.current` reads follows (see
    // `cctx_shim_thread_scope_binding`).
    let onThread = currentTask() == nil
    let previous = onThread ? cctx_shim_thread_scope_binding_exchange(nil) : nil
    defer {
        if onThread { _ = cctx_shim_thread_scope_binding_exchange(previous) }
        TaskBinding.placeChanged()
    }
    return TaskBinding.$current.withValue(nil) {
        TaskBinding.placeChanged()
        return body()
    }
}

/// Carries a `sending` closure into the task that `withoutBinding` creates.
///
/// `@unchecked Sendable` is sound: the closure arrived as `sending` (no
/// other reference to its state exists in the caller), the wrapper is made
/// once and consumed by exactly one task.
private struct SendingTransfer<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

extension TaskGroup {
    /// Adds a child task that runs `operation` in a copy of the current
    /// context taken now, which the child owns and may ``ContextVar/set(_:)``.
    ///
    /// A plain `addTask` child reads the group's context (its own `set`
    /// makes a private copy) but not the unscoped values its parent set;
    /// this helper passes those on too (docs/concurrency.md).
    public mutating func addTaskInCopiedContext(
        priority: TaskPriority? = nil,
        operation: sending @escaping () async -> ChildTaskResult
    ) {
        let context = Context.copyCurrentForSpawn()
        addTask(priority: priority) {
            await context.runFresh(origin: .helper("addTaskInCopiedContext"), operation, isolation: nil)
        }
    }
}

extension ThrowingTaskGroup {
    /// Adds a child task that runs `operation` in a copy of the current
    /// context taken now, which the child owns and may ``ContextVar/set(_:)``.
    ///
    /// A plain `addTask` child reads the group's context (its own `set`
    /// makes a private copy) but not the unscoped values its parent set;
    /// this helper passes those on too (docs/concurrency.md).
    public mutating func addTaskInCopiedContext(
        priority: TaskPriority? = nil,
        operation: sending @escaping () async throws -> ChildTaskResult
    ) {
        let context = Context.copyCurrentForSpawn()
        addTask(priority: priority) {
            try await context.runFresh(origin: .helper("addTaskInCopiedContext"), operation, isolation: nil)
        }
    }
}
