import CContextCore
import CContextKitShims
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// The task binding: what a Swift task sees as its current context, who may
// write it, and how a child reads it.
//
// Where code runs decides its current context:
// * Outside any Swift task (a Thread, a DispatchQueue, `main` before any
//   task): the calling thread's current context in C.
// * Inside a task, the first that applies:
//   1. the innermost binding of the ContextKit task-local
//      (`TaskBinding.current`) when this task installed it — a scope of
//      this task (`Context.run`, `ContextVar.withValue`, a spawn helper);
//   2. the task's UNSCOPED binding, made by its first `set` outside any
//      scope of its own (see `UnscopedBindings`);
//   3. the innermost binding it inherited, read-only (a structured child
//      links to its parent's task-local items; `Task {}` copies them;
//      `Task.detached` gets none: an empty context).
//
// Writes: a task writes only a binding it owns (1 or 2). Its first write
// anywhere else makes binding 2, holding a copy of what it sees (O(1),
// copy-on-write), so its parent and siblings never see its writes.
//
// Why unscoped bindings live in a table and not in the task-local stack:
// task-local items are allocated from the task's stack allocator, which
// must be freed in LIFO order with the task's async frames; an item pushed
// without a scope that pops it stops the process ("freed pointer was not
// the last allocation") as soon as the function that pushed it returns.
// So a task can hold a binding in its task-local stack only for a scope.
// The price: a task's unscoped writes are not seen by child tasks it
// creates (they read what the task inherited or bound in a scope); the
// spawn helpers, `withValue` and `Context.run` pass them on
// (docs/concurrency.md).
//
// Readers never see a torn map or freed memory: a binding's context is a C
// context, whose writer swaps roots and whose other readers read through
// `cctx_context_lookup` (the C runtime's one reclamation scheme). The owner
// is the only writer, so its own reads borrow (`cctx_context_get`).
//
// What a scope costs: a binding holds its C context itself (one reference,
// no `Context` object; `withValue` copies the current context in C and
// sets its value there before anyone can see it), and it is made current
// by the runtime's task-local push and pop alone (`task_local.c`), as
// `TaskLocal.withValue` does, also inside a `withTaskGroup` body. The
// context is materialised for every scope: outside a task `get` reads the
// thread's C context, and in a task children on other threads read the
// binding's context through the C runtime's read sections; a binding that
// deferred it would have to publish it under those read sections while a
// `Task {}` copy reads (docs/performance.md).
//
// After the scope (`freezeEscaped`, `readInherited`): a `Task {}` copies
// the task-local items, so it keeps the binding, and with it the C context,
// after the scope has ended. For `Context.run` that context is the user's:
// a later, separate `run` of it may write it, and a reader of the live
// context would see that (asyncio's `create_task` copied the context at
// creation). So the scope's end freezes an escaped binding:
// * Who escaped: at `leave` the task-local pop has released the item's
//   reference, and the structured children that link to the scope's items
//   have ended (`async let` and groups made inside the scope end with it).
//   So a binding referenced by anything but the scope itself is held by a
//   task that copied the items: a `Task {}`, or a child added to a group
//   made outside the scope (the runtime copies the items for it too), and
//   it reads after the scope like a `Task {}` does. One uniqueness test; a spurious "escaped" only costs a copy.
//   `withValue`'s binding holds a private copy nobody else may write once
//   its scope ends, but it is frozen the same way: one rule, and only a
//   scope a task escaped pays the O(1) copy.
// * What: the owner has made its last write (the body has returned), so
//   `cctx_context_copy` (sharing the root) is what the scope ended with.
//   Published once with a release store, never replaced, released in
//   `deinit`; a reader loads it with acquire, which orders the C context
//   the copy made before the reader's use of it.
// * When: before the C exit/unclaim. A later scope's claim (or enter) is a
//   CAS on the same owner word that reads from that exit/unclaim, so the
//   publish happens before every write the later scope makes.
// * A reader that loaded "no snapshot" and then read the live context may
//   race the publish: it checks again after the read and, when the
//   snapshot is there by then, drops what it read and reads the snapshot.
//   Sound: if its read saw a later scope's write (a root stored with
//   release, loaded by the reader's read section with acquire), that write
//   happens after the publish (above), so the second load sees the
//   snapshot. Without a snapshot on the second load, the read saw only the
//   ending scope's roots: a value of the scope that is ending, never a later
//   scope's. Copies (`copyInheritedForSpawn`) do the same, releasing the
//   copy of the live context they drop.
// * Whose memory that read touches: a `run` binding borrows its caller's
//   context, so its freeze takes a reference and gives it back after a
//   grace period (`cctx_context_release_deferred`); the read of the live
//   context runs inside a C read section (`withLiveContext`), which that
//   release waits for. A binding held after its scope thus keeps only the
//   snapshot — not the caller's context, which later scopes of it fill
//   with values the holders cannot read.
// * The per-thread value cache (`place_cache.c`) serves only the owner of
//   an active binding; a reader that inherited the binding always takes
//   the read above. The owner's own entry is dead after `leave` (it bumps
//   the place generation); the publish still sits inside a bracketed write
//   so that the cache's rule ("what a binding serves changes only inside a
//   write the count brackets") stays true. Only the owner, the one leaving,
//   touches the count.
// * Lifetime: the snapshot keeps the values the scope ended with until the
//   last `Task {}` copy of the binding goes; they are released there, in
//   `deinit`, outside any lock, so their deinits may use the library.
//
// Ownership under task-address reuse (task addresses are reused once a task
// ends; `async let` children even share their parent's memory and often the
// same address one after another):
// * a scope binding records its owner's address and is active until its
//   scope ends. A scope cannot outlive its task, so while the binding is
//   active its owner is alive and no other task has that address: "the
//   running task's address is the owner and the binding is active" proves
//   the running task is the owner.
// * the unscoped table is keyed by the task's unique id
//   (`swift_task_getJobTaskId`), never by address. An entry is dropped once
//   its task has ended: the binding retains the task object (tasks are
//   reference-counted; a running task holds a reference to itself), and the
//   reaper drops the entry when that reference is the only one left. An
//   `async let` child lives in its parent's memory, which the parent frees
//   at the end of the `async let` whatever the count, so it is never
//   retained: its entry is dropped when another `async let` child of the
//   same memory (the same address) writes, or when the process ends — the
//   one case where an ended task's values can outlive it (bounded by the
//   number of distinct addresses).

/// The running task (its object's address), or nil outside any task.
///
/// Asked through the C runtime (`cctx_swift_current_task`):
/// `withUnsafeCurrentTask` is generic and not specialised across modules,
/// and cost more than the rest of a `get`.
@inlinable
func currentTask() -> UnsafeRawPointer? {
    cctx_swift_current_task()
}

