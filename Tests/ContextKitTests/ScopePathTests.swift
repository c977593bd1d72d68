import Foundation
import Testing
@testable import ContextKit

/// The scope paths that hold bindings without retaining them: `set` and
/// `reset` write the binding of the running task's place entry borrowed;
/// a scope keeps the binding it returns to unretained (alive through the
/// enclosing scope, the task's inherited task-locals or the unscoped
/// table) and hands the task id its place entry held to the put that
/// restores that place. Each test checks what a user sees — the values
/// read after every write and scope end, in the task and in its children,
/// and that every value goes, its deinit using the library.
@Suite struct ScopePathTests {
    /// A value whose deinit reads `probe` and sets and resets `other`: a
    /// release inside a write must not leave the place entry or the value
    /// cache serving something stale.
    final class Noisy: Sendable {
        let id: Int
        let probe: ContextVar<Noisy>
        let other: ContextVar<Int>
        let counter: LifetimeCounter
        let tracked: Tracked
        init(_ id: Int, probe: ContextVar<Noisy>, other: ContextVar<Int>, counter: LifetimeCounter) {
            self.id = id
            self.probe = probe
            self.other = other
            self.counter = counter
            tracked = counter.make(id)
        }
        deinit {
            _ = probe.value?.id
            let token = other.set(-id)
            _ = other.value
            try? other.reset(token)
        }
    }

    /// `set`/`reset` in a scope of the task (owned scope binding) and
    /// outside any scope (the unscoped binding): each read sees the last
    /// write, a reset restores the previous value, replaced values (whose
    /// deinit writes) go, and the enclosing value is back after the scope.
    @Test func setAndResetThroughThePlaceEntry() async throws {
        let counter = LifetimeCounter()
        let probe = ContextVar<Noisy>("sp_probe")
        let other = ContextVar<Int>("sp_other", default: 0)
        let v = ContextVar<Int>("sp_v", default: 0)
        await Task.detached {
            // Unscoped: the task's first set makes its binding.
            v.set(1)
            for round in 0..<200 {
                let token = v.set(round + 10)
                #expect(v.value == round + 10)
                probe.set(Noisy(round, probe: probe, other: other, counter: counter))
                #expect(probe.value?.id == round)
                #expect(other.value == 0)
                try! v.reset(token)
                #expect(v.value == 1)
            }
            try! await Context().run { () async in
                // A new, empty context: the default.
                #expect(v.value == 0)
                for round in 0..<200 {
                    let token = v.set(round + 1000)
                    probe.set(Noisy(round + 1000, probe: probe, other: other, counter: counter))
                    await Task.yield()
                    #expect(v.value == round + 1000)
                    #expect(probe.value?.id == round + 1000)
                    try! v.reset(token)
                    #expect(v.value == 0)
                }
            }
            #expect(v.value == 1)
            #expect(probe.value?.id == 199)
        }.value
        // The detached task has ended: its unscoped binding (and the last
        // Noisy) goes with it, through the reaper.
        #expect(eventually { counter.alive == 0 })
    }

    /// A foreign token still throws and changes nothing on the borrowed
    /// path (a scope binding the task owns).
    @Test func resetWithAForeignTokenOnTheBorrowedPath() async throws {
        let v = ContextVar<Int>("sp_foreign", default: 0)
        let foreign = try Context().run { v.set(5) }
        try await Context().run { () async in
            v.set(7)
            #expect(v.value == 7)  // fills the place entry
            #expect(throws: ContextError.tokenFromDifferentContext) { try v.reset(foreign) }
            #expect(v.value == 7)
        }
    }

