import CContextCore
import Foundation
import Synchronization
import Testing
@testable import ContextKit

#if canImport(Glibc)
import Glibc
#endif

// Adversarial review of lifetime and concurrency (session 12): values whose
// `deinit` uses the library again, released on every path the product
// releases user values on, and lifetime counting of what a task keeps.

/// A `Local` whose attribute values use the same `Local` in their deinit.
private enum LocalReentry {
    static let local = Local()
    static let released = Atomic<Int>(0)

    /// Writes another attribute of `local` on its own thread when released.
    final class WritesSibling: @unchecked Sendable {
        // @unchecked: immutable.
        let index: Int
        init(_ index: Int) { self.index = index }
        deinit {
            // Enough new keys to make the thread's attribute dictionary grow.
            for k in 0..<64 { LocalReentry.local[dynamicMember: "sibling\(index)_\(k)"] = k }
            LocalReentry.released.add(1, ordering: .sequentiallyConsistent)
        }
    }

    /// Reads this thread's whole attribute dictionary when released.
    final class ReadsDictionary: @unchecked Sendable {
        deinit {
            _ = LocalReentry.local.dictionary.count
            LocalReentry.released.add(1, ordering: .sequentiallyConsistent)
        }
    }
}


/// Everything a `deinit` may do with the library (any release path may run
/// user code that uses it again), checked
/// as it goes: get, set, reset, sync `withValue`, `Context().run`,
/// `copyCurrent`, `Task {}` and `Context.task` creation, a `ThreadLocal` and
/// a `Local`. Each release path below stores `ReentryProbe`s where only that path
/// releases them; a scenario then waits until every probe ran the battery,
/// every task it spawned finished and every value it stored is released.
private enum Reentry {
    static let probe = ContextVar<Int>("reentry_probe", default: -1)
    static let holder = ContextVar<ReentryProbe>("reentry_holder")
    static let inner = ContextVar<Tracked>("reentry_inner")
    static let counter = LifetimeCounter()
    static let threadLocal = ThreadLocal<Int> { 0 }
    static let local = Local()
    static let failures = Failures()
    static let released = Atomic<Int>(0)
    static let spawned = Atomic<Int>(0)
    static let finished = Atomic<Int>(0)
    /// Probes made through ``probe(_:)``.
    static let made = Atomic<Int>(0)

    static func exercise(_ tag: String) {
        let before = probe.value
        let token = probe.set(7)
        failures.check(probe.value == 7, "\(tag): set then get read \(String(describing: probe.value))")
        do { try probe.reset(token) } catch { failures.check(false, "\(tag): reset threw \(error)") }
        failures.check(probe.value == before, "\(tag): reset left \(String(describing: probe.value)), not \(String(describing: before))")
        probe.withValue(8) {
            failures.check(probe.value == 8, "\(tag): withValue read \(String(describing: probe.value))")
            inner.set(counter.make(1))
            failures.check(Context.copyCurrent()[probe] == 8, "\(tag): copyCurrent in withValue")
        }
        failures.check(probe.value == before, "\(tag): after withValue read \(String(describing: probe.value))")
        do {
            let context = Context()
            try context.run {
                probe.set(9)
                inner.set(counter.make(2))
                failures.check(probe.value == 9, "\(tag): run read \(String(describing: probe.value))")
            }
            failures.check(context[probe] == 9, "\(tag): the context after run holds \(String(describing: context[probe]))")
        } catch {
            failures.check(false, "\(tag): run threw \(error)")
        }
        failures.check(probe.value == before, "\(tag): after run read \(String(describing: probe.value))")
        spawned.add(2, ordering: .sequentiallyConsistent)
        Task {
            _ = probe.value
            inner.set(counter.make(3))
            finished.add(1, ordering: .sequentiallyConsistent)
        }
        Context.task {
            inner.set(counter.make(4))
            finished.add(1, ordering: .sequentiallyConsistent)
        }
        threadLocal.value += 1
        local.touched = counter.make(5)
        local.touched = nil
        released.add(1, ordering: .sequentiallyConsistent)
    }

    /// Waits until `count` probes ran the battery, every task they spawned
    /// ended and every value they stored is gone; records an issue and
    /// ends the process with status 1 otherwise (for exit tests).
    static func settle(_ count: Int, _ label: String, sourceLocation: SourceLocation = #_sourceLocation) async {
        let settled = await eventuallyYielding(seconds: 60) {
            released.load(ordering: .sequentiallyConsistent) >= count
                && finished.load(ordering: .sequentiallyConsistent) == spawned.load(ordering: .sequentiallyConsistent)
                && counter.alive == 0
        }
        let problems = failures.list
        if !settled || !problems.isEmpty || released.load(ordering: .sequentiallyConsistent) != count {
            Issue.record(
                """
                \(label): probes released \(released.load(ordering: .sequentiallyConsistent)) of \(count); \
                tasks \(finished.load(ordering: .sequentiallyConsistent)) of \(spawned.load(ordering: .sequentiallyConsistent)); \
                values alive \(counter.alive); failures \(problems.prefix(5))
                """, sourceLocation: sourceLocation)
            exit(1)
        }
    }
}

/// A value whose deinit runs ``Reentry/exercise(_:)``.
private final class ReentryProbe: Sendable {
    let tag: String
    init(_ tag: String) { self.tag = tag }
    deinit { Reentry.exercise(tag) }
}

