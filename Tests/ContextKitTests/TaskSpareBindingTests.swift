import CContextKitShims
import Testing
@testable import ContextKit

/// The spare binding in tasks: a scope in a task (synchronous or async)
/// whose binding nothing else held or read leaves it as the spare of the
/// thread the scope ends on, for that thread's next scope in any task or
/// none (`TaskBinding.park`); a binding a `Task {}` copy or a group child
/// still holds, one a child task read, and one a chain walk reached are
/// never reused, and whoever holds one reads its own scope's values.
@Suite struct TaskSpareBindingTests {
    static func address(_ binding: TaskBinding?) -> UnsafeMutableRawPointer? {
        binding.map { Unmanaged.passUnretained($0).toOpaque() }
    }

    /// The binding of the innermost scope, as an address.
    static var currentAddress: UnsafeMutableRawPointer? { address(TaskBinding.current) }

    @Test func anUnreadScopeInATaskLeavesItsBindingForTheThreadsNextScope() async throws {
        let v = ContextVar<Int>("task_spare_next", default: 0)
        // Synchronous in a task: the scope starts and ends on this thread.
        let first = v.withValue(1) { Self.currentAddress }
        #expect(first != nil)
        #expect(SpareBindingTests.spareAddress() == first)
        // No suspension since: the async scope starts on the same thread and
        // takes the spare; its body does not suspend, so it also ends there.
        let (second, inner) = await v.withValue(2) { () async -> (UnsafeMutableRawPointer?, Int) in
            (Self.currentAddress, v.value!)
        }
        #expect(second == first)
        #expect(inner == 2)
        #expect(SpareBindingTests.spareAddress() == first)
        // A body that suspends may end on another thread: the binding is
        // that thread's spare then (this code runs on it until it suspends).
        let suspended = await v.withValue(3) { () async -> UnsafeMutableRawPointer? in
            await Task.yield()
            return Self.currentAddress
        }
        #expect(SpareBindingTests.spareAddress() == suspended)
        // A reused binding serves its new scope: `run` writes and reads its
        // own context, and the task's place is right again after each end.
        let context = Context()
        let ran = try await context.run { () async -> Int in
            v.set(4)
            await Task.yield()
            return v.value!
        }
        #expect(ran == 4)
        #expect(context[v] == 4)
        #expect(v.value == 0)
        #expect(v.withValue(5) { v.value } == 5)
        #expect(await v.withValue(6) { () async -> Int? in v.value } == 6)
        #expect(v.value == 0)
    }

    /// A binding a child task read before the scope ended (and let go of,
    /// as a structured child does) is not reused: its reads are ordered
    /// before the reuse only through the runtime (see `TaskBinding.park`).
    /// The same for a binding a chain walk reached.
    @Test func aBindingAChildReadOrAWalkReachedIsNotReused() async {
        let v = ContextVar<Int>("task_spare_read", default: 0)
        // `async let`: links to the scope's task-local items, holds no
        // reference, and has ended when the scope ends.
        let readByAsyncLet = await v.withValue(1) { () async -> UnsafeMutableRawPointer? in
            async let child = v.value
            #expect(await child == 1)
            return Self.currentAddress
        }
        #expect(SpareBindingTests.spareAddress() != readByAsyncLet)
        // A group made inside the scope: its children end with it.
        let readByGroup = await v.withValue(2) { () async -> UnsafeMutableRawPointer? in
            let sum = await withTaskGroup(of: Int.self) { group in
                for _ in 0..<4 { group.addTask { v.value! } }
                return await group.reduce(0, +)
            }
            #expect(sum == 8)
            return Self.currentAddress
        }
        #expect(SpareBindingTests.spareAddress() != readByGroup)
        // A `Task {}` that read and has completed.
        let readByTask = await v.withValue(3) { () async -> UnsafeMutableRawPointer? in
            #expect(await Task { v.value! }.value == 3)
            return Self.currentAddress
        }
        #expect(SpareBindingTests.spareAddress() != readByTask)
        let walked = await v.withValue(4) { () async -> UnsafeMutableRawPointer? in
            #expect(Context.currentChainDescription.contains("withValue"))
            return Self.currentAddress
        }
        #expect(SpareBindingTests.spareAddress() != walked)
        // An unread scope still parks afterwards (the test can tell).
        let unread = await v.withValue(5) { () async -> UnsafeMutableRawPointer? in Self.currentAddress }
        #expect(SpareBindingTests.spareAddress() == unread)
    }