/// A context made current for a task or a scope, and its owner.
@usableFromInline
final class TaskBinding: Sendable {
    /// The innermost scope binding around the running code (see the file
    /// comment for who sees it).
    @usableFromInline @TaskLocal static var current: TaskBinding?

    /// The C context (`cctx_context *`) this binding makes current; one
    /// reference, released in `deinit` — unless ``borrowsHandle``. Written
    /// only by `owner`.
    ///
    /// A C handle, not a ``Context``: `withValue` makes a new context per
    /// scope, and a Swift object around it cost an allocation and its
    /// release each time (≈ 200 instructions) for nothing the scope needs.
    /// `nonisolated(unsafe)` and `@exclusivity(unchecked)`: the pointer
    /// changes only when a thread reuses its spare binding (``rebind``),
    /// which no one else can reach then; the C object is safe to read from
    /// any thread (see ``Context/handle``).
    @usableFromInline @exclusivity(unchecked) nonisolated(unsafe) var handle: OpaquePointer

    /// Whether the binding holds ``handle`` without a reference of its
    /// own: the binding of a `Context.run` scope, whose caller's `Context`
    /// keeps the C context alive for the whole call (the method's `self`).
    /// Until the scope ends nothing can read the binding longer than that.
    /// At its end a binding something else still holds takes a reference
    /// (``freezeEscaped()``, before `run` returns) and gives it back after
    /// a grace period: its readers of the live context read inside a C
    /// read section (``withLiveContext(_:)``), and a reader that begins
    /// one after the snapshot was published reads the snapshot. So a task
    /// that outlived the scope keeps only the snapshot, never the caller's
    /// context and the values later scopes put there. One retain and one
    /// release of the C context (≈ 55 instructions, two locked ones) fewer
    /// per `run`. Changes only in ``rebind`` (as ``handle``).
    @usableFromInline @exclusivity(unchecked) nonisolated(unsafe) private(set) var borrowsHandle: Bool

    /// The context as a ``Context`` (a new Swift object on the same C
    /// context), for the rare callers that need one: what
    /// ``readInherited(_:)`` reads (the snapshot once the scope ended with
    /// the binding held elsewhere).
    var context: Context { readInherited { Context(retaining: $0) } }

    /// The snapshot of `handle` taken when the scope ended while a
    /// `Task {}` copy still held the binding (`freezeEscaped()`); nil
    /// until then and for every binding that did not escape. Stored once
    /// with release, never replaced; one reference, released in `deinit`.
    /// Read by tasks that do not own the binding (`readInherited(_:)`).
    /// The pointer's bit pattern (0: none), as `Atomic` of a pointer is not
    /// `Sendable`.
    @usableFromInline let frozen = Atomic<UInt>(0)

    /// The address of the task that installed this binding; nil when a
    /// thread outside any task opened the scope.
    ///
    /// `nonisolated(unsafe)` and `@exclusivity(unchecked)`: the pointer
    /// changes only when a thread reuses its spare binding (``rebind``),
    /// which no one else can reach then (see ``park(_:)``).
    @usableFromInline @exclusivity(unchecked) nonisolated(unsafe) private(set) var owner: UnsafeRawPointer?

    /// The owner task object, retained, for an unscoped binding of a task
    /// that is not an `async let` child (see the file comment); nil
    /// otherwise. `nonisolated(unsafe)`: never changes after `init`.
    nonisolated(unsafe) private let retainedOwner: UnsafeRawPointer?

    /// Which API installed the binding (for ``Context/currentChainDescription``).
    /// Changes only in ``rebind`` (as ``handle``).
    @exclusivity(unchecked) nonisolated(unsafe) private(set) var origin: FrameOrigin

    /// Whether anything but the scope that installed the binding may have
    /// read it: a task that inherited it (``CurrentPlace/resolveUncached(in:)``
    /// marks it before reading its context) or a chain walk. Such a binding
    /// is never reused (``park(_:)``): its readers' last accesses are
    /// ordered before the reuse only by the reference count, which the
    /// Swift runtime changes outside ThreadSanitizer's view.
    let readByOthers = Atomic<Bool>(false)

    /// True while the binding waits as its thread's spare (``park(_:)``):
    /// `handle` was released then (or only borrowed: ``borrowsHandle``).
    nonisolated(unsafe) private var parked = false

    /// The binding the task saw when this one was installed, UNRETAINED;
    /// nil once the scope ended while something else still held this
    /// binding. Only ``Context/currentChainDescription`` walks it
    /// (``chain(from:)``), and a task must keep alive only what it can read
    /// (an enclosing scope's values are shadowed while this binding is
    /// innermost, and a `Task {}` copy must not keep them alive after the
    /// scopes end).
    ///
    /// Not `weak`: a weak reference cost a side-table allocation on the
    /// enclosing object the first time, and `swift_weakInit`/`Destroy`
    /// per scope. Why the unretained link is never followed to freed
    /// memory — the link is read and cut only under ``chainMutex``:
    /// * While this binding's scope is active, its enclosing binding is
    ///   alive: the enclosing scope of the same task or thread (scopes are
    ///   LIFO), the task's unscoped binding (kept until the task ends), or
    ///   a binding the task inherited (its task-local items hold it for the
    ///   task's life).
    /// * A walker holds a strong reference to every binding whose link it
    ///   reads. So when the scope ends, the binding is not uniquely
    ///   referenced while a walker may read its link, and `leave` then
    ///   cuts the link under the lock (``freezeEscaped()``) before the
    ///   scope, and with it the enclosing one, can end. A binding that is
    ///   uniquely referenced at the end of its scope can never be reached
    ///   again (nothing new can take a reference to it), so its stale link
    ///   is never read.
    /// * An unscoped binding (never cut) is reached only by its own task
    ///   while that task runs, and links to what that task inherited.
    nonisolated(unsafe) private var enclosing: Unmanaged<TaskBinding>?

    /// Serialises reading ``enclosing`` (``chain(from:)``) with cutting it
    /// (``freezeEscaped()``): taken only by introspection and by the end
    /// of a scope that something else still holds, never on a fast path.
    /// A bare pthread mutex (ThreadSanitizer intercepts it): it guards
    /// fields of the bindings, not a value of its own.
    /// `nonisolated(unsafe)`: the pointer never changes after the lazy
    /// initialiser; the mutex is used only through lock/unlock.
    private nonisolated(unsafe) static let chainMutex: UnsafeMutablePointer<pthread_mutex_t> = {
        let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        return mutex
    }()

