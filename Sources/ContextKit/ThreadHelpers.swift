import Dispatch
import Foundation

// Starting work on another thread or queue in a copy of the caller's context:
// Python 3.14's `threading.Thread(context=copy_context())` and
// `asyncio.to_thread`. Each copy is taken at the call, so later changes by
// the caller do not show, and the work's own `set`s stay in its copy.

extension Thread {
    /// Starts a new thread that runs `block` in a copy of the caller's current
    /// context taken now (`Context.copyCurrent()`: the thread's, or in a
    /// task, the task's).
    ///
    /// Without this, a new thread starts in an empty context.
    ///
    /// - Parameters:
    ///   - name: the thread's name (`Thread.name`), or `nil`.
    ///   - block: the work; it runs once, on the new thread, in the copy,
    ///     which it may ``ContextVar/set(_:)`` freely.
    public static func detachNewThreadInCopiedContext(
        name: String? = nil,
        _ block: @escaping @Sendable () -> Void
    ) {
        let context = Context.copyCurrentForSpawn()
        let thread = Thread {
            context.runFresh(origin: .helper("Thread.detachNewThreadInCopiedContext"), block)
        }
        if let name { thread.name = name }
        thread.start()
    }
}

extension DispatchQueue {
    /// Submits `work` to run asynchronously in a copy of the caller's current
    /// context taken now (`Context.copyCurrent()`).
    ///
    /// Without this, work on a queue runs in whatever context the queue's
    /// worker thread has (an empty one unless something set it).
    /// Python's `asyncio.to_thread`; unlike `loop.run_in_executor`, which
    /// does not copy the context.
    ///
    /// - Parameters:
    ///   - group: a dispatch group the work is associated with, or `nil`.
    ///   - qos: the quality of service, as for `DispatchQueue.async`.
    ///   - flags: the work item's flags, as for `DispatchQueue.async`.
    ///   - work: the work; it runs once, in the copy, which it may
    ///     ``ContextVar/set(_:)`` freely.
    public func asyncInCopiedContext(
        group: DispatchGroup? = nil,
        qos: DispatchQoS = .unspecified,
        flags: DispatchWorkItemFlags = [],
        execute work: @escaping @Sendable () -> Void
    ) {
        let context = Context.copyCurrentForSpawn()
        async(group: group, qos: qos, flags: flags) {
            context.runFresh(origin: .helper("DispatchQueue.asyncInCopiedContext"), work)
        }
    }
}
