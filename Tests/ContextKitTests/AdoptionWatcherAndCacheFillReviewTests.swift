import CContextCore
import CContextKitShims
import Foundation
import Synchronization
import Testing
@testable import ContextKit

#if canImport(Glibc)
import Glibc
#endif

/// Adversarial checks of session 10's changes (review): task scopes that
/// skip their watcher work when none is installed, the child's first read
/// through the runtime's task-local get with the binding unretained, and
/// `set` filling the value cache. Each scenario whose outcome another
/// suite's scopes could hide (they move the place generation, and fire
/// watchers) runs as an exit test, in a process of its own.
@Suite struct AdoptionWatcherAndCacheFillReviewTests {
    /// A watcher added on ANOTHER thread while a task scope is open, with
    /// the add ordered before the scope's end (the task waits for it), gets
    /// that scope's `exited` — the scope skipped its `entered` work (no
    /// watcher then) and must ask again at its end, on whatever thread it
    /// ends. One cancelled on another thread inside a scope it saw begin
    /// gets nothing more. Fails if `leave` remembered the start's answer, or
    /// skipped the `exited` on the relaxed load's say-so.
    @Test func watcherAddedOrCancelledOnAnotherThreadInsideATaskScope() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("review_watch", default: 0)
            let events = PThreadLocked<[String]>([])
            let watcherBox = PThreadLocked<ContextWatcher?>(nil)
            func onOtherThread(_ body: @escaping @Sendable () -> Void) async {
                await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                    Thread.detachNewThread {
                        body()
                        done.resume()
                    }
                }
            }
            let seen = await Task.detached { () async -> Int in
                await v.withValue(1) { () async -> Int in
                    await onOtherThread {
                        let watcher = try! Context.addWatcher { event, _ in
                            // A worker thread's first use of the C runtime
                            // sends `switched` (its state is made): not a
                            // scope's event.
                            guard event != .switched else { return }
                            events.withLock { $0.append("\(event)") }
                        }
                        watcherBox.withLock { $0 = watcher }
                    }
                    await Task.yield()
                    return v.value ?? -1
                }
            }.value
            // The `exited` of the scope above, and nothing else (no other
            // scope ran in this process meanwhile).
            guard seen == 1, events.withLock({ $0 }) == ["exited"] else {
                let e = events.withLock { $0 }
                exit(seen != 1 ? 3 : e.isEmpty ? 4 : e == ["exited", "exited"] ? 5 : e.first == "entered" ? 6 : 7 + Int32(e.count))
            }

            // Cancelled on another thread inside a scope it saw begin.
            events.withLock { $0 = [] }
            let inner = await Task.detached { () async -> Int in
                await v.withValue(2) { () async -> Int in
                    await onOtherThread { watcherBox.withLock { $0?.cancel() } }
                    return v.value ?? -1
                }
            }.value
            guard inner == 2, events.withLock({ $0 }) == ["entered"] else { exit(2) }
        }
    }

    /// A Swift watcher that writes the task's own context when the task
    /// returns to it (`exited`) and when a scope begins (`entered`, before
    /// the scope's copy exists only for `run`; `withValue` copied first):
    /// every read after sees the watcher's write, never a box the value
    /// cache kept from before it (the `exited` callbacks run inside a write
    /// bracket of the enclosing binding; a `set` inside fills the cache at
    /// a count the bracket's end moves past). Fails if a task scope skipped
    /// the `exited` work while a watcher was installed, or if the set-fill
    /// rule trusted a count inside a bracket.
    @Test func watchersThatSetTheTasksContextAreSeenAfterTheScope() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("review_watch_set", default: 0)
            let w = ContextVar<Int>("review_watch_scope", default: 0)
            enum Mode { static let value = Atomic<Int>(0) }
            let watcher = try! Context.addWatcher { event, _ in
                // Only the marked scopes of this test's task write.
                guard w.value == 9 || Mode.value.load(ordering: .relaxed) != 0 else { return }
                if event == .exited, Mode.value.load(ordering: .relaxed) == 1 { v.set(30) }
                if event == .entered, Mode.value.load(ordering: .relaxed) == 2 { v.set(40) }
            }
            defer { watcher.cancel() }
            await expectInDetachedTask([1, 30, 2, 2, 40, 40]) { () async -> [Int] in
                let c = Context()
                return try! await c.run { () async -> [Int] in
                    var out: [Int] = []
                    v.set(1)
                    out.append(v.value ?? -1)  // fills the value cache
                    Mode.value.store(1, ordering: .relaxed)
                    await w.withValue(9) { await Task.yield() }
                    Mode.value.store(0, ordering: .relaxed)
                    out.append(v.value ?? -1)  // the exited watcher's 30
                    v.set(2)
                    out.append(v.value ?? -1)
                    Mode.value.store(2, ordering: .relaxed)
                    let inside = w.withValue(9) { v.value ?? -1 }  // the copy predates the write
                    Mode.value.store(0, ordering: .relaxed)
                    out.append(inside)
                    out.append(v.value ?? -1)  // the entered watcher's 40, in c
                    return out
                } + [c[v] ?? -1]
            }
        }
    }

    /// `Task.immediate` started inside a synchronous `withValue` on a plain
    /// thread (no task: the binding is the thread's, pushed into the
    /// runtime's fallback task-local storage) runs its first read on that
    /// thread, a place miss through `swift_task_localValueGet`; it outlives
    /// the scope and reads again after the scope ended and the thread ran
    /// more scopes (whose bindings it parks and reuses). Both reads see the
    /// scope's value: the task's copy of the items keeps the binding (it
    /// escaped, so it is frozen and never parked).
    @Test func immediateTaskOutlivesTheThreadScopeItFirstReadIn() async {
        let v = ContextVar<Int>("review_immediate", default: 0)
        let gate = AsyncGate()
        let task = onNewThread { () -> Task<[Int], Never> in
            let task = v.withValue(7) { () -> Task<[Int], Never> in
                Task.immediate { () async -> [Int] in
                    let first = v.value ?? -1
                    await gate.wait()
                    return [first, v.value ?? -1]
                }
            }
            for i in 0..<50 { v.withValue(100 + i) { _ = v.value } }
            return task
        }
        for i in 0..<50 { await v.withValue(200 + i) { _ = v.value } }
        await gate.open()
        #expect(await task.value == [7, 7])
    }

    /// `set` fills the value cache with the box it wrote when the write
    /// count moved by its own two bumps only. But user code CAN run inside
    /// the C write: the old root goes to the retired list while a reader on
    /// another thread holds a hazard on it, and every 64th retirement scans
    /// the list, freeing retired roots — and releasing the values only they
    /// held, whose deinits run there, after the new root (with the new box)
    /// is published. A deinit that writes the same variable through the
    /// unsafe handle (a C write: the count does not move) replaces that box,
    /// then reads something (the place entry is made again, valid, at the
    /// window's new generation). The fill then left a box the map no longer
    /// held — freed once `set` returned — for the next read to hand out: a
    /// use after free (checked: the read returned the freed box's stale id,
    /// or crashed). The next read must see the C write.
    ///
    /// Here: a helper thread peeks the task's context (a hazard on its
    /// root) around each `set`, whose tokens are dropped, so the replaced
    /// values live only in retired roots; the deinit that runs inside a
    /// `set` (the scan) writes through the handle once.
    @Test func aDeinitInsideASetThatWritesThroughTheHandle() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<ReleaseHook>("review_set_fill_v")
            let u = ContextVar<Int>("review_set_fill_u", default: 0)
            enum State {
                static let inSet = Atomic<Bool>(false)
                static let exploited = Atomic<Bool>(false)
                static let stop = Atomic<Bool>(false)
            }
            let request = DispatchSemaphore(value: 0), reply = DispatchSemaphore(value: 0)
            let handle = PThreadLocked<UInt>(0)  // the context's address
            // The helper: peek `u` (holding a hazard on the root it read)
            // until told to end the read.
            Thread.detachNewThread {
                while true {
                    request.wait()
                    if State.stop.load(ordering: .relaxed) { break }
                    var guardState = cctx_read_guard()
                    var out: UnsafeMutableRawPointer?
                    let h = OpaquePointer(bitPattern: handle.withLock { $0 })!
                    let held = cctx_context_peek(h, u.handle, u.hamtHash, &guardState, &out) == CCTX_OK
                    reply.signal()
                    request.wait()
                    if held { cctx_context_peek_end(&guardState) }
                    reply.signal()
                }
                reply.signal()
            }
            await expectInDetachedTask(-7) { () -> Int in
                try! Context().run { () -> Int in
                    u.set(1)
                    handle.withLock { h in
                        h = Context.withCurrentUnsafeHandle { h, _ in UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(cctx_context_retain(h)!))) }
                    }
                    for i in 0..<400 {
                        request.signal(); reply.wait()  // the helper holds the root
                        State.inSet.store(true, ordering: .relaxed)
                        _ = v.set(ReleaseHook(id: i) {
                            // Released by a scan inside a later `set`.
                            guard State.inSet.load(ordering: .relaxed),
                                !State.exploited.exchange(true, ordering: .relaxed)
                            else { return }
                            Context.withCurrentUnsafeHandle { h, writable in
                                precondition(writable)
                                let box = v.makeBox(ReleaseHook(id: -7) {})
                                _ = box.withOpaquePointer { cctx_context_set(h, v.handle, $0, nil) }
                            }
                            _ = u.value  // a read: the entry is made again
                        })
                        State.inSet.store(false, ordering: .relaxed)
                        let read = v.value?.id ?? -1
                        request.signal(); reply.wait()  // the helper lets go
                        if State.exploited.load(ordering: .relaxed) { return read }
                    }
                    return -2  // no scan ran inside a set: nothing checked
                }
            }
            State.stop.store(true, ordering: .relaxed)
            request.signal(); reply.wait()
            handle.withLock { if let h = OpaquePointer(bitPattern: $0) { cctx_context_release(h) } }
        }
    }

    /// Isolated deinit (SE-0371) runs inline when released on its actor,
    /// and the runtime then hides every task-local
    /// (`swift_task_deinitOnExecutor` pushes a stop marker). A task inside
    /// `Context.run` that releases such an object: a place miss inside the
    /// deinit (another task's scope moved the generation — forced here with
    /// an unsafe-handle window) resolves through the task-local, sees no
    /// binding, and caches that place for the task — and a scope opened in
    /// the deinit restores it at its end. After the deinit returns, the
    /// task must read its `run`'s value again, and its `set` must write the
    /// `run`'s context. Failed (a known issue until session 11) when such an
    /// entry was trusted on the generation alone: the read gave -1 and the
    /// `set` made an unscoped binding (a lost write). The place cache now
    /// checks, on each hit of an entry resolved while the task-local read
    /// no binding, that it still reads none (`place_cache.c`, "Hidden
    /// task-locals").
    @Test func isolatedDeinitInsideARunDoesNotLeaveTheTaskAWrongPlace() async {
        await #expect(processExitsWith: .success) {
            // After the deinit: the run's 5, the set lands in the run's
            // context.
            await expectIsolatedDeinitScenario([5, 6, 6], prefix: "review_isolated") { await isolatedDeinitScenario($0, $1) }
        }
    }

    /// As ``isolatedDeinitInsideARunDoesNotLeaveTheTaskAWrongPlace()`` in
    /// an async `Context.run` whose body runs on the actor (the release in
    /// the body, after a suspension).
    @Test func isolatedDeinitInsideAnAsyncRunDoesNotLeaveTheTaskAWrongPlace() async {
        await #expect(processExitsWith: .success) {
            await expectIsolatedDeinitScenario([5, 6, 6], prefix: "review_isolated_async") { await isolatedDeinitAsyncRunScenario($0, $1) }
        }
    }

    /// As ``isolatedDeinitInsideARunDoesNotLeaveTheTaskAWrongPlace()``
    /// with `withValue` (sync and async) around the release, in a task
    /// that also has an unscoped binding: after the deinit the task reads
    /// the scope's value, its `set` writes the scope's context, and after
    /// the scope it reads its unscoped binding again.
    @Test func isolatedDeinitInsideWithValueDoesNotLeaveTheTaskAWrongPlace() async {
        await #expect(processExitsWith: .success) {
            await expectIsolatedDeinitScenario([5, 6, 1, 7, 8, 1], prefix: "review_isolated_wv") { await isolatedDeinitWithValueScenario($0, $1) }
        }
    }
}