@Suite struct LifetimeBreakReviewTests {
    /// A value's deinit may use locals. Overwriting or deleting a
    /// `Local` attribute releases the old value; its deinit writing other
    /// attributes of the same `Local` on the same thread must work.
    @Test func localAttributeDeinitWritesTheSameLocal() async {
        await #expect(processExitsWith: .success) {
            runOnJoinedThread {
                let local = LocalReentry.local
                for i in 0..<50 {
                    local.victim = LocalReentry.WritesSibling(i)
                    // Replaced by a value, then (the next round's) deleted.
                    local.victim = i
                    local.victim = LocalReentry.WritesSibling(50 + i)
                    local.victim = nil
                }
                let count = local.dictionary.count
                if count != 100 * 64 { fatalError("attributes: \(count), expected \(100 * 64)") }
                for i in 0..<100 {
                    for k in 0..<64 where local[dynamicMember: "sibling\(i)_\(k)"] as? Int != k {
                        fatalError("sibling\(i)_\(k) lost")
                    }
                }
            }
            if LocalReentry.released.load(ordering: .sequentiallyConsistent) != 100 { fatalError("not released") }
        }
    }

    /// As above, the deinit reading the whole dictionary while the old
    /// value is being replaced.
    @Test func localAttributeDeinitReadsTheSameLocalsDictionary() async {
        await #expect(processExitsWith: .success) {
            runOnJoinedThread {
                let local = LocalReentry.local
                local.a = 1
                local.b = "x"
                for _ in 0..<50 {
                    local.victim = LocalReentry.ReadsDictionary()
                    local.victim = 7
                }
                if local.victim as? Int != 7 || local.dictionary.count != 3 { fatalError("wrong attributes") }
            }
            if LocalReentry.released.load(ordering: .sequentiallyConsistent) != 50 { fatalError("not released") }
        }
    }

    // MARK: Every release path, with a deinit that uses the whole library

    @Test func reentrantDeinitAtThreadExit() async {
        await #expect(processExitsWith: .success) {
            runOnJoinedThreads(16) { i in
                Reentry.probe.set(i)
                Reentry.holder.set(ReentryProbe("thread exit"))
            }
            await Reentry.settle(16, "thread exit")
        }
    }

    @Test func reentrantDeinitOfAThreadLocalValueAtThreadExit() async {
        await #expect(processExitsWith: .success) {
            let slot = ThreadLocal<ReentryProbe?> { nil }
            runOnJoinedThreads(16) { _ in slot.value = ReentryProbe("thread-local at thread exit") }
            await Reentry.settle(16, "thread-local at thread exit")
        }
    }

    @Test func reentrantDeinitOfALocalAttributeAtThreadExit() async {
        await #expect(processExitsWith: .success) {
            let local = Local()
            runOnJoinedThreads(16) { _ in local.probe = ReentryProbe("local at thread exit") }
            await Reentry.settle(16, "local at thread exit")
        }
    }

    /// The last release of a `ThreadLocal` releases every live thread's
    /// value on the releasing thread.
    @Test func reentrantDeinitWhenAThreadLocalIsReleased() async {
        await #expect(processExitsWith: .success) {
            let slot = LockedBox<ThreadLocal<ReentryProbe?>?>(ThreadLocal<ReentryProbe?> { nil })
            let threads = 8
            let afterRelease = releasedWhileThreadsHoldValues(
                threads: threads,
                store: { slot.value!.value = ReentryProbe("thread-local release") },
                release: {
                    slot.value!.value = ReentryProbe("thread-local release, releasing thread")
                    slot.mutate { $0 = nil }
                })
            if afterRelease != threads + 1 {
                Issue.record("the local's release released \(afterRelease) of \(threads + 1)")
                exit(1)
            }
            await Reentry.settle(threads + 1, "thread-local release")
        }
    }

    @Test func reentrantDeinitWhenALocalIsReleased() async {
        await #expect(processExitsWith: .success) {
            let slot = LockedBox<Local?>(Local())
            let threads = 8
            let afterRelease = releasedWhileThreadsHoldValues(
                threads: threads,
                store: { slot.value!.probe = ReentryProbe("local release") },
                release: { slot.mutate { $0 = nil } })
            if afterRelease != threads {
                Issue.record("the local's release released \(afterRelease) of \(threads)")
                exit(1)
            }
            await Reentry.settle(threads, "local release")
        }
    }

    @Test func reentrantDeinitWhenAContextIsReleasedOnAThreadAndInATask() async {
        await #expect(processExitsWith: .success) {
            runOnNewThreadAndJoin {
                var context: Context? = Context()
                try! context!.run { Reentry.holder.set(ReentryProbe("context release on a thread")) }
                context = nil
            }
            await Task.detached {
                var context: Context? = Context()
                try! await context!.run { Reentry.holder.set(ReentryProbe("context release in a task")) }
                context = nil
                // And one the task entered and then copied.
                let copy = try! await Context().run { () async -> Context in
                    Reentry.holder.set(ReentryProbe("context copy release in a task"))
                    return Context.copyCurrent()
                }
                _ = copy
            }.value
            await Reentry.settle(3, "context release")
        }
    }

    @Test func reentrantDeinitAtTheEndOfScopes() async {
        await #expect(processExitsWith: .success) {
            // On a thread: withValue's copy and run's temporary context.
            runOnNewThreadAndJoin {
                Reentry.probe.withValue(1) { Reentry.holder.set(ReentryProbe("sync withValue on a thread")) }
                try! Context().run { Reentry.holder.set(ReentryProbe("sync run on a thread")) }
            }
            // In tasks, sync and async scopes, with and without a binding
            // around them.
            await Task.detached {
                Reentry.probe.withValue(1) { Reentry.holder.set(ReentryProbe("sync withValue in a task")) }
                await Reentry.probe.withValue(2) { () async in
                    await Task.yield()
                    Reentry.holder.set(ReentryProbe("async withValue in a task"))
                }
                try! await Context().run { () async in
                    await Task.yield()
                    Reentry.holder.set(ReentryProbe("async run in a task"))
                }
                Reentry.probe.set(3)
                await Reentry.probe.withValue(4) { () async in
                    Reentry.probe.withValue(5) { Reentry.holder.set(ReentryProbe("nested withValue in a task with an unscoped binding")) }
                }
            }.value
            await Reentry.settle(6, "scope end")
        }
    }

    @Test func reentrantDeinitWhenATaskEnds() async {
        await #expect(processExitsWith: .success) {
            // Unscoped bindings, dropped by the reaper.
            await Task.detached { Reentry.holder.set(ReentryProbe("detached task end")) }.value
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<4 { group.addTask { Reentry.holder.set(ReentryProbe("group child end")) } }
            }
            // A spawn helper's scope.
            await Context.task { Reentry.holder.set(ReentryProbe("Context.task end")) }.value
            await Reentry.settle(6, "task end")
        }
    }

    /// A `Task {}` copy outlives the scope it was made in: the scope's
    /// values go when that task ends, inside the runtime's teardown of its
    /// task-local items.
    @Test func reentrantDeinitWhenATaskThatOutlivedItsScopeEnds() async {
        await #expect(processExitsWith: .success) {
            let (gate, open) = AsyncStream<Void>.makeStream()
            let task = await Task.detached { () async -> Task<Void, Never> in
                await Reentry.probe.withValue(1) { () async -> Task<Void, Never> in
                    Reentry.holder.set(ReentryProbe("Task {} outliving withValue"))
                    return Task { for await _ in gate { break } }
                }
            }.value
            open.yield()
            await task.value
            let task2 = runOnNewThreadAndJoinReturning {
                try! Context().run {
                    Reentry.holder.set(ReentryProbe("Task {} outliving a thread's run"))
                    return Task { await Task.yield() }
                }
            }
            await task2.value
            await Reentry.settle(2, "Task {} outliving its scope")
        }
    }

    @Test func reentrantDeinitWhenATokenOrAResetReleasesTheValue() async {
        await #expect(processExitsWith: .success) {
            runOnNewThreadAndJoin {
                Reentry.holder.set(ReentryProbe("token on a thread"))
                _ = Reentry.holder.set(ReentryProbe("reset on a thread"))   // its token holds the first
                let token = Reentry.holder.set(ReentryProbe("replaced"))
                try! Reentry.holder.reset(token)
            }
            await Task.detached {
                try! await Context().run { () async in
                    Reentry.holder.set(ReentryProbe("token in a task"))
                    _ = Reentry.holder.set(ReentryProbe("kept"))
                    let token = Reentry.holder.set(ReentryProbe("reset in a task"))
                    await Task.yield()
                    try! Reentry.holder.reset(token)
                }
            }.value
            await Reentry.settle(6, "token and reset")
        }
    }

    /// Values replaced while other threads read the context are freed
    /// after a grace period, on whichever thread reclaims them.
    @Test func reentrantDeinitAfterAGracePeriod() async {
        await #expect(processExitsWith: .success) {
            let context = Context()
            let stop = Atomic<Bool>(false)
            let writes = 300
            runOnThreadsAndJoin(
                [{
                    try! context.run {
                        for i in 0..<writes { Reentry.holder.set(ReentryProbe("grace period \(i)")) }
                    }
                    stop.store(true, ordering: .sequentiallyConsistent)
                }]
                    + (0..<3).map { _ in
                        {
                            while !stop.load(ordering: .sequentiallyConsistent) { _ = context[Reentry.holder] }
                        }
                    })
            _ = context
            await Reentry.settle(writes - 1, "grace period")
        }
    }

    // MARK: A task keeps alive only what it can read

    // That such a task keeps no value a later scope of the same context
    // sets: ScopeFreezeTests.aTaskThatOutlivedARunKeepsNoValueOfALaterScope.

    /// An unscoped binding lives while its task does — also while the task
    /// is suspended and nobody holds its `Task` handle (only the task's
    /// reference to itself keeps it): the reaper, busy with other entries
    /// meanwhile, must not take it.
    @Test func aSuspendedTasksUnscopedBindingSurvivesTheReaper() async {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("suspended_unscoped_v")
        let other = ContextVar<Int>("suspended_unscoped_other")
        let parked = LockedBox<UnsafeContinuation<Void, Never>?>(nil)
        let result = LockedBox<Int?>(nil)
        Task.detached {
            v.set(counter.make(42))
            await withUnsafeContinuation { continuation in parked.mutate { $0 = continuation } }
            result.mutate { $0 = v.value?.id ?? -1 }
        }
        #expect(await eventuallyYielding(seconds: 60) { parked.value != nil })
        // Keep the reaper busy: entries come and go while ours waits.
        for i in 0..<scaled(200) {
            await Task.detached { other.set(i) }.value
            if i % 20 == 0 { try? await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(counter.alive == 1)
        parked.value!.resume()
        #expect(await eventuallyYielding(seconds: 60) { result.value != nil })
        #expect(result.value == 42)
        #expect(await eventuallyYielding(seconds: 60) { counter.alive == 0 })
    }

    /// `Task {}` generations, each inside `withValue` of a new value and
    /// spawning the next from there: a generation's copy of the task-locals
    /// is its parent's innermost binding only, whose map holds just the
    /// newest value, so the chain must not grow.
    @Test func selfRespawningTaskChainThroughWithValueDoesNotGrow() async {
        await expectRespawningChainDoesNotGrow(throughWithValue: true)
    }

    /// The same chain through an unscoped `set` in each generation, which a
    /// plain `Task {}` does not inherit: each generation's value dies with
    /// it.
    @Test func selfRespawningTaskChainThroughSetDoesNotGrow() async {
        await expectRespawningChainDoesNotGrow(throughWithValue: false)
    }

    /// 200 generations of `Task {}`, each binding (`withValue`) or setting
    /// a new value and spawning the next; the last waits for a gate. All
    /// but the last two generations' values must be gone before the gate
    /// opens, the last reads its own, and nothing is left after.
    private func expectRespawningChainDoesNotGrow(throughWithValue: Bool) async {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>(throughWithValue ? "respawn_with_value_v" : "respawn_set_v")
        let (go, open) = AsyncStream<Void>.makeStream()
        let (done, finished) = AsyncStream<Int?>.makeStream()
        let generations = 200
        @Sendable func generation(_ i: Int) {
            @Sendable func next() async {
                if i < generations {
                    generation(i + 1)
                } else {
                    for await _ in go { break }
                    finished.yield(v.value?.id)
                }
            }
            if throughWithValue {
                v.withValue(counter.make(i)) { Task { await next() } }
            } else {
                Task {
                    v.set(counter.make(i))
                    await next()
                }
            }
        }
        Task.detached { generation(1) }
        #expect(await eventuallyYielding(seconds: 60) { counter.releasedCount >= generations - 2 }, "alive: \(counter.alive)")
        open.yield()
        var last: Int??
        for await id in done { last = id; break }
        #expect(last == generations)
        #expect(await eventuallyYielding(seconds: 30) { counter.alive == 0 })
    }

    // MARK: Many threads and tasks at once

    /// Tasks and threads at once, each round storing probes where a scope
    /// end, a task end, a `Task {}` outliving its scope, a token, a
    /// replaced value and a thread exit release them, all on different
    /// threads at the same time. Every probe runs the battery (which spawns
    /// tasks of its own); nothing may be lost, leaked or raced (run this
    /// suite under TSan and ASan).
    @Test func reentrantDeinitsFromManyTasksAndThreadsAtOnce() async {
        await #expect(processExitsWith: .success) {
            await reentrantDeinitsFromManyTasksAndThreads()
        }
    }
}

