import Foundation
import Synchronization
import Testing
@testable import ContextKit

#if canImport(Glibc)
import Glibc
#endif

/// Adversarial probes of the places ContextKit holds a binding without a
/// reference of its own: the calling thread's place entry (reads, `set`,
/// `reset`), a scope's enclosing binding, the task id a scope hands back
/// at its end, and the unscoped table's counting filter. Each probe builds
/// a moment where the "something else" that keeps the binding alive might
/// let go, or where an entry might be taken for the wrong task, and checks
/// what a user sees. Those that could stop the process run in a child
/// process (an exit test).
@Suite struct UnretainedPlaceTests {
    /// A value whose deinit uses the library in every way that reads the
    /// running task's place: a read, a `set` and `reset`, and a scope
    /// (`Context.run`, with a `set` inside and a nested `withValue`).
    final class UsesPlace: Sendable {
        static let variable = ContextVar<UsesPlace>("up_value")
        static let other = ContextVar<Int>("up_other", default: 0)
        static let released = Atomic<Int>(0)
        let id: Int
        init(_ id: Int) { self.id = id }
        deinit {
            _ = UsesPlace.variable.value?.id
            let token = UsesPlace.other.set(id)
            _ = UsesPlace.other.value
            try? UsesPlace.other.reset(token)
            try? Context().run {
                UsesPlace.other.set(-id)
                UsesPlace.other.withValue(id) { _ = UsesPlace.other.value }
            }
            _ = UsesPlace.other.value
            UsesPlace.released.add(1, ordering: .sequentiallyConsistent)
        }
    }

