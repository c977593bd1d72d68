import CContextCore
import CContextKitShims

/// A mapping from context variables to values: Python's `contextvars.Context`.
///
/// Every thread has a current context; every task that runs inside
/// `run` or `ContextVar.withValue` has one too. Copies
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
        self.init(adopting: Context.newHandle())
    }

    deinit {
        cctx_context_release(handle)
    }

    /// A copy of the current context (Python's `contextvars.copy_context()`).
    ///
    /// Outside any task: the calling thread's current context. In a task: the
    /// context of the innermost `run` or `ContextVar.withValue`
    /// around the call, or an empty context when there is none. O(1).
    public static func copyCurrent() -> Context {
        Context(adopting: copyCurrentHandle())
    }

    /// ``copyCurrent()`` as a C context (one reference, the caller's), for
    /// the scopes that need no Swift object around it.
    static func copyCurrentHandle() -> OpaquePointer {
        switch CurrentPlace.resolve {
        case .thread:
            var out: OpaquePointer?
            checkOrTrap(cctx_context_copy_current(&out), "copying the current context")
            return out!
        case .task(_, let binding?, let owned):
            // What this task sees of a binding it does not own: the
            // variables created `.notInherited` are not part of it.
            return owned ? copyHandle(of: binding.handle) : binding.copyInheritedForSpawn()
        case .task(_, nil, _):
            return newHandle()
        }
    }

    /// A copy of this context that shares its structure (O(1)). Later changes
    /// to either are not seen by the other.
    public func copy() -> Context {
        Context(adopting: Context.copyHandle(of: handle))
    }

    /// A copy for a new thread or task: as ``copy()``, leaving out variables
    /// that C created with `CCTX_VAR_NOT_INHERITED`.
    func copyForSpawn() -> Context {
        Context(adopting: Context.copyForSpawnHandle(of: handle))
    }

    /// A copy of the current context for a new thread or task.
    static func copyCurrentForSpawn() -> Context {
        copyCurrent().copyForSpawn()
    }

    /// A new empty C context (one reference, the caller's).
    static func newHandle() -> OpaquePointer {
        var out: OpaquePointer?
        checkOrTrap(cctx_context_new(&out), "creating a Context")
        return out!
    }

    /// A copy of the C context `handle` (borrowed); one reference, the
    /// caller's.
    static func copyHandle(of handle: OpaquePointer) -> OpaquePointer {
        var out: OpaquePointer?
        checkOrTrap(cctx_context_copy(handle, &out), "copying a Context")
        return out!
    }

    /// As ``copyHandle(of:)``, leaving out the `CCTX_VAR_NOT_INHERITED`
    /// variables.
    static func copyForSpawnHandle(of handle: OpaquePointer) -> OpaquePointer {
        var out: OpaquePointer?
        checkOrTrap(cctx_context_copy_inherit(handle, &out), "copying a Context")
        return out!
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
    /// `async let` or a task group read this context; their own `set` gives
    /// them a private copy. `file`/`line` name the caller in the one stop
    /// that remains (C code inside `body` left a context entered).
    ///
    /// - Throws: ``ContextError/contextAlreadyEntered`` if the context is
    ///   already entered anywhere — on another thread, by a task, or by an
    ///   enclosing `run` of the same context; nothing runs then. Errors thrown
    ///   by `body` propagate.
    ///
    /// `@inlinable`, as the asynchronous `run`: the scope runs in the
    /// caller's frame, specialised for `R`, and calls a body closure the
    /// caller wrote directly (docs/performance.md).
    @inlinable @discardableResult
    public func run<R>(
        _ body: () throws -> R, file: StaticString = #fileID, line: UInt = #line
    ) throws -> R {
        let scope = try ContextScope.enter(self, origin: .run)
        defer { scope.leave(file: file, line: line) }
        return try scope.withCurrent(body)
    }

    /// Runs `body` in this context, which the caller has just created and no
    /// one else can have entered (so entering cannot fail).
    package func runFresh<R>(
        origin: consuming FrameOrigin, _ body: () throws -> R, file: StaticString = #fileID, line: UInt = #line
    ) rethrows -> R {
        try Context.runFresh(adopting: cctx_context_retain(handle)!, origin: origin, body, file: file, line: line)
    }

    /// As ``runFresh(origin:_:file:line:)`` for a C context the caller has
    /// just made (one reference, which the scope's binding takes over).
    /// `place`: `cctx_shim_current_place()` if the caller has just asked it.
    /// `@inlinable` for `ContextVar.withValue` (see `run`).
    @inlinable
    static func runFresh<R>(
        adopting handle: OpaquePointer, place: cctx_shim_place? = nil, origin: consuming FrameOrigin,
        _ body: () throws -> R, file: StaticString = #fileID, line: UInt = #line
    ) rethrows -> R {
        let scope = ContextScope.enterFresh(adopting: handle, place: place, origin: origin, file: file, line: line)
        defer { scope.leave(file: file, line: line) }
        return try scope.withCurrent(body)
    }
}