/// `threads` threads each run `store` and stay alive; `release` then runs
/// on another new thread (the last release of the local the threads
/// stored into). Returns how many probes were released by then, before the
/// holding threads are let go and joined.
private func releasedWhileThreadsHoldValues(
    threads: Int, store: @escaping @Sendable () -> Void, release: @escaping @Sendable () -> Void
) -> Int {
    let stored = DispatchSemaphore(value: 0)
    let letGo = DispatchSemaphore(value: 0)
    let joined = DispatchSemaphore(value: 0)
    Thread.detachNewThread {
        runOnJoinedThreads(threads) { _ in
            store()
            stored.signal()
            letGo.wait()
        }
        joined.signal()
    }
    for _ in 0..<threads { stored.wait() }
    runOnNewThreadAndJoin(release)
    let afterRelease = Reentry.released.load(ordering: .sequentiallyConsistent)
    for _ in 0..<threads { letGo.signal() }
    joined.wait()
    return afterRelease
}

/// Runs `body` on a new POSIX thread, waits for its exit, returns its result.
private func runOnNewThreadAndJoinReturning<R: Sendable>(_ body: @escaping @Sendable () -> R) -> R {
    onNewThread(body)
}

/// The body of `reentrantDeinitsFromManyTasksAndThreadsAtOnce` (an exit
/// test's body cannot capture).
private func reentrantDeinitsFromManyTasksAndThreads() async {
    let tasks = scaled(24)
    let rounds = scaled(8)
    let threads = 4
    let shared = Context()
    let threadsDone = Atomic<Bool>(false)
    Thread.detachNewThread {
        runOnJoinedThreads(threads) { t in
            for r in 0..<rounds {
                Reentry.probe.withValue(r) { Reentry.holder.set(probe("thread withValue")) }
                try? Context().run { Reentry.holder.set(probe("thread run")) }
                _ = shared[Reentry.holder]
                let task = Reentry.probe.withValue(t) { () -> Task<Void, Never> in
                    Reentry.holder.set(probe("thread escaped"))
                    return Task { _ = Reentry.holder.value }
                }
                _ = task
            }
            Reentry.holder.set(probe("thread exit"))
        }
        threadsDone.store(true, ordering: .sequentiallyConsistent)
    }
    await withTaskGroup(of: Void.self) { group in
        for t in 0..<tasks {
            group.addTask {
                for r in 0..<rounds {
                    await Reentry.probe.withValue(r) { () async in
                        Reentry.holder.set(probe("task withValue"))
                        await Task.yield()
                        Reentry.probe.withValue(t) { Reentry.holder.set(probe("nested sync withValue")) }
                    }
                    let escaped = try! await Context().run { () async -> Task<Void, Never> in
                        Reentry.holder.set(probe("task run"))
                        return Task {
                            await Task.yield()
                            _ = Reentry.holder.value
                        }
                    }
                    Reentry.holder.set(probe("unscoped"))
                    _ = Reentry.holder.set(probe("replaced"))
                    await withTaskGroup(of: Void.self) { inner in
                        inner.addTask { Reentry.holder.set(probe("group child")) }
                        inner.addTaskInCopiedContext { Reentry.holder.set(probe("copied child")) }
                    }
                    await escaped.value
                    if r % 4 == 0 {
                        try? shared.run { Reentry.holder.set(probe("shared context")) }
                    }
                }
            }
        }
    }
    while !threadsDone.load(ordering: .sequentiallyConsistent) { try? await Task.sleep(for: .milliseconds(5)) }
    // All but the shared context's last value, which it still holds.
    let expected = Reentry.made.load(ordering: .sequentiallyConsistent) - 1
    await Reentry.settle(expected, "many at once")
    withExtendedLifetime(shared) {}
}

