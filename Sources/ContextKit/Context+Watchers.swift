import CContextCore
import Synchronization

// Context-switch watchers: CPython 3.14's `PyContext_AddWatcher`, with
// entered / exited / switched events, for profilers and tracers.
//
// The C runtime keeps the watcher slots (watch.c) and fires them on thread
// enter/exit and thread-state creation/destruction; the Swift facade sends
// the same events for task scopes (`Context.run`, `ContextVar.withValue`,
// the spawn helpers) through `cctx_notify_watchers`. With no watcher
// installed every event costs one atomic load in C and no lock.
//
// The Unmanaged pairing
// ---------------------
// * `Context.addWatcher` boxes the closure and hands it to C as userdata
//   with `Unmanaged.passRetained` — the one reference C borrows for as long
//   as the watcher is installed.
// * The C callback reads it with `takeUnretainedValue()` (C keeps its
//   reference; the read takes a temporary one of its own).
// * `ContextWatcher.cancel()` (or its `deinit`) calls `cctx_clear_watcher`,
//   which returns only once no thread can be running or about to run the
//   callback, and only then gives the reference back with `release()`.
//   `cancel` runs that at most once (an atomic exchange decides).

/// What happened to the current context, as a watcher sees it.
public enum ContextEvent: Sendable, Hashable, CustomStringConvertible {
    /// A context became current: a thread entered it (`cctx_context_enter`,
    /// `Context.run` outside a task), or a task scope began
    /// (`Context.run`, `ContextVar.withValue`, a spawn
    /// helper). The watcher's context is the one entered.
    case entered
    /// A context stopped being current. The watcher's context is the one
    /// current again: the thread's previous context, the enclosing scope's in
    /// a task, or `nil` when the task has no scope left.
    case exited
    /// The current context changed for another reason: a thread's state was
    /// created (its new empty context) or destroyed (`nil`).
    case switched

    init(_ event: cctx_event) {
        switch event {
        case CCTX_EVENT_ENTERED: self = .entered
        case CCTX_EVENT_EXITED: self = .exited
        default: self = .switched
        }
    }

    /// `entered`, `exited` or `switched`.
    public var description: String {
        switch self {
        case .entered: return "entered"
        case .exited: return "exited"
        case .switched: return "switched"
        }
    }
}

/// The closure of one watcher, boxed to cross into C as userdata.
private final class WatcherBox: Sendable {
    let body: @Sendable (ContextEvent, Context?) -> Void
    init(_ body: @escaping @Sendable (ContextEvent, Context?) -> Void) { self.body = body }
}

/// The C callback every Swift watcher is installed with.
private let watcherTrampoline: cctx_watcher_fn = { event, context, userdata in
    let box = Unmanaged<WatcherBox>.fromOpaque(userdata!).takeUnretainedValue()
    // `context` is borrowed for the call: the Context wrapper retains it, so
    // the watcher may keep it.
    box.body(ContextEvent(event), context.map { Context(retaining: $0) })
}

/// An installed context watcher; ``cancel()`` removes it, and so does the
/// handle's deinitialization.
///
/// Keep the handle for as long as the watcher should run:
///
/// ```swift
/// let watcher = try Context.addWatcher { event, context in
///     profiler.record(event, context)
/// }
/// defer { watcher.cancel() }
/// ```
public final class ContextWatcher: Sendable {
    /// The C watcher id (`cctx_add_watcher`).
    private let id: Int32
    /// C's reference to the closure box (passRetained at install), given
    /// back by whichever `cancel` wins `cancelledFlag`'s exchange.
    private let box: Unmanaged<WatcherBox>
    private let cancelledFlag = Atomic<Bool>(false)

    fileprivate init(id: Int32, box: Unmanaged<WatcherBox>) {
        self.id = id
        self.box = box
    }

    /// Whether ``cancel()`` has run.
    public var isCancelled: Bool { cancelledFlag.load(ordering: .acquiring) }

    /// Removes the watcher. When `cancel` returns, the closure is not running
    /// on any thread and will never be called again. Calling it again does
    /// nothing.
    ///
    /// Do not call it from inside a watcher's closure: removal waits for
    /// running callbacks to finish, the caller's own included.
    public func cancel() {
        guard !cancelledFlag.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let status = cctx_clear_watcher(id)
        if status != CCTX_OK {
            fatalError("ContextKit internal error: watcher \(id) was not installed")
        }
        // No thread can still be inside the callback: give back C's reference.
        box.release()
    }

    deinit { cancel() }
}

extension Context {
    /// Installs `body` as a context watcher and returns its handle: `body`
    /// runs on the thread where each event happens, before the operation
    /// that caused it returns, until the handle is cancelled or deinitialized.
    ///
    /// Events come from threads (a thread entering or leaving a context, in
    /// C or through `run` outside a task; a thread's state being
    /// created or destroyed) and from task scopes (`run` sync and
    /// async, `ContextVar.withValue`, the spawn helpers),
    /// each as ``ContextEvent/entered`` with the context entered and
    /// ``ContextEvent/exited`` with the context current again (`nil` when a
    /// task leaves its outermost scope).
    ///
    /// Watchers may be added and removed from any thread while events fire
    /// on others. Keep `body` short; it must not add or cancel watchers nor
    /// enter contexts. When no watcher is installed, events cost one atomic
    /// load.
    ///
    /// - Parameter body: called with the event and the context it concerns
    ///   (`nil`: no context, as when a task leaves its outermost scope); it
    ///   must be thread-safe.
    /// - Returns: the handle; cancel it (or let it go) to remove the watcher.
    /// - Throws: ``ContextError/tooManyWatchers`` when all eight slots (shared
    ///   with C's `cctx_add_watcher`) are in use.
    public static func addWatcher(
        _ body: @escaping @Sendable (_ event: ContextEvent, _ context: Context?) -> Void
    ) throws(ContextError) -> ContextWatcher {
        let box = Unmanaged.passRetained(WatcherBox(body))
        var id: Int32 = -1
        let status = cctx_add_watcher(watcherTrampoline, box.toOpaque(), &id)
        if status != CCTX_OK {
            box.release()
            try check(status)
        }
        return ContextWatcher(id: id, box: box)
    }
}