extension AdoptionWatcherAndCacheFillReviewTests {
    /// A `set` in an isolated deinit, outside any scope opened there,
    /// cannot see the enclosing `run` (the task-locals are hidden): it
    /// makes the task's unscoped binding. After the deinit the `run` reads
    /// its own value; once the `run` ends, the task must read the unscoped
    /// binding at once and on every later read. Failed when the scope's
    /// end restored the place it started from (no binding): the first
    /// read after the `run` gave -1 and a read after the next place change
    /// anywhere gave 9. Both a task with no binding and one that inherited
    /// a binding (`Task {}` inside a `run`: its unscoped binding is made
    /// from what it sees in the deinit, nothing, so it holds 9 alone).
    @Test func aSetInAnIsolatedDeinitIsReadAfterTheScopeEnds() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("review_isolated_set_v")
            let u = ContextVar<Int>("review_isolated_set_u")
            await expectInDetachedTask([5, 9, 9], [5, 9, 9]) {
                let bare = await isolatedDeinitSetScenario(v)
                let inherited = try await Context().run { () async -> [Int] in
                    u.set(1)
                    return await Task { await isolatedDeinitSetScenario(v) }.value
                }
                return (bare, inherited)
            }
        }
    }
}

/// Sets `v` in an isolated deinit released inside a sync `run` (with the
/// place generation moved first, as any other task's scope may, so that
/// the deinit resolves its place with the task-locals hidden): what the
/// `run` reads after the deinit, the first read after the `run`, and a read
/// after the next place change.
@ReviewActor func isolatedDeinitSetScenario(_ v: ContextVar<Int>) -> [Int] {
    let inRun = try! Context().run { () -> Int in
        v.set(5)
        releaseProbeThatSetsNine(v)
        return v.value ?? -1
    }
    let after = v.value ?? -1
    Context.withCurrentUnsafeHandle { _, _ in }
    return [inRun, after, v.value ?? -1]
}