/// One scope of `Context.run` / `ContextVar.withValue` / a spawn helper: the
/// one place that enters or claims a context, binds it, notifies watchers,
/// and undoes all of it. The sync and async `run` differ only in how they
/// bind (`TaskLocal.withValue`, sync or async) around the body.
///
/// Noncopyable: a scope is entered and left once, and as a copyable value
/// held across the body's `await`s it was copied and destroyed through its
/// value witnesses (a retain/release pair and two calls per scope).
///
/// Four words, so that the entry returns the scope in registers: the C
/// context is the binding's (``handle``), and the caller's `file`/`line`
/// (needed only by ``leave(file:line:)``'s stops) are passed to the end
/// instead of being stored (as nine words, returned through memory, the
/// scope cost ≈ 15 instructions more per scope: docs/performance.md).
@usableFromInline
struct ContextScope: ~Copyable {
    /// The C context entered (by a thread) or claimed (by a task): the
    /// binding's, which holds its reference or borrows it from `run`'s
    /// caller (`handle` changes only in `rebind`, which no one can call on
    /// the scope's binding while the scope holds it).
    var handle: OpaquePointer { binding._withUnsafeGuaranteedRef { $0.handle } }
    /// The binding that makes it current for the scope: the scope's one
    /// reference (+1), which ``leave(file:line:)`` hands on (the thread's
    /// spare) or releases. Unmanaged, so that every field of the scope is trivial:
    /// held strongly, the scope's end released it through the scope's
    /// value witnesses (an outlined destroy calling the generic `Optional`
    /// and `SwiftRetainableBox` witnesses, ≈ 65 instructions more than the
    /// release), and parking it took a retain of its own.
    @usableFromInline let binding: Unmanaged<TaskBinding>

    /// ``binding`` as an object, borrowed from the scope's reference (which
    /// lives until ``leave(file:line:)``).
    var object: TaskBinding { binding.takeUnretainedValue() }
    /// The binding the task saw before the scope (for the `exited` event),
    /// unretained: something else keeps it alive for the whole scope — the
    /// enclosing scope's own frame (scopes are LIFO), the task-local items
    /// the task inherited (they live as long as the task), or the unscoped
    /// table (its entry stays until the task ends). Held strongly here, it
    /// cost a retain/release pair (two locked instructions) per scope.
    let enclosing: Unmanaged<TaskBinding>?
    /// Whether the task owned `enclosing`: the place it returns to when the
    /// scope ends (scopes are LIFO, and inside this scope the task writes
    /// only this scope's binding, so that place cannot change meanwhile).
    let enclosingOwned: Bool
    /// The task's id as its place entry held it at the start, or 0: handed
    /// to the put that restores the enclosing place (see
    /// `cctx_shim_place_cached_id`).
    let enclosingID: UInt64

    /// Enters `context` for a scope: a thread enters it
    /// (`cctx_context_enter`, which notifies watchers), a task claims it
    /// (`cctx_context_claim`) and notifies watchers here.
    ///
    /// - Throws: ``ContextError/contextAlreadyEntered`` when the context is
    ///   entered or claimed anywhere; nothing changed then.
    ///
    /// Forwards to a free function (``enterContextScope(_:origin:)``):
    /// a static method's metatype parameter is dead, so the optimizer
    /// specialised the method without it and left the entry point an
    /// inlinable caller calls as a thunk (≈ 30 instructions: a second frame
    /// and a copy of the scope).
    @inlinable @inline(__always)
    static func enter(_ context: Context, origin: consuming FrameOrigin) throws(ContextError) -> ContextScope {
        try enterContextScope(context, origin: consume origin)
    }