    /// A `Task {}` and a child of a group made outside the scope copy the
    /// scope's task-local items, hold its binding and read after the scope
    /// ended: the binding is not reused, and they read the values that
    /// scope ended with while the task runs many later scopes (sync and
    /// async, `run` and `withValue`) on the same threads.
    @Test func aBindingATaskOrAGroupChildHoldsIsNotReused() async throws {
        let v = ContextVar<Int>("task_spare_held", default: 0)
        let gate = AsyncGate()
        let (task, heldAddress) = await v.withValue(6) {
            () async -> (Task<Int, Never>, UnsafeMutableRawPointer?) in
            let task = Task {
                await gate.wait()
                return v.value!
            }
            return (task, Self.currentAddress)
        }
        #expect(SpareBindingTests.spareAddress() != heldAddress)
        let fromGroup = try await withThrowingTaskGroup(of: Int.self) { group in
            let context = Context()
            let groupAddress = try await context.run { () async -> UnsafeMutableRawPointer? in
                v.set(7)
                group.addTask {
                    await gate.wait()
                    return v.value!
                }
                return Self.currentAddress
            }
            #expect(SpareBindingTests.spareAddress() != groupAddress)
            // The context the group child read from is written again by a
            // later `run` of it: the child reads what the scope ended with.
            try await context.run { () async in v.set(70) }
            for round in 0..<100 {
                _ = await v.withValue(100 + round) { () async -> Int? in v.value }
                _ = v.withValue(200 + round) { v.value }
                _ = try await Context().run { () async -> Int? in
                    v.set(300 + round)
                    return v.value
                }
            }
            await gate.open()
            return try await group.next()!
        }
        #expect(fromGroup == 7)
        #expect(await task.value == 6)
    }

    /// The scope's values go when the scope in a task ends, not with the
    /// spare, also when a value's deinit opens a scope on the same thread
    /// (which parks its own binding while the first one parks).
    @Test func aParkedBindingOfATaskKeepsNoValues() async {
        let counter = LifetimeCounter()
        let seen = LockedBox<[Int]>([])
        let v = ContextVar<Tracked>("task_spare_tracked")
        let hook = ContextVar<ScopeInDeinit>("task_spare_hook")
        let other = ContextVar<Int>("task_spare_other", default: 0)
        for round in 0..<100 {
            let id = await v.withValue(counter.make(round)) { () async -> Int? in
                await Task.yield()
                return v.value?.id
            }
            #expect(id == round)
            #expect(counter.alive == 0)
            await hook.withValue(ScopeInDeinit(other: other, seen: seen)) { () async in
                #expect(hook.value != nil)
            }
            #expect(seen.value.count == round + 1)
        }
        #expect(await v.withValue(counter.make(7)) { () async -> Int? in v.value?.id } == 7)
        #expect(other.value == 0)
        #expect(counter.alive == 0)
        #expect(seen.value == Array(repeating: 42, count: 100))
    }

    /// Many tasks open nested async and synchronous scopes (bindings move
    /// between the threads' spares), some escaping to a `Task {}` that reads
    /// later, with values whose deinit opens scopes: every read sees its own
    /// scope's value, and every value is released.
    @Test func manyTasksReuseBindingsAcrossThreads() async throws {
        let counter = LifetimeCounter()
        let seen = LockedBox<[Int]>([])
        let v = ContextVar<Int>("task_spare_stress", default: 0)
        let tracked = ContextVar<Tracked>("task_spare_stress_tracked")
        let hook = ContextVar<ScopeInDeinit>("task_spare_stress_hook")
        let other = ContextVar<Int>("task_spare_stress_other", default: 0)
        let rounds = 100
        let failures = try await withThrowingTaskGroup(of: Int.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    var failures = 0
                    var escaped: [(Int, Task<Int?, Never>)] = []
                    for round in 0..<rounds {
                        let mine = worker * 10_000 + round
                        let inner = try await Context().run { () async -> Int in
                            v.set(mine)
                            return await tracked.withValue(counter.make(mine)) { () async -> Int in
                                await Task.yield()
                                let sync = v.withValue(mine + 1) { v.value! }
                                let nested = await hook.withValue(ScopeInDeinit(other: other, seen: seen)) {
                                    () async -> Int in
                                    await v.withValue(mine + 2) { () async -> Int in
                                        if round % 10 == 0 {
                                            escaped.append((mine + 2, Task { await Task.yield(); return v.value }))
                                        }
                                        await Task.yield()
                                        return v.value!
                                    }
                                }
                                guard sync == mine + 1, nested == mine + 2, tracked.value?.id == mine else {
                                    return -1
                                }
                                return v.value!
                            }
                        }
                        if inner != mine || v.value != 0 { failures += 1 }
                    }
                    for (expected, task) in escaped where await task.value != expected { failures += 1 }
                    return failures
                }
            }
            return try await group.reduce(0, +)
        }
        #expect(failures == 0)
        #expect(counter.alive == 0)
        #expect(seen.value.count == 8 * rounds)
        #expect(seen.value.allSatisfy { $0 == 42 })
    }
}
