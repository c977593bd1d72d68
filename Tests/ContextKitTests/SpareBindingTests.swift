import CContextKitShims
import Dispatch
import Foundation
import Testing
@testable import ContextKit

/// A value whose deinit opens a scope of another variable on the same
/// thread and records what it read there: it runs while a thread parks the
/// binding that held it (`TaskBinding.park`).
final class ScopeInDeinit: Sendable {
    let other: ContextVar<Int>
    let seen: LockedBox<[Int]>
    init(other: ContextVar<Int>, seen: LockedBox<[Int]>) {
        self.other = other
        self.seen = seen
    }
    deinit {
        let read = other.withValue(41) { other.value! + 1 }
        seen.mutate { $0.append(read) }
    }
}

/// Runs `body` on a new POSIX thread and returns its result once that thread
/// has exited, awaited without blocking a thread of the cooperative pool
/// (other tests' tasks need them; a blocked pool starves them).
func onNewThreadUntilExit<R: Sendable>(_ body: @escaping @Sendable () -> R) async -> R {
    await withCheckedContinuation { continuation in
        Thread.detachNewThread { continuation.resume(returning: onNewThread(body)) }
    }
}

/// Holds a binding weakly (a test's view of when it is freed).
final class WeakBinding: @unchecked Sendable {
    weak var binding: TaskBinding?
}

/// The thread's spare scope binding: a synchronous scope outside any task
/// whose binding nobody else held or read leaves it for the thread's next
/// scope instead of freeing it.
@Suite struct SpareBindingTests {
    /// The address of the calling thread's spare binding, left in place.
    static func spareAddress() -> UnsafeMutableRawPointer? {
        guard let spare = cctx_shim_spare_binding_take() else { return nil }
        // The slot was just emptied: nothing is displaced.
        _ = cctx_shim_spare_binding_put(spare) { Unmanaged<TaskBinding>.fromOpaque($0!).release() }
        return spare
    }

    @Test func anUnreadScopeLeavesItsBindingForTheThreadsNextScope() async {
        let ok = await onNewThreadUntilExit { () -> Bool in
            let v = ContextVar<Int>("spare_next", default: 0)
            var first: UnsafeMutableRawPointer?
            v.withValue(1) { first = TaskBinding.current.map { Unmanaged.passUnretained($0).toOpaque() } }
            let parked = SpareBindingTests.spareAddress()
            var second: UnsafeMutableRawPointer?
            let inner = v.withValue(2) { () -> Int in
                second = TaskBinding.current.map { Unmanaged.passUnretained($0).toOpaque() }
                return v.value!
            }
            let context = Context()
            let ran = try? context.run { v.set(3); return v.value! }
            return first != nil && parked == first && second == first && inner == 2 && ran == 3
                && context[v] == 3 && v.value == 0
        }
        #expect(ok)
    }

    /// The scope's values are released when it ends, not kept by the spare,
    /// also when a value's deinit opens a scope on the same thread then.
    @Test func aParkedBindingKeepsNoValues() async {
        let counter = LifetimeCounter()
        let seen = LockedBox<[Int]>([])
        let ok = await onNewThreadUntilExit { () -> Bool in
            let v = ContextVar<Tracked>("spare_tracked")
            let hook = ContextVar<ScopeInDeinit>("spare_hook")
            let other = ContextVar<Int>("spare_other", default: 0)
            var ok = true
            for round in 0..<100 {
                v.withValue(counter.make(round)) { ok = ok && v.value?.id == round }
                ok = ok && counter.alive == 0
                hook.withValue(ScopeInDeinit(other: other, seen: seen)) { ok = ok && hook.value != nil }
                ok = ok && seen.value.count == round + 1
            }
            // The thread still opens and reads scopes after the reentrant ends.
            ok = ok && v.withValue(counter.make(7)) { v.value?.id } == 7 && other.value == 0
            return ok
        }
        #expect(ok)
        #expect(counter.alive == 0)
        #expect(seen.value == Array(repeating: 42, count: 100))
    }

    /// A binding a task read (and dropped) before the scope ended is not
    /// reused; one a `Task {}` still holds is not either, and the task keeps
    /// reading the value of its scope while the thread runs later scopes.
    @Test func aBindingATaskReadOrHoldsIsNotReused() async {
        let v = ContextVar<Int>("spare_task", default: 0)
        let gate = AsyncGate()
        // The tasks it starts need a thread of the cooperative pool.
        let (readParked, heldParked, held) = await onNewThreadUntilExit { SpareBindingTests.readOrHeld(v, gate) }
        #expect(!readParked)
        #expect(!heldParked)
        await gate.open()
        #expect(await held.value == 6)
    }

