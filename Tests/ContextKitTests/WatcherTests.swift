import CContextCore
import Foundation
import Synchronization
import Testing
@testable import ContextKit

/// Marks the code of one test, so that its watcher counts only the events
/// that test causes (other suites run in parallel and fire events too). The
/// callback runs synchronously where the event happens, so it sees the mark.
enum WatchMark {
    @TaskLocal static var id: Int = 0
    static let next = Atomic<Int>(1)
    static func fresh() -> Int { next.add(1, ordering: .relaxed).newValue }
}

/// Records the events a watcher sees under one mark.
final class EventLog: Sendable {
    let mark: Int
    /// Whether to keep `switched`: a worker thread that first meets ContextKit
    /// inside a marked task creates its state then, which is legitimate but
    /// depends on which threads the task happened to run on.
    let includesSwitched: Bool
    private let entries = PThreadLocked<[(ContextEvent, UInt?)]>([])
    init(mark: Int, includesSwitched: Bool = false) {
        self.mark = mark
        self.includesSwitched = includesSwitched
    }

    func record(_ event: ContextEvent, _ context: Context?) {
        guard WatchMark.id == mark, includesSwitched || event != .switched else { return }
        let handle = context.map { address($0) }
        entries.withLock { $0.append((event, handle)) }
    }

    var events: [ContextEvent] { entries.withLock { $0.map(\.0) } }
    var contexts: [UInt?] { entries.withLock { $0.map(\.1) } }
    func count(_ event: ContextEvent) -> Int { events.filter { $0 == event }.count }
}

func address(_ context: Context) -> UInt {
    context.withUnsafeHandle { UInt(bitPattern: Int(bitPattern: UnsafeRawPointer($0))) }
}

/// Counters shared by the threads or tasks of one test.
final class WatchCounters: Sendable {
    let late = Atomic<Int>(0)
    let delivered = Atomic<Int>(0)
    let stop = Atomic<Bool>(false)
}

/// Watchers are global: the suite runs serially so it never holds more than
/// a few of the eight slots.
@Suite(.serialized) struct WatcherTests {
    @Test func nestedSyncRunsInATask() async throws {
        let mark = WatchMark.fresh()
        let log = EventLog(mark: mark)
        let watcher = try Context.addWatcher { log.record($0, $1) }
        defer { watcher.cancel() }
        let a = Context(), b = Context()
        try WatchMark.$id.withValue(mark) {
            try a.run { try b.run {} }
        }
        #expect(log.events == [.entered, .entered, .exited, .exited])
        #expect(log.contexts == [address(a), address(b), address(a), nil])
    }

    @Test func nestedAsyncRunsAndWithValue() async throws {
        let mark = WatchMark.fresh()
        let log = EventLog(mark: mark)
        let watcher = try Context.addWatcher { log.record($0, $1) }
        defer { watcher.cancel() }
        let v = ContextVar<Int>("v", default: 0)
        let outer = Context()
        try await WatchMark.$id.withValue(mark) {
            try await outer.run {
                await Task.yield()
                await v.withValue(1) {
                    await Task.yield()
                    v.withValue(2) {}          // sync scope inside async
                }
                await Task.yield()
            }
        }
        #expect(log.events == [.entered, .entered, .entered, .exited, .exited, .exited])
        let contexts = log.contexts
        #expect(contexts[0] == address(outer))
        #expect(contexts[4] == address(outer))  // back in `outer` after withValue(1)
        #expect(contexts[5] == nil)             // the task has no scope left
        #expect(contexts[3] == contexts[1])     // back in withValue(1)'s copy
    }

