@testable import ContextKit
import Synchronization
import Testing

// Expectations inside raw threads are collected into a `Failures` list and
// checked on the test's own thread: Swift Testing attributes issues through
// task-local state that a raw pthread does not carry.

@Suite("ThreadLocal: a typed threading.local", .serialized)
struct ThreadLocalTests {
    @Test("each of 8 threads sees only its own value")
    func perThreadIsolation() {
        let local = ThreadLocal { -1 }
        let failures = Failures()
        let meet = ThreadRendezvous(8)
        runOnJoinedThreads(8) { i in
            failures.check(local.value == -1, "thread \(i) saw another thread's value")
            local.value = i
            meet.arriveAndWait() // all 8 have written before anyone re-reads
            for _ in 0..<100 {
                failures.check(local.value == i, "thread \(i) lost its value")
            }
        }
        #expect(failures.list.isEmpty, "\(failures.list)")
        #expect(local.value == -1) // the main thread never wrote
    }

    @Test("the initial value is computed once per thread, on the first read")
    func initialiserRunsOncePerThread() {
        let calls = Atomic<Int>(0)
        let failures = Failures()
        let local = ThreadLocal { calls.add(1, ordering: .relaxed).newValue }
        runOnJoinedThreads(8) { _ in
            let first = local.value
            failures.check(local.value == first && local.value == first, "value changed")
        }
        #expect(failures.list.isEmpty, "\(failures.list)")
        #expect(calls.load(ordering: .relaxed) == 8)
    }

    @Test("a write before any read skips the initialiser")
    func writeBeforeReadSkipsInitialiser() {
        let calls = Atomic<Int>(0)
        let failures = Failures()
        let local = ThreadLocal { () -> String in
            calls.add(1, ordering: .relaxed)
            return "initial"
        }
        runOnJoinedThread {
            local.value = "written"
            failures.check(local.value == "written", "write lost")
        }
        #expect(failures.list.isEmpty, "\(failures.list)")
        #expect(calls.load(ordering: .relaxed) == 0)
        #expect(local.value == "initial")
        #expect(calls.load(ordering: .relaxed) == 1)
    }

    @Test("a thread's value is released when the thread exits")
    func threadExitReleasesValue() {
        let local = ThreadLocal<LocalTracked?> { nil }
        let before = LocalTracked.live.load(ordering: .sequentiallyConsistent)
        let replacedEarly = Atomic<Int>(0)
        runOnJoinedThreads(8) { i in
            local.value = LocalTracked(i)
            let live = LocalTracked.live.load(ordering: .sequentiallyConsistent)
            local.value = LocalTracked(i + 100) // the first one is released here
            if LocalTracked.live.load(ordering: .sequentiallyConsistent) <= live { replacedEarly.add(1, ordering: .relaxed) }
        }
        #expect(LocalTracked.live.load(ordering: .sequentiallyConsistent) == before)
        #expect(replacedEarly.load(ordering: .relaxed) >= 1)
    }

    @Test("releasing the ThreadLocal releases its value in every live thread")
    func releasingLocalReleasesAllThreads() {
        let before = LocalTracked.live.load(ordering: .sequentiallyConsistent)
        let holder = PThreadLocked<ThreadLocal<LocalTracked?>?>(ThreadLocal { nil })
        let other = ThreadLocal { 0 }
        let stored = ThreadRendezvous(9)
        let released = ThreadRendezvous(9)
        let liveWhileStored = Atomic<Int>(0)
        let liveAfterRelease = Atomic<Int>(-1)
        let finals = PThreadLocked<[Int]>([])
        runOnJoinedThreads(9) { i in
            if i < 8 {
                holder.withLock { $0!.value = LocalTracked(i) }
                stored.arriveAndWait()
                released.arriveAndWait()
                // Still alive and busy with another local.
                for n in 0..<1000 { other.value = n }
                finals.withLock { $0.append(other.value) }
            } else {
                stored.arriveAndWait()
                liveWhileStored.store(LocalTracked.live.load(ordering: .sequentiallyConsistent), ordering: .sequentiallyConsistent)
                holder.withLock { $0 = nil } // last reference: every thread's value goes
                liveAfterRelease.store(LocalTracked.live.load(ordering: .sequentiallyConsistent), ordering: .sequentiallyConsistent)
                released.arriveAndWait()
            }
        }
        #expect(liveWhileStored.load(ordering: .sequentiallyConsistent) == before + 8)
        #expect(liveAfterRelease.load(ordering: .sequentiallyConsistent) == before)
        #expect(finals.withLock { $0 } == Array(repeating: 999, count: 8))
    }

    @Test("10,000 thread-locals alive at once, far more than PTHREAD_KEYS_MAX")
    func tenThousandLocals() {
        let locals = (0..<10_000).map { i in ThreadLocal { i } }
        for (i, local) in locals.enumerated() { #expect(local.value == i) }
        for local in locals { local.value += 1 }
        let failures = Failures()
        runOnJoinedThreads(4) { t in
            for (i, local) in locals.enumerated() where i % 4 == t {
                failures.check(local.value == i, "stale value in local \(i)")
                local.value = -i
            }
        }
        #expect(failures.list.isEmpty, "\(failures.list.prefix(5))")
        #expect(locals.enumerated().allSatisfy { $0.element.value == $0.offset + 1 })
    }
}