/// A new probe, counted in ``Reentry/made``.
@Sendable private func probe(_ tag: String) -> ReentryProbe {
    Reentry.made.add(1, ordering: .sequentiallyConsistent)
    return ReentryProbe(tag)
}

// MARK: - Tokens and contexts handed between tasks

extension LifetimeBreakReviewTests {
    /// asyncio twin (checked with python3): a token made inside
    /// `ctx.run` in one task resets in another task's `ctx.run` of the
    /// same context; a second reset says "already used"; a token made in
    /// a context's `run` is refused outside it, and a child task cannot
    /// reset its parent's token — nothing changes on a refusal.
    @Test func tokensHandedBetweenTasksBehaveAsInAsyncio() async throws {
        let v = ContextVar<Tracked>("handed_token_v")
        let counter = LifetimeCounter()
        let context = Context()
        let token = try await Task.detached {
            try await context.run { () async -> Token<Tracked> in
                await Task.yield()
                return v.set(counter.make(1))
            }
        }.value
        #expect(context[v]?.id == 1)
        let afterReset = try await Task.detached {
            try await context.run { () async throws -> Int? in
                try v.reset(token)
                return v.value?.id
            }
        }.value
        #expect(afterReset == nil)
        #expect(context.count == 0)
        #expect(counter.alive == 0, "the reset released the value")
        await #expect(throws: ContextError.tokenAlreadyUsed) {
            try await Task.detached { try await context.run { try v.reset(token) } }.value
        }
        // Made in another context: refused everywhere else, nothing changes.
        let other = Context()
        let foreign = try other.run { v.set(counter.make(2)) }
        try await Task.detached {
            try await context.run { () async throws in
                v.set(counter.make(3))
                #expect(throws: ContextError.tokenFromDifferentContext) { try v.reset(foreign) }
                #expect(v.value?.id == 3)
            }
        }.value
        #expect(other[v]?.id == 2)
        #expect(!foreign.isUsed)
        // A child task and its parent's unscoped token.
        let (parentReads, childError) = await Task.detached { () async -> (Int?, ContextError?) in
            let parentToken = v.set(counter.make(4))
            let childError = await Task { () async -> ContextError? in
                do throws(ContextError) { try v.reset(parentToken); return nil } catch { return error }
            }.value
            return (v.value?.id, childError)
        }.value
        #expect(parentReads == 4)
        #expect(childError == .tokenFromDifferentContext)
        // Only what `context` (3) and `other` (2) hold is left, once the
        // detached task's unscoped binding is reaped.
        #expect(await eventuallyYielding(seconds: 60) { counter.alive == 2 })
    }

    /// A token made in a task's unscoped binding resets there after the
    /// task has hopped threads and executors many times.
    @Test func anUnscopedTokenResetsAfterHopping() async throws {
        actor Hop { func touch() {} }
        let hop = Hop()
        let v = ContextVar<Int>("hop_token_v", default: 0)
        let seen = try await Task.detached { () async throws -> [Int] in
            var seen: [Int] = []
            let first = v.set(1)
            for _ in 0..<20 {
                await hop.touch()
                await Task.yield()
            }
            let second = v.set(2)
            await hop.touch()
            try v.reset(second)
            seen.append(v.value!)
            await Task.yield()
            try v.reset(first)
            seen.append(v.value!)
            return seen
        }.value
        #expect(seen == [1, 0])
    }
}

