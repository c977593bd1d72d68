import Testing
@testable import ContextKit

/// A task keeps alive only what it can read; bindings die with their task.
@Suite struct TaskLifetimeTests {
    /// `v.withValue(big) { v.withValue(small) { Task { … } } }`: the task can
    /// only read `small`, so `big` is freed once the scopes end, while the
    /// task still runs.
    @Test func innerScopeTaskDoesNotKeepShadowedValue() async {
        let bigs = LifetimeCounter()
        let smalls = LifetimeCounter()
        let v = ContextVar<Tracked>("v")
        let (go, open) = AsyncStream<Void>.makeStream()
        var task: Task<Int?, Never>?
        do {
            let big = bigs.make(1)
            let small = smalls.make(2)
            v.withValue(big) {
                v.withValue(small) {
                    task = Task {
                        for await _ in go { break }
                        return v.value?.id
                    }
                }
            }
        }
        #expect(await eventuallyYielding(seconds: 30) { bigs.alive == 0 })
        #expect(smalls.alive == 1)
        open.yield()
        #expect(await task?.value == 2)
    }

    /// 200 generations of `Context.task`, each setting a value and spawning
    /// the next: earlier values are freed while the last one runs.
    @Test func respawningTasksFreeEarlierGenerations() async {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("v")
        let (go, open) = AsyncStream<Void>.makeStream()
        let (done, finished) = AsyncStream<Int?>.makeStream()
        @Sendable func generation(_ i: Int) {
            Context.task {
                v.set(counter.make(i))
                if i < 200 {
                    generation(i + 1)
                } else {
                    for await _ in go { break }
                    finished.yield(v.value?.id)
                }
            }
        }
        generation(1)
        // The last generation's value and, at most, one still finishing.
        #expect(await eventuallyYielding(seconds: 60) { counter.releasedCount >= 198 })
        open.yield()
        var last: Int??
        for await id in done { last = id; break }
        #expect(last == 200)
        #expect(await eventuallyYielding(seconds: 30) { counter.alive == 0 })
    }

    /// 10,000 detached tasks that set, then end, leave no value alive: the
    /// binding a task pushes on its first write dies with the task.
    @Test func detachedTasksThatSetLeaveNothingAlive() async {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("v")
        let n = scaled(10_000)
        let mismatches = await withTaskGroup(of: Int.self) { group in
            for i in 0..<n {
                group.addTask {
                    await Task.detached {
                        v.set(counter.make(i))
                        await Task.yield()
                        return v.value?.id == i ? 0 : 1
                    }.value
                }
            }
            return await group.reduce(0, +)
        }
        #expect(mismatches == 0)
        #expect(counter.made.load(ordering: .relaxed) == n)
        #expect(await eventuallyYielding(seconds: 60) { counter.alive == 0 }, "still alive: \(counter.alive)")
    }

    /// A value's `deinit` that uses the library, released when the task
    /// that set it ends.
    @Test func deinitUsingTheLibraryWhenTaskEnds() async {
        let other = ContextVar<Int>("other", default: 0)
        let seen = LockedBox<[Int]>([])
        final class UsesLibrary: Sendable {
            let other: ContextVar<Int>
            let seen: LockedBox<[Int]>
            init(_ other: ContextVar<Int>, _ seen: LockedBox<[Int]>) { self.other = other; self.seen = seen }
            deinit {
                let token = other.set(5)
                seen.mutate { $0.append(other.value!) }
                try? other.reset(token)
            }
        }
        let v = ContextVar<UsesLibrary>("v")
        await Task.detached { v.set(UsesLibrary(other, seen)) }.value
        #expect(await eventuallyYielding(seconds: 30) { seen.value == [5] })
    }
}
