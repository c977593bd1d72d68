import CContextCore

/// A mapping from context variables to values: Python's `contextvars.Context`.
///
/// Every thread has a current context; every task that runs inside
/// ``run(_:)`` or ``ContextVar/withValue(_:operation:)`` has one too. Copies
/// are O(1) and independent: the two share structure and never affect each
/// other.
///
/// ```swift
/// let requestID = ContextVar<Int>("request_id", default: 0)
/// let context = Context()
/// try context.run { requestID.set(7) }
/// context[requestID]   // 7
/// requestID.value      // 0: the caller's context never changed
/// ```
///
/// Read a context from anywhere (subscript, ``contains(_:)``, ``count``,
/// iteration): readers never block and never see a torn state, also while
/// another thread or task runs inside it and sets variables.
public final class Context: Sendable {
    /// The C context; one reference, released in `deinit`.
    ///
    /// `nonisolated(unsafe)` is sound: the pointer itself never changes, and
    /// the C object is thread-safe for reads from any thread, while its writes
    /// are serialized by the C runtime's entry and claim (`cctx_context_enter`,
    /// `cctx_context_claim`): only the thread that entered it or the task
    /// that claimed it writes.
    @usableFromInline nonisolated(unsafe) let handle: OpaquePointer

    /// Takes over one reference to `handle`.
    init(adopting handle: OpaquePointer) {
        self.handle = handle
    }

    /// Takes a new reference to `handle`, which the caller only borrows (a
    /// watcher callback's context, a thread's chain).
    init(retaining handle: OpaquePointer) {
        self.handle = cctx_context_retain(handle)!
    }

    /// Creates an empty context (Python's `Context()`).
    public convenience init() {
        var out: OpaquePointer?
        checkOrTrap(cctx_context_new(&out), "creating a Context")
        self.init(adopting: out!)
    }

    deinit {
        cctx_context_release(handle)
    }

    /// A copy of the current context (Python's `contextvars.copy_context()`).
    ///
    /// Outside any task: the calling thread's current context. In a task: the
    /// context of the innermost ``run(_:)`` or ``ContextVar/withValue(_:operation:)``
    /// around the call, or an empty context when there is none. O(1).
    public static func copyCurrent() -> Context {
        switch CurrentPlace.resolve {
        case .thread:
            var out: OpaquePointer?
            checkOrTrap(cctx_context_copy_current(&out), "copying the current context")
            return Context(adopting: out!)
        case .task(let frame?, isOwner: true):
            return frame.context.copy()
        case .task(let frame?, isOwner: false):
            // What this task sees of an inherited frame: the variables
            // created `.notInherited` are not part of it.
            return frame.context.copyForSpawn()
        case .task(nil, _):
            return Context()
        }
    }

    /// A copy of this context that shares its structure (O(1)). Later changes
    /// to either are not seen by the other.
    public func copy() -> Context {
        var out: OpaquePointer?
        checkOrTrap(cctx_context_copy(handle, &out), "copying a Context")
        return Context(adopting: out!)
    }

    /// A copy for a new thread or task: as ``copy()``, leaving out variables
    /// that C created with `CCTX_VAR_NOT_INHERITED`.
    func copyForSpawn() -> Context {
        var out: OpaquePointer?
        checkOrTrap(cctx_context_copy_inherit(handle, &out), "copying a Context")
        return Context(adopting: out!)
    }

    /// A copy of the current context for a new thread or task.
    static func copyCurrentForSpawn() -> Context {
        copyCurrent().copyForSpawn()
    }

    /// Whether a thread has entered this context or a task runs in it.
    public var isEntered: Bool {
        cctx_context_is_entered(handle)
    }

    /// Runs `body` with this context as the current one (Python's
    /// `Context.run`), then makes the previous context current again — also
    /// when `body` throws.
    ///
    /// Every ``ContextVar/set(_:)`` inside `body` changes this context and is
    /// visible through it after `run` returns. Outside a task the calling
    /// thread enters the context; in a task, the task does (threads it hops
    /// to are not affected). Tasks created inside `body` with `Task {}`,
    /// `async let` or a task group see this context (read-only).
    ///
    /// - Throws: ``ContextError/contextAlreadyEntered`` if the context is
    ///   already entered anywhere — on another thread, by a task, or by an
    ///   enclosing `run` of the same context; nothing runs then. Errors thrown
    ///   by `body` propagate.
    @discardableResult
    public func run<R>(_ body: () throws -> R) throws -> R {
        let task = currentTaskIdentity()
        if task == 0 {
            try check(cctx_context_enter(handle))
            defer { exitThread() }
            return try withFrame(owner: 0, origin: .run, body)
        } else {
            try check(cctx_context_claim(handle))
            defer { unclaim() }
            return try withFrame(owner: task, origin: .run, body)
        }
    }