// MARK: - Deinits that drop the last reference to contexts and locals

/// A value that holds the only reference to a context, whose own values
/// are `ReentryProbe`s and the next `ContextHolder` of a chain; its deinit
/// runs the battery on the context it holds before letting it go.
private final class ContextHolder: Sendable {
    let context: Context
    init(_ context: Context) { self.context = context }
    deinit {
        do {
            try context.run { Reentry.exercise("holder's context before its release") }
        } catch {
            Reentry.failures.check(false, "run of a held context threw \(error)")
        }
    }
}

private enum ChainVars {
    static let next = ContextVar<ContextHolder>("chain_next")
}

/// A chain of `depth` contexts, each holding a probe and the next one.
private func contextChain(depth: Int, tag: String) -> Context {
    var head = Context()
    try! head.run { Reentry.holder.set(probe("\(tag) \(depth)")) }
    for level in 1..<depth {
        let outer = Context()
        let inner = head
        try! outer.run {
            Reentry.holder.set(probe("\(tag) \(level)"))
            ChainVars.next.set(ContextHolder(inner))
        }
        head = outer
    }
    return head
}

extension LifetimeBreakReviewTests {
    /// Releasing the head of a chain of contexts releases every level: each
    /// level's deinits run while the level above is being released, and use
    /// the library (also `run` on the context about to go).
    @Test func aChainOfContextsReleasesEveryLevelWithReentrantDeinits() async {
        await #expect(processExitsWith: .success) {
            let depth = 64
            runOnNewThreadAndJoin {
                var head: Context? = contextChain(depth: depth, tag: "thread chain")
                head = nil
                _ = head
            }
            await Task.detached {
                var head: Context? = contextChain(depth: depth, tag: "task chain")
                await Task.yield()
                head = nil
                _ = head
            }.value
            // In a scope's value, released at the scope's end.
            await Task.detached {
                await ChainVars.next.withValue(ContextHolder(contextChain(depth: depth, tag: "scope chain"))) {
                    await Task.yield()
                }
            }.value
            // In a thread's base context, released at its exit.
            runOnNewThreadAndJoin {
                ChainVars.next.set(ContextHolder(contextChain(depth: depth, tag: "exit chain")))
            }
            // Each holder's deinit ran the battery once more.
            await Reentry.settle(4 * depth + 4 * (depth - 1) + 2, "context chains")
        }
    }
}