extension AdoptionWatcherAndCacheFillReviewTests {
    /// A task that inherited a binding (a `Task {}` made inside a `run`)
    /// releases the probe: its task-locals are hidden too, so a place
    /// resolved in the deinit names no binding. After the deinit the task
    /// must read the binding it inherited again, and its `set` must copy
    /// that (not an empty context) into its own unscoped binding.
    @Test func isolatedDeinitInATaskThatInheritedABinding() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("review_isolated_child_v")
            let u = ContextVar<Int>("review_isolated_child_u")
            let w = ContextVar<Int>("review_isolated_child_w")
            await expectInDetachedTask([5, 6, 2, 5]) { await isolatedDeinitChildScenario(v, u, w) }
        }
    }
}

/// Inside an exit test: runs `scenario` with two fresh variables
/// (`prefix_v`, `prefix_w`) in a detached task and checks that it returns
/// `expected` (`expectInDetachedTask`).
func expectIsolatedDeinitScenario(
    _ expected: [Int], prefix: String, sourceLocation: SourceLocation = #_sourceLocation,
    _ scenario: @escaping @Sendable (ContextVar<Int>, ContextVar<Int>) async -> [Int]
) async {
    let v = ContextVar<Int>("\(prefix)_v")
    let w = ContextVar<Int>("\(prefix)_w")
    await expectInDetachedTask(expected, sourceLocation: sourceLocation) { await scenario(v, w) }
}

