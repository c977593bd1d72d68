import CContextCore
import CContextKitShims
import Synchronization

// Where code runs decides its current context.
//
// * Outside any Swift task (a Thread, a DispatchQueue, `main` before any
//   task): the calling thread's current context in C.
// * Inside a task: the `TaskFrame` bound in the task-local
//   `TaskFrame.current` by the innermost `Context.run` / `ContextVar.withValue`
//   around the code — or, with no frame, an empty context (never the
//   thread's: a task hops threads, and the thread's context belongs to
//   whatever ran there last).
//
// A frame's context is claimed (`cctx_context_claim`) or entered by a thread
// for the frame's whole scope, so nothing else can write it; the frame's
// owner task is its only writer. Child tasks inherit the task-local and so
// see the frame: they read through `cctx_context_lookup`, which is safe while
// the owner writes on another thread, and may not write.

/// Identity of the task running the caller, or 0 outside any task.
///
/// The task object's address (from `cctx_swift_current_task`, which asks
/// the Concurrency runtime directly: `withUnsafeCurrentTask` is generic and
/// unspecialised across modules, and cost more than the rest of a `get`).
/// An address can be reused once its task has ended; `TaskFrame.isActive`
/// makes that harmless (see there).
@inlinable
func currentTaskIdentity() -> UInt {
    UInt(bitPattern: cctx_swift_current_task())
}

/// One scope of `Context.run` / `ContextVar.withValue`: the context it runs
/// in and who may write it.
@usableFromInline
final class TaskFrame: Sendable {
    /// The innermost frame around the running code, inherited by child tasks
    /// (`async let`, task groups, `Task {}`) but not by `Task.detached`.
    @usableFromInline @TaskLocal static var current: TaskFrame?

    /// The context of this scope (claimed or entered for the whole scope).
    @usableFromInline let context: Context

    /// The task that opened the scope; 0 when a thread opened it (a
    /// synchronous `run` outside any task, whose context the thread entered).
    let owner: UInt

    /// Which API opened the scope (for ``Context/currentChainDescription``).
    let origin: FrameOrigin

    /// The frame that was innermost when this one was opened: an enclosing
    /// scope of the same task, or the frame this task inherited from the task
    /// that created it; nil for the outermost. Held strongly only for
    /// introspection and for the `exited` watcher event; frames are small
    /// and share their contexts' structure.
    let parent: TaskFrame?

    /// True from the start of the scope until it ends. Only the owner clears
    /// it, before its scope returns; the owner task cannot end while its frame
    /// is active, so a task whose address equals `owner` while the frame is
    /// active IS the owner (addresses are reused only after a task ends).
    let isActiveFlag = Atomic<Bool>(true)

    init(context: Context, owner: UInt, origin: FrameOrigin = .run, parent: TaskFrame? = nil) {
        self.context = context
        self.owner = owner
        self.origin = origin
        self.parent = parent
    }

    var isActive: Bool { isActiveFlag.load(ordering: .acquiring) }

    func deactivate() { isActiveFlag.store(false, ordering: .releasing) }

    /// Whether the task `task` may write this frame's context (set, reset).
    @usableFromInline
    func isWritable(by task: UInt) -> Bool {
        task != 0 && task == owner && isActive
    }
}

/// Which API opened a frame, as ``Context/currentChainDescription`` prints it.
package enum FrameOrigin: Sendable, CustomStringConvertible {
    /// `Context.run` (sync or async).
    case run
    /// `ContextVar.withValue`; the variable's name.
    case withValue(variable: String)
    /// A helper that runs work in a copy of the spawning context: the
    /// helper's name (`Context.task`, `addTaskInCopiedContext`, …).
    case helper(String)

    package var description: String {
        switch self {
        case .run: return "run"
        case .withValue(let name): return "withValue(\(name))"
        case .helper(let name): return name
        }
    }
}

/// Where the running code's current context lives.
@usableFromInline
enum CurrentPlace {
    /// Outside any task: the calling thread's current context in C.
    case thread
    /// In a task; `frame` is the innermost frame (nil: none, an empty
    /// context), `isOwner` whether this task owns it and may write it.
    case task(frame: TaskFrame?, isOwner: Bool)

    @inlinable
    static var resolve: CurrentPlace {
        let task = currentTaskIdentity()
        if task == 0 { return .thread }
        guard let frame = TaskFrame.current else { return .task(frame: nil, isOwner: false) }
        return .task(frame: frame, isOwner: frame.isWritable(by: task))
    }
}

/// Why a write (`set`, `reset`) in a task is or is not allowed — the decision
/// behind the precondition failure documented in docs/concurrency.md.
enum WriteDecision: Equatable {
    /// The task owns an active frame: write into its context.
    case allowed
    /// The task has no frame (detached, or started outside any
    /// `run`/`withValue`).
    case noContext
    /// The frame was inherited from the task that entered it.
    case inheritedContext
    /// The frame's scope has ended.
    case endedContext

    /// Decides for task identity `task` (non-zero) under `frame`.
    static func decide(frame: TaskFrame?, task: UInt) -> WriteDecision {
        guard let frame else { return .noContext }
        if frame.isWritable(by: task) { return .allowed }
        if !frame.isActive { return .endedContext }
        return .inheritedContext
    }

    /// The message a refused write stops with. `operation` is `set(_:)` or
    /// `reset(_:)`.
    static func message(for decision: WriteDecision, variable name: String, operation: String) -> String {
        let why: String
        switch decision {
        case .allowed:
            return ""
        case .noContext:
            why = "in a task that has not entered a context of its own would change a context other tasks share "
                + "(it has no context of its own, and the thread's belongs to whatever runs there next)"
        case .inheritedContext:
            why = "in a task that has not entered a context of its own would change a context other tasks share "
                + "(the context this task inherited from the task that entered it)"
        case .endedContext:
            why = "in a task that has not entered a context of its own would change a context other tasks share "
                + "(the run/withValue that entered it has returned)"
        }
        return "ContextVar '\(name)': \(operation) \(why). Run the task's body in a context of its own: "
            + "`try await Context.copyCurrent().run { … }`, `Context.task { … }`, "
            + "or `\(name).withValue(…) { … }`."
    }
}