    /// Runs `body` with ``chainMutex`` held; `body` must not take it again.
    private static func withChainLock<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(chainMutex)
        defer { pthread_mutex_unlock(chainMutex) }
        return body()
    }

    /// True until the scope that installed the binding ends (for
    /// ``Context/currentChainDescription`` only; ownership does not use it).
    @usableFromInline let isActiveFlag = Atomic<Bool>(true)

    /// Whether a scope installed the binding (false: the unscoped binding
    /// of a task's first write), for the place cache (`place_cache.c`).
    let isScope: Bool

    /// For a task's unscoped binding: whether ContextKit's task-local read
    /// an inherited binding in its task when a resolution last found this
    /// binding (before any, when the binding was made). Then no isolated
    /// deinit's stop marker hid the task-locals (under it the task-local
    /// reads none), and a place entry naming this binding needs no check on
    /// its hits; otherwise it is `unbound` (`place_cache.c`, "Hidden
    /// task-locals"). The task's inherited binding is the same for its
    /// whole life, and its own scopes are found before this binding, so a
    /// read of the inherited binding proves the entry right outside the
    /// task's scopes, with or without a marker afterwards.
    /// `nonisolated(unsafe)` and `@exclusivity(unchecked)` are sound: only
    /// the owner task reads or writes it (its own resolutions and place
    /// changes), and one task's accesses are ordered by the executor
    /// hand-offs between the threads it runs on. Unused by scope bindings.
    @exclusivity(unchecked) nonisolated(unsafe) var readInherited: Bool

    /// How many times the owner has started or finished a write to
    /// `context`: the version the per-thread value cache checks
    /// (`place_cache.c`). Bumped before and after every write, so that a
    /// value released by the write (whose deinit may read again) is never
    /// served from the cache.
    ///
    /// `nonisolated(unsafe)` and `@exclusivity(unchecked)` are sound: only
    /// the owner task reads or writes it (a child that inherited the
    /// binding never looks at it), and one task's accesses are ordered by
    /// the executor hand-offs between the threads it runs on.
    @usableFromInline @exclusivity(unchecked) nonisolated(unsafe) var writes: UInt64 = 0

    /// `adopting`: one reference to a C context, which the binding takes
    /// over; or, when `borrowed`, a context the caller keeps alive for the
    /// scope (see ``borrowsHandle``).
    /// `enclosing`: unretained (see ``enclosing``).
    init(
        adopting handle: OpaquePointer, borrowed: Bool = false, owner: UnsafeRawPointer?, origin: consuming FrameOrigin,
        enclosing: Unmanaged<TaskBinding>?, retainingOwner: Bool = false
    ) {
        self.handle = handle
        self.borrowsHandle = borrowed
        self.owner = owner
        if case .firstWrite = origin { isScope = false } else { isScope = true }
        self.origin = consume origin
        self.enclosing = enclosing
        // What the task read when it made its unscoped binding: the binding
        // it inherited (or none), which is `enclosing`.
        self.readInherited = enclosing != nil
        retainedOwner = retainingOwner ? owner : nil
        if let retainedOwner { _ = Unmanaged<AnyObject>.fromOpaque(retainedOwner).retain() }
    }

    deinit {
        // An unscoped binding's claim (see `UnscopedBindings.insert`) ends
        // with it: its task has ended, nobody writes the context any more.
        if !isScope, cctx_context_unclaim(handle) != CCTX_OK {
            fatalError("ContextKit internal error: an unscoped binding's context was not claimed")
        }
        if let retainedOwner { Unmanaged<AnyObject>.fromOpaque(retainedOwner).release() }
        // The last reference is going: no reader is left, relaxed is enough.
        let snapshot = OpaquePointer(bitPattern: frozen.load(ordering: .relaxed))
        // A borrowing binding holds no reference (the one it took when it
        // was frozen is given back after a grace period).
        if !parked, !borrowsHandle { cctx_context_release(handle) }
        if let snapshot { cctx_context_release(snapshot) }
    }

    /// Marks the binding read by someone other than its scope (see
    /// ``readByOthers``); a load first, so that readers of a binding already
    /// marked do not write its line.
    func markRead() {
        if !readByOthers.load(ordering: .relaxed) { readByOthers.store(true, ordering: .relaxed) }
    }

    /// The calling thread's spare binding (see ``park(_:)``), taken out of
    /// its slot, or nil; ``rebind(adopting:borrowed:owner:origin:enclosing:)``
    /// makes it ready for a new scope, in a task or outside any.
    /// The reference the slot held (+1) is the caller's.
    static func takeSpare() -> Unmanaged<TaskBinding>? {
        cctx_shim_spare_binding_take().map { Unmanaged<TaskBinding>.fromOpaque($0) }
    }

    /// Makes a spare binding (``takeSpare()``) the binding of a new scope
    /// of `owner` (the running task, or nil outside any task). `handle`:
    /// one reference, which the binding takes over; or, when `borrowed`,
    /// borrowed as in ``init(adopting:borrowed:owner:origin:enclosing:retainingOwner:)``.
    func rebind(
        adopting handle: OpaquePointer, borrowed: Bool, owner: UnsafeRawPointer?, origin: consuming FrameOrigin,
        enclosing: Unmanaged<TaskBinding>?
    ) {
        // Nothing else can reach a spare (see `park`): plain writes.
        // `frozen` is 0 and `readByOthers` false, as when it was parked
        // (only an unescaped, unread binding parks); `isScope` is true
        // (only scopes park) and `retainedOwner` nil (only unscoped
        // bindings retain their task).
        self.handle = handle
        self.borrowsHandle = borrowed
        self.owner = owner
        self.origin = consume origin
        self.enclosing = enclosing
        // A new write count for the new context (+2: the count stays even
        // outside a write). No value-cache entry can name this binding any
        // more (the scope's end bumped the place generation, and every
        // entry put clears the value), so this is only belt and braces for
        // the cache's rule "an equal write count proves the map still holds
        // the box": it never holds across two contexts.
        writes &+= 2
        parked = false
        isActiveFlag.store(true, ordering: .relaxed)
    }

    /// Called as a scope ends — by a thread outside any task after the
    /// context's exit, or by the owner task after the unclaim and the
    /// `exited` watchers — when nothing else referred to the binding at
    /// the uniqueness test of `ContextScope.leave`: unless someone else
    /// has read it, releases its context (the scope's values go now, as
    /// they did with the binding) and keeps the binding as the spare of
    /// the thread the scope ends on, for that thread's next scope, in any
    /// task or none (``takeSpare()``): one allocation and free fewer per
    /// scope.
    ///
    /// Sound:
    /// * Unreachable. Uniquely referenced at its end, the binding cannot
    ///   be reached again (nothing between that test and this call can):
    ///   a `Task {}` copy of the task-local items, a group child that
    ///   copied them, or a chain walk would hold a reference; a structured
    ///   child that links to the scope's items (`async let`, a group made
    ///   inside the scope) has ended; the task-local pop has dropped the
    ///   item; the place-cache entries that name it are dead (the scope's
    ///   end bumped the place generation, and they hold no reference); a
    ///   binding's unretained `enclosing` links are cut, or never read,
    ///   once its scope ended (see ``enclosing``). The `exited` watchers
    ///   that run between the test and this call see only the enclosing
    ///   place, never this binding.
    /// * Address reuse. The reuse rewrites every field a scope reads
    ///   (``rebind``), `owner` included: the task that takes the spare is
    ///   the running task, alive, so "owner is the running task and the
    ///   binding is active" stays a proof of ownership (the file comment).
    /// * Unread. Every task that reads a binding it does not own marks it
    ///   (``CurrentPlace/resolveUncached(in:)``, after the only field
    ///   loads it makes first: `owner` and the active flag), and so does a
    ///   chain walk. A binding with the mark never parks: its reader's
    ///   last accesses may be ordered before this reuse only by the
    ///   reference count, which the Swift runtime changes outside
    ///   ThreadSanitizer's view (so TSan would report the rewrite as a
    ///   race, and the C++ model needs the count's release/acquire pair).
    ///   An unmarked binding was accessed only by its owner, whose
    ///   accesses are ordered by program order on one thread or by the
    ///   executor hand-offs between the threads the task ran on (which
    ///   TSan sees), and by structured children that end before the scope
    ///   does (their completion is awaited). The flag is loaded with
    ///   acquire after the uniqueness test.
    ///
    /// `binding`: the scope's reference (+1), which the spare slot takes
    /// over, or which is released when the binding cannot be parked (no
    /// retain of its own: held unmanaged by `ContextScope`).
    static func park(_ binding: Unmanaged<TaskBinding>) {
        // `owned`: the context reference the binding drops as it parks
        // (none when it borrowed its context: `run`'s caller releases it).
        let (parkable, owned) = binding._withUnsafeGuaranteedRef { binding -> (Bool, OpaquePointer?) in
            guard !binding.readByOthers.load(ordering: .acquiring) else { return (false, nil) }
            binding.parked = true
            return (true, binding.borrowsHandle ? nil : binding.handle)
        }
        guard parkable else {
            binding.release()
            return
        }
        // Values' deinits may run here and use the library, also open and
        // end scopes on this thread (parking their own bindings).
        if let owned { cctx_context_release(owned) }
        let displaced = cctx_shim_spare_binding_put(binding.toOpaque()) { spare in
            Unmanaged<TaskBinding>.fromOpaque(spare!).release()
        }
        if let displaced { Unmanaged<TaskBinding>.fromOpaque(displaced).release() }
    }

    /// The snapshot published when the scope ended, if it was (acquire:
    /// its C context was made before the release store that published it).
    @inlinable
    var frozenSnapshot: OpaquePointer? { OpaquePointer(bitPattern: frozen.load(ordering: .acquiring)) }

    /// What `read` answers for the binding's context, read by a task that
    /// does not own the binding: from the snapshot once the scope has
    /// ended, else from the live context, checked again afterwards (see
    /// the file comment, "After the scope"). `read` must own nothing it
    /// returns that needs an explicit release (an answer is dropped when
    /// the snapshot appeared meanwhile).
    @inlinable
    func readInherited<R>(_ read: (OpaquePointer) -> R) -> R {
        if let snapshot = frozenSnapshot { return read(snapshot) }
        let live = withLiveContext(read)
        // Published meanwhile: `live` may hold a later scope's write.
        if let snapshot = frozenSnapshot { return read(snapshot) }
        return live
    }

    /// A copy without the `.notInherited` variables of what a task that
    /// does not own the binding sees (one reference, the caller's): as
    /// ``readInherited(_:)``, releasing a copy of the live context taken
    /// while the scope ended.
    func copyInheritedForSpawn() -> OpaquePointer {
        if let snapshot = frozenSnapshot { return Context.copyForSpawnHandle(of: snapshot) }
        // The copy holds the root, not the C context: it outlives the section.
        let live = withLiveContext { Context.copyForSpawnHandle(of: $0) }
        guard let snapshot = frozenSnapshot else { return live }
        cctx_context_release(live)
        return Context.copyForSpawnHandle(of: snapshot)
    }

    /// Calls `body` with the live context (``handle``) for a reader that
    /// found no snapshot, valid for the call: a binding that owns its
    /// context keeps it until `deinit`; one that borrows it
    /// (``borrowsHandle``) may give its frozen reference back at any time
    /// after the publish, so the call runs inside a C read section, which
    /// that release waits for, and takes the snapshot instead if it is
    /// there by the time the section has begun (a reader loading "no
    /// snapshot" before its section began may otherwise find the context
    /// freed: the release only waits for sections open when it was
    /// deferred). `body` must not wait for reclamation, nor keep the
    /// pointer beyond the call without retaining the context.
    @inlinable
    func withLiveContext<R>(_ body: (OpaquePointer) -> R) -> R {
        guard borrowsHandle else { return body(handle) }
        var section = cctx_read_section()
        cctx_read_section_begin(&section)
        defer { cctx_read_section_end(&section) }
        return body(frozenSnapshot ?? handle)
    }

    /// Called by the owner as its scope ends, after the task-local pop and
    /// before the context is exited or unclaimed, when something else (a
    /// `Task {}` copy) still holds the binding (`ContextScope.leave` tests
    /// that): publishes a snapshot of what the scope ended with for it to
    /// read (see the file comment, "After the scope").
    func freezeEscaped() {
        // Someone may walk the chain through this binding after its scope,
        // and the enclosing one, have ended (see `enclosing`).
        TaskBinding.withChainLock { enclosing = nil }
        // A binding that borrowed its context (`run`) takes its own
        // reference now, before `run` returns and its caller may release
        // the context: a reader that loaded no snapshot yet may still read
        // `handle` (`withLiveContext`). Given back after a grace period
        // once the scope has ended (`releaseFrozenReference`).
        if borrowsHandle { _ = cctx_context_retain(handle) }
        // The owner has finished writing: the copy is what the scope ended
        // with. O(1): it shares the root.
        let snapshot = Context.copyHandle(of: handle)
        // Not needed today (the value cache serves only the owner, and
        // this binding is no longer the owner's place: `leave` bumped the
        // place generation), but it keeps the cache's rule true: what the
        // binding serves changes only inside a bracketed write.
        withWrite {
            // Release: a reader that loads the pointer sees the C context
            // the copy made. Before the exit/unclaim, whose release orders
            // it before any later scope's claim and hence its writes.
            frozen.store(UInt(bitPattern: snapshot), ordering: .releasing)
        }
    }

    /// Called by the owner once the scope of a frozen binding has ended
    /// (after the exit or unclaim: the release may run values' release
    /// callbacks, which must not find the scope's context still current):
    /// gives back the reference ``freezeEscaped()`` took on a borrowed
    /// context, once every read section open now has closed — at once when
    /// none is, else after waiting for them (C fences between the publish
    /// and the deferral, see `cctx_context_release_deferred`): a reader
    /// whose section begins later loads the snapshot, never `handle`. Kept
    /// until `deinit`, that reference kept the caller's context — and every
    /// value a later scope of it set, which the tasks holding this binding
    /// cannot read — alive as long as they ran.
    func releaseFrozenReference() {
        if borrowsHandle { cctx_context_release_deferred(handle) }
    }

    @inlinable
    var isActive: Bool { isActiveFlag.load(ordering: .relaxed) }

    /// `first` and the bindings its ``enclosing`` links reach, innermost
    /// first, each retained by the array (for ``Context/currentChainDescription``).
    /// `first` must be alive (the caller holds it); the walk stops where a
    /// link was cut.
    static func chain(from first: TaskBinding?) -> [TaskBinding] {
        guard let first else { return [] }
        return withChainLock {
            // Each binding is retained (appended) before its link is read:
            // that keeps its end from skipping the cut (see `enclosing`),
            // and marked read, so that it is never reused (`park(_:)`).
            first.markRead()
            var bindings = [first]
            while let next = bindings[bindings.count - 1].enclosing {
                let binding = next.takeUnretainedValue()
                binding.markRead()
                bindings.append(binding)
            }
            return bindings
        }
    }

    /// Whether `task` (the running task) owns this scope binding and may
    /// write it (see the file comment for why this is a proof).
    @inlinable
    func isOwned(by task: UnsafeRawPointer) -> Bool {
        owner == task && isActive
    }

    /// Tells the place cache that the running task has just changed what it
    /// reads: call right after binding or unbinding a scope in a task, and
    /// after making its unscoped binding (see `CurrentPlace.resolve(_:)`).
    @inlinable
    static func placeChanged() {
        _ = cctx_shim_place_generation_bump()
    }

    /// As ``placeChanged()``, for a caller that knows the running task's
    /// new place: `binding` (nil: none), owned or not. Caches it, so that
    /// the task's next read does not miss.
    ///
    /// The entry is checked on each hit (`check_read`: see `place_cache.c`,
    /// "Hidden task-locals") whenever the place may have been resolved
    /// while an isolated deinit hid the task-locals, told from the place
    /// alone: a binding the task does not own came from the task-local (no
    /// check), and so did a scope binding it owns (a `scoped` entry, never
    /// checked); none is `unbound`, and so is the task's unscoped binding
    /// unless its task's last resolution that found it read an inherited
    /// binding (``readInherited``): when a task with an inherited binding
    /// made it under an isolated deinit's stop marker, the first hit's
    /// check fails and the task resolves afresh, which sets the flag — one
    /// miss, not one per scope.
    static func placeChanged(task: UnsafeRawPointer, to binding: TaskBinding?, owned: Bool) {
        placeChanged(task: task, to: binding.map { Unmanaged.passUnretained($0) }, owned: owned, id: 0)
    }

    /// As ``placeChanged(task:to:owned:)`` for a binding held unretained.
    /// `id`: the task's id if known (`cctx_shim_place_cached_id`), else 0.
    static func placeChanged(task: UnsafeRawPointer, to binding: Unmanaged<TaskBinding>?, owned: Bool, id: UInt64) {
        let generation = cctx_shim_place_generation_bump()
        guard let binding else {
            cctx_shim_place_cache_put_id(task, generation, nil, owned, false, true, id)
            return
        }
        let (scoped, unbound) = binding._withUnsafeGuaranteedRef { ($0.isScope, !$0.isScope && !$0.readInherited) }
        cctx_shim_place_cache_put_id(
            task, generation, UnsafeRawPointer(binding.toOpaque()), owned, scoped, owned && unbound, id)
    }

    /// Caches the place of `task` in the calling thread's entry, as
    /// resolved (`unbound` as in ``placeChanged(task:to:owned:id:)``).
    static func cachePlace(task: UnsafeRawPointer, generation: UInt64, binding: Unmanaged<TaskBinding>?, owned: Bool) {
        guard let binding else {
            cctx_shim_place_cache_put(task, generation, nil, owned, false, true)
            return
        }
        let (scoped, unbound) = binding._withUnsafeGuaranteedRef { ($0.isScope, !$0.isScope && !$0.readInherited) }
        cctx_shim_place_cache_put(
            task, generation, UnsafeRawPointer(binding.toOpaque()), owned, scoped, owned && unbound)
    }

    /// The box `variable` has in `context` (borrowed), or nil, read by the
    /// owner, the running task, and cached in the calling thread's `entry`
    /// under the current write count unless an unsafe-handle window is
    /// open. Not generic, so that the clients' specialised read path only
    /// inlines the cache hit.
    @usableFromInline
    func readFilling(_ entry: UnsafeMutablePointer<cctx_shim_place_entry>, variable: OpaquePointer)
        -> UnsafeMutableRawPointer?
    {
        var pointer: UnsafeMutableRawPointer?
        let found = foundValue(cctx_context_get(handle, variable, &pointer))
        let box = found ? pointer : nil
        if entry.pointee.fill_blocked == 0 {
            entry.pointee.variable = UnsafeRawPointer(variable)
            entry.pointee.version = writes
            entry.pointee.value = box
        }
        return box
    }

    /// Brackets a write by the owner to `context`: see ``writes``.
    @inlinable
    func withWrite<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        writes &+= 1
        defer { writes &+= 1 }
        return try body()
    }

    /// Whether the owner task has ended and nothing else refers to it (the
    /// binding's own reference is the only one left: a running task holds
    /// one to itself).
    var ownerHasEnded: Bool {
        guard let retainedOwner else { return false }
        return cctx_shim_is_uniquely_referenced(retainedOwner)
    }

    /// The binding the running task `task` may write: the one it owns
    /// (`visible`), or — on its first write outside any scope of its own — a
    /// new unscoped binding holding a copy of what it sees.
    static func writableBinding(task: UnsafeRawPointer, visible: TaskBinding?, owned: Bool) -> TaskBinding {
        if owned, let visible { return visible }
        let copy = visible.map { $0.copyInheritedForSpawn() } ?? Context.newHandle()
        return UnscopedBindings.shared.insert(
            adopting: copy, enclosing: visible.map { Unmanaged.passUnretained($0) }, for: task)
    }
}

