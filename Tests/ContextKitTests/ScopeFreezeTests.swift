import CContextCore
import Foundation
import Synchronization
import Testing
@testable import ContextKit

#if canImport(Glibc)
import Glibc
#endif

/// A `Task {}` created inside a scope reads, after the scope has ended,
/// what the scope ended with — never what a later, separate scope of the
/// same `Context` writes (asyncio's `create_task` copies the context at
/// creation; docs/concurrency.md, "After the scope").
@Suite struct ScopeFreezeTests {
    /// Sync `run` (here from a sync function, in a task): the task is
    /// created in the first scope, reads after the second one wrote.
    @Test func taskFromSyncRunReadsWhatTheScopeEndedWith() async throws {
        let v = ContextVar<Int>("v", default: 0)
        let context = Context()
        let gate = AsyncGate()
        func first() throws -> Task<Int, Never> {
            try context.run {
                v.set(1)
                return Task { await gate.wait(); return (v.value ?? -1) }
            }
        }
        let task = try first()
        func second() throws { try context.run { v.set(2) } }
        try second()
        await gate.open()
        #expect(await task.value == 1)
        #expect(context[v] == 2)
    }

    /// Async `run`: the same, with an await inside each scope.
    @Test func taskFromAsyncRunReadsWhatTheScopeEndedWith() async throws {
        let v = ContextVar<Int>("v", default: 0)
        let context = Context()
        let gate = AsyncGate()
        let task = try await context.run {
            v.set(1)
            await Task.yield()
            return Task { await gate.wait(); return (v.value ?? -1) }
        }
        try await context.run {
            await Task.yield()
            v.set(2)
        }
        await gate.open()
        #expect(await task.value == 1)
    }

    /// `run` on a thread outside any task (the binding has no owner task).
    @Test func taskFromRunOnAThreadReadsWhatTheScopeEndedWith() async {
        let v = ContextVar<Int>("v", default: 0)
        let context = Context()
        let gate = AsyncGate()
        let task = onNewThread { () -> Task<Int, Never> in
            let task = try! context.run {
                v.set(1)
                return Task { await gate.wait(); return (v.value ?? -1) }
            }
            try! context.run { v.set(2) }
            return task
        }
        await gate.open()
        #expect(await task.value == 1)
    }