@globalActor actor ReviewActor {
    static let shared = ReviewActor()
}

/// A class whose deinit is isolated to `ReviewActor`: released on that
/// actor, it runs inline, with every task-local hidden.
@ReviewActor final class IsolatedDeinitProbe {
    let body: @Sendable () -> Void
    nonisolated init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    isolated deinit { body() }
}

/// The isolated-deinit scenario: what the task reads after the deinit, its
/// read after a `set`, and what the `run`'s context holds.
@ReviewActor func isolatedDeinitScenario(_ v: ContextVar<Int>, _ w: ContextVar<Int>) -> [Int] {
    let c = Context()
    let after = try! c.run { () -> [Int] in
        v.set(5)
        return releaseProbeThenReadAndSet(v, w, to: 6)
    }
    return after + [c[v] ?? -1]
}

/// The body of the probes below: moves the place generation, as any other
/// task's scope may, reads twice (the second miss at one generation caches
/// an inherited place) and opens a scope of its own.
@Sendable func isolatedDeinitBody(_ v: ContextVar<Int>, _ w: ContextVar<Int>) {
    Context.withCurrentUnsafeHandle { _, _ in }
    _ = v.value
    _ = v.value
    w.withValue(1) { _ = w.value }
}

/// Releases an `IsolatedDeinitProbe` running `isolatedDeinitBody` on the
/// actor (its deinit runs inline), then returns what the caller's scope
/// reads of `v` after it and after `v.set(value)`.
@ReviewActor func releaseProbeThenReadAndSet(
    _ v: ContextVar<Int>, _ w: ContextVar<Int>, to value: Int
) -> [Int] {
    var probe: IsolatedDeinitProbe? = IsolatedDeinitProbe { isolatedDeinitBody(v, w) }
    _ = probe
    probe = nil
    let read = v.value ?? -1
    v.set(value)
    return [read, v.value ?? -1]
}

/// Releases an `IsolatedDeinitProbe` on the actor (its deinit runs inline,
/// the task-locals hidden) whose deinit first moves the place generation,
/// as any other task's scope may (unless `movingThePlace` is false), then
/// sets `v` to 9 outside any scope of its own (unless `setting` is false).
@ReviewActor func releaseProbeThatSetsNine(
    _ v: ContextVar<Int>, movingThePlace: Bool = true, setting: Bool = true
) {
    var probe: IsolatedDeinitProbe? = IsolatedDeinitProbe {
        if movingThePlace { Context.withCurrentUnsafeHandle { _, _ in } }
        if setting { v.set(9) }
    }
    _ = probe
    probe = nil
}

/// The isolated-deinit scenario in an async `Context.run` on the actor.
@ReviewActor func isolatedDeinitAsyncRunScenario(_ v: ContextVar<Int>, _ w: ContextVar<Int>) async -> [Int] {
    let c = Context()
    let after = try! await c.run { () async -> [Int] in
        v.set(5)
        await Task.yield()
        return releaseProbeThenReadAndSet(v, w, to: 6)
    }
    return after + [c[v] ?? -1]
}

/// The isolated-deinit scenario around sync and async `withValue`, in a
/// task with an unscoped binding (`v` = 1).
@ReviewActor func isolatedDeinitWithValueScenario(_ v: ContextVar<Int>, _ w: ContextVar<Int>) async -> [Int] {
    v.set(1)
    var result = v.withValue(5) { () -> [Int] in
        return releaseProbeThenReadAndSet(v, w, to: 6)
    }
    result.append(v.value ?? -1)
    result += await v.withValue(7) { () async -> [Int] in
        await Task.yield()
        return releaseProbeThenReadAndSet(v, w, to: 8)
    }
    result.append(v.value ?? -1)
    return result
}