    /// Runs `body` in this context, which the caller has just created and no
    /// one else can have entered (so entering cannot fail).
    package func runFresh<R>(origin: FrameOrigin, _ body: () throws -> R) rethrows -> R {
        let task = currentTaskIdentity()
        if task == 0 {
            checkOrTrap(cctx_context_enter(handle), "entering a new Context")
            defer { exitThread() }
            return try withFrame(owner: 0, origin: origin, body)
        } else {
            checkOrTrap(cctx_context_claim(handle), "claiming a new Context")
            defer { unclaim() }
            return try withFrame(owner: task, origin: origin, body)
        }
    }

    /// Binds a new frame for this context around `body`.
    ///
    /// Watchers: a thread (`owner == 0`) entered the context through
    /// `cctx_context_enter`, which has notified them already; a task's scope
    /// notifies them here — `entered` with this context, and when it ends
    /// `exited` with the context the task sees again (the enclosing frame's,
    /// or none). `cctx_notify_watchers` is one atomic load when nobody
    /// watches.
    private func withFrame<R>(owner: UInt, origin: FrameOrigin, _ body: () throws -> R) rethrows -> R {
        let parent = TaskFrame.current
        let frame = TaskFrame(context: self, owner: owner, origin: origin, parent: parent)
        if owner != 0 { cctx_notify_watchers(CCTX_EVENT_ENTERED, handle) }
        defer {
            frame.deactivate()
            if owner != 0 { notifyExited(returningTo: parent) }
        }
        return try TaskFrame.$current.withValue(frame) { try body() }
    }

    /// Sends `exited` for a task scope that ends, with the context the task
    /// returns to (the parent frame's; nil when it has none).
    func notifyExited(returningTo parent: TaskFrame?) {
        if let parent {
            withExtendedLifetime(parent) { cctx_notify_watchers(CCTX_EVENT_EXITED, parent.context.handle) }
        } else {
            cctx_notify_watchers(CCTX_EVENT_EXITED, nil)
        }
    }

    func exitThread() {
        let status = cctx_context_exit(handle)
        precondition(
            status == CCTX_OK,
            "Context.run: cannot exit context: it is not the current context of this thread "
                + "(code inside the body entered a context with cctx_context_enter and did not exit it)")
    }

    func unclaim() {
        let status = cctx_context_unclaim(handle)
        precondition(status == CCTX_OK, "ContextKit internal error: a claimed context was not claimed")
    }
}

extension Context {
    /// Calls `body` with this context's C handle (`cctx_context *`, borrowed
    /// for the call), for C code that takes an explicit context.
    ///
    /// C may read it from any thread (`cctx_context_lookup`,
    /// `cctx_context_count`, `cctx_iter_*`). C may write it
    /// (`cctx_context_set`, `cctx_context_reset`) only where Swift code could
    /// call ``ContextVar/set(_:)`` on it: see
    /// ``withCurrentUnsafeHandle(_:)``.
    public func withUnsafeHandle<R>(_ body: (OpaquePointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(self) { try body(handle) }
    }

    /// Calls `body` with the C handle of the current context, borrowed for the
    /// call, and whether the caller may write it — how async code hands its
    /// context to C functions that take one explicitly.
    ///
    /// - In a task inside ``run(_:)`` / ``ContextVar/withValue(_:operation:)``:
    ///   the task's context. `isWritable` is true in the task that entered it
    ///   (C may then call `cctx_context_set`/`reset` on it during `body`, on
    ///   the calling thread), false in child tasks that inherited it.
    /// - In a task with no context of its own: a new empty context,
    ///   `isWritable` false.
    /// - Outside any task: C code should use the thread's implicit context
    ///   (`cctx_var_get`/`set`); `body` gets a copy of it (a snapshot) and
    ///   `isWritable` false.
    public static func withCurrentUnsafeHandle<R>(
        _ body: (_ handle: OpaquePointer, _ isWritable: Bool) throws -> R
    ) rethrows -> R {
        switch CurrentPlace.resolve {
        case .thread:
            return try copyCurrent().withUnsafeHandle { try body($0, false) }
        case .task(let frame?, isOwner: true):
            return try frame.context.withUnsafeHandle { try body($0, true) }
        case .task(let frame?, isOwner: false):
            // A copy without the `.notInherited` variables, which a task
            // that inherited the frame does not see (O(1) when no variable
            // is `.notInherited`).
            return try frame.context.copyForSpawn().withUnsafeHandle { try body($0, false) }
        case .task(nil, _):
            return try Context().withUnsafeHandle { try body($0, false) }
        }
    }
}