    /// As ``enterFresh(adopting:place:origin:file:line:)``, through a free
    /// function for the same reason as ``enter(_:origin:)``.
    @inlinable @inline(__always)
    static func enterFresh(
        adopting handle: OpaquePointer, place known: cctx_shim_place? = nil, origin: consuming FrameOrigin,
        file: StaticString, line: UInt
    ) -> ContextScope {
        enterFreshContextScope(adopting: handle, place: known, origin: consume origin, file: file, line: line)
    }

    /// As ``enter(_:origin:)`` for a C context nobody else can
    /// have entered (the caller just made it), whose reference the scope's
    /// binding takes over.
    /// `place`: `cctx_shim_current_place()` if the caller has just asked
    /// it (on this thread, with nothing in between that changes places).
    static func enterFreshOutOfLine(
        adopting handle: OpaquePointer, place known: cctx_shim_place? = nil, origin: consuming FrameOrigin,
        file: StaticString, line: UInt
    ) -> ContextScope {
        let place = known ?? cctx_shim_current_place_inline()
        let status = place.task == nil ? cctx_context_enter(handle) : cctx_context_claim(handle)
        checkOrTrap(status, "entering a new Context", file: file, line: line)
        return ContextScope(adopting: handle, borrowed: false, place: place, origin: consume origin)
    }

    /// `place`: `cctx_shim_current_place()` as the caller asked it, right
    /// before (entering or claiming the context changes no place).
    /// `handle`: one reference, which the binding takes over; or, when
    /// `borrowed`, a context the caller keeps alive until the scope has
    /// ended (`TaskBinding.borrowsHandle`).
    @inline(__always)
    fileprivate init(
        adopting handle: OpaquePointer, borrowed: Bool, place: cctx_shim_place, origin: consuming FrameOrigin
    ) {
        let task = place.task
        var place = place
        // With no watcher installed (one inlined relaxed load,
        // `cctx_watchers_installed`; its header argues why relaxed is
        // enough) there is no `entered` event to send and nothing can have
        // run between the caller's `place` and here: skip the generation
        // reads, the call and the re-check.
        // A watcher added after this load sees the scope as begun before it
        // was installed, as a thread's `cctx_context_enter` before an add;
        // `leave` asks again for itself.
        if task != nil && cctx_watchers_installed() {
            // The `entered` watchers run in this task before the scope's
            // binding exists, and may `set`: the task's first write makes
            // its unscoped binding, a new place for it (which bumps the
            // generation). The enclosing place is what `leave` makes the
            // task's place again, so take it after the watchers: when the
            // generation moved (this task's change, or only other tasks'),
            // ask again; otherwise nothing of this task's changed since the
            // caller's `place`. (Before: the place from before the watchers,
            // so after the scope the task read, and its next `set` copied,
            // the context it had before its own watcher's write.)
            // A watcher may also run another task on this thread
            // (`Task.immediate`), whose read fills the thread's entry with
            // that task's place without moving the generation: the entry
            // is then no longer this task's, so ask again too.
            let generation = cctx_shim_place_generation()
            cctx_notify_watchers(CCTX_EVENT_ENTERED, handle)
            if cctx_shim_place_generation() != generation || place.entry.map({ $0.pointee.task != task }) == true {
                place = cctx_shim_current_place()
            }
        }
        // The enclosing binding, unretained (see `enclosing`): from the
        // place entry when it is the task's, without the retain a
        // `CurrentPlace` value takes.
        let enclosing: Unmanaged<TaskBinding>?
        if let task {
            if let entry = place.entry {
                enclosing = entry.pointee.binding.map { Unmanaged<TaskBinding>.fromOpaque($0) }
                enclosingOwned = entry.pointee.owned
            } else if case .task(_, let binding, let owned) = CurrentPlace.resolveMissed(in: task) {
                enclosing = binding.map { Unmanaged.passUnretained($0) }
                enclosingOwned = owned
            } else {
                enclosing = nil
                enclosingOwned = false
            }
        } else {
            enclosing = cctx_shim_thread_scope_binding().map { Unmanaged<TaskBinding>.fromOpaque($0) }
            enclosingOwned = false
        }
        enclosingID = task.map { cctx_shim_place_cached_id($0) } ?? 0
        // The thread's spare binding when it has one (`TaskBinding.park`),
        // in a task or outside any: no allocation.
        if let spare = TaskBinding.takeSpare() {
            // `origin` moved into the binding (`take()`; a closure cannot
            // `consume` what it captures): copied, its name's storage took
            // a retain and a release more per scope. Borrowed through
            // `_withUnsafeGuaranteedRef`: `takeUnretainedValue()` cost a
            // retain and a release of the binding.
            var moving = Optional(consume origin)
            spare._withUnsafeGuaranteedRef {
                $0.rebind(
                    adopting: handle, borrowed: borrowed, owner: task, origin: moving.take()!, enclosing: enclosing)
            }
            self.binding = spare
        } else {
            self.binding = Unmanaged.passRetained(
                TaskBinding(adopting: handle, borrowed: borrowed, owner: task, origin: consume origin, enclosing: enclosing))
        }
        self.enclosing = task == nil ? nil : enclosing
        if task != nil {
            // After the watchers (which may read and cache the enclosing
            // place), before the task-local push: the task reads nothing
            // in between.
            TaskBinding.placeChanged(task: task!, to: binding, owned: true, id: 0)
        }
    }

