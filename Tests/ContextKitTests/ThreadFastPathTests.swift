import CContextCore
import Synchronization
import Testing
@testable import ContextKit

#if canImport(Glibc)
import Glibc
#endif

// The hot paths outside any task: `ContextVar.get()` on a thread reads the
// thread's lookup cache through `cctx_var_value_inline` (its hit path
// inlined; a miss calls `cctx_var_value`), and `ThreadLocal.value`
// reads and writes its box through `cctx_local_value` (the thread state's
// shortcut to the first 64 slots, the slot directory beyond). Each test
// runs on raw threads (no task), checks every read against a model, and
// makes the cache or the slots change under it in every way a thread can:
// set, reset, entering and leaving contexts, deinits that read and write
// while a write or the thread's exit releases them.

/// More variables than the thread's lookup cache has entries (16), so that
/// they share entries and evict each other.
private let fastVars = (0..<40).map { ContextVar<Int>("fast\($0)") }

/// Reads every variable of `fastVars` three ways and compares with `model`.
private func checkAll(_ model: [Int?], _ failures: Failures, _ step: String) {
    for (i, v) in fastVars.enumerated() {
        let expected = model[i]
        failures.check(v.value == expected, "\(step): fast\(i).value is \(String(describing: v.value)), not \(String(describing: expected))")
        failures.check((try? v.get()) == expected, "\(step): fast\(i).get()")
        failures.check(v.get(default: -7) == (expected ?? -7), "\(step): fast\(i).get(default:)")
    }
}

/// A value whose deinit reads `watched` and writes `sink` on whatever
/// thread releases it (a write replacing it, a scope ending, thread exit).
private enum DeinitProbe {
    static let watched = ContextVar<Int>("watched")
    static let sink = ContextVar<Int>("sink")
    static let holder = ContextVar<Payload>("holder")
    static let released = Atomic<Int>(0)

    final class Payload: Sendable {
        let id: Int
        init(_ id: Int) { self.id = id }
        deinit {
            // Whatever the current context holds then: a value of the
            // thread's own model (checked by the caller afterwards), never
            // garbage. The set must be visible to this deinit's next read.
            let seen = DeinitProbe.watched.value ?? -1
            if seen < -1 || seen > 1_000_000 { fatalError("deinit read \(seen)") }
            let token = DeinitProbe.sink.set(id)
            if DeinitProbe.sink.value != id { fatalError("a set in a deinit was not seen by its next read") }
            do { try DeinitProbe.sink.reset(token) } catch { fatalError("reset in a deinit: \(error)") }
            DeinitProbe.released.add(1, ordering: .sequentiallyConsistent)
        }
    }
}

/// ThreadLocals for the exit test: more than one chunk of slots (64), each
/// holding a value whose deinit reads a neighbour and writes a scratch
/// local, at thread exit.
private enum LocalFastProbe {
    static let count = 100
    static let live = Atomic<Int>(0)
    static let wrong = Atomic<Int>(0)
    static let probes = (0..<count).map { _ in ThreadLocal<Probe?> { nil } }
    static let scratch = (0..<count).map { _ in ThreadLocal<Int> { -1 } }

    final class Probe: Sendable {
        let thread: Int
        let index: Int
        init(thread: Int, index: Int) {
            self.thread = thread
            self.index = index
            LocalFastProbe.live.add(1, ordering: .sequentiallyConsistent)
        }
        deinit {
            // The neighbour: still this thread's probe, or nil once the exit
            // has released it (its slot then reads as never set).
            let next = (index + 1) % LocalFastProbe.count
            if let other = LocalFastProbe.probes[next].value,
                other.thread != thread || other.index != next
            {
                LocalFastProbe.wrong.add(1, ordering: .sequentiallyConsistent)
            }
            // A write during the exit, read back at once.
            LocalFastProbe.scratch[index].value = index
            if LocalFastProbe.scratch[index].value != index {
                LocalFastProbe.wrong.add(1, ordering: .sequentiallyConsistent)
            }
            LocalFastProbe.live.subtract(1, ordering: .sequentiallyConsistent)
        }
    }
}

