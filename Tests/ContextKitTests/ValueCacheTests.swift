import CContextCore
import CContextKitShims
import Foundation
import Testing
@testable import ContextKit

#if canImport(Glibc)
import Glibc
#endif

/// A task's reads of a binding it owns come from a per-thread value cache,
/// valid while the binding's write count is unchanged (place_cache.c).
/// Each test makes a write the cache must not outlive and reads right after
/// it; a stale entry would hand out a box the write has already freed, so
/// each runs as an exit test (a stop fails one test) and in its own process
/// (no other test's scope changes the place generation meanwhile, which
/// would hide a stale entry).
@Suite struct ValueCacheTests {
    /// A task on thread 1 reads (filling thread 1's entry), sets on thread
    /// 2 (freeing the box that entry names), and reads again on thread 1.
    @Test func aSetOnAnotherThreadInvalidatesThisThreadsValue() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("value_cache", default: 0)
            let first = ThreadExecutor(), second = ThreadExecutor()
            await expectInDetachedRun(true, 1, 2) { () async -> (Bool, Int?, Int?) in
                await withTaskExecutorPreference(first) { () async -> (Bool, Int?, Int?) in
                    v.set(1)
                    let before = v.value
                    let threadBefore = pthread_self()
                    let threadBetween = await withTaskExecutorPreference(second) { () async -> pthread_t in
                        v.set(2)
                        return pthread_self()
                    }
                    let after = v.value
                    // The hop really happened, and came back.
                    let hopped = pthread_equal(threadBefore, threadBetween) == 0
                        && pthread_equal(threadBefore, pthread_self()) != 0
                    return (hopped, before, after)
                }
            }
        }
    }

    /// C writes the task's context through the handle Swift gave it; Swift
    /// reads inside the window (a C callback) and after it.
    @Test func aCWriteThroughTheUnsafeHandleIsSeenByReads() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("value_cache", default: 0)
            await expectInDetachedRun(1, 2, 2) { () async -> (Int?, Int?, Int?) in
                v.set(1)
                let before = v.value
                let inside = Context.withCurrentUnsafeHandle { handle, isWritable -> Int? in
                    guard isWritable else { return nil }
                    let box = v.makeBox(2)
                    let status = box.withOpaquePointer { cctx_context_set(handle, v.handle, $0, nil) }
                    return status == CCTX_OK ? v.value : nil
                }
                let after = v.value
                return (before, inside, after)
            }
        }
    }

    /// A value whose deinit reads its own variable, released by the
    /// `reset` that replaces it (the map held its only reference; a `set`'s
    /// token would keep the old value alive instead): the read inside the
    /// deinit sees the restored value, never the box being destroyed.
    @Test func aDeinitReadingTheVariableDuringItsReplacement() async {
        await #expect(processExitsWith: .success) {
            await expectInDetachedRun(2, 1, 1) { () async throws -> (Int?, Int??, Int?) in
                Probe.variable.set(Probe(1))
                let token = Probe.variable.set(Probe(2))
                let before = Probe.variable.value?.id
                try Probe.variable.reset(token)
                let after = Probe.variable.value?.id
                return (before, Probe.seenInDeinit.value.first, after)
            }
        }
    }

    /// `async let` children one after another often live at the same
    /// address: a child reads on thread 1 inside a scope of its own that
    /// ends on thread 2, then the next child, which opens no scope, reads on
    /// thread 1, where an entry made for the first child's ended scope may
    /// name its address (whether the runtime reuses the address is not
    /// checked). It must read what the parent sees.
    @Test func asyncLetChildrenAtOneAddressDoNotReadAnEndedScope() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("value_cache", default: 0)
            let first = ThreadExecutor(), second = ThreadExecutor()
            await expectInDetachedTask(0) { () async -> Int in
                await v.withValue(1) { () async -> Int in
                    var wrong = 0
                    for i in 0..<200 {
                        // One `async let` per block: each child's memory is
                        // freed at its block's end, for the next to reuse.
                        do {
                            async let scoped: Int = withTaskExecutorPreference(second) { () async -> Int in
                                await v.withValue(i + 10) { () async -> Int in
                                    await withTaskExecutorPreference(first) { v.value! }
                                }
                            }
                            if await scoped != i + 10 { wrong += 1 }
                        }
                        do {
                            async let plain: Int = withTaskExecutorPreference(first) { v.value! }
                            if await plain != 1 { wrong += 1 }
                        }
                    }
                    return wrong
                }
            }
        }
    }

    /// `set` in the task's own binding leaves the box it wrote in the
    /// thread's value cache, at the write count the write left (the next
    /// read hits instead of looking the variable up). Fails without the
    /// fill: the entry still names the box read before the set, at the old
    /// count.
    @Test func aSetLeavesTheBoxItWroteInTheCache() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("value_cache_set_fill", default: 0)
            await expectInDetachedRun(1, true, 2) { () async -> (Int?, Bool, Int?) in
                v.set(1)
                let first = v.value
                v.set(2)
                let place = cctx_shim_current_place()
                // The entry names the box of 2, at the binding's write count.
                let filled: Bool
                if let entry = place.entry, let binding = entry.pointee.binding,
                    entry.pointee.variable == UnsafeRawPointer(v.handle),
                    entry.pointee.version
                        == Unmanaged<TaskBinding>.fromOpaque(binding).takeUnretainedValue().writes,
                    let box = entry.pointee.value, ValueBox<Int>.borrowedValue(box) == 2
                {
                    filled = true
                } else {
                    filled = false
                }
                return (first, filled, v.value)
            }
        }
    }

    /// A `set` inside an unsafe-handle window fills nothing: C then writes
    /// through the lent handle without bumping the write count, and the
    /// read after must see C's value. Fails (SIGSEGV: the read finds the
    /// freed box of 5) if `set` fills inside the window.
    @Test func aSetInsideTheUnsafeWindowDoesNotHideALaterCWrite() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("value_cache_set_window", default: 0)
            await expectInDetachedRun(6, 6) { () async -> (Int?, Int?) in
                v.set(1)
                let inside = Context.withCurrentUnsafeHandle { handle, isWritable -> Int? in
                    guard isWritable else { return nil }
                    // A read first: the window's start moved the
                    // generation, and this miss caches the place again,
                    // so the `set` below takes its fast path.
                    guard v.value == 1 else { return nil }
                    v.set(5)
                    let box = v.makeBox(6)
                    let status = box.withOpaquePointer { cctx_context_set(handle, v.handle, $0, nil) }
                    return status == CCTX_OK ? v.value : nil
                }
                return (inside, v.value)
            }
        }
    }

    /// Values whose deinit sets the same variable again, released right
    /// after the `set` that replaced them (the discarded token held the old
    /// value): every read sees the latest write, many tasks at once.
    @Test func setsWhoseReplacedValuesSetAgainInTheirDeinit() async {
        let v = ContextVar<ReleaseHook>("value_cache_set_deinit")
        let bad = PThreadLocked(0)
        await withTaskGroup(of: Void.self) { group in
            for t in 0..<8 {
                group.addTask {
                    for round in 0..<scaled(200) {
                        try! await Context().run { () async in
                            let base = t * 1_000_000 + round * 10
                            v.set(ReleaseHook(id: base + 1) { v.set(ReleaseHook(id: base + 9) {}) })
                            if v.value?.id != base + 1 { bad.withLock { $0 += 1 } }
                            do { _ = v.set(ReleaseHook(id: base + 2) {}) }  // releases base + 1: its deinit sets base + 9
                            if v.value?.id != base + 9 { bad.withLock { $0 += 1 } }
                            async let child = v.value?.id
                            if await child != base + 9 { bad.withLock { $0 += 1 } }
                            v.set(ReleaseHook(id: base + 3) {})
                            if v.value?.id != base + 3 { bad.withLock { $0 += 1 } }
                        }
                    }
                }
            }
        }
        #expect(bad.withLock { $0 } == 0)
    }
}

/// A value whose deinit reads its own variable (for the test above).
final class Probe: Sendable {
    static let variable = ContextVar<Probe>("probe")
    static let seenInDeinit = LockedBox<[Int?]>([])
    let id: Int
    init(_ id: Int) { self.id = id }
    deinit {
        let seen = Probe.variable.value?.id
        Probe.seenInDeinit.mutate { $0.append(seen) }
    }
}

/// A task executor that runs every job on one thread of its own, so that
/// a test can move a task between two known threads.
///
/// `@unchecked Sendable` is sound: `jobs` is read and written only with
/// `condition` locked; `thread` is written once, before any job exists.
final class ThreadExecutor: TaskExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []

    init() {
        let thread = Thread { [unowned self] in self.runJobs() }
        thread.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Runs jobs for the rest of the process (these executors live only in
    /// exit tests' child processes).
    private func runJobs() -> Never {
        while true {
            condition.lock()
            while jobs.isEmpty { condition.wait() }
            let job = jobs.removeFirst()
            condition.unlock()
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}