    /// Runs `body` with the scope's binding current
    /// (``TaskBinding/withCurrent(_:onThread:_:)``). A method, so that the
    /// binding is passed borrowed from the scope, with no retain/release.
    @inlinable @inline(__always)
    func withCurrent<R>(_ body: () throws -> R) rethrows -> R {
        try binding._withUnsafeGuaranteedRef { try TaskBinding.withCurrent($0, onThread: $0.owner == nil, body) }
    }

    /// Ends the scope: a thread exits the context, a task unclaims it and
    /// notifies watchers of `exited` with the context it sees again (the
    /// enclosing binding's, or none). `file`/`line`: where the scope was
    /// opened, for a stop that names the caller.
    ///
    /// The stops are the caller's (inlined): ``end()`` returns which one,
    /// so that `file`/`line` — constants in the caller — are not held in
    /// registers (saved and spilled) across ``end()``'s calls.
    ///
    /// A thread's scope (no owner task) ends through
    /// ``endThreadScope(_:)``, which takes the binding alone: the scope's
    /// other words, passed in registers, were kept across its calls.
    @inlinable @inline(__always)
    func leave(file: StaticString, line: UInt) {
        let onThread = binding._withUnsafeGuaranteedRef { $0.owner == nil }
        let failure = onThread ? endThreadScope(binding) : end()
        if failure != 0 { ContextScope.endFailed(failure, file: file, line: line) }
    }

    /// The start of ``end()``, for both kinds of scope: the binding is
    /// no longer active; whether it escaped, frozen if so; and its owner.
    @inline(__always)
    fileprivate static func endBegin(_ binding: Unmanaged<TaskBinding>) -> (owner: UnsafeRawPointer?, escaped: Bool) {
        // Borrowed from the scope's reference (no retain/release around the
        // calls below).
        let owner = binding._withUnsafeGuaranteedRef { binding in
            binding.isActiveFlag.store(false, ordering: .relaxed)
            return binding.owner
        }
        // Who escaped (see `TaskBinding`, "After the scope"): the scope's
        // reference is the only one. Asked of the object itself, so that
        // no temporary copy (an unoptimised build makes them) reads as a
        // second holder.
        let escaped = !cctx_shim_is_uniquely_referenced_inline(binding.toOpaque())
        // Before the exit/unclaim: once the context is free, another scope
        // may enter it and write (see `TaskBinding`, "After the scope").
        if escaped { binding._withUnsafeGuaranteedRef { $0.freezeEscaped() } }
        return (owner, escaped)
    }

