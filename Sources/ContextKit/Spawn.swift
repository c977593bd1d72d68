// Spawning tasks in a copy of the current context: Python's
// `asyncio.create_task`, which runs the new task in `copy_context()` taken at
// the moment of the call. A task started this way owns its copy, so `set`
// inside it works as in Python and changes nothing outside it.

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
        return Task(priority: priority) {
            await context.runFresh(origin: .helper("Context.task"), operation, isolation: nil)
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
        return Task(priority: priority) {
            try await context.runFresh(origin: .helper("Context.task"), operation, isolation: nil)
        }
    }
}

extension TaskGroup {
    /// Adds a child task that runs `operation` in a copy of the current
    /// context taken now, which the child owns and may ``ContextVar/set(_:)``.
    ///
    /// A plain `addTask` child sees the group's context read-only; use this
    /// when the child sets variables of its own.
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
    /// A plain `addTask` child sees the group's context read-only; use this
    /// when the child sets variables of its own.
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