/// Holds the only reference to a `ThreadLocal` and a `Local`, which hold
/// values on the releasing thread.
private final class LocalsHolder: Sendable {
    let threadLocal: ThreadLocal<ReentryProbe?>
    let local: Local
    init(_ threadLocal: ThreadLocal<ReentryProbe?>, _ local: Local) {
        self.threadLocal = threadLocal
        self.local = local
    }
}

extension LifetimeBreakReviewTests {
    /// A value released by its thread's exit drops the last reference to a
    /// `ThreadLocal` and a `Local` that hold values on that very thread:
    /// their releases run inside the thread's teardown and must release
    /// those values once each.
    @Test func threadExitReleasesLocalsWhoseLastReferenceAValueHeld() async {
        await #expect(processExitsWith: .success) {
            let holders = ThreadLocal<LocalsHolder?> { nil }
            runOnJoinedThreads(8) { _ in
                let threadLocal = ThreadLocal<ReentryProbe?> { nil }
                let local = Local()
                threadLocal.value = probe("thread-local released at exit")
                local.probe = probe("local released at exit")
                // Through a context variable and a thread-local.
                Reentry.probe.set(1)
                ChainVars.next.set(ContextHolder(Context()))
                holders.value = LocalsHolder(threadLocal, local)
            }
            await Reentry.settle(8 * 2 + 8, "locals released at thread exit")
        }
    }
}

// MARK: - Isolated deinits (SE-0371)

@globalActor private actor LifetimeReviewActor {
    static let shared = LifetimeReviewActor()
}

/// Sets a tracked value and runs the battery in its isolated deinit.
@LifetimeReviewActor private final class IsolatedSetter {
    let counter: LifetimeCounter
    let v: ContextVar<Tracked>
    init(_ counter: LifetimeCounter, _ v: ContextVar<Tracked>) {
        self.counter = counter
        self.v = v
    }
    isolated deinit {
        v.set(counter.make(7))
        _ = v.value
        Reentry.exercise("isolated deinit")
    }
}

@LifetimeReviewActor private func releaseInlineInScopes(_ counter: LifetimeCounter, _ v: ContextVar<Tracked>) async {
    var setter: IsolatedSetter? = IsolatedSetter(counter, v)
    await Reentry.probe.withValue(1) { () async in
        setter = nil
        await Task.yield()
        Reentry.probe.withValue(2) { _ = IsolatedSetter(counter, v) }
    }
    _ = setter
    try! await Context().run { () async in
        _ = IsolatedSetter(counter, v)
    }
    _ = IsolatedSetter(counter, v)
}

extension LifetimeBreakReviewTests {
    /// Isolated deinits that run inline on their actor inside `withValue`,
    /// `run` and outside any scope, in a task; each sets a tracked value
    /// (wherever it lands) and runs the battery. Once the task has ended,
    /// everything they stored must be released.
    @Test func isolatedDeinitsThatSetLeaveNothingOnceTheirTaskEnds() async {
        await #expect(processExitsWith: .success) {
            let counter = LifetimeCounter()
            let v = ContextVar<Tracked>("isolated_setter_v")
            await Task.detached { await releaseInlineInScopes(counter, v) }.value
            await Reentry.settle(4, "isolated deinits")
            if !(await eventuallyYielding(seconds: 60) { counter.alive == 0 }) {
                Issue.record("isolated deinits' values alive: \(counter.alive)")
                exit(1)
            }
        }
    }
}

// MARK: - Group children that outlive a scope in the group's body

