import Foundation
import Testing
@testable import ContextKit

#if canImport(Glibc)
import Glibc
#endif

/// `Context.run`'s binding borrows the caller's C context: the scope relies
/// on the `Context` it runs on (the method's `self`) staying alive for the
/// call, and a binding that a task still holds as the scope ends takes its
/// own reference. These tests drop every other reference to the `Context`
/// inside the body, and hand the binding to task-group children that
/// outlive the scope and the `Context`. Each runs in a child process: the
/// failure they guard against is a freed context read (the process stops).
@Suite struct BorrowedRunTests {
    final class Holder: @unchecked Sendable { var context: Context? }

    /// The only reference to the `Context` is dropped inside its own `run`
    /// (sync in a task, async, and sync on a plain thread), while a
    /// `Task {}` made in the body reads after the scope. The body still
    /// reads and writes its context; the task reads what the scope ended
    /// with; every value is released once the tasks are gone.
    @Test func runWhoseContextIsDroppedInsideItsBody() async {
        await #expect(processExitsWith: .success) {
            let counter = LifetimeCounter()
            let v = ContextVar<Tracked>("dropped_in_body")
            let gate = AsyncGate()
            let holder = Holder()

            holder.context = Context()
            let fromSync: Task<Int, Never> = try! holder.context!.run {
                holder.context = nil
                v.set(counter.make(1))
                guard v.value?.id == 1 else { exit(1) }
                return Task { await gate.wait(); return v.value?.id ?? -1 }
            }

            holder.context = Context()
            let fromAsync: Task<Int, Never> = try! await holder.context!.run { () async -> Task<Int, Never> in
                holder.context = nil
                v.set(counter.make(2))
                await Task.yield()
                return Task { await gate.wait(); return v.value?.id ?? -1 }
            }

            let fromThread: Task<Int, Never> = onNewThread {
                let local = Holder()
                local.context = Context()
                return try! local.context!.run {
                    local.context = nil
                    v.set(counter.make(3))
                    return Task { await gate.wait(); return v.value?.id ?? -1 }
                }
            }

            await gate.open()
            let reads = [await fromSync.value, await fromAsync.value, await fromThread.value]
            guard reads == [1, 2, 3] else { exit(2) }
            let released = await eventuallyYielding(seconds: 60) { counter.alive == 0 }
            exit(released ? 0 : 3)
        }
    }

    /// Task-group children added inside a sync `run`, a `withValue` nested
    /// in it, and an async `run` run after those scopes have ended and the
    /// `Context` objects are gone: each reads its scope's value, writes,
    /// and walks its chain (through links of bindings whose scopes ended).
    @Test func groupChildrenAddedInsideRunOutliveItAndItsContext() async {
        await #expect(processExitsWith: .success) {
            let counter = LifetimeCounter()
            let v = ContextVar<Tracked>("group_child")
            for round in 0..<scaled(50) {
                let gate = AsyncGate()
                let reads: [Int] = await withTaskGroup(of: Int.self) { group in
                    var context: Context? = Context()
                    try! context!.run {
                        v.set(counter.make(10))
                        group.addTask {
                            await gate.wait()
                            _ = Context.currentChainDescription
                            let read = v.value?.id ?? -1
                            v.set(counter.make(-1))
                            _ = Context.currentChainDescription
                            return read
                        }
                        v.withValue(counter.make(11)) {
                            group.addTask {
                                await gate.wait()
                                _ = Context.currentChainDescription
                                return v.value?.id ?? -1
                            }
                        }
                    }
                    context = Context()
                    try! await context!.run { () async in
                        v.set(counter.make(12))
                        group.addTask {
                            await gate.wait()
                            _ = Context.currentChainDescription
                            return v.value?.id ?? -1
                        }
                        await Task.yield()
                    }
                    context = nil
                    await gate.open()
                    var out: [Int] = []
                    for await read in group { out.append(read) }
                    return out.sorted()
                }
                guard reads == [10, 11, 12] else { exit(Int32(1 + min(round, 100))) }
            }
            let released = await eventuallyYielding(seconds: 60) { counter.alive == 0 }
            exit(released ? 0 : 120)
        }
    }
}