    /// A task scope asks whether any watcher is installed at its start and
    /// again at its end (`cctx_watchers_installed`), and skips the event
    /// work when none is. The contract is the thread's (`cctx_context_exit`
    /// fires to whatever is installed at the exit): a watcher added inside
    /// a scope gets that scope's `exited` (and the enclosing ones') without
    /// their `entered`; one cancelled inside gets nothing more. Checked
    /// against a thread's `run` for the same shapes.
    @Test func watcherAddedOrCancelledInsideATaskScope() async throws {
        let mark = WatchMark.fresh()
        let v = ContextVar<Int>("v", default: 0)
        let outer = Context()

        // Added inside: no watcher of this test at either scope's start.
        let added = EventLog(mark: mark)
        let late = try await WatchMark.$id.withValue(mark) {
            try await outer.run {
                await Task.yield()
                return try await v.withValue(1) {
                    let watcher = try Context.addWatcher { added.record($0, $1) }
                    await Task.yield()                  // the end may run on another thread
                    return watcher
                }
            }
        }
        late.cancel()
        #expect(added.events == [.exited, .exited])
        #expect(added.contexts == [address(outer), nil])

        // The same in synchronous scopes in a task.
        let addedSync = EventLog(mark: mark)
        let lateSync = try WatchMark.$id.withValue(mark) {
            try outer.run { try Context.addWatcher { addedSync.record($0, $1) } }
        }
        lateSync.cancel()
        #expect(addedSync.events == [.exited])
        #expect(addedSync.contexts == [nil])

        // Cancelled inside: it saw the `entered`s, and nothing after.
        let cancelled = EventLog(mark: mark)
        let kept = EventLog(mark: mark)
        let early = try Context.addWatcher { cancelled.record($0, $1) }
        let staying = try Context.addWatcher { kept.record($0, $1) }
        try await WatchMark.$id.withValue(mark) {
            try await outer.run {
                await v.withValue(2) {
                    early.cancel()
                    await Task.yield()
                }
            }
        }
        staying.cancel()
        #expect(cancelled.events == [.entered, .entered])
        #expect(kept.events == [.entered, .entered, .exited, .exited])

        // A thread's scopes (the C runtime's own events) behave the same.
        let addedOnThread = EventLog(mark: mark)
        let base = onNewThread { () -> UInt in
            WatchMark.$id.withValue(mark) {
                let base = UInt(bitPattern: cctx_context_current())
                let watcher = try! outer.run { try Context.addWatcher { addedOnThread.record($0, $1) } }
                watcher.cancel()
                return base
            }
        }
        #expect(addedOnThread.events == [.exited])
        #expect(addedOnThread.contexts == [base])
    }

    @Test func spawnHelpersAndChildTasksInAScope() async throws {
        let mark = WatchMark.fresh()
        let log = EventLog(mark: mark)
        let watcher = try Context.addWatcher { log.record($0, $1) }
        defer { watcher.cancel() }
        let v = ContextVar<Int>("v", default: 0)
        await WatchMark.$id.withValue(mark) {
            await v.withValue(1) {
                _ = await Context.task { v.value }.value      // entered + exited in the new task
                async let child = v.value                     // no scope: no event
                _ = await child
            }
        }
        #expect(log.count(.entered) == 2)
        #expect(log.count(.exited) == 2)
    }

    @Test func threadRunsFireTheThreadsEvents() throws {
        let mark = WatchMark.fresh()
        let log = EventLog(mark: mark, includesSwitched: true)
        let watcher = try Context.addWatcher { log.record($0, $1) }
        defer { watcher.cancel() }
        let v = ContextVar<Int>("v", default: 0)
        let ctx = Context()
        let base = onNewThread { () -> UInt in
            WatchMark.$id.withValue(mark) {
                let base = UInt(bitPattern: cctx_context_current())   // creates the state: switched
                try! ctx.run { v.withValue(2) {} }
                return base
            }
        }
        #expect(log.events == [.switched, .entered, .entered, .exited, .exited])
        let contexts = log.contexts
        #expect(contexts[1] == address(ctx))
        #expect(contexts[3] == address(ctx))
        #expect(contexts[4] == base)  // the thread's own context again
    }