/// The isolated-deinit scenario in a `Task {}` that inherited the `run`'s
/// binding: its read after the deinit, its read after a `set` of `v`, its
/// read of `u` (set only in the `run`), and the `run`'s `v` after.
@ReviewActor func isolatedDeinitChildScenario(
    _ v: ContextVar<Int>, _ u: ContextVar<Int>, _ w: ContextVar<Int>
) async -> [Int] {
    await inAChildOfARun(v, u) { releaseProbeThenReadAndSet(v, w, to: 6) + [u.value ?? -1] }
}

/// A `run` on the actor that sets `v` to 5 and `u` to 2, and a `Task {}`
/// made inside it (inheriting that binding) that runs `body`: what `body`
/// returns, then the `run`'s `v` after the child.
@ReviewActor func inAChildOfARun(
    _ v: ContextVar<Int>, _ u: ContextVar<Int>, _ body: @escaping @ReviewActor @Sendable () -> [Int]
) async -> [Int] {
    try! await Context().run { () async -> [Int] in
        v.set(5)
        u.set(2)
        let seen = await Task { @ReviewActor in body() }.value
        return seen + [v.value ?? -1]
    }
}

// MARK: - Review (session 11): more isolated-deinit shapes

extension AdoptionWatcherAndCacheFillReviewTests {
    /// A `set` in an isolated deinit outside any scope opened there lands
    /// in one of two places, and docs/concurrency.md says so: the enclosing
    /// `run`'s context when the task's place entry on the thread is still
    /// current (nothing moved the generation since the `run` began), or the
    /// task's unscoped binding when the deinit resolves its place with the
    /// task-locals hidden. Either way the task's reads agree with where it
    /// went: in the `run` after the deinit, in the `run`'s context
    /// afterwards, and after the `run` ends. Two `run`s, in fresh tasks,
    /// with and without the generation moved in the deinit; each must be
    /// one of the two outcomes: [9, 9, -1] (the `run`'s context) or
    /// [5, 5, 9] (the unscoped binding).
    @Test func isolatedDeinitSetLandsInOnePlaceAndTheReadsAgree() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("review11_set_v")
            await expectInDetachedTask(true, true) {
                let still = await Task.detached { await reviewSetInDeinitScenario(v, movePlace: false) }.value
                let moved = await Task.detached { await reviewSetInDeinitScenario(v, movePlace: true) }.value
                let outcomes: Set<[Int]> = [[9, 9, -1], [5, 5, 9]]
                return (outcomes.contains(still), outcomes.contains(moved))
            }
        }
    }

    /// A `Task {}` that inherited the `run`'s binding and made its own
    /// unscoped binding (`v` = 6) releases a probe twice; after each
    /// deinit it reads its unscoped binding (with `u` copied from the
    /// inherited one), and the `run` keeps its own `v`. (Held.)
    @Test func isolatedDeinitInATaskWithAnUnscopedAndAnInheritedBinding() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("review11_ui_v")
            let u = ContextVar<Int>("review11_ui_u")
            let w = ContextVar<Int>("review11_ui_w")
            await expectInDetachedTask([6, 2, 7, 2, 5]) { await reviewUnscopedInheritedScenario(v, u, w) }
        }
    }

    /// Nested isolated deinits (an outer deinit releasing inner probes,
    /// one inside a scope it opened), each moving the generation, reading
    /// and opening scopes: afterwards the `run` reads its value and its
    /// `set` writes its context. (Held.)
    @Test func nestedIsolatedDeinitsDoNotLeaveTheTaskAWrongPlace() async {
        await #expect(processExitsWith: .success) {
            await expectIsolatedDeinitScenario([5, 6, 6], prefix: "review11_nested") { await reviewNestedDeinitScenario($0, $1) }
        }
    }

    /// A `Task {}` made inside a scope opened in an isolated deinit reads
    /// that scope's value; after the deinit, and after a deinit enqueued on
    /// the actor's executor (released off the actor: not inline, on a
    /// job of its own), the task reads and writes its `run`'s context.
    /// (Held.)
    @Test func tasksMadeInAnIsolatedDeinitAndAnEnqueuedDeinit() async {
        await #expect(processExitsWith: .success) {
            await expectIsolatedDeinitScenario([1, 5, 5, 6], prefix: "review11_task") { await reviewTaskInDeinitScenario($0, $1) }
        }
    }
}

/// A `run` on the actor in which an isolated deinit sets `v` to 9
/// (`movePlace`: after moving the place generation): what the `run` reads
/// after the deinit, what its context holds afterwards, and what the task
/// reads after the `run`.
@ReviewActor func reviewSetInDeinitScenario(_ v: ContextVar<Int>, movePlace: Bool) -> [Int] {
    let c = Context()
    let inRun = try! c.run { () -> Int in
        v.set(5)
        releaseProbeThatSetsNine(v, movingThePlace: movePlace)
        return v.value ?? -1
    }
    return [inRun, c[v] ?? -1, v.value ?? -1]
}

