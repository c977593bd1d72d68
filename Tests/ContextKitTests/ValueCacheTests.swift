import CContextCore
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
            let ok = await Task.detached { () async -> Bool in
                try! await Context().run { () async -> Bool in
                    await withTaskExecutorPreference(first) { () async -> Bool in
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
                        return hopped && before == 1 && after == 2
                    }
                }
            }.value
            if !ok { exit(1) }
        }
    }

    /// C writes the task's context through the handle Swift gave it; Swift
    /// reads inside the window (a C callback) and after it.
    @Test func aCWriteThroughTheUnsafeHandleIsSeenByReads() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("value_cache", default: 0)
            let ok = await Task.detached { () async -> Bool in
                try! await Context().run { () async -> Bool in
                    v.set(1)
                    let before = v.value
                    let inside = Context.withCurrentUnsafeHandle { handle, isWritable -> Int? in
                        guard isWritable else { return nil }
                        let box = v.makeBox(2)
                        let status = box.withOpaquePointer { cctx_context_set(handle, v.handle, $0, nil) }
                        return status == CCTX_OK ? v.value : nil
                    }
                    let after = v.value
                    return before == 1 && inside == 2 && after == 2
                }
            }.value
            if !ok { exit(1) }
        }
    }

    /// A value whose deinit reads its own variable, released by the
    /// `reset` that replaces it (the map held its only reference; a `set`'s
    /// token would keep the old value alive instead): the read inside the
    /// deinit sees the restored value, never the box being destroyed.
    @Test func aDeinitReadingTheVariableDuringItsReplacement() async {
        await #expect(processExitsWith: .success) {
            let ok = await Task.detached { () async -> Bool in
                try! await Context().run { () async throws -> Bool in
                    Probe.variable.set(Probe(1))
                    let token = Probe.variable.set(Probe(2))
                    let before = Probe.variable.value?.id
                    try Probe.variable.reset(token)
                    let after = Probe.variable.value?.id
                    return before == 2 && Probe.seenInDeinit.value.first == 1 && after == 1
                }
            }.value
            if !ok { exit(1) }
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
            let wrong = await Task.detached { () async -> Int in
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
            }.value
            if wrong != 0 { exit(1) }
        }
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