    @Test func cancelledWatcherIsNeverCalledAgain() throws {
        let mark = WatchMark.fresh()
        let log = EventLog(mark: mark)
        let watcher = try Context.addWatcher { log.record($0, $1) }
        onNewThread { WatchMark.$id.withValue(mark) { try! Context().run {} } }
        #expect(log.count(.entered) == 1)
        #expect(!watcher.isCancelled)
        watcher.cancel()
        #expect(watcher.isCancelled)
        watcher.cancel()                        // a second cancel does nothing
        onNewThread { WatchMark.$id.withValue(mark) { try! Context().run {} } }
        #expect(log.count(.entered) == 1)
    }

    @Test func releasingTheHandleCancelsAndReleasesTheClosure() throws {
        let mark = WatchMark.fresh()
        let log = EventLog(mark: mark)
        let counter = LifetimeCounter()
        do {
            let tracked = counter.make()
            let watcher = try Context.addWatcher { event, context in
                _ = tracked
                log.record(event, context)
            }
            #expect(!watcher.isCancelled)
        }
        #expect(counter.alive == 0)             // C's reference to the box was given back
        onNewThread { WatchMark.$id.withValue(mark) { try! Context().run {} } }
        #expect(log.events.isEmpty)
    }

    @Test func slotsRunOutWithAnError() throws {
        var watchers: [ContextWatcher] = []
        defer { for w in watchers { w.cancel() } }
        #expect(throws: ContextError.tooManyWatchers) {
            for _ in 0...Int(CCTX_MAX_WATCHERS) {
                watchers.append(try Context.addWatcher { _, _ in })
            }
        }
        #expect(watchers.count <= Int(CCTX_MAX_WATCHERS))
        #expect(ContextError.tooManyWatchers.description.contains("watcher"))
    }

    @Test func watchersAddedAndRemovedWhileFourThreadsFireEvents() {
        let rounds = scaled(200)
        let counters = WatchCounters()
        runOnJoinedThreads(4) { _ in
            let v = ContextVar<Int>("v", default: 0)
            for round in 0..<rounds {
                let mine = WatchCounters()      // `stop` here: this watcher was removed
                let watcher = try! Context.addWatcher { _, _ in
                    if mine.stop.load(ordering: .acquiring) { counters.late.add(1, ordering: .relaxed) }
                    counters.delivered.add(1, ordering: .relaxed)
                }
                for _ in 0..<5 {
                    try! Context().run { v.withValue(round) { _ = v.value } }
                }
                watcher.cancel()
                mine.stop.store(true, ordering: .releasing)
                try! Context().run {}           // fires the other threads' watchers only
            }
        }
        #expect(counters.late.load(ordering: .relaxed) == 0)
        #expect(counters.delivered.load(ordering: .relaxed) >= 4 * rounds * 5 * 4)
    }

    @Test func tasksOnManyThreadsWithWatchersComingAndGoing() async throws {
        let counters = WatchCounters()
        let v = ContextVar<Int>("v", default: 0)
        await withTaskGroup(of: Void.self) { group in
            for i in 0..<4 {
                group.addTask {
                    var n = 0
                    while !counters.stop.load(ordering: .relaxed) && n < 10_000 {
                        await v.withValue(i) { await Task.yield() }
                        n += 1
                    }
                }
            }
            group.addTask {
                for _ in 0..<scaled(50) {
                    let mine = WatchCounters()
                    let watcher = try! Context.addWatcher { _, _ in
                        if mine.stop.load(ordering: .acquiring) { counters.late.add(1, ordering: .relaxed) }
                    }
                    await Task.yield()
                    watcher.cancel()
                    mine.stop.store(true, ordering: .releasing)
                }
                counters.stop.store(true, ordering: .relaxed)
            }
        }
        #expect(counters.late.load(ordering: .relaxed) == 0)
    }
}