    /// The rest of a thread's end. The task-local pop has just happened;
    /// `cctx_context_exit` sends the thread's own `exited`.
    @inline(__always)
    fileprivate static func finishOnThread(_ binding: Unmanaged<TaskBinding>, escaped: Bool) -> UInt8 {
        // The binding's context (its `handle` changes only in `rebind`,
        // which nothing can call on it before it is parked below).
        if cctx_context_exit(binding._withUnsafeGuaranteedRef { $0.handle }) != CCTX_OK { return 1 }
        // The scope's reference: parked as the thread's spare, or
        // released.
        if escaped { binding.release() } else { TaskBinding.park(binding) }
        return 0
    }

    /// ``leave(file:line:)``'s stop: `failure` is what ``end()`` returned.
    @usableFromInline @inline(never)
    static func endFailed(_ failure: UInt8, file: StaticString, line: UInt) -> Never {
        if failure == 1 {
            fatalError(
                "Context.run / withValue: cannot exit context: it is not the current context of this thread "
                    + "(code inside the body entered a context with cctx_context_enter and did not exit it)",
                file: file, line: line)
        }
        fatalError("ContextKit internal error: a claimed context was not claimed", file: file, line: line)
    }

    /// ``leave(file:line:)`` up to its stops: 0 when the scope ended; 1
    /// when the thread could not exit the context, 2 when the task could
    /// not unclaim it (the caller stops then, as the end did before when it
    /// stopped itself at that point: nothing after it ran). `leave` sends a
    /// thread's scope to ``endThreadScope(_:)``; this one ends either kind.
    @usableFromInline
    func end() -> UInt8 {
        let (owner, escaped) = ContextScope.endBegin(binding)
        guard let task = owner else { return ContextScope.finishOnThread(binding, escaped: escaped) }
        // The place the task returns to: the one it started from, unless
        // the task made its unscoped binding inside the scope — only where
        // it could not see the scope: an isolated deinit's `set`, with the
        // task-locals hidden — which a resolution would now find (it is
        // looked up after the task-local, which reads none or an inherited
        // binding here). Asked only when the start was not the task's own
        // binding and the task's slot in the unscoped table's filter is
        // taken (one load; a slot another task shares costs the table's
        // lookup). The `exited` watchers get the same place.
        var returnTo = enclosing
        var returnOwned = enclosingOwned
        if !enclosingOwned && cctx_shim_unscoped_filter_may_hold(task, enclosingID),
            let unscoped = UnscopedBindings.shared.binding(of: task)
        {
            returnTo = Unmanaged.passUnretained(unscoped)
            returnOwned = true
        }
        TaskBinding.placeChanged(task: task, to: returnTo, owned: returnOwned, id: enclosingID)
        if cctx_context_unclaim(handle) != CCTX_OK { return 2 }
        // Asked again here, not remembered from the scope's start: a
        // watcher added inside the scope (on this task, or on another
        // thread before something that orders it before this end) gets
        // this `exited` without having seen the `entered`, exactly as a
        // watcher added between a thread's `cctx_context_enter` and
        // `cctx_context_exit` does; one cancelled inside gets nothing more
        // (`cctx_notify_watchers` re-checks each slot). With none
        // installed, skip the value-cache fence and the call with them.
        if cctx_watchers_installed() {
            notifyExited(returnTo, owned: returnOwned)
        }
        // The scope's reference, last (as when the scope held it strongly
        // and released it after `leave`): parked as the spare of the thread
        // the scope ends on (`TaskBinding.park`), or released.
        if escaped { binding.release() } else { TaskBinding.park(binding) }
        return 0
    }