extension TaskBinding {
    /// `TaskBinding.$current` as the runtime names it: the `TaskLocal`
    /// object's address (what `TaskLocal.withValue` passes as its key).
    /// `nonisolated(unsafe)` (here and below): a constant, written once by
    /// the lazy initialiser (`swift_once`) and only read after.
    nonisolated(unsafe) static let taskLocalKey = UnsafeRawPointer(Unmanaged.passUnretained(TaskBinding.$current).toOpaque())

    /// The metadata the shim's pushes give the runtime for their value:
    /// `TaskBinding`'s, not that of the task-local's declared `TaskBinding?`.
    /// The pushed value is never nil, and a non-nil `TaskBinding?` is the
    /// same word as a `TaskBinding` (an optional class reference is the
    /// reference, with null as `none`: the Swift ABI's layout of optional
    /// class references, not a runtime private), so the task-local reads it
    /// back as `TaskBinding?` unchanged. The runtime moves, copies (a
    /// `Task {}` inheriting the items) and destroys the item's value with
    /// this metadata's witnesses: a class's are the plain retain and
    /// release, where `Optional`'s went through the generic enum witnesses
    /// (the pop's destroy alone ≈ 60 instructions; docs/performance.md).
    nonisolated(unsafe) static let taskLocalValueType = unsafeBitCast(TaskBinding.self as Any.Type, to: UnsafeRawPointer.self)

