import Testing
@testable import ContextKit

/// Spawn helpers: a new task in a copy of the spawning context taken at the
/// call (asyncio.create_task).
@Suite struct SpawnTests {
    @Test func taskSeesASnapshotTakenAtTheCall() async throws {
        let v = ContextVar<String>("v")
        try await Context().run {
            v.set("before")
            let gate = AsyncGate()
            let task = Context.task { () -> [String?] in
                let first = v.value
                await gate.wait()
                let second = v.value       // the parent's later set is not seen
                v.set("child")             // the copy is the task's own
                return [first, second, v.value]
            }
            v.set("after")
            await gate.open()
            #expect(await task.value == ["before", "before", "child"])
            #expect(v.value == "after")     // the child's set is not seen
        }
    }

    @Test func throwingTaskPropagatesErrors() async {
        let v = ContextVar<Int>("v")
        let task = Context.task { () throws -> Int in
            v.set(1)
            throw Boom()
        }
        await #expect(throws: Boom.self) { try await task.value }
    }

    @Test func taskFromAThreadCopiesTheThreadsContext() async {
        let v = ContextVar<Int>("v")
        let task = onNewThread { () -> Task<Int?, Never> in
            v.set(5)
            return Context.task { v.value }
        }
        #expect(await task.value == 5)
    }

    @Test func taskGroupChildrenGetCopiesTakenAtAddTask() async throws {
        let v = ContextVar<Int>("v")
        try await Context().run {
            v.set(1)
            let values = try await withThrowingTaskGroup(of: Int?.self) { group in
                group.addTaskInCopiedContext { v.value }
                v.set(2)
                group.addTaskInCopiedContext {
                    let seen = v.value
                    v.set(100)
                    return seen
                }
                return try await group.reduce(into: [Int?]()) { $0.append($1) }
            }
            #expect(values.sorted { ($0 ?? 0) < ($1 ?? 0) } == [1, 2])
            #expect(v.value == 2)
        }
    }

    @Test func detachedTaskHasNoContextButContextTaskDoes() async {
        let v = ContextVar<Int>("v")
        await v.withValue(3) {
            #expect(await Task.detached { v.value }.value == nil)
            #expect(await Context.task { v.value }.value == 3)
        }
    }
}

/// A one-shot gate for ordering steps between tasks.
actor AsyncGate {
    private var isOpen = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func wait() async {
        if isOpen { return }
        await withCheckedContinuation { waiters.append($0) }
    }

    func open() {
        isOpen = true
        waiters.forEach { $0.resume() }
        waiters.removeAll()
    }
}