    /// `run`'s binding borrows its context from the caller (no reference
    /// of its own while the scope runs); a binding a `Task {}` still holds
    /// as the scope ends takes one then, and gives it back with the task's
    /// copy: after the task has gone, the caller's `Context` is still
    /// alive and reads what the second scope wrote. The first scope's value
    /// lives exactly as long as the task's copy (only its snapshot holds
    /// it). On a thread (the binding the thread would park) and in a task.
    /// In a child process: without the reference taken at the scope's end,
    /// the task's copy releases the caller's reference and the context is
    /// freed under the `Context` (its magic check fails, or the process
    /// stops).
    @Test func taskKeepsItsOwnReferenceToTheContextItsRunBorrowed() async {
        await #expect(processExitsWith: .success) {
            let counter = LifetimeCounter()
            let v = ContextVar<Tracked>("borrowed_run")
            let gate = AsyncGate()
            let onThread = Context(), inTask = Context()
            @Sendable func scope(_ context: Context) -> Task<Int, Never> {
                try! context.run {
                    v.set(counter.make(1))
                    return Task { await gate.wait(); return v.value?.id ?? -1 }
                }
            }
            func readBoth() async -> Bool {
                let fromThread = onNewThread { scope(onThread) }
                let fromTask = await Task.detached { scope(inTask) }.value
                // Replaced in the live contexts: only the tasks' snapshots
                // hold the first values now.
                try! onThread.run { v.set(counter.make(2)) }
                try! inTask.run { v.set(counter.make(2)) }
                guard counter.alive == 4 else { return false }
                await gate.open()
                let readOnThread = await fromThread.value
                let readInTask = await fromTask.value
                return readOnThread == 1 && readInTask == 1
            }
            guard await readBoth() else { exit(1) }
            // The snapshots go with the tasks' copies of the bindings (their
            // task-local items), after the bindings' context references.
            var waited = 0
            while counter.alive != 2 && waited < 10_000 {
                await Task.yield()
                usleep(1000)
                waited += 1
            }
            guard counter.alive == 2 else { exit(2) }
            guard onThread[v]?.id == 2, inTask[v]?.id == 2 else { exit(3) }
            exit(0)
        }
    }

    /// A `Task {}` created in a `withValue` nested in `run` holds
    /// `withValue`'s binding, a private copy nobody writes after its scope:
    /// a guard that this stays so (it passed before the freeze too), and
    /// that the task's unscoped writes stay its own.
    @Test func taskFromNestedWithValueReadsItsScope() async throws {
        let v = ContextVar<Int>("v", default: 0)
        let w = ContextVar<Int>("w", default: 0)
        let context = Context()
        let gate = AsyncGate()
        let task = try await context.run {
            v.set(1)
            w.set(10)
            return v.withValue(5) {
                Task { () -> [Int] in
                    await gate.wait()
                    let before = [(v.value ?? -1), (w.value ?? -1)]
                    w.set(11)
                    return before + [(w.value ?? -1)]
                }
            }
        }
        try await context.run {
            v.set(2)
            w.set(20)
        }
        await gate.open()
        #expect(await task.value == [5, 10, 11])
        #expect(context[v] == 2 && context[w] == 20)
    }

    /// `Task.detached` inherits no binding: unaffected (a guard).
    @Test func detachedTaskFromRunReadsNothing() async throws {
        let v = ContextVar<Int>("v", default: 0)
        let context = Context()
        let gate = AsyncGate()
        let task = try await context.run {
            v.set(1)
            return Task.detached { await gate.wait(); return (v.value ?? -1) }
        }
        try await context.run { v.set(2) }
        await gate.open()
        #expect(await task.value == 0)
    }

    /// Exception 1 still holds while the scope lasts, and after it ends the
    /// task reads what the scope ended with (its last in-scope `set`).
    @Test func laterSetInTheSameScopeIsSeenThenFrozen() async throws {
        let v = ContextVar<Int>("v", default: 0)
        let context = Context()
        let inScope = AsyncGate()
        let afterScope = AsyncGate()
        let read = AsyncGate()
        let seen = LockedBox<[Int]>([])
        let task = try await context.run {
            v.set(1)
            let task = Task { () -> Int in
                await inScope.wait()
                seen.mutate { $0.append((v.value ?? -1)) }
                await read.open()
                await afterScope.wait()
                return (v.value ?? -1)
            }
            v.set(3)
            await inScope.open()
            await read.wait()
            return task
        }
        try await context.run { v.set(2) }
        await afterScope.open()
        #expect(await task.value == 3)
        #expect(seen.value == [3])
    }

    /// Copies made from an inherited binding after its scope ended
    /// (`Context.copyCurrent`, a first `set`, `withCurrentUnsafeHandle`)
    /// hold what the scope ended with too.
    @Test func copiesAfterTheScopeHoldWhatItEndedWith() async throws {
        let v = ContextVar<Int>("v", default: 0)
        let w = ContextVar<Int>("w", default: 0)
        let context = Context()
        let gate = AsyncGate()
        let task = try await context.run {
            v.set(1)
            return Task { () -> [Int] in
                await gate.wait()
                let copied = Context.copyCurrent()[v] ?? -1
                let viaHandle = Context.withCurrentUnsafeHandle { handle, _ in
                    Context(retaining: handle)[v] ?? -1
                }
                w.set(7)  // first write: a copy of what the task sees
                return [copied, viaHandle, (v.value ?? -1), (w.value ?? -1)]
            }
        }
        try await context.run { v.set(2) }
        await gate.open()
        #expect(await task.value == [1, 1, 1, 7])
    }

    /// Stress: a `Task {}` reads in a loop while its scope ends and the
    /// next scope of the same context writes; it must only ever see the
    /// first scope's value. Many rounds; ThreadSanitizer-clean. The reader
    /// yields only every 64 reads: one that never yields holds a
    /// cooperative thread, and with another test blocking the other one
    /// (2 cores) nothing else could run.
    @Test func readerRacingTheScopeEndSeesOnlyTheFirstScope() async throws {
        #expect(try await wrongReadsRacingTheScopeEnd(rounds: scaled(200), yieldEvery: 64) == 0)
    }

    /// The same with a reader that yields between reads (it resumes on
    /// either thread), fewer rounds.
    @Test func yieldingReaderRacingTheScopeEnd() async throws {
        #expect(try await wrongReadsRacingTheScopeEnd(rounds: scaled(100), yieldEvery: 1) == 0)
    }

    /// Rounds of: a scope sets 1 and starts a `Task {}` that reads in a loop
    /// (yielding every `yieldEvery` reads); once it has read, the scope
    /// ends and a second scope of the same context sets 2...20; the reader
    /// stops after a read made after that. Returns how many reads saw
    /// anything but 1.
    private func wrongReadsRacingTheScopeEnd(rounds: Int, yieldEvery: Int) async throws -> Int {
        final class Round: Sendable {
            let reads = Atomic<Int>(0)
            let wrong = Atomic<Int>(0)
            let stop = Atomic<Bool>(false)
        }
        let v = ContextVar<Int>("v", default: 0)
        var wrongTotal = 0
        for _ in 0..<rounds {
            let context = Context()
            let round = Round()
            let reader = try await context.run { () async -> Task<Void, Never> in
                v.set(1)
                let reader = Task {
                    while !round.stop.load(ordering: .relaxed) {
                        if (v.value ?? -1) != 1 { round.wrong.add(1, ordering: .relaxed) }
                        if round.reads.add(1, ordering: .relaxed).newValue % yieldEvery == 0 { await Task.yield() }
                    }
                }
                // The reader runs before the scope ends.
                while round.reads.load(ordering: .relaxed) == 0 { await Task.yield() }
                return reader
            }
            let before = round.reads.load(ordering: .relaxed)
            try await context.run { for value in 2...20 { v.set(value) } }
            // And reads after the next scope wrote.
            while round.reads.load(ordering: .relaxed) <= before + 1 { await Task.yield() }
            round.stop.store(true, ordering: .relaxed)
            await reader.value
            wrongTotal += round.wrong.load(ordering: .relaxed)
        }
        return wrongTotal
    }

    /// A task keeps alive only what it can read. A `Task {}` made inside
    /// `run` outlives the scope and reads the snapshot the scope ended
    /// with; a later, separate scope of the same context sets a value that
    /// task can never read. Once the caller drops the context, that value
    /// goes (after the grace period of the reference the scope's end took
    /// for readers racing it: `cctx_reclaim` on the thread that ended the
    /// scope waits for it) — the task's binding holds no reference to the
    /// caller's context. Before, it held one until the task ended, and
    /// with it every value later scopes set there. On a thread and in a
    /// task (synchronous `run`s only, so that the scope ends, and
    /// `cctx_reclaim` runs, on one thread).
    @Test func aTaskThatOutlivedARunKeepsNoValueOfALaterScope() async {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("later_scope_value")
        let gate = AsyncGate()
        @Sendable func scopes() -> (Task<Int, Never>, Int) {
            var context: Context? = Context()
            let task = try! context!.run { Task { await gate.wait(); return v.value?.id ?? -1 } }
            try! context!.run { v.set(counter.make(1)) }
            context = nil
            cctx_reclaim()
            return (task, counter.alive)
        }
        let (onThread, aliveOnThread) = onNewThread(scopes)
        let (inTask, aliveInTask) = await Task.detached(operation: scopes).value
        #expect(aliveOnThread == 0, "a later scope's value is kept by a task that cannot read it (thread)")
        #expect(aliveInTask == 0, "a later scope's value is kept by a task that cannot read it (task)")
        await gate.open()
        #expect(await onThread.value == -1)
        #expect(await inTask.value == -1)
        #expect(counter.alive == 0)
    }

    /// A `withValue` in a task that outlived a `run` scope starts from what
    /// the scope ended with (its binding is inherited, so the copy is made
    /// from it), not from the context's later state (asyncio: the task's
    /// context is a copy taken at its creation). Before, that copy read
    /// the live context, and saw a later scope's `set`. Sync and async
    /// `withValue`.
    @Test func withValueInATaskThatOutlivedARunStartsFromWhatTheScopeEndedWith() async throws {
        let v = ContextVar<Int>("escaped_with_value_v", default: 0)
        let w = ContextVar<Int>("escaped_with_value_w", default: 0)
        let gate = AsyncGate()
        let context = Context()
        let task = try context.run {
            w.set(1)
            return Task { () async -> [Int] in
                await gate.wait()
                let sync = v.withValue(5) { (w.value ?? -1) * 10 + (v.value ?? -1) }
                let async = await v.withValue(6) { () async -> Int in (w.value ?? -1) * 10 + (v.value ?? -1) }
                return [sync, async]
            }
        }
        try context.run { w.set(99) }
        await gate.open()
        #expect(await task.value == [15, 16])
        #expect(context[w] == 99)
    }

    /// Readers racing the end of a `run` whose caller drops the context at
    /// once: tasks made in the scope read in a loop while the scope ends,
    /// the caller releases its only reference and new contexts are made
    /// (reusing the memory); every read must see the scope's value.
    /// Without the read section around a read of the live context, a
    /// reader that saw no snapshot yet could read a freed context
    /// (AddressSanitizer, or a wrong value).
    @Test func readersRacingTheEndOfARunWhoseContextIsDropped() async throws {
        final class Round: Sendable {
            let reads = Atomic<Int>(0)
            let wrong = Atomic<Int>(0)
            let stop = Atomic<Bool>(false)
        }
        let v = ContextVar<Int>("racing_dropped_v", default: 0)
        var wrongTotal = 0
        for index in 0..<scaled(200) {
            let expected = index + 1
            let round = Round()
            var context: Context? = Context()
            let readers = try await context!.run { () async -> [Task<Void, Never>] in
                v.set(expected)
                let readers = (0..<2).map { _ in
                    Task {
                        var count = 0
                        while !round.stop.load(ordering: .relaxed) {
                            if v.value != expected { round.wrong.add(1, ordering: .relaxed) }
                            round.reads.add(1, ordering: .relaxed)
                            count += 1
                            if count % 16 == 0 { await Task.yield() }
                        }
                    }
                }
                while round.reads.load(ordering: .relaxed) == 0 { await Task.yield() }
                return readers
            }
            context = nil
            // New contexts, some of which may take the dropped one's memory.
            for other in 0..<4 { try await Context().run { () async in v.set(-other) } }
            let before = round.reads.load(ordering: .relaxed)
            while round.reads.load(ordering: .relaxed) <= before + 2 { await Task.yield() }
            round.stop.store(true, ordering: .relaxed)
            for reader in readers { await reader.value }
            wrongTotal += round.wrong.load(ordering: .relaxed)
        }
        #expect(wrongTotal == 0)
    }

    /// Values whose deinit reads and sets the variable: the first scope's
    /// value lives on in the snapshot while the escaped task holds the
    /// binding, and is released (its deinit using the library) when the
    /// task ends. In a child process: a stop fails this test alone.
    @Test func snapshotValuesWithReentrantDeinitAreReleasedWithTheTask() async {
        await #expect(processExitsWith: .success) {
            let context = Context()
            let gate = AsyncGate()
            let task = try! await context.run {
                Reentrant.variable.set(Reentrant(1))
                return Task { await gate.wait(); return Reentrant.variable.value?.id ?? -1 }
            }
            // Replaces value 1 in the live context: only the snapshot holds it.
            try! await context.run { Reentrant.variable.set(Reentrant(2)) }
            if ReentrantCount.count.load(ordering: .sequentiallyConsistent) != 0 { exit(2) }
            await gate.open()
            if await task.value != 1 { exit(3) }
            // The task has ended: its binding, and the snapshot, go with it.
            let gone = eventually(seconds: 30) { ReentrantCount.count.load(ordering: .sequentiallyConsistent) == 1 }
            if !gone { exit(4) }
            if context[Reentrant.variable]?.id != 2 { exit(5) }
            exit(0)
        }
    }
}

/// A value whose deinit reads and sets ContextKit variables, counting its
/// releases (``ScopeFreezeTests/snapshotValuesWithReentrantDeinitAreReleasedWithTheTask()``).
private final class Reentrant: Sendable {
    static let variable = ContextVar<Reentrant>("reentrant")
    static let log = ContextVar<Int>("log", default: 0)
    let id: Int
    init(_ id: Int) { self.id = id }
    deinit {
        _ = Reentrant.variable.value?.id
        Reentrant.log.set((Reentrant.log.value ?? 0) + 1)
        ReentrantCount.count.add(1, ordering: .sequentiallyConsistent)
    }
}

private enum ReentrantCount { static let count = Atomic<Int>(0) }