@ReviewActor func reviewUnscopedInheritedScenario(
    _ v: ContextVar<Int>, _ u: ContextVar<Int>, _ w: ContextVar<Int>
) async -> [Int] {
    await inAChildOfARun(v, u) {
        v.set(6)
        var probe: IsolatedDeinitProbe? = IsolatedDeinitProbe { isolatedDeinitBody(v, w) }
        _ = probe
        probe = nil
        let read = [v.value ?? -1, u.value ?? -1]
        v.set(7)
        var probe2: IsolatedDeinitProbe? = IsolatedDeinitProbe {
            _ = v.value
            Context.withCurrentUnsafeHandle { _, _ in }
            _ = v.value
            _ = v.value
        }
        _ = probe2
        probe2 = nil
        return read + [v.value ?? -1, u.value ?? -1]
    }
}

@ReviewActor func reviewNestedDeinitScenario(_ v: ContextVar<Int>, _ w: ContextVar<Int>) -> [Int] {
    let c = Context()
    let after = try! c.run { () -> [Int] in
        v.set(5)
        var outer: IsolatedDeinitProbe? = IsolatedDeinitProbe {
            Context.withCurrentUnsafeHandle { _, _ in }
            _ = v.value
            _ = v.value
            w.withValue(2) {
                var inner: IsolatedDeinitProbe? = IsolatedDeinitProbe { isolatedDeinitBody(v, w) }
                _ = inner
                inner = nil
                _ = w.value
            }
            var inner2: IsolatedDeinitProbe? = IsolatedDeinitProbe { isolatedDeinitBody(v, w) }
            _ = inner2
            inner2 = nil
            _ = v.value
            _ = v.value
        }
        _ = outer
        outer = nil
        let read = v.value ?? -1
        v.set(6)
        return [read, v.value ?? -1]
    }
    return after + [c[v] ?? -1]
}

@ReviewActor func reviewTaskInDeinitScenario(_ v: ContextVar<Int>, _ w: ContextVar<Int>) async -> [Int] {
    let c = Context()
    return try! await c.run { () async -> [Int] in
        v.set(5)
        let made = LockedBox<[Task<Int, Never>]>([])
        var probe: IsolatedDeinitProbe? = IsolatedDeinitProbe {
            made.mutate { $0.append(Task { v.value ?? -1 }) }  // what it reads is not promised
            w.withValue(1) { made.mutate { $0.append(Task { w.value ?? -1 }) } }
        }
        _ = probe
        probe = nil
        var out = [await made.value[1].value]
        _ = await made.value[0].value
        out.append(v.value ?? -1)
        await reviewReleaseOffActor(v)
        out.append(v.value ?? -1)
        v.set(6)
        out.append(c[v] ?? -1)
        return out
    }
}

/// Releases a probe off its actor: its isolated deinit is enqueued on the
/// actor's executor; returns once it has run.
nonisolated func reviewReleaseOffActor(_ v: ContextVar<Int>) async {
    await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
        var probe: IsolatedDeinitProbe? = IsolatedDeinitProbe {
            Context.withCurrentUnsafeHandle { _, _ in }
            _ = v.value
            _ = v.value
            v.set(3)
            cont.resume()
        }
        _ = probe
        probe = nil
    }
}

// MARK: - Review 11b: the scope end that lets the next read resolve, and
// `readInherited`