@Suite("Outside any task: get and ThreadLocal fast paths", .serialized)
struct ThreadFastPathTests {
    // Each test runs in a child process (an exit test): a stale cache entry
    // or slot reads a freed box, which would stop the whole test run.
    @Test("get on a thread follows every set, reset, run and withValue")
    func getFollowsEveryChangeOfTheThreadsContext() async {
        await #expect(processExitsWith: .success) {
            let failures = Failures()
            runOnJoinedThread {
                var model = [Int?](repeating: nil, count: fastVars.count)
                checkAll(model, failures, "start")
                var tokens: [Token<Int>] = []
                for (i, v) in fastVars.enumerated() {
                    _ = v.value  // cached, then replaced by the set
                    tokens.append(v.set(i))
                    model[i] = i
                    checkAll(model, failures, "after set \(i)")
                }
                // Set and reset a variable just read (its entry is current).
                for (i, v) in fastVars.enumerated() {
                    _ = v.value
                    let token = v.set(1000 + i)
                    failures.check(v.value == 1000 + i, "set \(i) not seen")
                    do { try v.reset(token) } catch { failures.check(false, "reset \(i): \(error)") }
                    failures.check(v.value == i, "reset \(i) not seen")
                }
                checkAll(model, failures, "after set+reset")
                // Entering another context and leaving it.
                let other = Context()
                try! other.run { fastVars[3].set(33) }
                var inside = [Int?](repeating: nil, count: fastVars.count)
                inside[3] = 33
                try! other.run {
                    checkAll(inside, failures, "in run")
                    fastVars[5].set(55)
                    inside[5] = 55
                    checkAll(inside, failures, "in run after set")
                }
                checkAll(model, failures, "after run")
                try! other.run { checkAll(inside, failures, "in run again") }
                // withValue: a copy of the current context, gone afterwards.
                fastVars[7].withValue(77) {
                    var copy = model
                    copy[7] = 77
                    checkAll(copy, failures, "in withValue")
                    try! Context().run { checkAll([Int?](repeating: nil, count: fastVars.count), failures, "in nested run") }
                    checkAll(copy, failures, "in withValue after nested run")
                }
                checkAll(model, failures, "after withValue")
                // Resets back to "no value", newest first.
                for (i, token) in tokens.enumerated().reversed() {
                    do { try fastVars[i].reset(token) } catch { failures.check(false, "final reset \(i): \(error)") }
                    model[i] = nil
                    checkAll(model, failures, "after final reset \(i)")
                }
            }
            if !failures.list.isEmpty { fatalError("\(failures.list.prefix(5))") }
        }
    }

    @Test("deinits that read and set while a set, a reset or a scope's end releases them")
    func deinitsReadingAndSettingWhileTheirReleaseWrites() async {
        await #expect(processExitsWith: .success) {
            let failures = Failures()
            let before = DeinitProbe.released.load(ordering: .sequentiallyConsistent)
            let made = Atomic<Int>(0)
            runOnJoinedThreads(4) { t in
                var held: Int? = nil  // the id `holder` holds in the thread's context
                for i in 0..<200 {
                    let id = t * 10_000 + i
                    DeinitProbe.watched.set(i)
                    made.add(1, ordering: .sequentiallyConsistent)
                    let token = DeinitProbe.holder.set(DeinitProbe.Payload(id))  // may release the last one
                    let previous = held
                    held = id
                    failures.check(DeinitProbe.holder.value?.id == id, "holder after set")
                    failures.check(DeinitProbe.watched.value == i, "watched after set")
                    failures.check(DeinitProbe.sink.value == nil, "sink after set: \(String(describing: DeinitProbe.sink.value))")
                    if i % 3 == 0 {
                        do { try DeinitProbe.holder.reset(token) } catch { failures.check(false, "reset: \(error)") }
                        held = previous
                        failures.check(DeinitProbe.holder.value?.id == held, "holder after reset")
                    }
                    // A scope whose values die with it.
                    made.add(1, ordering: .sequentiallyConsistent)
                    try! Context().run {
                        DeinitProbe.holder.set(DeinitProbe.Payload(id + 5000))
                        DeinitProbe.watched.set(-1)
                    }
                    failures.check(DeinitProbe.watched.value == i, "watched after run")
                    failures.check(DeinitProbe.holder.value?.id == held, "holder after run")
                    failures.check(DeinitProbe.sink.value == nil, "sink after run")
                }
            }
            if !failures.list.isEmpty { fatalError("\(failures.list.prefix(5))") }
            let released = DeinitProbe.released.load(ordering: .sequentiallyConsistent) - before
            // Every payload is released by the end: by a write or a scope's
            // end, else by its thread's exit.
            let expected = made.load(ordering: .sequentiallyConsistent)
            if released != expected { fatalError("released \(released) of \(expected)") }
        }
    }

    @Test("thread exit with 100 ThreadLocals whose deinits use other ThreadLocals")
    func threadExitWithThreadLocalsWhoseDeinitsUseOthers() async {
        await #expect(processExitsWith: .success) {
            let failures = Failures()
            runOnJoinedThreads(8) { t in
                for (i, local) in LocalFastProbe.probes.enumerated() {
                    local.value = LocalFastProbe.Probe(thread: t, index: i)
                }
                for (i, local) in LocalFastProbe.probes.enumerated() {
                    failures.check(local.value?.thread == t && local.value?.index == i, "probe \(i) on thread \(t)")
                    // Replacing a value runs its deinit now, inside the write.
                    local.value = LocalFastProbe.Probe(thread: t, index: i)
                    failures.check(LocalFastProbe.scratch[i].value == i, "scratch \(i) after a replacing write")
                    LocalFastProbe.scratch[i].value = -1
                }
            }
            if !failures.list.isEmpty { fatalError("\(failures.list.prefix(5))") }
            let wrong = LocalFastProbe.wrong.load(ordering: .sequentiallyConsistent)
            if wrong != 0 { fatalError("\(wrong) wrong reads or writes in deinits") }
            let live = LocalFastProbe.live.load(ordering: .sequentiallyConsistent)
            if live != 0 { fatalError("\(live) probes left alive after their threads exited") }
        }
    }

    @Test("ThreadLocal reads and writes on a thread after its state was cleaned up")
    func threadLocalAfterTheThreadsStateWasCleanedUp() async {
        await #expect(processExitsWith: .success) {
            let failures = Failures()
            let locals = (0..<100).map { i in ThreadLocal<Int> { -i } }
            runOnJoinedThread {
                for (i, local) in locals.enumerated() { local.value = i }
                failures.check(locals.enumerated().allSatisfy { $0.element.value == $0.offset }, "values before cleanup")
                // The thread's state and slots go; the next use makes new ones.
                failures.check(cctx_thread_cleanup() == CCTX_OK, "cleanup")
                failures.check(locals.enumerated().allSatisfy { $0.element.value == -$0.offset }, "initial values after cleanup")
                for (i, local) in locals.enumerated() { local.value = 2 * i }
                failures.check(locals.enumerated().allSatisfy { $0.element.value == 2 * $0.offset }, "values after cleanup")
            }
            if !failures.list.isEmpty { fatalError("\(failures.list)") }
        }
    }
}