    /// Pushes `binding` as ``current`` (`cctx_shim_task_local_push`); the
    /// task-local item's reference is a retain of it (the caller holds it
    /// unmanaged).
    ///
    /// Through `cctx_shim_task_local_push_binding`, which keeps the key and
    /// type in C: reading the two `static let`s here cost a `swift_once`
    /// call per scope. The first push in the process registers them.
    @inlinable @inline(__always)
    static func push(retaining binding: Unmanaged<TaskBinding>) {
        let object = binding.retain().toOpaque()
        if !cctx_shim_task_local_push_binding_inline(object) { pushRegistering(object) }
    }

    /// ``current`` unretained, read without the generic `TaskLocal.get`
    /// (`cctx_shim_task_local_get_binding`; the first read in the process
    /// registers the key and type). Alive while the binding that holds it
    /// is, which only the running code can pop: the caller must not use it
    /// past its next scope's end (or retain it before that).
    static var currentUnretained: Unmanaged<TaskBinding>? {
        var object: UnsafeRawPointer?
        if !cctx_shim_task_local_get_binding(&object) {
            cctx_shim_task_local_register_binding(taskLocalKey, taskLocalValueType)
            guard cctx_shim_task_local_get_binding(&object) else {
                fatalError("ContextKit internal error: the binding task-local is not registered after registering it")
            }
        }
        return object.map { Unmanaged<TaskBinding>.fromOpaque($0) }
    }