    /// A `Task {}` made in a scope that then ends (freezing the binding,
    /// which the task's copied task-locals hold) reads the variable, so
    /// its thread's place entry names that binding; nothing else moves the
    /// place generation before the task ends. The task's end releases its
    /// task-locals, the binding's last reference, and with the binding its
    /// snapshot and context, whose value's deinit reads, writes and opens
    /// scopes in that same task. Those must not reach the binding being
    /// freed (or its freed snapshot) through the entry.
    @Test func escapedBindingDyingAtTheEndOfTheTaskThatCopiedIt() async {
        await #expect(processExitsWith: .success) {
            let gate = AsyncGate()
            let task = try! await Context().run { () async -> Task<Int, Never> in
                UsesPlace.variable.set(UsesPlace(1))
                return Task {
                    await gate.wait()
                    return UsesPlace.variable.value?.id ?? -1
                }
            }
            await gate.open()
            if await task.value != 1 { exit(2) }
            if !eventually(seconds: 30, { UsesPlace.released.load(ordering: .sequentiallyConsistent) == 1 }) {
                exit(3)
            }
            exit(0)
        }
    }

    /// A task group made outside a scope gets a child added inside it (the
    /// runtime copies the scope's task-locals into the child). The scope
    /// ends and is frozen while the child waits; the child then opens its
    /// own scopes, whose enclosing binding (held unretained by the scope)
    /// is that frozen binding, kept alive only by the child's copied
    /// task-locals. After each scope the child reads what the first scope
    /// ended with, and its own `set` makes it a private copy.
    @Test func groupChildOutlivingItsScopeOpensScopesOverTheFrozenBinding() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("up_group", default: 0)
            let gate = AsyncGate()
            let results = await withTaskGroup(of: Int.self) { group -> [Int] in
                try! await Context().run { () async in
                    v.set(1)
                    for _ in 0..<4 {
                        group.addTask {
                            await gate.wait()
                            var bad = 0
                            for round in 0..<50 {
                                try! await Context().run { () async in
                                    v.set(round + 10)
                                    await Task.yield()
                                    if v.value != round + 10 { bad += 1 }
                                }
                                await v.withValue(-round) { () async in
                                    await Task.yield()
                                    if v.value != -round { bad += 1 }
                                }
                                if v.value != 1 { bad += 1 }
                            }
                            v.set(99)
                            if v.value != 99 { bad += 1 }
                            return bad
                        }
                    }
                }
                await gate.open()
                var all: [Int] = []
                for await bad in group { all.append(bad) }
                return all
            }
            if results != [0, 0, 0, 0] { exit(2) }
            exit(0)
        }
    }

    /// A scope's binding dies after the scope has ended (its context's
    /// last reference goes with it), so the values it held are released in
    /// the task just after `leave` restored the enclosing place — an
    /// unscoped binding, an inherited one, an enclosing scope, or none.
    /// Their deinit reads, writes and opens scopes (whose enclosing binding
    /// is the one the ended scope returned to); afterwards the task reads
    /// and writes what it did before the scope.
    @Test func deinitAtScopeEndOpensScopesOverTheEnclosingPlace() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("up_deinit", default: 0)
            let before = UsesPlace.released.load(ordering: .sequentiallyConsistent)
            func scopeWhoseValueDiesAtItsEnd(_ id: Int) async -> Bool {
                let seen = v.value
                try! await Context().run { () async in
                    UsesPlace.variable.set(UsesPlace(id))
                    await Task.yield()
                    UsesPlace.variable.set(UsesPlace(id + 1))
                }
                UsesPlace.variable.withValue(UsesPlace(id + 2)) {}
                try! Context().run { UsesPlace.variable.set(UsesPlace(id + 3)) }
                return v.value == seen && UsesPlace.other.value == 0
            }
            var ok = true
            // None.
            ok = await Task.detached { await scopeWhoseValueDiesAtItsEnd(10) }.value && ok
            // Unscoped.
            ok = await Task.detached { v.set(5); let r = await scopeWhoseValueDiesAtItsEnd(20); return r && v.value == 5 }.value && ok
            // Inherited (a structured child of a scope).
            ok = await v.withValue(7) { () async in
                let child = await withTaskGroup(of: Bool.self) { group in
                    group.addTask { await scopeWhoseValueDiesAtItsEnd(30) }
                    return await group.next()!
                }
                return child && v.value == 7
            } && ok
            // An enclosing scope of the same task.
            ok = await Task.detached {
                try! await Context().run { () async in
                    v.set(8)
                    let r = await scopeWhoseValueDiesAtItsEnd(40)
                    return r && v.value == 8
                }
            }.value && ok
            if !ok { exit(2) }
            let released = eventually(seconds: 30) {
                UsesPlace.released.load(ordering: .sequentiallyConsistent) - before == 16
            }
            if !released { exit(3) }
            if !unscopedTableEmptied() { exit(4) }
            exit(0)
        }
    }

    /// `set` through the borrowed place-entry path replaces a value whose
    /// deinit writes another variable without resetting it and opens a
    /// scope: the write lands in the binding the task owns, in a scope and
    /// in the unscoped binding; the scope's last value, released when the
    /// scope's binding dies, writes into the place the scope returned to.
    @Test func borrowedSetReleasingAValueWhoseDeinitWrites() async {
        final class Writes: Sendable {
            let into: ContextVar<Int>
            let id: Int
            init(_ id: Int, into: ContextVar<Int>) { self.id = id; self.into = into }
            deinit {
                into.set(id)
                _ = try? Context().run { into.set(-1) }
            }
        }
        let w = ContextVar<Writes>("up_writes")
        let into = ContextVar<Int>("up_into", default: 0)
        let ok = await Task.detached { () -> Bool in
            var ok = true
            w.set(Writes(1, into: into))
            _ = w.value
            w.set(Writes(2, into: into))  // releases 1: its deinit sets into = 1
            ok = ok && into.value == 1
            try! Context().run {
                w.set(Writes(3, into: into))
                _ = w.value
                w.set(Writes(4, into: into))  // releases 3
                ok = ok && into.value == 3
            }
            // The scope's context died with it: 4, released there, wrote
            // through the place the scope returned to (the unscoped one).
            ok = ok && into.value == 4
            return ok
        }.value
        #expect(ok)
    }

    /// Sequential `async let` children share one address; each writes (its
    /// entry replaces the previous child's, whose filter count goes), opens
    /// a scope over that unscoped binding, suspends in it, and after the
    /// scope — and after another task's scope moved the place generation —
    /// reads its own value. Many rounds, with other tasks' entries coming
    /// and going through the reaper.
    @Test func asyncLetChildrenAtOneAddressFindTheirOwnEntry() async {
        let v = ContextVar<Int>("up_asynclet", default: -1)
        let churn = Task.detached {
            for i in 0..<scaled(400) {
                await Task.detached { _ = v.set(i) }.value
            }
        }
        var bad = 0
        for round in 0..<scaled(400) {
            async let child: Bool = {
                v.set(round)
                try! await Context().run { () async in
                    v.set(-round)
                    await Task.yield()
                }
                await Task.detached { try! Context().run {} }.value
                if v.value != round { return false }
                await v.withValue(round + 1) { () async in await Task.yield() }
                return v.value == round
            }()
            if await !child { bad += 1 }
        }
        await churn.value
        #expect(bad == 0)
    }

    /// Structured children read their parent's scope binding (not their
    /// own) and open scopes over it that suspend and end on other threads:
    /// the place the scope's end restores is the child's, not owned. A
    /// child's `set` after its scope makes it a private copy; the parent
    /// never sees a child's write.
    @Test func childScopesOverTheParentsBindingNeverWriteIt() async throws {
        let v = ContextVar<Int>("up_child", default: 0)
        try await Context().run { () async in
            v.set(1)
            let bad = await withTaskGroup(of: Int.self) { group in
                for id in 0..<scaled(200) {
                    group.addTask {
                        var bad = 0
                        _ = v.value
                        try! await Context().run { () async in
                            v.set(id + 100)
                            await Task.yield()
                        }
                        if v.value != 1 { bad += 1 }
                        await Task.yield()
                        if v.value != 1 { bad += 1 }
                        v.set(id + 1000)
                        if v.value != id + 1000 { bad += 1 }
                        return bad
                    }
                }
                return await group.reduce(0, +)
            }
            #expect(bad == 0)
            #expect(v.value == 1)
        }
    }

    /// `run` on a plain thread starts a `Task {}` (copying the thread's
    /// scope binding) and ends before the task opens scopes over that
    /// binding; the task reads what the thread's scope ended with.
    @Test func taskFromAThreadScopeOpensScopesAfterItEnds() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("up_thread", default: 0)
            let gate = AsyncGate()
            let task = onNewThread { () -> Task<Bool, Never> in
                try! Context().run {
                    v.set(3)
                    return Task {
                        await gate.wait()
                        var ok = true
                        for round in 0..<20 {
                            try! await Context().run { () async in v.set(round); await Task.yield() }
                            ok = ok && v.value == 3
                        }
                        return ok
                    }
                }
            }
            await gate.open()
            if await !task.value { exit(2) }
            exit(0)
        }
    }

    /// An `entered` watcher runs another task on the calling thread
    /// (`Task.immediate`), which reads and so fills the thread's place
    /// entry with its own place — without moving the place generation.
    /// The scope being entered must still return, at its end, to the place
    /// of the task that opened it (here its unscoped binding): the task
    /// reads its own value after the scope, and its next `set` writes that
    /// binding (not a second unscoped binding replacing the first); nested
    /// in a scope of its own, it returns to that scope and writes it.
    @Test func enteredWatcherRunningAnotherTaskSynchronously() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("up_immediate", default: 0)
            let armed = Atomic<Bool>(false)
            let watcher = try! Context.addWatcher { event, _ in
                guard event == .entered, armed.load(ordering: .relaxed) else { return }
                Task.immediate { _ = v.value }
            }
            let ok = await Task.detached { () -> Bool in
                v.set(5)
                _ = v.value
                armed.store(true, ordering: .relaxed)
                try! Context().run { v.set(6) }
                armed.store(false, ordering: .relaxed)
                var ok = v.value == 5
                v.set(7)
                ok = ok && v.value == 7
                await Task.yield()
                ok = ok && v.value == 7
                // Nested: the scope returns to the enclosing scope the task
                // owns, and the next `set` writes that scope's context.
                let outer = Context()
                try! outer.run {
                    v.set(8)
                    armed.store(true, ordering: .relaxed)
                    try! Context().run { v.set(9) }
                    armed.store(false, ordering: .relaxed)
                    ok = ok && v.value == 8
                    v.set(10)
                }
                ok = ok && outer[v] == 10 && v.value == 7
                return ok
            }.value
            watcher.cancel()
            if !ok { exit(2) }
            if !unscopedTableEmptied() { exit(4) }
            exit(0)
        }
    }

    /// A task nobody holds a handle to sets (its unscoped binding, the
    /// only thing that keeps that binding alive) and suspends inside a
    /// scope on a continuation, while the table is reaped again and again:
    /// the suspended task is not "ended", so its binding stays, and the
    /// scope's end returns to it (held unretained by the scope).
    @Test func suspendedTaskWithoutAHandleKeepsItsUnscopedBindingThroughAScope() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("up_parked", default: 0)
            let parked = LockedBox<CheckedContinuation<Void, Never>?>(nil)
            let result = LockedBox<Bool?>(nil)
            _ = Task.detached {
                v.set(5)
                try! await Context().run { () async in
                    v.set(6)
                    await withCheckedContinuation { continuation in parked.mutate { $0 = continuation } }
                }
                let ok = v.value == 5
                v.set(7)
                result.mutate { $0 = ok && v.value == 7 }
            }
            if !eventually(seconds: 30, { parked.value != nil }) { exit(3) }
            for _ in 0..<20 { UnscopedBindings.shared.reap() }
            parked.value!.resume()
            if !eventually(seconds: 30, { result.value != nil }) { exit(4) }
            if result.value != true { exit(2) }
            exit(0)
        }
    }

    /// An `exited` watcher is handed the context the task returns to, and
    /// may keep it. When that is the task's unscoped binding — private to
    /// the task, written and borrowed-read by it alone — another task that
    /// runs the kept context must not become a second writer of it: its
    /// `run` throws (the task has it entered), and the task's own `set`
    /// and reads stay its own.
    @Test func exitedWatcherKeepingTheTasksUnscopedContext() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("up_kept", default: 0)
            let kept = LockedBox<Context?>(nil)
            let armed = Atomic<Bool>(false)
            let watcher = try! Context.addWatcher { event, context in
                guard event == .exited, armed.load(ordering: .relaxed), let context else { return }
                kept.mutate { $0 = context }
            }
            let inside = AsyncGate()
            let release = AsyncGate()
            let ok = await Task.detached { () -> Bool in
                v.set(1)
                armed.store(true, ordering: .relaxed)
                try! Context().run {}
                armed.store(false, ordering: .relaxed)
                guard let context = kept.value else { return false }
                // Another task runs the kept context, and stays inside it.
                let other = Task.detached { () -> Bool in
                    do {
                        try await context.run { () async in
                            v.set(2)
                            await inside.open()
                            await release.wait()
                        }
                        return true
                    } catch {
                        // The context is entered (claimed by the task):
                        // Python's RuntimeError for a context entered
                        // elsewhere.
                        await inside.open()
                        return false
                    }
                }
                await inside.wait()
                var ok = v.value == 1
                v.set(3)
                ok = ok && v.value == 3
                await release.open()
                let otherRan = await other.value
                return ok && !otherRan && v.value == 3
            }.value
            watcher.cancel()
            if !ok { exit(2) }
            exit(0)
        }
    }
}

/// Waits until the unscoped table has dropped every entry (all their tasks
/// have ended), for an exit test to end on: LeakSanitizer cannot read the
/// weak-reference side table pointer a live object keeps in its encoded
/// reference count, so an unscoped binding some scope once named as its
/// (weakly held) enclosing binding, still in the table at exit, reads as a
/// leak of that side table.
func unscopedTableEmptied() -> Bool {
    eventually(seconds: 30) { UnscopedBindings.shared.reap() == 0 }
}