extension AdoptionWatcherAndCacheFillReviewTests {
    /// A task with no binding opens a `withValue` scope; an isolated
    /// deinit inside it (generation moved) sets `v` = 9, which makes the
    /// task's unscoped binding. The scope's end no longer restores "none"
    /// (`TaskBinding.placeUnknown`): the task reads 9 right after. The
    /// watchers' `exited` event is documented as carrying "the context
    /// current again" — so it must be the context the task now reads (where
    /// `v` is 9), not `nil` (`notifyExited` still uses the `enclosing` the
    /// scope started from). Fails: the watcher sees `nil` (-1) while the
    /// task reads 9.
    @Test func theExitedEventAfterADeinitMadeTheUnscopedBindingNamesWhatTheTaskReads() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("review11b_exited_v")
            let w = ContextVar<Int>("review11b_exited_w")
            let exited = PThreadLocked<[Int]>([])
            let watcher = try! Context.addWatcher { event, context in
                guard event == .exited else { return }
                exited.withLock { $0.append(context?[v] ?? -1) }
            }
            defer { watcher.cancel() }
            await expectInDetachedTask(9, [9]) { () async -> (Int, [Int]) in
                let read = await reviewExitedAfterDeinitSet(v, w)
                return (read, exited.withLock { $0 })
            }
        }
    }

    /// `cctx_shim_unscoped_filter_may_hold` is a filter: a task with no
    /// unscoped binding whose filter slot another live task's binding fills
    /// takes the "place unknown" end on every scope whose enclosing it does
    /// not own. Its reads must still be right (only slower): a `Task {}`
    /// made in a `run` (an inherited binding) whose id collides with a task
    /// that holds an unscoped binding runs sync and async scopes, nested,
    /// and an isolated deinit inside one, reading after each. (Held.)
    @Test func aTaskWhoseFilterSlotCollidesReadsRightAfterItsScopes() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("review11b_collide_v")
            let u = ContextVar<Int>("review11b_collide_u")
            let w = ContextVar<Int>("review11b_collide_w")
            await expectInDetachedTask(true, [2, 3, 4, 3, 2, -1, 5, 2, -1, 7, 2, -1, 2]) {
                () async -> (Bool, [Int]) in
                // The holder: a live task with an unscoped binding.
                let release = AsyncStream<Void>.makeStream()
                let holding = AsyncStream<Void>.makeStream()
                let holder = Task.detached {
                    v.set(1)
                    holding.continuation.yield()
                    for await _ in release.stream { break }
                }
                for await _ in holding.stream { break }
                // Tasks are made until one whose slot the holder fills (ids
                // grow by one per task: within 4096 + a few).
                for _ in 0..<20_000 {
                    let result = try! await Context().run { () async -> [Int]? in
                        u.set(2)
                        return await Task { () async -> [Int]? in
                            guard let task = cctx_shim_current_place().task,
                                cctx_shim_unscoped_filter_may_hold(task, 0)
                            else { return nil }
                            return await reviewCollidingTaskBody(v, u, w)
                        }.value
                    }
                    if let result {
                        release.continuation.yield()
                        await holder.value
                        return (true, result)
                    }
                }
                release.continuation.yield()
                return (false, [])
            }
        }
    }

    /// The `readInherited` flag: a `Task {}` that inherited the `run`'s
    /// binding writes unscoped (the flag is true: its entries naming that
    /// binding are not checked), then opens `run`/`withValue` scopes and
    /// releases probes inside them with the generation moved (the deinits
    /// resolve, read, open scopes that restore the unscoped binding, and
    /// set); then outside any scope; then async-let and task-group
    /// children do the same. After each: the scope's value inside, the
    /// unscoped binding outside, the inherited `u` throughout. (Held.)
    @Test func readInheritedEntriesAfterIsolatedDeinitsInScopesAndChildren() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("review11b_ri_v")
            let u = ContextVar<Int>("review11b_ri_u")
            let w = ContextVar<Int>("review11b_ri_w")
            let child = [6, 7, 2, 7, 6, 8, 8, 6, 9, 6, 2]
            await expectInDetachedTask(child, child, child, child, 5) {
                await reviewReadInheritedScenario(v, u, w)
            }
        }
    }
}

/// A `withValue` scope (no binding around it) in which an isolated deinit
/// sets `v` = 9 with the generation moved; what the task reads after it.
@ReviewActor func reviewExitedAfterDeinitSet(_ v: ContextVar<Int>, _ w: ContextVar<Int>) -> Int {
    w.withValue(1) {
        releaseProbeThatSetsNine(v)
    }
    return v.value ?? -1
}

/// The colliding task's scopes: what it reads inside and after each.
@ReviewActor func reviewCollidingTaskBody(
    _ v: ContextVar<Int>, _ u: ContextVar<Int>, _ w: ContextVar<Int>
) async -> [Int] {
    var out = [u.value ?? -1]
    out += w.withValue(3) { () -> [Int] in
        [w.value ?? -1] + w.withValue(4) { [w.value ?? -1] } + [w.value ?? -1]
    }
    out += [u.value ?? -1, w.value ?? -1]
    out += await w.withValue(5) { () async -> [Int] in
        await Task.yield()
        return [w.value ?? -1]
    }
    out += [u.value ?? -1, w.value ?? -1]
    out += w.withValue(7) { () -> [Int] in
        var probe: IsolatedDeinitProbe? = IsolatedDeinitProbe {
            Context.withCurrentUnsafeHandle { _, _ in }
            _ = w.value
            _ = w.value
        }
        _ = probe
        probe = nil
        return [w.value ?? -1]
    }
    out += [u.value ?? -1, w.value ?? -1]
    Context.withCurrentUnsafeHandle { _, _ in }
    out.append(u.value ?? -1)
    return out
}

