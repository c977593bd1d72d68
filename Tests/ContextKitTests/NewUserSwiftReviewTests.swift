import CContextCore
import Foundation
import Synchronization
import Testing
@testable import ContextKit

#if canImport(Glibc)
import Glibc
#endif

/// A Swift server engineer adopting ContextKit from its docs, writing the
/// Python idioms they know (`t = v.set(x); try: … finally: v.reset(t)`) in
/// async Swift. Each scenario's expected values are what its asyncio twin
/// prints (the twin is quoted in the comment); each runs in a
/// `Task.detached` (a fresh task in an empty context, as each Python case
/// starts in a fresh `asyncio.run`).
@Suite struct NewUserSwiftReviewTests {
    // MARK: Python-style set/reset middleware

    /// A middleware chain in the Python style, across awaits:
    ///
    ///     async def middleware(val, nxt):
    ///         t = v.set(val)
    ///         try: return await nxt()
    ///         finally: v.reset(t)
    ///
    /// asyncio: the handler reads "b", the outer middleware "a" after the
    /// inner one returns, the task the default afterwards.
    @Test func setResetMiddlewareAcrossAwaits() async {
        let v = ContextVar<String>("nu_mw", default: "-")
        @Sendable func middleware(_ value: String, _ next: () async -> Void) async {
            let t = v.set(value)
            defer { #expect((try? v.reset(t)) != nil, "reset of the middleware's own token failed") }
            await Task.yield()
            await next()
        }
        let seen = await Task.detached { () async -> [String] in
            let log = LockedBox<[String]>([])
            await middleware("a") {
                await middleware("b") {
                    await Task.yield()
                    log.mutate { $0.append(v.value!) }
                }
                log.mutate { $0.append(v.value!) }
            }
            log.mutate { $0.append(v.value!) }
            return log.value
        }.value
        #expect(seen == ["b", "a", "-"])
    }

    /// The same middleware inside a server's request scope (`Context.run`
    /// of a fresh context per request), with the handler fanning out to
    /// `async let` and a task group: the children read the request's
    /// values (set before they were created).
    @Test func setResetMiddlewareInARequestScopeWithChildren() async throws {
        let v = ContextVar<String>("nu_mw2", default: "-")
        let seen = try await Task.detached { () async throws -> [String] in
            try await Context().run { () async throws -> [String] in
                let t = v.set("req")
                defer { try? v.reset(t) }
                async let a = v.value!
                let fromGroup = await withTaskGroup(of: String.self) { group in
                    group.addTask { await Task.yield(); return v.value! }
                    group.addTaskInCopiedContext { v.value! }
                    var out: [String] = []
                    for await s in group { out.append(s) }
                    return out.sorted()
                }
                return [await a] + fromGroup
            }
        }.value
        #expect(seen == ["req", "req", "req"])
    }

    // MARK: Tokens in the wrong place

    /// asyncio: a token made in `ctx.run` resets in a later `ctx.run` of
    /// the same context, in another task:
    ///
    ///     ctx = Context(); t = ctx.run(v.set, 1)
    ///     async def other(): ctx.run(v.reset, t); return ctx.get(v, "missing")
    ///     await create_task(other())        # "missing"
    @Test func tokenFromAnEarlierRunResetsInALaterRunOfTheSameContext() async throws {
        let v = ContextVar<Int>("nu_tok_ctx")
        let context = Context()
        let token = try await Task.detached { try context.run { v.set(1) } }.value
        let after = try await Task.detached { () throws -> Int? in
            try context.run { try v.reset(token) }
            return context[v]
        }.value
        #expect(after == nil)
        #expect(token.isUsed)
    }

    /// asyncio: a child task resetting its parent's token raises
    /// `ValueError` and the parent keeps its value (`['ValueError', 1]`).
    /// Here the child (`async let`, `Task {}`, group child) reads the
    /// parent's own scope binding, the very context the token was made in:
    /// the reset must still throw and change nothing.
    @Test func childResettingItsParentsTokenThrowsAndChangesNothing() async throws {
        let v = ContextVar<Int>("nu_tok_child", default: 0)
        let results = try await Task.detached { () async throws -> [String] in
            try await Context().run { () async -> [String] in
                let t = v.set(1)
                @Sendable func attempt() -> String {
                    do { try v.reset(t); return "reset" } catch { return "\(error)" }
                }
                async let fromAsyncLet = attempt()
                let fromTask = await Task { attempt() }.value
                let fromGroup = await withTaskGroup(of: String.self) { group in
                    group.addTask { attempt() }
                    return await group.next()!
                }
                let first = await fromAsyncLet
                return [first, fromTask, fromGroup, "\(v.value!)", "\(t.isUsed)"]
            }
        }.value
        let e = "\(ContextError.tokenFromDifferentContext)"
        #expect(results == [e, e, e, "1", "false"])
    }

    /// asyncio: a token made inside a scope (`copy_context().run`) and
    /// reset after it raises `ValueError`, value unchanged. Same for a
    /// token made before a `withValue` and reset inside it; and a token
    /// used twice raises `RuntimeError` (`tokenAlreadyUsed`) first.
    @Test func tokensOutsideTheirScopeThrowTheDocumentedErrors() async throws {
        let v = ContextVar<Int>("nu_tok_scope", default: 0)
        let results = await Task.detached { () async -> [String] in
            var out: [String] = []
            func attempt(_ t: Token<Int>) -> String {
                do { try v.reset(t); return "reset" } catch { return "\(error)" }
            }
            let inner = v.withValue(5) { v.set(6) }
            out.append(attempt(inner))
            out.append("\(v.value!)")
            let outer = v.set(1)
            let insideResult = await v.withValue(2) { () async -> String in
                await Task.yield()
                return attempt(outer) + "/\(v.value!)"
            }
            out.append(insideResult)
            out.append("\(v.value!)")
            out.append(attempt(outer))
            out.append(attempt(outer))
            out.append("\(v.value!)")
            return out
        }.value
        let wrongContext = "\(ContextError.tokenFromDifferentContext)"
        #expect(results == [wrongContext, "0", wrongContext + "/2", "1", "reset",
                            "\(ContextError.tokenAlreadyUsed)", "0"])
    }

    /// A token made by a `Context.task`'s copy, the task gone, reset in the
    /// spawner: `tokenFromDifferentContext`, nothing changes. And a token
    /// made on a thread, reset in a task (and the reverse).
    @Test func tokensFromEndedTasksAndFromThreadsThrow() async throws {
        let v = ContextVar<Int>("nu_tok_gone", default: 0)
        let results = await Task.detached { () async -> [String] in
            v.set(3)
            let t = await Context.task { v.set(4) }.value
            var out: [String] = []
            do { try v.reset(t); out.append("reset") } catch { out.append("\(error)") }
            out.append("\(v.value!)")
            let threadToken = onNewThread { v.set(9) }
            do { try v.reset(threadToken); out.append("reset") } catch { out.append("\(error)") }
            let taskToken = v.set(5)
            let onThread = onNewThread { () -> String in
                do { try v.reset(taskToken); return "reset" } catch { return "\(error)" }
            }
            out.append(onThread)
            out.append("\(v.value!)")
            return out
        }.value
        let e = "\(ContextError.tokenFromDifferentContext)"
        #expect(results == [e, "3", e, e, "5"])
    }

    // MARK: Many tasks

    /// asyncio: 3,000 gathered tasks each set, yield, read their own value,
    /// reset and read the default: all `True`.
    @Test func thousandsOfTasksEachSetTheirOwnValue() async {
        let v = ContextVar<Int>("nu_many", default: 0)
        let w = ContextVar<Int>("nu_many_w", default: 0)
        let n = scaled(3000)
        let bad = await Task.detached { () async -> Int in
            await withTaskGroup(of: Int.self) { group in
                for i in 1...n {
                    group.addTask {
                        var errors = 0
                        let t = v.set(i)
                        await Task.yield()
                        if v.value != i { errors += 1 }
                        await w.withValue(-i) { () async in
                            v.set(i + 1)
                            await Task.yield()
                            async let child = v.value! + w.value!
                            if await child != 1 { errors += 1 }
                        }
                        if v.value != i || w.value != 0 { errors += 1 }
                        if (try? v.reset(t)) == nil { errors += 1 }
                        if v.value != 0 { errors += 1 }
                        return errors
                    }
                }
                var total = 0
                for await e in group { total += e }
                return total
            }
        }.value
        #expect(bad == 0)
    }

    // MARK: Scopes, copies, cancellation

    /// asyncio: after an unscoped `v.set(1)`, a task created inside
    /// `copy_context().run` that sets `w = 2` reads `(1, 2)`; outside, the
    /// task still reads `v = 1, w = 0`. Here `withValue` around `Task {}`
    /// (it copies what the task sees, unscoped values included). An
    /// `async let` child is the documented exception 2: the task's unscoped
    /// `v = 1` does not reach it, so its own `withValue` copies `v = 0`
    /// (asyncio would read 1).
    @Test func unscopedSetThenWithValueChildSeesBoth() async {
        let v = ContextVar<Int>("nu_us_v", default: 0)
        let w = ContextVar<Int>("nu_us_w", default: 0)
        let seen = await Task.detached { () async -> [Int] in
            v.set(1)
            let child = w.withValue(2) { Task { () async -> [Int] in await Task.yield(); return [v.value!, w.value!] } }
            async let grandchild = w.withValue(3) { () async -> [Int] in
                async let inner = [v.value!, w.value!]
                return await inner
            }
            return await child.value + (await grandchild) + [v.value!, w.value!]
        }.value
        #expect(seen == [1, 2, 0, 3, 1, 0])
    }

    /// asyncio: `c = copy_context()` after `v.set(1)`, run in another task,
    /// reads 1 and sets 2 in `c`; the spawner still reads 1: `(1, 2, 1)`.
    @Test func copyOfAnUnscopedBindingRunsInAnotherTask() async throws {
        let v = ContextVar<Int>("nu_copy", default: 0)
        let seen = try await Task.detached { () async throws -> [Int] in
            v.set(1)
            let c = Context.copyCurrent()
            let r = try await Task.detached { () async throws -> Int in
                try await c.run { () async -> Int in
                    let a = v.value!
                    v.set(2)
                    await Task.yield()
                    return a
                }
            }.value
            return [r, c[v]!, v.value!]
        }.value
        #expect(seen == [1, 2, 1])
    }

    /// asyncio: a task running in `ctx` that sets 5 and is cancelled while
    /// suspended leaves `ctx[v] == 5`; the spawner reads the default. Here
    /// the `run` body throws `CancellationError`: the context is left (not
    /// entered, runnable again) and keeps the write.
    @Test func cancelledRunLeavesItsContextAndKeepsItsWrites() async throws {
        let v = ContextVar<Int>("nu_cancel", default: 0)
        let context = Context()
        let (started, markStarted) = AsyncStream<Void>.makeStream()
        let task = Task.detached {
            try await context.run { () async throws in
                v.set(5)
                markStarted.yield()
                try await Task.sleep(for: .seconds(600))
            }
        }
        for await _ in started { break }
        task.cancel()
        await #expect(throws: CancellationError.self) { try await task.value }
        #expect(context[v] == 5)
        #expect(!context.isEntered)
        let again = try await Task.detached { try context.run { v.value! } }.value
        #expect(again == 5)
        #expect(v.value == 0)
    }

    /// Actor reentrancy: many tasks call one actor whose method sets the
    /// variable Python-style and suspends (another caller's call runs on
    /// the actor meanwhile): each call reads its own caller's value.
    actor RequestHandler {
        let v: ContextVar<Int>
        init(_ v: ContextVar<Int>) { self.v = v }
        func handle(_ id: Int) async -> Bool {
            let t = v.set(id)
            defer { try? v.reset(t) }
            await Task.yield()
            let inner = await v.withValue(id * 10) { () async -> Int in
                await Task.yield()
                return v.value!
            }
            await Task.yield()
            return v.value == id && inner == id * 10
        }
    }

    @Test func reentrantActorCallsEachSeeTheirCallersValue() async {
        let v = ContextVar<Int>("nu_actor", default: 0)
        let handler = RequestHandler(v)
        let n = scaled(1000)
        let ok = await Task.detached { () async -> Int in
            await withTaskGroup(of: Bool.self) { group in
                for i in 1...n {
                    group.addTask {
                        let before = v.value
                        let result = await handler.handle(i)
                        return result && v.value == before
                    }
                }
                var count = 0
                for await r in group where r { count += 1 }
                return count
            }
        }.value
        #expect(ok == n)
    }

    /// A `Context.run` inside an actor method keeps the actor's isolation
    /// (the docs: `run` and the body are `nonisolated(nonsending)`), and
    /// a set made in a nested `MainActor.run` hop (same task) lands in it.
    actor Counter {
        var count = 0
        func bump(_ v: ContextVar<Int>) async throws -> [Int] {
            try await Context().run { () async throws -> [Int] in
                count += 1      // compiles only if the body is actor-isolated
                v.set(count)
                await MainActor.run { _ = v.set(v.value! + 100) }
                return [v.value!]
            } + [v.value ?? -1]
        }
    }

    @Test func runInsideAnActorAndAMainActorHop() async throws {
        let v = ContextVar<Int>("nu_actor_run")
        let counter = Counter()
        let seen = try await Task.detached { try await counter.bump(v) }.value
        #expect(seen == [101, -1])
    }

    // MARK: The mapping

    /// A context is a Python mapping: `for (variable, value) in ctx`,
    /// `ctx[var]`, `ctx.get(defaulted)`, `variables`, `values`, `count`,
    /// in a task after unscoped sets, and in a child (which cannot see a
    /// `.notInherited` value, nor copy it back).
    @Test func iterationAndLookupAfterUnscopedSets() async {
        let a = ContextVar<Int>("nu_iter_a")
        let b = DefaultedContextVar<String>("nu_iter_b", default: "-")
        let hidden = ContextVar<Int>("nu_iter_hidden", inheritance: .notInherited)
        let seen = await Task.detached { () async -> [String] in
            a.set(1)
            b.set("x")
            hidden.set(7)
            let mine = Context.copyCurrent()
            let names = mine.map { "\($0.variable.name)=\($0.value)" }.sorted()
            let child = await Context.task { () -> [String] in
                let copy = Context.copyCurrent()
                return copy.map { "\($0.variable.name)=\($0.value)" }.sorted()
                    + ["\(copy.count)", "\(copy[hidden] as Int?)", "\(hidden.value as Int?)"]
            }.value
            return names + ["|\(mine.count)|\(mine.get(b))|\(mine[b.variable]!)|"] + child
        }.value
        #expect(seen == ["nu_iter_a=1", "nu_iter_b=x", "nu_iter_hidden=7", "|3|x|x|",
                         "nu_iter_a=1", "nu_iter_b=x", "2", "nil", "nil"])
    }

    // MARK: Helpers from a task

    /// The thread and queue helpers, called in a task after an unscoped
    /// `set` (docs: they copy what the caller sees at the call, unscoped
    /// values included, `.notInherited` ones left out).
    @Test func threadAndQueueHelpersCopyATasksUnscopedValues() async {
        let v = ContextVar<Int>("nu_helpers", default: 0)
        let hidden = ContextVar<Int>("nu_helpers_hidden", default: 0, inheritance: .notInherited)
        let seen = await Task.detached { () async -> [Int] in
            v.set(4)
            hidden.set(8)
            let fromThread = await withCheckedContinuation { (done: CheckedContinuation<[Int], Never>) in
                Thread.detachNewThreadInCopiedContext { done.resume(returning: [v.value!, hidden.value!]) }
            }
            let fromQueue = await withCheckedContinuation { (done: CheckedContinuation<[Int], Never>) in
                DispatchQueue.global().asyncInCopiedContext { done.resume(returning: [v.value!, hidden.value!]) }
            }
            return fromThread + fromQueue + [v.value!, hidden.value!]
        }.value
        #expect(seen == [4, 0, 4, 0, 4, 8])
    }

    // MARK: Doc examples that state their output in comments only

    /// README, "Introspection": the chain the comment under the example
    /// shows.
    @Test func readmeIntrospectionExamplePrintsWhatItsCommentSays() async {
        let requestID = ContextVar<Int>("request_id")
        let text = await Task.detached {
            await Context.task {
                requestID.withValue(7) { Context.currentChainDescription }
            }.value
        }.value
        #expect(text == """
            task context chain (innermost first):
              #0 withValue(request_id), owned by this task: <Context {request_id: 7}>
              #1 Context.task, owned by this task: <Context {}>
            """)
    }

    /// The doc comments' examples of `Context`, `DefaultedContextVar`,
    /// `ContextVar` and `Local`, with the values their comments state.
    @Test func docCommentExamplesGiveTheValuesTheirCommentsState() async {
        let values = onNewThread { () -> [String] in
            var out: [String] = []
            // Context
            let requestID = ContextVar<Int>("request_id", default: 0)
            let context = Context()
            try! context.run { requestID.set(7) }
            out.append("\(context[requestID]!)")       // 7
            out.append("\(requestID.value!)")          // 0
            // ContextVar
            let token = requestID.set(7)
            out.append("\(try! requestID.get())")      // 7
            try! requestID.reset(token)
            out.append("\(try! requestID.get())")      // 0
            // DefaultedContextVar
            let rid = DefaultedContextVar("request_id", default: "-")
            func log(_ message: String) -> String { "[\(rid.value)] \(message)" }
            out.append(log("idle"))                    // [-] idle
            out.append(rid.withValue("r-42") { log("handling") })   // [r-42] handling
            // Local
            let local = Local()
            local.user = "ann"
            out.append("\(local.user as? String ?? "nil")")  // ann
            out.append(onNewThread { "\(local.user as? String ?? "nil")" })  // nil on other threads
            local.user = nil
            out.append("\(local.user as? String ?? "nil")")  // deleted
            return out
        }
        #expect(values == ["7", "0", "7", "0", "[-] idle", "[r-42] handling", "ann", "nil", "nil"])
    }

    // MARK: .notInherited through a child's first write

    /// A child that inherited a scope with a `.notInherited` value cannot
    /// read it (docs table); its first `set` of *another* variable makes
    /// its private copy, which must not bring the hidden value back, and a
    /// `set`+`reset` of the hidden variable itself returns to "no value"
    /// (its token's old value is MISSING), not to the parent's.
    @Test func childsFirstWriteDoesNotRevealANotInheritedValue() async throws {
        let v = ContextVar<Int>("nu_ni_v", default: 0)
        let hidden = ContextVar<Int>("nu_ni_hidden", default: 0, inheritance: .notInherited)
        let seen = try await Task.detached { () async throws -> [String] in
            try await Context().run { () async throws -> [String] in
                hidden.set(7)
                @Sendable func childView() throws -> [String] {
                    var out = ["\(hidden.value!)"]
                    v.set(1)                                // the child's first write
                    out.append("\(hidden.value!)")
                    out.append("\(Context.copyCurrent()[hidden] as Int?)")
                    let t = hidden.set(8)
                    out.append("\(t.oldValue as Int?)")
                    try hidden.reset(t)
                    out.append("\(hidden.value!)")
                    return out
                }
                async let a = childView()
                let b = try await Task { try childView() }.value
                let c = try await withThrowingTaskGroup(of: [String].self) { group in
                    group.addTask { try childView() }
                    return try await group.next()!
                }
                return try await a + b + c + ["\(hidden.value!)"]
            }
        }.value
        let child = ["0", "0", "nil", "nil", "0"]
        #expect(seen == child + child + child + ["7"])
    }

    // MARK: Token errors: Python's order, on every path, and nothing changes

    /// CPython checks used, then variable, then context. Each path a
    /// `reset` can take here (thread, a task's own scope, its unscoped
    /// binding, a child reading an inherited binding) must agree.
    @Test func tokenErrorOrderOnEveryPath() async throws {
        let v = ContextVar<Int>("nu_order_v", default: 0)
        let w = ContextVar<Int>("nu_order_w", default: 0)
        // A used token of v, from another context.
        let used: Token<Int> = onNewThread { let t = v.set(1); try! v.reset(t); return t }
        // An unused token of v, from another context.
        let foreign: Token<Int> = onNewThread { v.set(1) }
        @Sendable func attempts() -> [String] {
            func r(_ body: () throws -> Void) -> String {
                do { try body(); return "ok" } catch { return "\(error)" }
            }
            return [r { try w.reset(used) }, r { try v.reset(used) }, r { try w.reset(foreign) }, r { try v.reset(foreign) }]
        }
        let expected = ["\(ContextError.tokenAlreadyUsed)", "\(ContextError.tokenAlreadyUsed)",
                        "\(ContextError.tokenFromDifferentVariable)", "\(ContextError.tokenFromDifferentContext)"]
        #expect(onNewThread { attempts() } == expected)
        let inTasks = try await Task.detached { () async throws -> [[String]] in
            let bare = attempts()                        // no binding at all
            v.set(2)
            let unscoped = attempts()
            let scoped = try await Context().run { () async -> [String] in
                v.set(3)
                let own = attempts()
                async let child = attempts()
                return own + (await child)
            }
            return [bare, unscoped, scoped, [("\(v.value!)")]]
        }.value
        #expect(inTasks == [expected, expected, expected + expected, ["2"]])
    }

    /// A failed `reset` in a child that only inherited its parent's
    /// binding changes nothing, not even where the child reads from: it
    /// still reads its parent's binding (its chain is unchanged, and it
    /// sees a value the parent sets afterwards in the same scope,
    /// exception 1), as before the failed call.
    @Test func failedResetInAChildLeavesItReadingItsParentsBinding() async throws {
        let v = ContextVar<Int>("nu_failreset", default: 0)
        let seen = try await Task.detached { () async throws -> [String] in
            try await Context().run { () async -> [String] in
                let parentToken = v.set(1)
                let (go, open) = AsyncStream<Void>.makeStream()
                let (set, didSet) = AsyncStream<Void>.makeStream()
                async let child: [String] = {
                    let before = Context.currentChainDescription
                    let outcome: String
                    do { try v.reset(parentToken); outcome = "reset" } catch { outcome = "\(error)" }
                    let after = Context.currentChainDescription
                    open.yield(())
                    for await _ in set { break }
                    return [outcome, before == after ? "same chain" : "chain changed:\n\(before)\n\(after)", "\(v.value!)"]
                }()
                for await _ in go { break }
                v.set(5)
                didSet.yield(())
                return await child
            }
        }.value
        #expect(seen == ["\(ContextError.tokenFromDifferentContext)", "same chain", "5"])
    }

    // MARK: Threads and tasks sharing contexts

    /// A `Task {}` created by synchronous thread code inside `ctx.run`
    /// reads that context (docs: tasks created inside the body read it);
    /// after the thread's scope ends and a later scope of the same context
    /// writes 2, it still reads 1 ("After the scope").
    @Test func taskCreatedOnAThreadInsideRunReadsThatScope() async throws {
        let v = ContextVar<Int>("nu_thread_task", default: 0)
        let context = Context()
        let (go, open) = AsyncStream<Void>.makeStream()
        let task: Task<[Int], Never> = onNewThread {
            try! context.run {
                v.set(1)
                return Task { () async -> [Int] in
                    let first = v.value!
                    for await _ in go { break }
                    return [first, v.value!]
                }
            }
        }
        onNewThread { try! context.run { _ = v.set(2) } }
        open.yield(())
        #expect(await task.value == [1, 1])
        #expect(context[v] == 2)
    }

    /// A context a task is in cannot be entered by a thread, and the
    /// reverse; the failed `run` changes nothing, and both run it later.
    @Test func threadsAndTasksCannotEnterEachOthersContext() async throws {
        let v = ContextVar<Int>("nu_cross", default: 0)
        let context = Context()
        let (inside, markInside) = AsyncStream<Void>.makeStream()
        let (leave, markLeave) = AsyncStream<Void>.makeStream()
        let holder = Task.detached {
            try await context.run { () async in
                v.set(1)
                markInside.yield(())
                for await _ in leave { break }
            }
        }
        for await _ in inside { break }
        let fromThread = onNewThread { () -> String in
            do { try context.run { v.set(99) }; return "entered" } catch { return "\(error)" }
        }
        #expect(fromThread == "\(ContextError.contextAlreadyEntered)")
        #expect(context[v] == 1)
        markLeave.yield(())
        try await holder.value
        // The thread waits for a task: the test's task suspends meanwhile
        // (`onNewThread` would block a thread of the cooperative pool,
        // which the task may need on a 2-core machine).
        let threadHolds = await withCheckedContinuation { (done: CheckedContinuation<String, Never>) in
            Thread.detachNewThread {
                let outcome = try! context.run { () -> String in
                    v.set(2)
                    let semaphore = DispatchSemaphore(value: 0)
                    let result = LockedBox("")
                    Task.detached {
                        do { try context.run { _ = v.set(98) }; result.mutate { $0 = "entered" } } catch { result.mutate { $0 = "\(error)" } }
                        semaphore.signal()
                    }
                    semaphore.wait()
                    return result.value
                }
                done.resume(returning: outcome)
            }
        }
        #expect(threadHolds == "\(ContextError.contextAlreadyEntered)")
        #expect(context[v] == 2)
    }

    // MARK: Values are released

    /// Values set by many short tasks (`Task.detached`, `Task {}`,
    /// `Context.task`, group children, `withValue`) are all released once
    /// the tasks end.
    @Test func valuesSetByEndedTasksAreReleased() async {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("nu_release")
        let n = scaled(300)
        await Task.detached {
            for i in 0..<n {
                await Task.detached { v.set(counter.make(i)); await Task.yield() }.value
                await Task { _ = v.set(counter.make(i)) }.value
                await Context.task { _ = v.set(counter.make(i)) }.value
                await withTaskGroup(of: Void.self) { group in
                    group.addTask { v.set(counter.make(i)) }
                    group.addTaskInCopiedContext { v.set(counter.make(i)) }
                }
                await v.withValue(counter.make(i)) { () async in _ = v.set(counter.make(i)) }
            }
        }.value
        #expect(counter.made.load(ordering: .sequentiallyConsistent) == 7 * n)
        let released = await eventuallyYielding(seconds: 30) { counter.alive == 0 }
        #expect(released, "\(counter.alive) values still alive")
    }

    // MARK: A model-checked random workload

    /// Thousands of concurrent tasks, each running a random program of the
    /// operations a server's code uses — `set`, `reset` (right and wrong
    /// tokens), `withValue` sync and async, `run` of a new context and of
    /// a copy, `async let`, `Task {}`, `Context.task`, yields — and
    /// checking every read against a model of the documented semantics.
    /// Every mismatch is counted with a description.
    @Test func randomProgramsAgreeWithTheModel() async {
        let vars = [ContextVar<Int>("nu_m0"), ContextVar<Int>("nu_m1"), ContextVar<Int>("nu_m2")]
        let n = scaled(1500)
        let failures = LockedBox<[String]>([])
        await withTaskGroup(of: Void.self) { group in
            for seed in 0..<n {
                group.addTask {
                    await Task.detached {
                        var program = ModelProgram(seed: UInt64(seed) &+ 1, vars: vars)
                        await program.run(depth: 0, budget: 40)
                        if let failure = program.failures.first {
                            failures.mutate { $0.append("seed \(seed): \(failure)") }
                        }
                    }.value
                }
            }
        }
        #expect(failures.value.isEmpty, "\(failures.value.count) programs failed; first: \(failures.value.prefix(3))")
    }

    // MARK: threading.local

    /// `Local { setUp }` runs `setUp` once per thread (Python's subclass
    /// `__init__`): a deleted attribute stays deleted. Releasing a `Local`
    /// or a `ThreadLocal` releases every thread's values, also those of a
    /// thread still running (docs: "all threads' attributes are released
    /// when the `Local` is released").
    @Test func localsReleaseEveryThreadsValuesWhileThreadsRun() {
        let counter = LifetimeCounter()
        let setUps = Atomic<Int>(0)
        let holder = LockedBox<(Local, ThreadLocal<Tracked>)?>((
            Local { l in
                setUps.add(1, ordering: .relaxed)
                l.x = 0
            },
            ThreadLocal { counter.make(-1) }))
        let entered = DispatchSemaphore(value: 0)
        let finish = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        let seen = LockedBox<[String]>([])
        Thread.detachNewThread {
            do {
                let (local, typed) = holder.value!
                let before = "\(local.x as? Int ?? -1)"
                local.x = nil
                let afterDelete = "\(local.x as? Int ?? -1)"
                local.t = counter.make(1)
                _ = typed.value
                seen.mutate { $0 = [before, afterDelete] }
            }
            entered.signal()
            finish.wait()      // the thread lives on, holding no reference to the locals
            done.signal()
        }
        entered.wait()
        #expect(seen.value == ["0", "-1"])
        #expect(setUps.load(ordering: .relaxed) == 2)
        do {
            let (local, typed) = holder.value!
            local.t = counter.make(2)
            _ = typed.value
        }
        #expect(counter.alive == 4)
        holder.mutate { $0 = nil }          // the last references to both locals
        #expect(counter.alive == 0, "\(counter.alive) values still alive after the locals were released")
        finish.signal()
        done.wait()
    }

    // MARK: Watchers, as docs/concurrency.md's table says

    /// The events a task's scopes send, and the context each carries: the
    /// one entered; at the end, the enclosing scope's, `nil` with no scope
    /// left, or the task's unscoped binding's (also after a later scope). A child that only inherits
    /// sends nothing. In a process of its own (watchers are process-wide).
    @Test func watcherEventsOfATasksScopes() async {
        let result = await #expect(processExitsWith: .success, observing: [\.standardOutputContent]) {
            let v = ContextVar<Int>("nu_watch", default: 0)
            let names = PThreadLocked<[UInt: String]>([:])
            let keep = PThreadLocked<[Context]>([])
            @Sendable func key(_ context: Context?) -> UInt {
                context.map { UInt(bitPattern: $0.withUnsafeHandle { $0 }) } ?? 0
            }
            @Sendable func remember(_ label: String) {
                Context.withCurrentUnsafeHandle { handle, _ in
                    // Kept alive to the end, so that no later context
                    // reuses the address.
                    let kept = Context(retaining: handle)
                    names.withLock { $0[UInt(bitPattern: handle)] = label }
                    keep.withLock { $0.append(kept) }
                }
            }
            let events = PThreadLocked<[(ContextEvent, UInt)]>([])
            let ctx = Context(), ctx2 = Context(), ctx3 = Context()
            names.withLock {
                $0[UInt(bitPattern: ctx.withUnsafeHandle { $0 })] = "ctx"
                $0[UInt(bitPattern: ctx2.withUnsafeHandle { $0 })] = "ctx2"
                $0[UInt(bitPattern: ctx3.withUnsafeHandle { $0 })] = "ctx3"
            }
            let watcher = try! Context.addWatcher { event, context in
                if event == .switched { return }
                let k = key(context)
                events.withLock { $0.append((event, k)) }
            }
            await Task.detached {
                try! await ctx.run { () async in
                    await v.withValue(1) { () async in remember("W") }
                }
                v.set(5)
                remember("U")
                try! await ctx2.run { () async in }
                try! await ctx3.run { () async in
                    async let child: Void = { () async in
                        await Task.yield()
                        v.set(6)     // the child's own unscoped binding
                        remember("childU")
                        await v.withValue(7) { () async in remember("W2") }
                    }()
                    await child
                }
            }.value
            watcher.cancel()
            // Named at the end: a scope's context is remembered inside it,
            // after its `entered` event.
            let known = names.withLock { $0 }
            for (event, k) in events.withLock({ $0 }) { print(event, k == 0 ? "nil" : known[k] ?? "?") }
        }
        let lines = result.map { String(decoding: $0.standardOutputContent, as: UTF8.self) } ?? ""
        #expect(lines == """
            entered ctx
            entered W
            exited ctx
            exited nil
            entered ctx2
            exited U
            entered ctx3
            entered W2
            exited childU
            exited U

            """)
    }
    // MARK: Newer task APIs

    /// `group.addImmediateTask` (SE-0472) runs the child on the calling
    /// thread until it suspends, inside the parent's synchronous call; a
    /// task with an executor preference, and a custom-executor actor. Each
    /// child reads the parent's scope values, writes privately, and the
    /// parent reads its own values before and after (asyncio twin: each
    /// `create_task` child sets privately, the parent keeps its value).
    @Test func immediateChildrenAndExecutorPreferences() async throws {
        let v = ContextVar<Int>("nu_immediate", default: 0)
        let w = ContextVar<Int>("nu_immediate_w", default: 0)
        let seen = try await Task.detached { () async throws -> [Int] in
            try await Context().run { () async -> [Int] in
                v.set(1)
                var out: [Int] = []
                let fromGroup = await withTaskGroup(of: [Int].self) { group in
                    for i in 0..<20 {
                        group.addImmediateTask {
                            let before = v.value!
                            v.set(100 + i)                 // private, before any suspension
                            let mine = v.value!
                            await Task.yield()
                            return [before, mine == 100 + i ? 1 : 0, v.value! == 100 + i ? 1 : 0]
                        }
                        // The parent, on the same thread right after the child ran inline.
                        out.append(v.value!)
                        w.set(i)
                        out.append(w.value!)
                    }
                    var all: [Int] = []
                    for await r in group { all += r }
                    return all
                }
                #expect(fromGroup == Array(repeating: [1, 1, 1], count: 20).flatMap { $0 })
                let preferred = await Task(executorPreference: globalConcurrentExecutor) { () async -> Int in
                    v.set(7)
                    await Task.yield()
                    return v.value!
                }.value
                let scoped = await withTaskExecutorPreference(globalConcurrentExecutor) { () async -> Int in
                    await Task.yield()
                    return v.value!
                }
                return out.suffix(2) + [preferred, scoped, v.value!, w.value!]
            }
        }.value
        #expect(seen == [1, 19, 7, 1, 1, 19])
    }

    /// An actor on its own serial executor (a dispatch queue): its method
    /// does the Python-style set/reset around awaits; callers' values
    /// never leak into one another or back to the caller.
    final class QueueExecutor: SerialExecutor {
        let queue = DispatchQueue(label: "nu.queue-actor")
        func enqueue(_ job: consuming ExecutorJob) {
            let job = UnownedJob(job)
            queue.async { job.runSynchronously(on: self.asUnownedSerialExecutor()) }
        }
    }

    actor QueueActor {
        let executor = QueueExecutor()
        nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }
        func handle(_ v: ContextVar<Int>, _ id: Int) async -> Bool {
            let before = v.value
            let t = v.set(id)
            await Task.yield()
            let ok = v.value == id
            try? v.reset(t)
            // Synchronous code on the queue's thread, outside the task's
            // reach: the queue's thread context is not the task's.
            return ok && v.value == before
        }
    }

    @Test func customExecutorActorKeepsEachCallersValue() async {
        let v = ContextVar<Int>("nu_queue_actor", default: 0)
        let actor = QueueActor()
        let n = scaled(500)
        let ok = await Task.detached { () async -> Int in
            await v.withValue(-1) { () async -> Int in
                await withTaskGroup(of: Bool.self) { group in
                    for i in 1...n {
                        group.addTask { await actor.handle(v, i) && v.value == -1 }
                    }
                    var count = 0
                    for await r in group where r { count += 1 }
                    return count
                }
            }
        }.value
        #expect(ok == n)
    }
    // MARK: Nothing stays alive beyond what can be read

    /// docs/concurrency.md: "a `v.withValue(small)` nested in
    /// `v.withValue(big)` holds a map in which `small` replaced `big`, so a
    /// `Task {}` started inside keeps only `small`" — and the same for a
    /// `Context.run` of a copy in which the task set `small`, and for a
    /// `Task {}` that outlives both scopes.
    @Test func aTaskStartedInANestedScopeKeepsOnlyWhatItCanRead() async {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("nu_small_big")
        let (go, open) = AsyncStream<Void>.makeStream()
        let task = await Task.detached { () async -> Task<Int, Never> in
            await v.withValue(counter.make(1)) { () async -> Task<Int, Never> in
                await v.withValue(counter.make(2)) { () async -> Task<Int, Never> in
                    Task {
                        for await _ in go { break }
                        return v.value!.id
                    }
                }
            }
        }.value
        // Both scopes have ended; the task still runs, holding `small`.
        #expect(counter.alive == 1, "alive \(counter.alive): `big` outlived the scope it was bound in")
        open.yield(())
        #expect(await task.value == 2)
        #expect(await eventuallyYielding(seconds: 30) { counter.alive == 0 })
    }

    /// docs/concurrency.md: "`Context.task` creates its task with no binding
    /// in its task-locals, so a chain of tasks that respawn each other
    /// frees each generation as it ends".
    @Test func aChainOfRespawningTasksFreesEachGeneration() async {
        let chain = RespawnChain(generations: 60)
        await Task.detached {
            await chain.v.withValue(chain.counter.make(0)) { () async in
                _ = Context.task { await RespawnChain.generation(chain, 1) }
            }
        }.value
        for await _ in chain.done { break }
        let maxAlive = chain.maxAlive.load(ordering: .relaxed)
        #expect(maxAlive <= 1, "a generation's value outlived it: up to \(maxAlive) alive")
        #expect(await eventuallyYielding(seconds: 30) { chain.counter.alive == 0 })
    }

    final class RespawnChain: Sendable {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("nu_chain")
        let generations: Int
        let maxAlive = Atomic<Int>(0)
        let done: AsyncStream<Void>
        let finish: AsyncStream<Void>.Continuation
        init(generations: Int) {
            self.generations = generations
            (done, finish) = AsyncStream<Void>.makeStream()
        }

        static func generation(_ chain: RespawnChain, _ k: Int) async {
            chain.v.set(chain.counter.make(k))
            // Wait (bounded) until the generation before this one has ended
            // and let go of its value: then only this one's is alive.
            _ = await eventuallyYielding(seconds: 30) { chain.counter.alive <= 1 }
            let alive = chain.counter.alive
            if alive > chain.maxAlive.load(ordering: .relaxed) { chain.maxAlive.store(alive, ordering: .relaxed) }
            if k == chain.generations {
                chain.finish.yield(())
            } else {
                Context.task { await generation(chain, k + 1) }
            }
        }
    }

    /// `.notInherited`: the value is read in the same task or thread in
    /// nested `run` / `withValue` scopes and in explicit copies (docs
    /// table), after an unscoped set, inside a scope, and on a thread.
    @Test func notInheritedValueIsReadInNestedScopesOfTheSameTaskOrThread() async throws {
        let hidden = ContextVar<Int>("nu_ni_nested", default: 0, inheritance: .notInherited)
        let w = ContextVar<Int>("nu_ni_nested_w", default: 0)
        @Sendable func nestedReads() throws -> [Int] {
            [w.withValue(1) { hidden.value! },
             try Context.copyCurrent().run { hidden.value! },
             Context.copyCurrent()[hidden] ?? -1,
             Context.withCurrentUnsafeHandle { _, _ in hidden.value! }]
        }
        let inTask = try await Task.detached { () async throws -> [Int] in
            hidden.set(3)
            let unscoped = try nestedReads()
            let async1 = await w.withValue(2) { () async in hidden.value! }
            let scoped = try await Context().run { () async throws -> [Int] in
                hidden.set(4)
                let inner = try await Context.copyCurrent().run { () async in hidden.value! }
                return try nestedReads() + [inner]
            }
            return unscoped + [async1] + scoped
        }.value
        #expect(inTask == [3, 3, 3, 3, 3, 4, 4, 4, 4, 4])
        let onThread = try onNewThread { () -> Result<[Int], Error> in
            hidden.set(5)
            return Result { try nestedReads() }
        }.get()
        #expect(onThread == [5, 5, 5, 5])
    }
    // MARK: A task that outlived its scope enters the same context

    /// asyncio (`t2`): a task created in `ctx.run` that, after a later
    /// scope of `ctx` wrote 2, runs `ctx` itself: it reads its copy (1),
    /// then ctx's current value (2) inside, writes 3 there, and its copy
    /// (1) again after: `([1, 2, 1], 3)`. Sync and async `run`, and a
    /// variant with no later scope.
    @Test func aTaskThatOutlivedItsScopeRunsTheSameContext() async throws {
        let v = ContextVar<Int>("nu_outlived", default: 0)
        for asyncRun in [false, true] {
            for laterScope in [true, false] {
                let context = Context()
                let (go, open) = AsyncStream<Void>.makeStream()
                let task = try await Task.detached { () async throws -> Task<[Int], any Error> in
                    try await context.run { () async -> Task<[Int], any Error> in
                        v.set(1)
                        return Task { () async throws -> [Int] in
                            for await _ in go { break }
                            let a = v.value!
                            let b: Int
                            if asyncRun {
                                b = try await context.run { () async -> Int in
                                    await Task.yield()
                                    let b = v.value!
                                    v.set(3)
                                    return b
                                }
                            } else {
                                b = try context.run { () -> Int in
                                    let b = v.value!
                                    v.set(3)
                                    return b
                                }
                            }
                            await Task.yield()
                            return [a, b, v.value!]
                        }
                    }
                }.value
                if laterScope { try await Task.detached { try context.run { _ = v.set(2) } }.value }
                open.yield(())
                let seen = try await task.value
                #expect(seen == [1, laterScope ? 2 : 1, 1], "async run: \(asyncRun), later scope: \(laterScope)")
                #expect(context[v] == 3)
                #expect(!context.isEntered)
            }
        }
    }
    // MARK: ComingFromPython's spellings

    /// Python 3.14's `with var.set(v):` (a token as a context manager,
    /// whose `__exit__` is `var.reset(token)`) runs the block in the
    /// current context, so a `set` of another variable inside it stays
    /// after the block:
    ///
    ///     t = v.set(1)            # with v.set(1):
    ///     try: w.set(2)           #     w.set(2)
    ///     finally: v.reset(t)
    ///     (v.get(), w.get())      # (0, 2)
    ///
    /// *Coming from Python* gives `let t = x.set(v); defer { try? x.reset(t) }`
    /// as its spelling, and `x.withValue(v) { … }` as the one that runs the
    /// block in a copy, where that `set` is gone after the block (it gave
    /// `withValue` as the spelling, with no word of the difference). Both,
    /// on a thread and in a task.
    @Test func withVarSetBlockIsSetAndResetAndWithValueRunsInACopy() async throws {
        let v = ContextVar<Int>("nu_with_v", default: 0)
        let w = ContextVar<Int>("nu_with_w", default: 0)
        @Sendable func spellings() -> [[Int]] {
            var out: [[Int]] = []
            try! Context().run {
                v.withValue(1) { _ = w.set(2) }
                out.append([v.value!, w.value!])
            }
            try! Context().run {
                do {
                    let t = v.set(1)
                    defer { try? v.reset(t) }
                    w.set(2)
                }
                out.append([v.value!, w.value!])
            }
            return out
        }
        let python = [0, 2], inACopy = [0, 0]
        #expect(onNewThread { spellings() } == [inACopy, python])
        #expect(await Task.detached { spellings() }.value == [inACopy, python])
    }
    // MARK: Watcher slots; C writes behind the value cache

    /// Eight watcher slots (ContextError docs): the ninth `addWatcher`
    /// throws `tooManyWatchers` and installs nothing; `cancel()` twice is
    /// harmless, and frees a slot; releasing a handle frees its slot too.
    @Test func watcherSlotsRunOutWithTheDocumentedError() async {
        await #expect(processExitsWith: .success) {
            // Scope events only: a thread's first use of the runtime sends
            // `switched` too.
            let calls = Atomic<Int>(0)
            @Sendable func count(_ event: ContextEvent, _: Context?) {
                if event != .switched { calls.add(1, ordering: .relaxed) }
            }
            func expectCalls(_ n: Int, _ what: String) {
                let seen = calls.load(ordering: .relaxed)
                if seen != n {
                    Issue.record("\(what): \(seen) scope events, expected \(n)")
                    exit(1)
                }
            }
            var watchers: [ContextWatcher] = []
            for _ in 0..<8 { watchers.append(try! Context.addWatcher(count)) }
            do {
                _ = try Context.addWatcher { _, _ in calls.add(1000, ordering: .relaxed) }
                Issue.record("a ninth watcher was installed")
                exit(1)
            } catch let error as ContextError where error == .tooManyWatchers {
            } catch {
                Issue.record("the ninth watcher threw \(error)")
                exit(1)
            }
            try! Context().run {}
            expectCalls(16, "eight watchers")       // entered + exited each
            watchers[0].cancel()
            watchers[0].cancel()
            let ninth = try! Context.addWatcher(count)
            watchers.removeLast()                    // released: its slot frees
            let tenth = try! Context.addWatcher(count)
            calls.store(0, ordering: .relaxed)
            try! Context().run {}
            expectCalls(16, "after a cancel and a release")
            withExtendedLifetime((watchers, ninth, tenth)) {}
        }
    }

    /// C writes a task's own context through `withCurrentUnsafeHandle`
    /// (`isWritable`), after Swift read the value (the place cache's value
    /// cache holds it): the next Swift read sees C's write.
    @Test func cWriteThroughTheUnsafeHandleIsSeenByTheNextRead() async throws {
        let v = ContextVar<Int>("nu_c_write")
        let seen = try await Task.detached { () async throws -> [String] in
            var out: [String] = []
            v.set(1)
            out.append("\(v.value as Int?)")
            Context.withCurrentUnsafeHandle { handle, writable in
                out.append("\(writable)")
                out.append("\(cctx_context_delete(handle, v.handle) == CCTX_OK)")
            }
            out.append("\(v.value as Int?)")
            try await Context().run { () async in
                v.set(2)
                out.append("\(v.value as Int?)")
                await Task.yield()
                Context.withCurrentUnsafeHandle { handle, writable in
                    out.append("\(writable)")
                    out.append("\(cctx_context_delete(handle, v.handle) == CCTX_OK)")
                }
                out.append("\(v.value as Int?)")
                v.set(3)
                out.append("\(v.value as Int?)")
            }
            return out
        }.value
        #expect(seen == ["Optional(1)", "true", "true", "nil", "Optional(2)", "true", "true", "nil", "Optional(3)"])
    }
    // MARK: Variables' lifetime

    /// ContextVar docs: "a variable stays alive while any context holds one
    /// of its values" — and no longer: a variable dropped by its creator is
    /// still listed by the context that holds its value (same name, same
    /// value), and is freed with that context.
    @Test func aVariableLivesAsLongAsAContextHoldsItsValue() async throws {
        weak var weakVariable: ContextVar<String>?
        var context: Context? = Context()
        do {
            let temporary = ContextVar<String>("nu_temporary")
            weakVariable = temporary
            try context!.run { temporary.set("kept") }
        }
        #expect(weakVariable != nil)
        let listed = context!.map { "\($0.variable.name)=\($0.value)" }
        #expect(listed == ["nu_temporary=kept"])
        #expect(context!.description == #"<Context {nu_temporary: "kept"}>"#)
        let copy = context!.copy()
        context = nil
        #expect(weakVariable != nil)                 // the copy holds the value
        #expect(copy.variables.first?.name == "nu_temporary")
        _ = consume copy
        #expect(weakVariable == nil, "the variable outlived every context that held its value")
    }
    // MARK: copyCurrent's doc comment

    /// `Context.copyCurrent()` in a task copies what the task reads, as its
    /// doc comment now says (it said: "the context of the innermost `run`
    /// or `ContextVar.withValue` around the call, or an empty context when
    /// there is none"): with no scope around the call, the task's unscoped
    /// binding after a `set`, else the binding it inherited (without
    /// `.notInherited` values), else nothing. Python's `copy_context()` in
    /// a task copies the task's context likewise.
    @Test func copyCurrentInATaskCopiesWhatTheTaskReads() async {
        let v = ContextVar<Int>("nu_copy_doc")
        let hidden = ContextVar<Int>("nu_copy_doc_hidden", inheritance: .notInherited)
        let copied = await Task.detached { () async -> [Int?] in
            let empty = Context.copyCurrent()[v]
            v.set(1)
            let unscoped = Context.copyCurrent()[v]
            let inherited = await v.withValue(2) { () async -> [Int?] in
                hidden.set(3)
                async let child = [Context.copyCurrent()[v], Context.copyCurrent()[hidden]]
                return await child
            }
            return [empty, unscoped] + inherited
        }.value
        #expect(copied == [nil, 1, 2, nil])
    }
    // MARK: The unscoped binding's context, handed out by a watcher

    /// docs/concurrency.md ("Context-switch watchers"): the `.exited` event
    /// of a scope that returns to the task's unscoped binding passes that
    /// binding's context; it can be read anywhere, `run` on it from
    /// elsewhere throws `contextAlreadyEntered` (`isEntered` is true) until
    /// the task has ended and its binding is gone — then it runs, holding
    /// what the task last wrote.
    @Test func theUnscopedBindingsContextFromAWatcher() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("nu_unscoped_watch", default: 0)
            let captured = PThreadLocked<Context?>(nil)
            let inTask = PThreadLocked<Bool>(false)
            let watcher = try! Context.addWatcher { event, context in
                if event == .exited, let context, context[v] == 5, withUnsafeCurrentTask(body: { $0 != nil }) {
                    captured.withLock { $0 = context }
                }
            }
            let (checked, markChecked) = AsyncStream<Void>.makeStream()
            let (captureDone, markCaptured) = AsyncStream<Void>.makeStream()
            let (ended, markEnded) = AsyncStream<Void>.makeStream()
            Task.detached {
                defer { markEnded.yield(()) }
                v.set(5)
                try! await Context().run { () async in }       // exited → the unscoped binding
                inTask.withLock { $0 = true }
                markCaptured.yield(())
                for await _ in checked { break }
                v.set(6)
            }
            for await _ in captureDone { break }
            watcher.cancel()
            guard let unscoped = captured.withLock({ $0 }) else {
                Issue.record("no exited event carried the unscoped binding's context")
                exit(1)
            }
            var problems: [String] = []
            if !unscoped.isEntered { problems.append("isEntered false while the task lives") }
            do {
                try unscoped.run { v.set(99) }
                problems.append("run on a live task's unscoped binding succeeded")
            } catch let error as ContextError where error == .contextAlreadyEntered {
            } catch { problems.append("run threw \(error)") }
            if unscoped[v] != 5 { problems.append("read \(unscoped[v] as Int?) while the task lives, not 5") }
            markChecked.yield(())
            for await _ in ended { break }
            let released = await eventuallyYielding(seconds: 60) { !unscoped.isEntered }
            if !released { problems.append("still entered 60 s after its task ended") }
            if unscoped[v] != 6 { problems.append("read \(unscoped[v] as Int?) after the task ended, not 6") }
            do {
                let seen = try unscoped.run { v.value! }
                if seen != 6 { problems.append("run read \(seen), not 6") }
            } catch { problems.append("run after the task ended threw \(error)") }
            if !problems.isEmpty {
                Issue.record("\(problems)")
                exit(1)
            }
        }
    }
    // MARK: What keeps an ended task's values

    /// docs/concurrency.md: an unscoped binding's entry goes once its task
    /// has ended — but a `Task` handle kept after the task ended keeps it
    /// (the docs said an `async let` child was the one case where an ended
    /// task's values outlive it), as a finished asyncio `Task` keeps its
    /// context. Task A ends while its handle is held; then B and C end one
    /// after another (no handles) and the reaper releases their values: a
    /// reaper pass that started after A ended has then run (passes are
    /// sequential and each sweeps every entry), and A's value is still
    /// there. Once the handle is dropped, the next pass releases it.
    @Test func anEndedTasksValuesLiveAsLongAsItsHandle() async {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("nu_held_handle")
        var a: Task<Void, Never>? = Task.detached { v.set(counter.make(1)) }
        await a!.value
        for id in [2, 3] {
            let released = counter.releasedCount
            await Task.detached { _ = v.set(counter.make(id)) }.value
            #expect(await eventuallyYielding(seconds: 60) { counter.releasedCount > released })
        }
        #expect(counter.alive == 1, "A's value, while its handle is held")
        a = nil
        #expect(await eventuallyYielding(seconds: 60) { counter.alive == 0 }, "A's value outlived its handle")
    }
    // MARK: One context, many sequential scopes, escaped tasks

    /// A per-connection `Context` run once per request, sequentially, each
    /// request setting its id and starting a `Task {}` (a background job)
    /// that reads the id only after every later request ran: asyncio's
    /// `create_task` copies at creation, so job i reads i. Sync and async
    /// `run`, alternating, from tasks and threads.
    @Test func escapedTasksOfSequentialScopesOfOneContextReadTheirOwnScope() async throws {
        let v = ContextVar<Int>("nu_conn", default: 0)
        let connection = Context()
        let n = scaled(200)
        let gate = LockedBox<Bool>(false)
        var jobs: [Task<Int, Never>] = []
        for i in 1...n {
            let job: Task<Int, Never>
            switch i % 3 {
            case 0:
                job = try await Task.detached {
                    try await connection.run { () async -> Task<Int, Never> in
                        v.set(i)
                        await Task.yield()
                        return Task { _ = await eventuallyYielding(seconds: 60) { gate.value }; return v.value! }
                    }
                }.value
            case 1:
                job = try await Task.detached {
                    try connection.run { () -> Task<Int, Never> in
                        v.set(i)
                        return Task { _ = await eventuallyYielding(seconds: 60) { gate.value }; return v.value! }
                    }
                }.value
            default:
                job = onNewThread {
                    try! connection.run { () -> Task<Int, Never> in
                        v.set(i)
                        return Task { _ = await eventuallyYielding(seconds: 60) { gate.value }; return v.value! }
                    }
                }
            }
            jobs.append(job)
        }
        gate.mutate { $0 = true }
        var wrong: [String] = []
        for (i, job) in jobs.enumerated() {
            let seen = await job.value
            if seen != i + 1 { wrong.append("job \(i + 1) read \(seen)") }
        }
        #expect(wrong.isEmpty, "\(wrong.prefix(5))")
        #expect(connection[v] == n)
    }
}

/// One random program and its model: a stack of frames (the task's
/// unscoped context at the bottom, then one per scope), each the values
/// the running code must read there.
struct ModelProgram {
    var rng: UInt64
    let vars: [ContextVar<Int>]
    var frames: [[Int?]] = [[nil, nil, nil]]
    /// Tokens made in each frame, with the value each replaced.
    var tokens: [[(variable: Int, token: Token<Int>, old: Int?)]] = [[]]
    var usedTokens: [Token<Int>] = []
    var failures: [String] = []
    var counter = 0

    init(seed: UInt64, vars: [ContextVar<Int>]) {
        rng = seed
        self.vars = vars
    }

    mutating func next(_ bound: Int) -> Int {
        rng = rng &* 6364136223846793005 &+ 1442695040888963407
        return Int((rng >> 33) % UInt64(bound))
    }

    func current() -> [Int?] { vars.map { $0.value } }

    mutating func check(_ label: String) {
        let seen = current()
        if seen != frames.last! { failures.append("\(label): read \(seen), model \(frames.last!) at depth \(frames.count - 1)") }
    }

    /// What a child task (`async let`, `Task {}`) must read: the innermost
    /// scope's values, or — with no scope of the task's own — nothing
    /// (these programs run in `Task.detached`; exception 2).
    func childView() -> [Int?] { frames.count > 1 ? frames.last! : [nil, nil, nil] }

    mutating func run(depth: Int, budget: Int) async {
        var steps = budget
        while steps > 0 {
            steps -= 1
            counter += 1
            let value = counter
            switch next(12) {
            case 0, 1:
                let i = next(3)
                let old = frames[frames.count - 1][i]
                let token = vars[i].set(value)
                frames[frames.count - 1][i] = value
                tokens[tokens.count - 1].append((i, token, old))
                check("after set")
            case 2:
                if let last = tokens[tokens.count - 1].popLast() {
                    do {
                        try vars[last.variable].reset(last.token)
                        frames[frames.count - 1][last.variable] = last.old
                        usedTokens.append(last.token)
                    } catch { failures.append("reset of own token threw \(error)") }
                    check("after reset")
                }
            case 3:
                // A token of an enclosing frame: wrong context, nothing changes.
                if tokens.count > 1, let outer = tokens[tokens.count - 2].last {
                    do {
                        try vars[outer.variable].reset(outer.token)
                        failures.append("reset of an outer frame's token succeeded")
                    } catch {
                        if error != .tokenFromDifferentContext { failures.append("outer token: \(error)") }
                    }
                    check("after wrong-context reset")
                } else if let used = usedTokens.last {
                    do {
                        try used.variable.reset(used)
                        failures.append("reset of a used token succeeded")
                    } catch {
                        if error != .tokenAlreadyUsed { failures.append("used token: \(error)") }
                    }
                    check("after used-token reset")
                }
            case 4 where depth < 4:
                let i = next(3)
                var frame = frames.last!
                frame[i] = value
                frames.append(frame)
                tokens.append([])
                var me = self
                await vars[i].withValue(value) { () async in
                    me.check("withValue begins")
                    await Task.yield()
                    await me.run(depth: depth + 1, budget: steps / 2)
                    me.check("withValue ends")
                }
                self = me
                frames.removeLast()
                tokens.removeLast()
                check("after withValue")
            case 5 where depth < 4:
                let fresh = next(2) == 0
                frames.append(fresh ? [nil, nil, nil] : frames.last!)
                tokens.append([])
                var me = self
                do {
                    try await (fresh ? Context() : Context.copyCurrent()).run { () async in
                        me.check("run begins")
                        await me.run(depth: depth + 1, budget: steps / 2)
                    }
                } catch { me.failures.append("run threw \(error)") }
                self = me
                frames.removeLast()
                tokens.removeLast()
                check("after run")
            case 6:
                let i = next(3)
                var frame = frames.last!
                frame[i] = value
                let expectedFrame = frame
                let seen = vars[i].withValue(value) { current() }
                if seen != expectedFrame { failures.append("sync withValue read \(seen), model \(expectedFrame)") }
                check("after sync withValue")
            case 7:
                let vars = vars
                async let child = vars.map { $0.value }
                let seen = await child
                if seen != childView() { failures.append("async let read \(seen), model \(childView())") }
            case 8:
                let vars = vars
                let seen = await Task { () async -> [Int?] in
                    await Task.yield()
                    let before = vars.map { $0.value }
                    vars[0].set(-1)          // private to the child
                    return before
                }.value
                if seen != childView() { failures.append("Task {} read \(seen), model \(childView())") }
                check("after Task {}")
            case 9:
                let vars = vars
                let seen = await Context.task { () async -> [Int?] in
                    await Task.yield()
                    let before = vars.map { $0.value }
                    vars[1].set(-2)
                    return before
                }.value
                if seen != frames.last! { failures.append("Context.task read \(seen), model \(frames.last!)") }
                check("after Context.task")
            default:
                await Task.yield()
                check("after yield")
            }
        }
    }
}