    /// ``leave(file:line:)``'s `exited` event for a task scope, when a
    /// watcher is installed: the context the task sees again (`enclosing`,
    /// the binding the task returns to, owned or not; or none), with that
    /// binding's write count bumped around the callbacks when the task owns
    /// it.
    private func notifyExited(_ enclosing: Unmanaged<TaskBinding>?, owned enclosingOwned: Bool) {
        if let enclosing = enclosing?.takeUnretainedValue() {
            withExtendedLifetime(enclosing) {
                // A C watcher on this thread may write the context the task
                // returns to when the task owns it (it is the claimer's): a
                // write the value cache must not outlive. When the task
                // does not own it (a child back in the binding it inherited
                // from its parent), the parent is that binding's only
                // writer and may be writing it on another thread right now:
                // bumping its write count from here would race the parent's
                // own bumps (`writes` is a plain counter only its owner
                // touches), and a lost update could bring the count back to
                // a value the parent's cache entry holds after the parent
                // freed that box. A watcher may not write a context the
                // task could not `set` on, so there is nothing to fence.
                if enclosingOwned {
                    enclosing.withWrite { cctx_notify_watchers(CCTX_EVENT_EXITED, enclosing.handle) }
                } else {
                    // What the task reads there: after that binding's scope
                    // ended, the snapshot it ended with (`readInherited`),
                    // not the live context a later scope may write. The
                    // snapshot lives as long as `enclosing`.
                    cctx_notify_watchers(CCTX_EVENT_EXITED, enclosing.frozenSnapshot ?? enclosing.handle)
                }
            }
        } else {
            cctx_notify_watchers(CCTX_EVENT_EXITED, nil)
        }
    }
}

/// ``ContextScope/end()`` for a thread's scope (its binding has no owner
/// task): ``ContextScope/leave(file:line:)`` calls it with the binding
/// alone. A free function for the reason ``enterContextScope(_:origin:)``
/// gives.
@usableFromInline
func endThreadScope(_ binding: Unmanaged<TaskBinding>) -> UInt8 {
    ContextScope.finishOnThread(binding, escaped: ContextScope.endBegin(binding).escaped)
}

/// ``ContextScope/enter(_:origin:)``, as a free function (see there why;
/// the body is here, not in a static method it forwards to: such a method
/// got a dead-metatype specialisation, and the forwarding a thunk to it, 7
/// instructions).
@usableFromInline
func enterContextScope(_ context: Context, origin: consuming FrameOrigin) throws(ContextError) -> ContextScope {
    // Inlined (`cctx_shim_current_place_inline`): outside any task the
    // out-of-line call was a frame around the runtime's answer and
    // nothing else.
    let place = cctx_shim_current_place_inline()
    if place.task == nil {
        try check(cctx_context_enter(context.handle))
    } else {
        try check(cctx_context_claim(context.handle))
    }
    // Borrowed: `context` (the caller's `self`) is alive for the whole
    // scope (see `TaskBinding.borrowsHandle`).
    return ContextScope(adopting: context.handle, borrowed: true, place: place, origin: consume origin)
}

/// ``ContextScope/enterFresh(adopting:place:origin:file:line:)``, as a free
/// function (see ``ContextScope/enter(_:origin:)`` why).
@usableFromInline
func enterFreshContextScope(
    adopting handle: OpaquePointer, place: cctx_shim_place?, origin: consuming FrameOrigin,
    file: StaticString, line: UInt
) -> ContextScope {
    ContextScope.enterFreshOutOfLine(adopting: handle, place: place, origin: consume origin, file: file, line: line)
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
        // C may write the running task's own context here, behind the
        // value cache's back: no cached value survives the window
        // (`place_cache.c`).
        cctx_shim_unsafe_window_begin()
        defer { cctx_shim_unsafe_window_end() }
        return try withExtendedLifetime(self) { try body(handle) }
    }

    /// Calls `body` with the C handle of the current context, borrowed for the
    /// call, and whether the caller may write it — how async code hands its
    /// context to C functions that take one explicitly.
    ///
    /// - In a task inside `run` / `ContextVar.withValue`:
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
        case .task(_, let binding?, owned: true):
            return try binding.context.withUnsafeHandle { try body($0, true) }
        case .task(_, let binding?, owned: false):
            // A copy without the `.notInherited` variables, which a task
            // that inherited the binding does not see (O(1) when no
            // variable is `.notInherited`).
            return try Context(adopting: binding.copyInheritedForSpawn()).withUnsafeHandle { try body($0, false) }
        case .task(_, nil, _):
            return try Context().withUnsafeHandle { try body($0, false) }
        }
    }
}