    /// The first push: registers the key and type, then pushes.
    @usableFromInline @inline(never)
    static func pushRegistering(_ object: UnsafeMutableRawPointer) {
        cctx_shim_task_local_register_binding(taskLocalKey, taskLocalValueType)
        cctx_shim_task_local_push(taskLocalKey, object, taskLocalValueType)
    }

    /// `TaskBinding.$current.withValue(binding, operation: body)`, without
    /// the generic, unspecialised `withValue` (`task_local.c`).
    ///
    /// `onThread`: the caller runs outside any task; the thread's
    /// `cctx_shim_thread_scope_binding` follows the binding.
    /// `@inlinable`: part of the synchronous `run`/`withValue`, which are
    /// (an out-of-line call was a frame and a generic result of its own).
    @inlinable @inline(__always)
    static func withCurrent<R>(_ binding: TaskBinding, onThread: Bool, _ body: () throws -> R) rethrows -> R {
        let object = Unmanaged.passUnretained(binding)
        let previous = onThread ? cctx_shim_thread_scope_binding_exchange(UnsafeRawPointer(object.toOpaque())) : nil
        defer { if onThread { _ = cctx_shim_thread_scope_binding_exchange(previous) } }
        push(retaining: object)
        defer { cctx_shim_task_local_pop_inline() }
        return try body()
    }

    /// ``current`` on the calling thread, outside any task, without reading
    /// the task-local (see `cctx_shim_thread_scope_binding`).
    static var threadScope: TaskBinding? {
        cctx_shim_thread_scope_binding().map { Unmanaged<TaskBinding>.fromOpaque($0).takeUnretainedValue() }
    }

    /// As the synchronous ``withCurrent(_:_:)``, around an async body: the
    /// push and the pop run in the same task, in LIFO order with its other
    /// task-local bindings and task-allocator allocations (this function's
    /// frame is allocated by its caller before the push, freed after the
    /// pop, and it makes no allocation of its own in between).
    ///
    /// `binding` unmanaged, kept alive by the caller's scope
    /// (`ContextScope`) until after the pop: the push takes the item's own
    /// reference from it, and no strong temporary is held across the
    /// `await` (as a `TaskBinding` parameter was: one more retain and
    /// release per scope, ≈ 45 instructions).
    @inlinable @inline(__always)
    nonisolated(nonsending) static func withCurrent<R>(
        _ binding: Unmanaged<TaskBinding>, _ body: nonisolated(nonsending) () async throws -> R
    ) async rethrows -> R {
        push(retaining: binding)
        defer { cctx_shim_task_local_pop_inline() }
        return try await body()
    }
}

/// Which API installed a binding, as ``Context/currentChainDescription``
/// prints it.
@usableFromInline
package enum FrameOrigin: Sendable, CustomStringConvertible {
    /// `Context.run` (sync or async).
    case run
    /// `ContextVar.withValue`; the variable's name.
    case withValue(variable: String)
    /// A helper that runs work in a copy of the spawning context: the
    /// helper's name (`Context.task`, `addTaskInCopiedContext`, …).
    case helper(String)
    /// The task's first `set` outside any scope of its own (copy-on-write).
    case firstWrite

    @usableFromInline package var description: String {
        switch self {
        case .run: return "run"
        case .withValue(let name): return "withValue(\(name))"
        case .helper(let name): return name
        case .firstWrite: return "first write of this task"
        }
    }
}

/// Where the running code's current context lives.
@usableFromInline
enum CurrentPlace {
    /// Outside any task: the calling thread's current context in C.
    case thread
    /// In `task`: `binding` is the binding it reads (nil: none, an empty
    /// context); `owned` whether the task owns it and may write it.
    case task(UnsafeRawPointer, TaskBinding?, owned: Bool)

    /// The binding the running code reads (nil on a thread or with none).
    var binding: TaskBinding? {
        if case .task(_, let binding, _) = self { return binding }
        return nil
    }

    @inlinable
    static var resolve: CurrentPlace {
        resolve(cctx_shim_current_place())
    }