/// The body of `readInheritedEntriesAfterIsolatedDeinitsInScopesAndChildren`
/// for one task that inherited `u` = 2 and makes its unscoped binding with
/// `v` = 6. Reads: 6; in `withValue(7)` after nested deinits (scopes opened
/// in them restore the unscoped binding): 7, `u` 2, and 7 after a scope;
/// after it: 6; in a `run` of an empty context after a deinit: 8, 8; after
/// it: 6; after a deinit outside any scope that sets 9: 9; after `set(6)`
/// and a scope: 6, `u` 2.
@ReviewActor func reviewReadInheritedBody(
    _ v: ContextVar<Int>, _ u: ContextVar<Int>, _ w: ContextVar<Int>
) async -> [Int] {
    v.set(6)
    var out = [v.value ?? -1]
    out += v.withValue(7) { () -> [Int] in
        var probe: IsolatedDeinitProbe? = IsolatedDeinitProbe {
            Context.withCurrentUnsafeHandle { _, _ in }
            _ = v.value
            _ = v.value
            w.withValue(1) { _ = w.value }
            _ = v.value
            var inner: IsolatedDeinitProbe? = IsolatedDeinitProbe {
                Context.withCurrentUnsafeHandle { _, _ in }
                w.withValue(2) { _ = v.value }
                _ = v.value
            }
            _ = inner
            inner = nil
            _ = v.value
        }
        _ = probe
        probe = nil
        let read = [v.value ?? -1, u.value ?? -1]
        w.withValue(3) { _ = w.value }
        return read + [v.value ?? -1]
    }
    out.append(v.value ?? -1)
    let inRun = try! await Context().run { () async -> [Int] in
        v.set(8)
        await Task.yield()
        var probe: IsolatedDeinitProbe? = IsolatedDeinitProbe {
            Context.withCurrentUnsafeHandle { _, _ in }
            w.withValue(1) { _ = w.value }
            _ = v.value
        }
        _ = probe
        probe = nil
        return [v.value ?? -1, v.value ?? -1]
    }
    out += inRun
    out.append(v.value ?? -1)
    // Outside any scope: the deinit's set writes the task's unscoped binding
    // (the place it resolves is that binding either way).
    var probe: IsolatedDeinitProbe? = IsolatedDeinitProbe {
        Context.withCurrentUnsafeHandle { _, _ in }
        w.withValue(1) { _ = w.value }
        v.set(9)
    }
    _ = probe
    probe = nil
    out.append(v.value ?? -1)
    v.set(6)
    w.withValue(4) { _ = w.value }
    out += [v.value ?? -1, u.value ?? -1]
    return out
}

/// A `run` (`v` = 5, `u` = 2) whose `Task {}`, async-let child, task-group
/// child and a `Task {}` made in a `withValue` each run
/// `reviewReadInheritedBody`; and the `run`'s `v` afterwards.
@ReviewActor func reviewReadInheritedScenario(
    _ v: ContextVar<Int>, _ u: ContextVar<Int>, _ w: ContextVar<Int>
) async -> ([Int], [Int], [Int], [Int], Int) {
    let c = Context()
    return try! await c.run { () async -> ([Int], [Int], [Int], [Int], Int) in
        v.set(5)
        u.set(2)
        let unstructured = await Task { @ReviewActor in await reviewReadInheritedBody(v, u, w) }.value
        async let letChild = reviewReadInheritedBody(v, u, w)
        let fromLet = await letChild
        let fromGroup = await withTaskGroup(of: [Int].self) { group in
            group.addTask { await reviewReadInheritedBody(v, u, w) }
            return await group.next()!
        }
        let inScope = await w.withValue(1) { () async -> [Int] in
            await Task { @ReviewActor in await reviewReadInheritedBody(v, u, w) }.value
        }
        return (unstructured, fromLet, fromGroup, inScope, v.value ?? -1)
    }
}

extension AdoptionWatcherAndCacheFillReviewTests {
    /// Async-let children made one after another (the runtime reuses the
    /// parent's slot: the same child address) and task-group children,
    /// alternately making their unscoped binding in an isolated deinit
    /// inside a `withValue` (generation moved) and not: after the scope,
    /// one that made it reads 9 (its binding, made from the nothing the
    /// deinit saw), one that did not reads the `run`'s 5 — the filter is
    /// asked by task id, so a dead child's binding at the same address
    /// does not count for the next. (Held.)
    @Test func childrenAtAReusedAddressMakeOrSkipTheUnscopedBindingInADeinit() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("review11b_reuse_v")
            let w = ContextVar<Int>("review11b_reuse_w")
            let expected = [[9, -1], [5, -1], [9, -1], [5, -1]]
            await expectInDetachedTask(expected, expected) { await reviewChildrenReuseScenario(v, w) }
        }
    }
}

@ReviewActor func reviewChildrenReuseScenario(
    _ v: ContextVar<Int>, _ w: ContextVar<Int>
) async -> ([[Int]], [[Int]]) {
    try! await Context().run { () async -> ([[Int]], [[Int]]) in
        v.set(5)
        var fromLet: [[Int]] = []
        for i in 0..<4 {
            async let child = reviewChildMakesInDeinit(v, w, makes: i % 2 == 0)
            fromLet.append(await child)
        }
        var fromGroup: [[Int]] = []
        for i in 0..<4 {
            fromGroup.append(
                await withTaskGroup(of: [Int].self) { group in
                    group.addTask { await reviewChildMakesInDeinit(v, w, makes: i % 2 == 0) }
                    return await group.next()!
                })
        }
        return (fromLet, fromGroup)
    }
}

/// A `withValue` in which (`makes`) an isolated deinit sets `v` = 9 with
/// the generation moved; what the task reads of `v` and `w` after it.
@ReviewActor func reviewChildMakesInDeinit(_ v: ContextVar<Int>, _ w: ContextVar<Int>, makes: Bool) -> [Int] {
    w.withValue(1) {
        releaseProbeThatSetsNine(v, setting: makes)
    }
    return [v.value ?? -1, w.value ?? -1]
}
