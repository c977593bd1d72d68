import CContextCore

// Introspection: where the running code's context came from. A task sees the
// chain of bindings installed by `run` / `withValue` / the spawn helpers /
// its first write (each remembers its origin and, unretained, the binding
// that was innermost when it was installed, possibly one inherited from the
// creating task: the chain stops where a scope ended while something still
// held its binding; see `TaskBinding.enclosing`). A thread sees the
// chain the C runtime keeps: the contexts it entered (through C or through a
// synchronous `run` / `withValue` / helper, which also bound a frame) down to
// its base context.

extension Context {
    /// A multi-line description of the calling task's or thread's whole
    /// context chain, innermost first: which scope made each context current,
    /// and who owns it. For debugging and logs; the format may change.
    ///
    /// In a task, one line per binding — its origin (`run`,
    /// `withValue(request_id)`, `Context.task`, `addTaskInCopiedContext`, …),
    /// whether this task owns it (and may `set`), inherited it from the task
    /// that created it, or outlived its scope — then the context's values:
    ///
    /// ```text
    /// task context chain (innermost first):
    ///   #0 withValue(request_id), owned by this task: <Context {request_id: 7}>
    ///   #1 run, inherited from an enclosing task: <Context {}>
    /// ```
    ///
    /// On a thread (outside any task), one line per context the thread has
    /// entered — named by the Swift scope that entered it, or `entered from
    /// C` — ending with the thread's base context:
    ///
    /// ```text
    /// thread context chain (innermost first):
    ///   #0 run (Swift): <Context {user: "ann"}>
    ///   #1 entered from C: <Context {}>
    ///   #2 thread base context: <Context {}>
    /// ```
    ///
    /// A task never sees its thread's contexts, so a task's chain lists no
    /// thread entries.
    public static var currentChainDescription: String {
        guard let task = currentTask() else { return threadChainDescription() }
        return taskChainDescription(task: task)
    }

    private static func taskChainDescription(task: UnsafeRawPointer) -> String {
        var lines = ["task context chain (innermost first):"]
        var index = 0
        for current in TaskBinding.chain(from: CurrentPlace.resolve.binding) {
            let role: String
            if current.isOwned(by: task) {
                role = "owned by this task"
            } else if !current.isActive {
                role = "scope ended"
            } else if current.owner == nil {
                role = "entered by a thread, inherited"
            } else {
                role = "inherited from an enclosing task"
            }
            // After its scope, a binding that something still held reads
            // as the snapshot the scope ended with (`TaskBinding.context`
            // reads as `readInherited`): shown, not the live context a later
            // scope may have written.
            lines.append("  #\(index) \(current.origin), \(role): \(current.context)")
            index += 1
        }
        if index == 0 {
            lines.append("  (no context of its own: reads an empty context)")
        }
        return lines.joined(separator: "\n")
    }

    private static func threadChainDescription() -> String {
        var lines = ["thread context chain (innermost first):"]
        // Frames bound on this thread by a synchronous scope (owner 0) name
        // the Swift API that entered their context.
        var origins: [UnsafeMutableRawPointer: FrameOrigin] = [:]
        for current in TaskBinding.chain(from: TaskBinding.current)
        where current.owner == nil && current.isActive {
            origins[UnsafeMutableRawPointer(current.handle)] = current.origin
        }
        var count = cctx_thread_contexts(nil, 0)
        if count == 0 {
            lines.append("  (no context used on this thread yet: an empty context)")
            return lines.joined(separator: "\n")
        }
        var handles = [OpaquePointer?](repeating: nil, count: count)
        // Only this thread changes its own chain, so the length holds.
        count = Swift.min(count, cctx_thread_contexts(&handles, count))
        for (index, handle) in handles.prefix(count).enumerated() {
            guard let handle else { continue }
            let context = Context(retaining: handle)
            let origin: String
            if index == count - 1 {
                origin = "thread base context"
            } else if let swift = origins[UnsafeMutableRawPointer(handle)] {
                origin = "\(swift) (Swift)"
            } else {
                origin = "entered from C"
            }
            lines.append("  #\(index) \(origin): \(context)")
        }
        return lines.joined(separator: "\n")
    }
}