    /// As ``resolve`` for a caller that already asked
    /// `cctx_shim_current_place()`.
    ///
    /// First from the calling thread's place cache (`place_cache.c`): what
    /// a task reads changes only when it binds or unbinds a scope or makes
    /// its unscoped binding, and each of those bumps the place generation
    /// (`TaskBinding.placeChanged()`), so the running task's entry at the
    /// current generation is still right, and its binding still alive —
    /// except while an isolated deinit hides the task-locals, which the
    /// entry check covers for places resolved then (`place_cache.c`,
    /// "Hidden task-locals").
    @inlinable
    static func resolve(_ place: cctx_shim_place) -> CurrentPlace {
        guard let task = place.task else { return .thread }
        if let entry = place.entry {
            guard let cached = entry.pointee.binding else { return .task(task, nil, owned: false) }
            return .task(
                task, Unmanaged<TaskBinding>.fromOpaque(cached).takeUnretainedValue(), owned: entry.pointee.owned)
        }
        return resolveMissed(in: task)
    }

    /// ``resolveMissed(in:)`` for a read: an inherited place (a binding the
    /// task does not own, or none) is cached only on the task's second
    /// such miss on this thread at one generation
    /// (`cctx_shim_place_fill_inherited`): a child
    /// task that reads once does not fill an entry it never uses again.
    ///
    /// The binding comes back unretained, as from a place entry: it is alive
    /// for the caller's read — the running task's task-local items hold a
    /// scope's binding until that task pops them (a parent's outlive its
    /// structured children; a `Task {}` holds copies of its own), and the
    /// unscoped table holds the task's own until the task ends — so a read
    /// takes no reference (a `CurrentPlace` took one and dropped it:
    /// a retain and a release, ≈ 45 instructions, on every child task's
    /// first read).
    @usableFromInline
    static func resolveMissedForRead(in task: UnsafeRawPointer) -> (binding: Unmanaged<TaskBinding>?, owned: Bool) {
        let generation = cctx_shim_place_generation()
        let (binding, owned) = resolveUncachedUnretained(in: task)
        if owned || cctx_shim_place_fill_inherited(task, generation) {
            TaskBinding.cachePlace(task: task, generation: generation, binding: binding, owned: owned)
        }
        return (binding, owned)
    }

    /// ``resolve(_:)`` when the calling thread's entry is not the running
    /// task's: resolves, and caches the answer under the generation read
    /// before resolving.
    @usableFromInline
    static func resolveMissed(in task: UnsafeRawPointer) -> CurrentPlace {
        let generation = cctx_shim_place_generation()
        let (binding, owned) = resolveUncachedUnretained(in: task)
        TaskBinding.cachePlace(task: task, generation: generation, binding: binding, owned: owned)
        return .task(task, binding?.takeUnretainedValue(), owned: owned)
    }

    /// ``resolve(_:)`` from the task-local and the unscoped table.
    @usableFromInline
    static func resolveUncached(in task: UnsafeRawPointer) -> CurrentPlace {
        let (binding, owned) = resolveUncachedUnretained(in: task)
        return .task(task, binding?.takeUnretainedValue(), owned: owned)
    }

    /// ``resolveUncached(in:)``, the binding unretained (alive as long as
    /// ``resolveMissedForRead(in:)`` says). When it finds the task's
    /// unscoped binding, records there whether the task-local read an
    /// inherited binding (``readInherited``), which decides whether the
    /// place entry is checked (see
    /// `place_cache.c`, "Hidden task-locals": under an isolated deinit's
    /// stop marker the task-local reads none, also inside the task's own
    /// scope).
    ///
    /// The task-local is read unretained (``TaskBinding/currentUnretained``):
    /// only the running task pops its items, and a parent's items outlive
    /// its structured children. Never inlined: inlined into
    /// ``resolveMissed(in:)`` it made a scope's entry, which calls that on
    /// its rare miss, too large for the optimizer to fold into
    /// `enterContextScope` (a thunk frame, ≈ 30 instructions per scope).
    @inline(never)
    private static func resolveUncachedUnretained(in task: UnsafeRawPointer)
        -> (binding: Unmanaged<TaskBinding>?, owned: Bool)
    {
        let scoped = TaskBinding.currentUnretained
        if let scoped {
            let owned = scoped._withUnsafeGuaranteedRef { binding -> Bool in
                if binding.isOwned(by: task) { return true }
                // Inherited: this task may read it from now on (every place
                // of a task that names a binding it does not own starts here).
                binding.markRead()
                return false
            }
            if owned { return (scoped, true) }
        }
        // The table keeps the task's unscoped binding until the task ends.
        if let unscoped = UnscopedBindings.shared.binding(of: task) {
            unscoped.readInherited = scoped != nil
            return (Unmanaged.passUnretained(unscoped), true)
        }
        return (scoped, false)
    }
}

/// The unscoped bindings: one per task that wrote outside any scope of its
/// own, keyed by the task's address, each dropped once its task has ended.
///
/// Keying by address is sound because each binding retains its task (see
/// the file comment): while the entry exists no other task can have that
/// address. Entries die with their task: a reaper thread, running only
/// while the table is not empty, drops every entry whose task has ended
/// and nothing else refers to (`TaskBinding.ownerHasEnded`); the values go
/// with them, released on the reaper thread outside any lock.
///
/// Sharded by address so that tasks on different threads rarely share a
/// lock; a read in a task that owns a scope binding never comes here, and
/// a read elsewhere costs one relaxed load while the table is empty. A task
/// with no entry of its own skips the lock also when the table is not
/// empty: a counting filter over task ids (`unscoped_cache.c`) says "surely
/// none" unless a task whose id shares its slot has an entry.
@usableFromInline
final class UnscopedBindings: Sendable {
    @usableFromInline static let shared = UnscopedBindings()

    /// One shard: the entries of the tasks whose addresses map to it,
    /// behind a pthread mutex (`PThreadLocked`, which ThreadSanitizer can
    /// check).
    private final class Shard: Sendable {
        private struct Tables {
            var storage: [UInt64: TaskBinding] = [:]
            /// The id of the `async let` child that last wrote at each address.
            var asyncLetAtAddress: [UInt: UInt64] = [:]
        }

        private let tables = PThreadLocked(Tables())

        func withLock<R>(_ body: (inout [UInt64: TaskBinding], inout [UInt: UInt64]) -> R) -> R {
            tables.withLock { body(&$0.storage, &$0.asyncLetAtAddress) }
        }
    }

    private static let shardCount = 64
    private let shards: [Shard] = (0..<UnscopedBindings.shardCount).map { _ in Shard() }
    /// Entries in the table (so that an empty table costs one load).
    private let entryCount = Atomic<Int>(0)
    /// Whether the reaper thread runs.
    private let reaperRunning = Atomic<Bool>(false)