    /// Scopes whose enclosing place is each kind of binding: none, the
    /// task's unscoped binding, an inherited binding (a `Task {}` made in a
    /// scope that has ended by the time the task opens its own), and an
    /// enclosing scope of the same task. After each scope the task reads
    /// what it read before, also after an await (and its `async let`
    /// child what it read before), and writes again where it did before.
    @Test func scopesReturnToEveryKindOfEnclosingPlace() async throws {
        let v = ContextVar<Int>("sp_enclosing", default: 0)
        let exitedSeen = LockedBox<[Int]>([])
        let watcher = try Context.addWatcher { event, context in
            guard event == .exited, let context else { return }
            if let value = context[v] { exitedSeen.mutate { $0.append(value) } }
        }
        defer { watcher.cancel() }
        // `child`: what an `async let` child reads — what the task
        // inherited or bound in a scope; a task's unscoped writes are not
        // passed to its children (docs/concurrency.md).
        func check(_ expected: Int, child childExpected: Int? = nil) async {
            try! await Context().run { () async in v.set(-1) }
            await v.withValue(-2) { () async in #expect(v.value == -2) }
            #expect(v.value == expected)
            await Task.yield()
            #expect(v.value == expected)
            async let child = v.value
            #expect(await child == (childExpected ?? expected))
        }
        // None.
        await Task.detached { await check(0) }.value
        // Unscoped.
        await Task.detached {
            v.set(3)
            await check(3, child: 0)
            v.set(4)
            #expect(v.value == 4)
        }.value
        // Inherited, from a scope that has ended.
        let gate = LockedBox(false)
        let copied = try await Context().run { () async -> Task<Void, Never> in
            v.set(5)
            return Task {
                while !gate.value { await Task.yield() }
                await check(5)
            }
        }
        gate.mutate { $0 = true }
        await copied.value
        // An enclosing scope of the same task.
        try await Context().run { () async in
            v.set(6)
            await check(6)
            v.set(7)
            #expect(v.value == 7)
        }
        #expect(exitedSeen.value.contains(3))
        #expect(exitedSeen.value.contains(5))
        #expect(exitedSeen.value.contains(6))
    }

    /// Many tasks at once, each with its own unscoped value, opening scopes
    /// (run, withValue, nested) with child tasks: every read sees the
    /// task's own value; every value goes.
    @Test func manyTasksOpeningScopes() async throws {
        let counter = LifetimeCounter()
        let v = ContextVar<Int>("sp_many", default: -1)
        let t = ContextVar<Tracked>("sp_many_tracked")
        let tasks = scaled(2_000)
        let mismatches = await withTaskGroup(of: Int.self) { group in
            for id in 0..<tasks {
                group.addTask {
                    var bad = 0
                    v.set(id)
                    t.set(counter.make(id))
                    for round in 0..<3 {
                        try! await Context().run { () async in
                            v.set(id + 1)
                            t.set(counter.make(id))
                            await Task.yield()
                            async let child = v.value
                            if await child != id + 1 { bad += 1 }
                            await v.withValue(id + 2) { () async in
                                await Task.yield()
                                if v.value != id + 2 { bad += 1 }
                                let token = v.set(id + 3)
                                if v.value != id + 3 { bad += 1 }
                                try! v.reset(token)
                            }
                            if v.value != id + 1 { bad += 1 }
                        }
                        if v.value != id || t.value?.id != id { bad += 1 }
                        if round == 1 { t.set(counter.make(id)) }
                    }
                    return bad
                }
            }
            return await group.reduce(0, +)
        }
        #expect(mismatches == 0)
        #expect(await eventuallyYielding(seconds: 30) { counter.alive == 0 })
    }

    /// The unscoped table's filter (one counter per `id % 4096` slot): tasks
    /// in waves that together cover more ids than there are slots, each
    /// setting its own value, then reading it after another task's scope
    /// moved the place generation (so the read misses the place cache and
    /// asks the table), while the entries of earlier waves leave through
    /// the reaper. A task must always find its own entry, whatever the
    /// other counts of its slot do.
    @Test func unscopedWritesAreFoundWhateverTheirFilterSlotHolds() async {
        let v = ContextVar<Int>("sp_filter", default: -1)
        var mismatches = 0
        for wave in 0..<3 {
            mismatches += await withTaskGroup(of: Int.self) { group in
                for i in 0..<scaled(2_000) {
                    group.addTask {
                        let id = wave * 1_000_000 + i
                        v.set(id)
                        // A scope in another task bumps the generation.
                        await Task.detached { try! Context().run {} }.value
                        await Task.yield()
                        return v.value == id ? 0 : 1
                    }
                }
                return await group.reduce(0, +)
            }
        }
        #expect(mismatches == 0)
    }
}
