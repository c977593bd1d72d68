import Foundation
import Synchronization
import Testing
@testable import ContextKit

#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` on a new POSIX thread (outside any Swift task, so ContextKit
/// uses the thread's own context) and waits until the thread has exited —
/// its thread-exit cleanup included.
func onNewThread<R: Sendable>(_ body: @escaping @Sendable () -> R) -> R {
    let result = PThreadLocked<R?>(nil)
    runOnNewThreadAndJoin {
        let value = body()
        result.withLock { $0 = value }
    }
    return result.withLock { $0! }
}

/// The closure `runOnThreadsAndJoin` hands to each of its threads.
final class ThreadJob: Sendable {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}

/// Runs each body on its own POSIX thread, all at once, and waits until
/// every thread has exited.
func runOnThreadsAndJoin(_ bodies: [@Sendable () -> Void]) {
    let jobs = bodies.map(ThreadJob.init)
    var threads: [pthread_t] = []
    for job in jobs {
        var thread = pthread_t()
        let status = pthread_create(&thread, nil, { raw in
            Unmanaged<ThreadJob>.fromOpaque(raw!).takeUnretainedValue().body()
            return nil
        }, Unmanaged.passUnretained(job).toOpaque())
        precondition(status == 0, "pthread_create failed")
        threads.append(thread)
    }
    for thread in threads { pthread_join(thread, nil) }
    withExtendedLifetime(jobs) {}
}

/// Runs `body` on a new POSIX thread and waits until that thread has exited.
func runOnNewThreadAndJoin(_ body: @escaping @Sendable () -> Void) {
    runOnThreadsAndJoin([body])
}

/// True when the calling code runs outside any Swift task.
func isOutsideTask() -> Bool {
    withUnsafeCurrentTask { $0 == nil }
}

/// Counts how many `Tracked` objects it made are still alive.
final class LifetimeCounter: Sendable {
    let made = Atomic<Int>(0)
    let released = Atomic<Int>(0)
    var alive: Int { made.load(ordering: .sequentiallyConsistent) - released.load(ordering: .sequentiallyConsistent) }
    var releasedCount: Int { released.load(ordering: .sequentiallyConsistent) }

    func make(_ id: Int = 0) -> Tracked { Tracked(id, counter: self) }
}

/// A value whose `deinit` counts (swift-atomics' `LifetimeTracked`).
final class Tracked: Sendable, CustomStringConvertible {
    let id: Int
    let counter: LifetimeCounter
    init(_ id: Int, counter: LifetimeCounter) {
        self.id = id
        self.counter = counter
        counter.made.add(1, ordering: .sequentiallyConsistent)
    }
    deinit { counter.released.add(1, ordering: .sequentiallyConsistent) }
    var description: String { "Tracked(\(id))" }
}

/// Waits (polling) until `condition` holds or `seconds` pass; returns it.
func eventually(seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while !condition() {
        if Date() > deadline { return false }
        usleep(1_000)
    }
    return true
}

/// As `eventually`, for async code: polls without blocking its thread (a
/// blocked thread of the cooperative pool can starve the very tasks the
/// condition waits for on a 2-core machine).
func eventuallyYielding(seconds: Double, _ condition: @Sendable () -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while !condition() {
        if Date() > deadline { return false }
        try? await Task.sleep(for: .milliseconds(1))
    }
    return true
}

/// A scale factor for the large tests: CONTEXTKIT_TEST_SCALE (percent,
/// default 100).
func scaled(_ n: Int) -> Int {
    let percent = ProcessInfo.processInfo.environment["CONTEXTKIT_TEST_SCALE"].flatMap(Int.init) ?? 100
    return max(1, n * percent / 100)
}

/// A value behind a lock, for tests that collect results from many threads
/// or tasks.
final class LockedBox<T: Sendable>: Sendable {
    private let storage: PThreadLocked<T>
    init(_ value: T) { storage = PThreadLocked(value) }
    var value: T { storage.withLock { $0 } }
    func mutate(_ body: (inout T) -> Void) { storage.withLock { body(&$0) } }
}

/// For the body of an exit test (`#expect(processExitsWith: .success)`):
/// runs `scenario` in a detached task, which no scope or task-local value
/// of the caller reaches, and checks that it returns `expected`, value by
/// value. A wrong value or a thrown error records an issue naming what was
/// expected and what came, then ends the process with status 1. The issue
/// is what tells which value was wrong: the parent test reports the issues
/// its exit test records, but not the child process's output.
func expectInDetachedTask<each T: Equatable & Sendable>(
    _ expected: repeat each T,
    sourceLocation: SourceLocation = #_sourceLocation,
    scenario: sending @escaping () async throws -> (repeat each T)
) async {
    let seen: (repeat each T)
    do {
        seen = try await Task.detached { try await scenario() }.value
    } catch {
        Issue.record("expected \((repeat each expected)), threw \(error)", sourceLocation: sourceLocation)
        exit(1)
    }
    for (wanted, got) in repeat (each expected, each seen) {
        if wanted != got {
            Issue.record("expected \((repeat each expected)), got \(seen)", sourceLocation: sourceLocation)
            exit(1)
        }
    }
}

/// As `expectInDetachedTask`, with `scenario` inside `run` of a new
/// `Context` in that task.
func expectInDetachedRun<each T: Equatable & Sendable>(
    _ expected: repeat each T,
    sourceLocation: SourceLocation = #_sourceLocation,
    scenario: sending @escaping () async throws -> (repeat each T)
) async {
    await expectInDetachedTask(repeat each expected, sourceLocation: sourceLocation) {
        try await Context().run { try await scenario() }
    }
}