    /// The thread side of ``aBindingATaskReadOrHoldsIsNotReused()``.
    static func readOrHeld(_ v: ContextVar<Int>, _ gate: AsyncGate) -> (Bool, Bool, Task<Int, Never>) {
        var address: UnsafeMutableRawPointer?
        v.withValue(5) {
            address = TaskBinding.current.map { Unmanaged.passUnretained($0).toOpaque() }
            let done = DispatchSemaphore(value: 0)
            Task {
                _ = v.value
                done.signal()
            }
            done.wait()
        }
        // The task may still hold the binding or may have dropped it:
        // either way it read it, so it is not the spare.
        let readParked = SpareBindingTests.spareAddress() == address
        var heldAddress: UnsafeMutableRawPointer?
        let task = v.withValue(6) { () -> Task<Int, Never> in
            heldAddress = TaskBinding.current.map { Unmanaged.passUnretained($0).toOpaque() }
            return Task {
                await gate.wait()
                return v.value!
            }
        }
        let heldParked = SpareBindingTests.spareAddress() == heldAddress
        for round in 0..<100 { _ = v.withValue(100 + round) { v.value } }
        return (readParked, heldParked, task)
    }

    /// The thread's spare and its scope binding share one thread-local
    /// block (`cctx_shim_thread_slots`): an inner scope that parks its
    /// binding and takes the spare again leaves the enclosing scope's
    /// binding what the thread reads, at every level.
    @Test func theSpareAndTheThreadsScopeBindingAreSeparateSlots() async {
        let ok = await onNewThreadUntilExit { () -> Bool in
            let v = ContextVar<Int>("spare_slots", default: 0)
            var ok = true
            v.withValue(1) {
                let outer = TaskBinding.threadScope
                ok = ok && outer != nil && outer === TaskBinding.current
                for round in 0..<3 {
                    // An address, not a reference: a reference held past
                    // the scope's end would keep the binding from parking.
                    var inner: UnsafeMutableRawPointer?
                    let read = v.withValue(10 + round) { () -> Int in
                        inner = TaskBinding.threadScope.map { Unmanaged.passUnretained($0).toOpaque() }
                        return v.value!
                    }
                    let parked = SpareBindingTests.spareAddress()
                    ok = ok && read == 10 + round && inner != nil
                        && inner != outer.map { Unmanaged.passUnretained($0).toOpaque() } && parked == inner
                    ok = ok && TaskBinding.threadScope === outer && TaskBinding.current === outer && v.value == 1
                }
            }
            return ok && TaskBinding.threadScope == nil && v.value == 0
        }
        #expect(ok)
    }

    /// A thread's spare is released when the thread exits.
    @Test func aThreadsSpareGoesWithTheThread() async {
        let weak = WeakBinding()
        let parked = await onNewThreadUntilExit { () -> Bool in
            let v = ContextVar<Int>("spare_exit", default: 0)
            var address: UnsafeMutableRawPointer?
            v.withValue(1) {
                weak.binding = TaskBinding.current
                address = TaskBinding.current.map { Unmanaged.passUnretained($0).toOpaque() }
            }
            return SpareBindingTests.spareAddress() == address
        }
        #expect(parked)
        #expect(weak.binding == nil)
    }

    /// A scope that runs in a thread-exit destructor after the spare's own
    /// (a pthread key made later, whose destructor runs after the spare
    /// key's in each round) parks its binding again; that spare goes too
    /// (the put registers the cleanup again, so the exit runs another
    /// round). Before, the slot still read as registered and the binding
    /// stayed in it after the thread had gone.
    @Test func aSpareParkedByALaterThreadExitDestructorGoesToo() async {
        let gone = await onNewThreadUntilExit { () -> Bool in
            // A scope first: the spare's cleanup is registered (its key made).
            LateExitScope.variable.withValue(1) {}
            var key = pthread_key_t()
            guard pthread_key_create(&key, { _ in
                LateExitScope.variable.withValue(2) { LateExitScope.weak.binding = TaskBinding.current }
            }) == 0 else { return false }
            LateExitScope.key.withLock { $0 = key }
            return pthread_setspecific(key, UnsafeRawPointer(bitPattern: 1)) == 0
        }
        #expect(gone)
        #expect(LateExitScope.weak.binding == nil, "the spare parked in a later exit destructor stayed")
        pthread_key_delete(LateExitScope.key.withLock { $0 })
    }
}

/// The state of `aSpareParkedByALaterThreadExitDestructorGoesToo` (its
/// destructor is a C function pointer: it captures nothing).
private enum LateExitScope {
    static let variable = ContextVar<Int>("spare_late_exit", default: 0)
    nonisolated(unsafe) static let weak = WeakBinding()
    static let key = PThreadLocked<pthread_key_t>(pthread_key_t())
}
