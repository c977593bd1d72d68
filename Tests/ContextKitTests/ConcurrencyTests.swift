import CContextCore
import Foundation
import Testing
@testable import ContextKit

/// Tasks: a task sees its own context, never the thread's; withValue and
/// async run across awaits and into child tasks.
@Suite struct ConcurrencyTests {
    /// C code called from tasks may set the pool threads' own contexts;
    /// tasks that run on those threads later must never see those values.
    @Test func tasksNeverSeeTheThreadsContext() async {
        let v = ContextVar<Int>("v")
        // Poison the thread context of every pool thread these tasks land on.
        let poisoned = await withTaskGroup(of: Bool.self) { group in
            for i in 0..<64 {
                group.addTask {
                    let box = ValueBox(variable: v, value: i)
                    let status = box.withOpaquePointer { cctx_var_set(v.handle, $0, nil) }
                    var raw: UnsafeMutableRawPointer?
                    // Same synchronous stretch, same thread: C sees it, Swift does not.
                    return status == CCTX_OK && cctx_var_get(v.handle, &raw) == CCTX_OK && v.value == nil
                }
            }
            return await group.reduce(true) { $0 && $1 }
        }
        #expect(poisoned)
        let seen = await withTaskGroup(of: Int?.self) { group in
            for _ in 0..<200 {
                group.addTask {
                    await Task.yield()
                    return v.value
                }
            }
            return await group.reduce(into: [Int?]()) { $0.append($1) }
        }
        #expect(seen.count == 200)
        #expect(seen.allSatisfy { $0 == nil })
        #expect(v.value == nil)
    }

    @Test func syncRunOnAThreadDoesNotReachTasksOnOtherThreads() async throws {
        let v = ContextVar<Int>("v")
        let ctx = Context()
        // A thread enters ctx and sets v, then waits while a task reads.
        let entered = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            try? ctx.run { () -> Void in
                v.set(1)
                entered.signal()
                release.wait()
            }
        }
        entered.wait()
        let inTask = await Task.detached { v.value }.value
        release.signal()
        #expect(inTask == nil)
    }

    @Test func withValueIsSeenByChildrenButNotDetached() async {
        let v = ContextVar<String>("v", default: "outer")
        await v.withValue("inner") {
            #expect(v.value == "inner")
            #expect(Context.copyCurrent()[v] == "inner")
            async let fromAsyncLet = v.value
            #expect(await fromAsyncLet == "inner")
            let fromGroup = await withTaskGroup(of: String?.self) { group in
                group.addTask { v.value }
                group.addTask {
                    await Task.yield()
                    return v.value
                }
                return await group.reduce(into: [String?]()) { $0.append($1) }
            }
            #expect(fromGroup == ["inner", "inner"])
            #expect(await Task { v.value }.value == "inner")
            #expect(await Task.detached { v.value }.value == "outer")
        }
        #expect(v.value == "outer")
        #expect(Context.copyCurrent()[v] == nil)
    }

    @Test func withValueIsGoneAfterThrowing() async {
        let v = ContextVar<Int>("v")
        await #expect(throws: Boom.self) {
            try await v.withValue(3) {
                await Task.yield()
                #expect(v.value == 3)
                throw Boom()
            }
        }
        #expect(v.value == nil)
    }

    @Test func nestedWithValue() async throws {
        let a = ContextVar<Int>("a")
        let b = ContextVar<Int>("b")
        try await a.withValue(1) {
            try await b.withValue(2) {
                #expect(a.value == 1)
                #expect(b.value == 2)
                try await Task.sleep(nanoseconds: 1_000_000)
                #expect(a.value == 1)
                a.set(10)   // the inner copy is this task's own
                #expect(a.value == 10)
            }
            #expect(a.value == 1)
            #expect(b.value == nil)
        }
    }

    @Test func asyncRunSetResetVisibleAfterEveryAwait() async throws {
        let v = ContextVar<Int>("v")
        let ctx = Context()
        try await ctx.run {
            for i in 0..<50 {
                let token = v.set(i)
                await Task.yield()
                #expect(v.value == i)
                try await Task.sleep(nanoseconds: UInt64.random(in: 0...200_000))
                #expect(v.value == i)
                if i % 2 == 0 {
                    try v.reset(token)
                    await Task.yield()
                    #expect(v.value == (i == 0 ? nil : i - 1))
                }
            }
        }
        #expect(ctx[v] == 49)
    }

    @Test func childTasksSeeValuesSetBeforeThem() async throws {
        let v = ContextVar<Int>("v")
        try await Context().run {
            v.set(1)
            async let child = v.value
            let task = Task { v.value }
            #expect(await child == 1)
            #expect(await task.value == 1)
            // A child's set in a context of its own is not seen by the parent.
            await withTaskGroup(of: Void.self) { group in
                group.addTaskInCopiedContext {
                    v.set(2)
                    #expect(v.value == 2)
                }
            }
            #expect(v.value == 1)
        }
    }

    @Test func sameContextClaimedByTwoTasksIsRefused() async throws {
        let ctx = Context()
        try await ctx.run {
            let refused = await Task.detached { () -> Bool in
                do {
                    try await ctx.run { await Task.yield() }
                    return false
                } catch {
                    return (error as? ContextError) == .contextAlreadyEntered
                }
            }.value
            #expect(refused)
            // And nested in the same task, sync or async:
            #expect(throws: ContextError.contextAlreadyEntered) { try ctx.run {} }
            await #expect(throws: ContextError.contextAlreadyEntered) { try await ctx.run { await Task.yield() } }
        }
        #expect(!ctx.isEntered)
        try await ctx.run { await Task.yield() }  // free again
    }

    @Test func asyncRunErrorsPropagateAndTheClaimEnds() async {
        let ctx = Context()
        let v = ContextVar<Int>("v")
        await #expect(throws: Boom.self) {
            try await ctx.run {
                v.set(5)
                await Task.yield()
                throw Boom()
            }
        }
        #expect(!ctx.isEntered)
        #expect(ctx[v] == 5)
        #expect(v.value == nil)
    }

    @Test func syncRunInsideATaskUsesTheTasksContext() async throws {
        let v = ContextVar<Int>("v")
        let ctx = Context()
        try ctx.run { v.set(4) }   // a task claims it: no thread enters
        #expect(ctx[v] == 4)
        #expect(v.value == nil)
    }

    @Test func runInsideATaskGroupBodyAroundAddTask() async throws {
        let v = ContextVar<Int>("v")
        let values = try await withThrowingTaskGroup(of: Int?.self) { group in
            try Context().run { () -> Void in
                v.set(8)
                group.addTask { v.value }
            }
            return try await group.reduce(into: [Int?]()) { $0.append($1) }
        }
        #expect(values == [8])
    }
}
