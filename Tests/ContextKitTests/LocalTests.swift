@testable import ContextKit
import Synchronization
import Testing

@Suite("Local: attribute-style threading.local", .serialized)
struct LocalTests {
    @Test("attributes are per thread; nil deletes; dictionary is this thread's")
    func attributesArePerThread() {
        let local = Local()
        local.name = "main"
        local.count = 1
        #expect(local.name as? String == "main")
        let failures = Failures()
        runOnJoinedThread {
            failures.check(local.name == nil, "saw main's attribute")
            failures.check(local.dictionary.isEmpty, "dictionary not empty")
            local.name = "worker"
            failures.check(local.dictionary.count == 1, "dictionary count")
            failures.check(local.dictionary["name"] as? String == "worker", "own attribute")
        }
        #expect(failures.list.isEmpty, "\(failures.list)")
        #expect(local.name as? String == "main")
        #expect(local.dictionary.keys.sorted() == ["count", "name"])
        local.count = nil
        #expect(local.count == nil)
        #expect(local.dictionary.keys.sorted() == ["name"])
    }

    @Test("setUp runs once per thread: now on the creating thread, first access elsewhere")
    func setUpRunsOncePerThread() {
        let calls = Atomic<Int>(0)
        let local = Local { l in
            l.initialised = calls.add(1, ordering: .sequentiallyConsistent).newValue
        }
        #expect(calls.load(ordering: .sequentiallyConsistent) == 1)
        #expect(local.initialised as? Int == 1)
        let perThread = PThreadLocked<[Int]>([])
        let failures = Failures()
        runOnJoinedThreads(8) { _ in
            let first = local.initialised as? Int
            local.other = true
            failures.check(local.initialised as? Int == first, "setUp ran twice")
            perThread.withLock { $0.append(first ?? -1) }
        }
        #expect(failures.list.isEmpty, "\(failures.list)")
        #expect(calls.load(ordering: .sequentiallyConsistent) == 9)
        #expect(Set(perThread.withLock { $0 }) == Set(2...9))
        #expect(local.initialised as? Int == 1)
    }

    @Test("8 threads each keep their own attributes while all are alive")
    func eightThreadsIsolation() {
        let local = Local()
        let meet = ThreadRendezvous(8)
        let bad = Atomic<Int>(0)
        runOnJoinedThreads(8) { i in
            local.value = i
            meet.arriveAndWait()
            for _ in 0..<1000 where local.value as? Int != i {
                bad.add(1, ordering: .relaxed)
            }
        }
        #expect(bad.load(ordering: .relaxed) == 0)
        #expect(local.value == nil)
    }

    @Test("values are released at thread exit and when the Local goes away")
    func lifetimes() {
        let before = AttributeTracked.live.load(ordering: .sequentiallyConsistent)
        do {
            let local = Local()
            runOnJoinedThreads(4) { i in local.tracked = AttributeTracked(i) }
            #expect(AttributeTracked.live.load(ordering: .sequentiallyConsistent) == before)
            local.tracked = AttributeTracked(99)
            #expect(AttributeTracked.live.load(ordering: .sequentiallyConsistent) == before + 1)
            withExtendedLifetime(local) {}
        }
        #expect(AttributeTracked.live.load(ordering: .sequentiallyConsistent) == before)
    }
}

/// Counted like `LocalTracked`, but only by the test above: suites run in
/// parallel, and ThreadLocal's tests make and drop `LocalTracked` values
/// while this one compares counts.
private final class AttributeTracked: Sendable {
    static let live = Atomic<Int>(0)
    let id: Int
    init(_ id: Int) {
        self.id = id
        Self.live.add(1, ordering: .sequentiallyConsistent)
    }
    deinit { Self.live.subtract(1, ordering: .sequentiallyConsistent) }
}