extension LifetimeBreakReviewTests {
    /// A child added inside `withValue` scopes nested in a group's body
    /// (the runtime copies the items for it) outlives those scopes: it
    /// reads what the innermost scope bound, keeps only that (the shadowed
    /// `big` goes when the outer scope ends, while the child still runs),
    /// and a later scope in the body does not change what it reads.
    @Test func aGroupChildThatOutlivesScopesInTheBodyKeepsOnlyWhatItReads() async {
        let bigs = LifetimeCounter()
        let smalls = LifetimeCounter()
        let v = ContextVar<Tracked>("group_body_v")
        let (gate, open) = AsyncStream<Void>.makeStream()
        let read = await withTaskGroup(of: Int?.self) { group -> Int? in
            do {
                let big = bigs.make(1)
                let small = smalls.make(2)
                v.withValue(big) {
                    v.withValue(small) {
                        group.addTask {
                            for await _ in gate { break }
                            return v.value?.id
                        }
                    }
                }
            }
            await v.withValue(bigs.make(3)) { await Task.yield() }
            #expect(await eventuallyYielding(seconds: 30) { bigs.alive == 0 }, "big alive: \(bigs.alive)")
            #expect(smalls.alive == 1)
            open.yield()
            return await group.next()!
        }
        #expect(read == 2)
        #expect(await eventuallyYielding(seconds: 30) { smalls.alive == 0 })
    }

    /// The same with a discarding group and `Context.run` scopes: the
    /// child reads what the run ended with, and once it ends nothing of
    /// either scope is left.
    @Test func aDiscardingGroupChildThatOutlivesARunInTheBody() async throws {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("discarding_body_v")
        let (gate, open) = AsyncStream<Void>.makeStream()
        let seen = LockedBox<Int?>(nil)
        try await withThrowingDiscardingTaskGroup { group in
            let context = Context()
            try context.run {
                v.set(counter.make(1))
                group.addTask {
                    for await _ in gate { break }
                    seen.mutate { $0 = v.value?.id ?? -1 }
                }
                v.set(counter.make(2))
            }
            try context.run { v.set(counter.make(3)) }
            open.yield()
        }
        // The child read what the scope ended with (2): exception 1 may
        // show the later unscoped set of its own scope, never the later
        // scope's 3.
        #expect(seen.value == 2)
        #expect(await eventuallyYielding(seconds: 30) { counter.alive == 0 }, "alive: \(counter.alive)")
    }
}

// MARK: - A deinit that starts a Task.immediate inside the library

/// Starts a `Task.immediate` in its deinit: the new task runs on this
/// thread, inside whatever ContextKit call released the value, sets,
/// opens a scope and reads before and after suspending.
private final class ImmediateStarter: Sendable {
    static let v = ContextVar<Int>("immediate_starter_v", default: -1)
    static let failures = Failures()
    static let finished = Atomic<Int>(0)
    let id: Int
    init(_ id: Int) { self.id = id }
    deinit {
        let id = id
        Task.immediate {
            let v = ImmediateStarter.v
            v.set(1000 + id)
            ImmediateStarter.failures.check(v.value == 1000 + id, "immediate \(id): set then read \(v.value!)")
            v.withValue(2000 + id) {
                ImmediateStarter.failures.check(v.value == 2000 + id, "immediate \(id): withValue read \(v.value!)")
            }
            await Task.yield()
            ImmediateStarter.failures.check(v.value == 1000 + id, "immediate \(id): after yield read \(v.value!)")
            ImmediateStarter.finished.add(1, ordering: .sequentiallyConsistent)
        }
    }
}

extension LifetimeBreakReviewTests {
    /// The releases inside a task's own `set` (a replaced value's token),
    /// `reset`, a scope's end and a context's release each run a deinit
    /// that starts a `Task.immediate` on the same thread; the releasing
    /// task reads and writes its own values right afterwards.
    @Test func deinitsStartingImmediateTasksInsideTheLibrary() async {
        await #expect(processExitsWith: .success) {
            let v = ImmediateStarter.v
            let holder = ContextVar<ImmediateStarter>("immediate_holder")
            let reads = await Task.detached { () async -> [Int] in
                var reads: [Int] = []
                v.set(1)
                holder.set(ImmediateStarter(1))
                holder.set(ImmediateStarter(2))          // releases 1 (its token)
                reads.append(v.value!)
                let token = holder.set(ImmediateStarter(3))
                try! holder.reset(token)                 // releases 3
                reads.append(v.value!)
                await v.withValue(2) { () async in
                    holder.set(ImmediateStarter(4))
                    v.withValue(3) { holder.set(ImmediateStarter(5)) }   // scope end releases 5
                    reads.append(v.value!)
                    let t = holder.set(ImmediateStarter(6))
                    try! holder.reset(t)                 // releases 6, inside the scope
                    reads.append(v.value!)
                }                                        // releases 4
                reads.append(v.value!)
                try! await Context().run { () async in
                    v.set(4)
                    holder.set(ImmediateStarter(7))
                }                                        // the context's release: 7
                reads.append(v.value!)
                v.set(5)
                reads.append(v.value!)
                return reads
            }.value
            if reads != [1, 1, 2, 2, 1, 1, 5] {
                Issue.record("the releasing task read \(reads)")
                exit(1)
            }
            // 2, and the detached task's unscoped binding's, go when it is
            // reaped.
            let done = await eventuallyYielding(seconds: 60) {
                ImmediateStarter.finished.load(ordering: .sequentiallyConsistent) == 7
            }
            let failures = ImmediateStarter.failures.list
            if !done || !failures.isEmpty {
                Issue.record("immediate tasks finished \(ImmediateStarter.finished.load(ordering: .sequentiallyConsistent)) of 7; \(failures)")
                exit(1)
            }
        }
    }
}

// MARK: - Introspection after the scope

