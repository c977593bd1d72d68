import CContextCore
import Foundation
import Testing
@testable import ContextKit

/// `Context.currentChainDescription`: where each context of the running
/// code's chain came from.
@Suite struct IntrospectionTests {
    @Test func taskChainNamesOriginsAndOwners() async throws {
        let requestID = ContextVar<Int>("request_id", default: 0)
        let text = try await Context().run {
            await requestID.withValue(7) { () async -> String in
                await Task.yield()
                return Context.currentChainDescription
            }
        }
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.count == 3)
        #expect(lines[0] == "task context chain (innermost first):")
        #expect(lines[1] == "  #0 withValue(request_id), owned by this task: <Context {request_id: 7}>")
        #expect(lines[2] == "  #1 run, owned by this task: <Context {}>")
    }

    @Test func childAndSpawnedTasksShowTheirParents() async {
        let v = ContextVar<Int>("v", default: 0)
        await v.withValue(1) {
            let child = await Task { Context.currentChainDescription }.value
            #expect(child.contains("#0 withValue(v), inherited from an enclosing task: <Context {v: 1}>"))
            let spawned = await Context.task { Context.currentChainDescription }.value
            #expect(spawned.contains("#0 Context.task, owned by this task: <Context {v: 1}>"))
            // The helper's task starts from its copy alone: it keeps no link
            // to the spawner's bindings (they would keep values alive).
            #expect(!spawned.contains("#1"))
            let grouped = await withTaskGroup(of: String.self) { group in
                group.addTaskInCopiedContext { Context.currentChainDescription }
                return await group.next()!
            }
            #expect(grouped.contains("#0 addTaskInCopiedContext, owned by this task"))
        }
        let detached = await Task.detached { Context.currentChainDescription }.value
        #expect(detached.contains("no context of its own"))
    }

    @Test func endedScopeIsMarked() async {
        let v = ContextVar<Int>("v", default: 0)
        let gate = AsyncGate()
        let task = v.withValue(1) {
            Task { () -> String in
                await gate.wait()
                return Context.currentChainDescription
            }
        }
        await gate.open()
        #expect(await task.value.contains("#0 withValue(v), scope ended"))
    }

    /// A binding's link to its enclosing binding is unretained: `Task {}`
    /// copies walk the chain while the two scopes they inherited end, round
    /// after round, and the walk never follows a link to a binding that is
    /// gone (ASan and TSan builds catch one). A walk made after both scopes
    /// ended lists the inherited binding and nothing beyond it: the outer
    /// binding's values are not kept for the copy.
    @Test func chainWalksRaceTheEndOfTheScopesTheyInherited() async throws {
        let v = ContextVar<Int>("intro_race", default: 0)
        let counter = LifetimeCounter()
        let rounds = scaled(2_000)
        var racing: [Task<String, Never>] = []
        for round in 0..<rounds {
            let task = try await v.withValue(round) { () async throws -> Task<String, Never> in
                try await Context().run { () async -> Task<String, Never> in
                    Task { Context.currentChainDescription }
                }
            }
            racing.append(task)
        }
        var complete = 0
        for task in racing where await task.value.contains("#0 run, ") { complete += 1 }
        #expect(complete == rounds)

        let gate = AsyncGate()
        let late = LockedBox<Task<String, Never>?>(nil)
        let tracked = ContextVar<Tracked>("intro_tracked")
        try tracked.withValue(counter.make(1)) {
            try Context().run {
                late.mutate { $0 = Task { () -> String in
                    await gate.wait()
                    return Context.currentChainDescription
                } }
            }
        }
        // The outer scope's value went with its binding: nothing holds it.
        #expect(counter.alive == 0)
        await gate.open()
        let text = await late.value!.value
        #expect(text.contains("#0 run, scope ended"))
        #expect(!text.contains("#1"))
    }

    @Test func threadChainListsSwiftScopesCEntersAndTheBase() {
        let text = onNewThread { () -> [String] in
            let before = Context.currentChainDescription
            let user = ContextVar<String>("user")
            var fromC: OpaquePointer?
            precondition(cctx_context_new(&fromC) == CCTX_OK)
            precondition(cctx_context_enter(fromC!) == CCTX_OK)
            let inside = try! Context().run {
                user.withValue("ann") { Context.currentChainDescription }
            }
            precondition(cctx_context_exit(fromC!) == CCTX_OK)
            cctx_context_release(fromC)
            return [before, inside]
        }
        #expect(text[0].contains("no context used on this thread yet"))
        let lines = text[1].split(separator: "\n").map(String.init)
        #expect(lines == [
            "thread context chain (innermost first):",
            "  #0 withValue(user) (Swift): <Context {user: \"ann\"}>",
            "  #1 run (Swift): <Context {}>",
            "  #2 entered from C: <Context {}>",
            "  #3 thread base context: <Context {}>",
        ])
    }

    @Test func threadHelperShowsItsCopy() async {
        let v = ContextVar<Int>("v", default: 0)
        let text = await v.withValue(3) {
            await withCheckedContinuation { (done: CheckedContinuation<String, Never>) in
                Thread.detachNewThreadInCopiedContext { done.resume(returning: Context.currentChainDescription) }
            }
        }
        #expect(text.contains("#0 Thread.detachNewThreadInCopiedContext (Swift): <Context {v: 3}>"))
        #expect(text.contains("#1 thread base context"))
    }

    @Test func currentContextFromCMatchesTheThreadsRun() {
        let same = onNewThread { () -> Bool in
            let ctx = Context()
            return try! ctx.run {
                ctx.withUnsafeHandle { $0 == cctx_context_current() }
            }
        }
        #expect(same)
    }
}
