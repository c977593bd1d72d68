import Foundation
import Synchronization
@testable import ContextKit

#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` on a new POSIX thread and waits until the thread has fully
/// exited — key destructors included — so tests can assert what thread
/// exit released.
func runOnJoinedThread(_ body: @escaping @Sendable () -> Void) {
    final class Job { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
    var thread = pthread_t()
    let job = Unmanaged.passRetained(Job(body)).toOpaque()
    let rc = pthread_create(&thread, nil, { pointer in
        Unmanaged<Job>.fromOpaque(pointer!).takeRetainedValue().body()
        return nil
    }, job)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    pthread_join(thread, nil)
}

/// Runs `body(i)` on `count` threads at once and joins them all.
func runOnJoinedThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    final class Job { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
    var threads: [pthread_t] = []
    for i in 0..<count {
        var thread = pthread_t()
        let job = Unmanaged.passRetained(Job { body(i) }).toOpaque()
        let rc = pthread_create(&thread, nil, { pointer in
            Unmanaged<Job>.fromOpaque(pointer!).takeRetainedValue().body()
            return nil
        }, job)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        threads.append(thread)
    }
    for thread in threads { pthread_join(thread, nil) }
}

/// A value whose instances are counted, to prove each is released once.
final class LocalTracked: Sendable {
    static let live = Atomic<Int>(0)
    let id: Int
    init(_ id: Int) {
        self.id = id
        Self.live.add(1, ordering: .sequentiallyConsistent)
    }
    deinit { Self.live.subtract(1, ordering: .sequentiallyConsistent) }
}

/// A countdown that lets threads wait for each other (all alive at once).
final class ThreadRendezvous: Sendable {
    private let remaining: Atomic<Int>
    init(_ count: Int) { remaining = Atomic(count) }
    func arriveAndWait() {
        remaining.subtract(1, ordering: .sequentiallyConsistent)
        while remaining.load(ordering: .sequentiallyConsistent) > 0 { sched_yield() }
    }
}

/// Failed checks made on raw threads, read back on the test's thread.
final class Failures: Sendable {
    private let storage = PThreadLocked<[String]>([])
    func check(_ condition: Bool, _ message: @autoclosure () -> String) {
        if !condition {
            let text = message()
            storage.withLock { $0.append(text) }
        }
    }
    var list: [String] { storage.withLock { $0 } }
}