extension LifetimeBreakReviewTests {
    /// A `Task {}` that outlived `context.run` reads the snapshot the scope
    /// ended with (1), never a later scope's write (2). Its
    /// `currentChainDescription` lists that binding ("scope ended") with
    /// "the context's values" — which must be what the task reads, not the
    /// live context a later, separate `run` wrote.
    @Test func theChainOfATaskThatOutlivedItsRunShowsWhatItReads() async throws {
        let v = ContextVar<Int>("chain_after_scope_v")
        let (gate, open) = AsyncStream<Void>.makeStream()
        let context = Context()
        let task = try context.run { () -> Task<(Int?, String), Never> in
            v.set(1)
            return Task {
                for await _ in gate { break }
                return (v.value, Context.currentChainDescription)
            }
        }
        try context.run { v.set(2) }
        open.yield()
        let (read, chain) = await task.value
        #expect(read == 1)
        #expect(chain.contains("scope ended"), "\(chain)")
        #expect(chain.contains("chain_after_scope_v: 1"), "\(chain)")
        #expect(!chain.contains("chain_after_scope_v: 2"), "\(chain)")
    }
}

extension LifetimeBreakReviewTests {
    /// docs/concurrency.md, "After the scope": a `Task {}` that outlived
    /// `context.run` reads what that scope ended with, never what a later,
    /// separate `run` of the same context writes. `withValue` of another
    /// variable inside that task copies what the task sees — so `u` is
    /// still 1 inside it, sync and async (asyncio: the task's copy).
    @Test func withValueInATaskThatOutlivedItsRunCopiesWhatTheTaskReads() async throws {
        let u = ContextVar<Int>("outlived_with_value_u")
        let w = ContextVar<Int>("outlived_with_value_w")
        let (gate, open) = AsyncStream<Void>.makeStream()
        let context = Context()
        let task = try context.run { () -> Task<[Int?], Never> in
            u.set(1)
            return Task {
                for await _ in gate { break }
                var reads = [u.value]
                reads.append(w.withValue(0) { u.value })
                reads.append(await w.withValue(0) { () async in u.value })
                reads.append(Context.copyCurrent()[u])
                return reads
            }
        }
        try context.run { u.set(2) }
        open.yield()
        #expect(await task.value == [1, 1, 1, 1])
    }

    /// The `exited` event of a scope that ends in such a task names "the
    /// context current again": what the task reads there (u = 1), not the
    /// live context a later `run` wrote.
    @Test func theExitedEventInATaskThatOutlivedItsRunNamesWhatItReads() async {
        await #expect(processExitsWith: .success) {
            let u = ContextVar<Int>("outlived_exited_u")
            let w = ContextVar<Int>("outlived_exited_w")
            let seen = PThreadLocked<[Int]>([])
            let (gate, open) = AsyncStream<Void>.makeStream()
            let context = Context()
            let task = try! context.run { () -> Task<Int?, Never> in
                u.set(1)
                return Task {
                    for await _ in gate { break }
                    let watcher = try! Context.addWatcher { event, current in
                        guard event == .exited, let current, current[w] == nil else { return }
                        seen.withLock { $0.append(current[u] ?? -1) }
                    }
                    await w.withValue(0) { await Task.yield() }
                    watcher.cancel()
                    return u.value
                }
            }
            try! context.run { u.set(2) }
            open.yield()
            let read = await task.value
            let events = seen.withLock { $0 }
            if read != 1 || events != [1] {
                Issue.record("the task read \(String(describing: read)); its scope's exited event showed u = \(events)")
                exit(1)
            }
        }
    }
}

extension LifetimeBreakReviewTests {
    /// 10,000 detached tasks that set, then end, while the caller keeps
    /// every `Task` handle until all have finished: once the handles go,
    /// nothing is left (a held handle keeps its ended task's object, as an
    /// asyncio Task object keeps its context; dropping it must free the
    /// values).
    @Test func detachedTasksThatSetLeaveNothingOnceTheirHandlesGo() async {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("handles_kept_v")
        let n = scaled(10_000)
        var handles: [Task<Int, Never>] = []
        handles.reserveCapacity(n)
        for i in 0..<n {
            handles.append(Task.detached {
                v.set(counter.make(i))
                await Task.yield()
                return v.value?.id == i ? 0 : 1
            })
        }
        var mismatches = 0
        for handle in handles { mismatches += await handle.value }
        #expect(mismatches == 0)
        handles.removeAll()
        #expect(await eventuallyYielding(seconds: 120) { counter.alive == 0 }, "still alive: \(counter.alive)")
    }
}

extension LifetimeBreakReviewTests {
    /// At thread exit a `Local`'s attributes go; a value's deinit that
    /// reads and writes the same `Local` (and the same `ThreadLocal`) on
    /// its exiting thread sees a fresh, empty namespace and leaks nothing.
    @Test func deinitsUsingTheSameLocalAtThreadExit() async {
        await #expect(processExitsWith: .success) {
            runOnJoinedThreads(8) { i in
                let local = LocalReentry.local
                local.a = i
                local.victim = LocalReentry.ReadsDictionary()
                local.sibling = LocalReentry.WritesSibling(i)
            }
            if LocalReentry.released.load(ordering: .sequentiallyConsistent) != 16 {
                Issue.record("released \(LocalReentry.released.load(ordering: .sequentiallyConsistent)) of 16")
                exit(1)
            }
        }
    }
}