    private init() {
        // The reaper thread does not survive fork(): a child that inherited
        // "running" would never reap. Its next insert starts a new one.
        pthread_atfork(nil, nil) { UnscopedBindings.shared.reaperRunning.store(false, ordering: .relaxed) }
    }

    private func shard(for task: UnsafeRawPointer) -> Shard {
        // Task objects are at least 16-byte aligned: drop the low bits. By
        // address, so that all entries ever made at one address share a
        // shard (see `insert`).
        shards[Int((UInt(bitPattern: task) >> 4) % UInt(Self.shardCount))]
    }

    /// The unique id of `task` (alive), never reused in the process.
    static func id(of task: UnsafeRawPointer) -> UInt64 {
        cctx_shim_task_id(task)
    }

    /// Whether `task` (alive) is an `async let` child, which must never be
    /// retained.
    static func isAsyncLetChild(_ task: UnsafeRawPointer) -> Bool {
        cctx_shim_task_is_async_let(task)
    }

    /// The unscoped binding of `task` (the running task), if it has one.
    ///
    /// After the first lookup on a thread, a task's reads there come from a
    /// per-thread cache keyed by its id, with no lock (sound because the
    /// entry stays until the task ends: see `unscoped_cache.c`).
    @usableFromInline
    func binding(of task: UnsafeRawPointer) -> TaskBinding? {
        if entryCount.load(ordering: .relaxed) == 0 { return nil }
        var cached: UnsafeRawPointer?
        var id: UInt64 = 0
        // The thread's cache, then the filter (one task-id lookup for both).
        guard cctx_shim_unscoped_probe(task, &cached, &id) else { return nil }
        if let cached {
            return Unmanaged<TaskBinding>.fromOpaque(cached).takeUnretainedValue()
        }
        let found = shard(for: task).withLock { entries, _ in entries[id] }
        if let found { cctx_shim_unscoped_cache_put(task, Unmanaged.passUnretained(found).toOpaque()) }
        return found
    }

    /// Makes the unscoped binding of `task` (the running task, which has
    /// none yet) for `context` (one reference, which the binding takes over).
    @discardableResult
    /// `enclosing`: what the task read before (unretained: a binding it
    /// inherited, which its task-local items keep alive for its life).
    func insert(
        adopting context: OpaquePointer, enclosing: Unmanaged<TaskBinding>?, for task: UnsafeRawPointer
    ) -> TaskBinding {
        // The task claims its private context for the binding's life, as a
        // scope claims its context: the task is its only writer, and reads
        // it borrowed. Unclaimed, anyone handed the context (an `exited`
        // watcher, given the place a scope returns to, may keep it) could
        // `run` it in another task and write it at the same time. A fresh
        // copy nobody else has seen: the claim cannot fail.
        checkOrTrap(cctx_context_claim(context), "claiming a task's unscoped context")
        let id = Self.id(of: task)
        let isAsyncLet = Self.isAsyncLetChild(task)
        let binding = TaskBinding(
            adopting: context, owner: task, origin: .firstWrite, enclosing: enclosing,
            retainingOwner: !isAsyncLet)
        var replaced: TaskBinding?
        var replacedID: UInt64 = 0
        // Counted before the entry exists: this task's later lookups must
        // not skip it (see `cctx_shim_unscoped_probe`).
        cctx_shim_unscoped_filter_add(id)
        shard(for: task).withLock { entries, asyncLetAtAddress in
            // Counted under the lock, before the entry can be found: the
            // reaper drops an entry only after taking this lock, so its
            // subtract follows this add in the count's modification order,
            // and no task with a live entry ever reads a count of 0.
            entryCount.add(1, ordering: .relaxed)
            entries[id] = binding
            guard isAsyncLet else { return }
            // An earlier `async let` child at this address has ended (two
            // live tasks never share an address): drop its entry.
            let address = UInt(bitPattern: task)
            if let earlier = asyncLetAtAddress.updateValue(id, forKey: address), earlier != id {
                replaced = entries.removeValue(forKey: earlier)
                if replaced != nil {
                    replacedID = earlier
                    entryCount.subtract(1, ordering: .relaxed)
                }
            }
        }
        if replaced != nil { cctx_shim_unscoped_filter_remove(replacedID) }
        cctx_shim_unscoped_cache_put(task, Unmanaged.passUnretained(binding).toOpaque())
        TaskBinding.placeChanged(task: task, to: binding, owned: true)
        // `replaced` is released here, outside the lock.
        replaced = nil
        startReaperIfNeeded()
        return binding
    }

    /// Drops the entries of ended tasks; returns how many entries remain.
    @discardableResult
    func reap() -> Int {
        var dropped: [TaskBinding] = []
        for shard in shards {
            shard.withLock { entries, _ in
                // The ended keys first, then the removals: removing while
                // iterating would make the dictionary copy itself.
                let ended = entries.compactMap { $0.value.ownerHasEnded ? $0.key : nil }
                for key in ended {
                    if let binding = entries.removeValue(forKey: key) { dropped.append(binding) }
                    cctx_shim_unscoped_filter_remove(key)
                }
            }
        }
        let remaining = entryCount.subtract(dropped.count, ordering: .relaxed).newValue
        // Released here, outside every lock: a value's deinit may use the
        // library.
        dropped.removeAll()
        return remaining
    }

    private func startReaperIfNeeded() {
        guard !reaperRunning.load(ordering: .relaxed),
            reaperRunning.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
        else { return }
        var thread = pthread_t()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        let status = pthread_create(&thread, &attributes, { _ in
            UnscopedBindings.shared.reaperLoop()
            return nil
        }, nil)
        pthread_attr_destroy(&attributes)
        if status != 0 {
            // No thread now: the next insert tries again.
            reaperRunning.store(false, ordering: .releasing)
        }
    }

    /// Reaps while the table has entries, then ends: every 5 ms after a
    /// pass that dropped something, backing off to 100 ms while entries
    /// stay (long-lived tasks), so an idle table costs almost nothing.
    private func reaperLoop() {
        var pauseMilliseconds = 5
        while true {
            var pause = timespec(tv_sec: 0, tv_nsec: pauseMilliseconds * 1_000_000)
            nanosleep(&pause, nil)
            let before = entryCount.load(ordering: .relaxed)
            let remaining = reap()
            pauseMilliseconds = remaining < before ? 5 : Swift.min(pauseMilliseconds * 2, 100)
            if remaining > 0 { continue }
            reaperRunning.store(false, ordering: .releasing)
            // An insert between the last reap and the store above saw the
            // reaper running and started none: take over again if so.
            guard entryCount.load(ordering: .relaxed) > 0,
                reaperRunning.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing)
                    .exchanged
            else { return }
        }
    }
}
