import CContextCore
import Foundation
import Synchronization
import Testing
@testable import ContextKit

#if canImport(Glibc)
import Glibc
#endif

/// A user task-local, mixed with ContextKit's scopes below: both must read
/// right (they share the runtime's task-local stack).
enum ScopeBreakLocals {
    @TaskLocal static var user: Int = 0
}

/// Probes against the scope bindings: the task-local push with no check of
/// ours first (also inside task-group bodies of every kind), the C context
/// handle a binding owns (released once, on every way out of a scope), and
/// tokens made through the metatype a variable caches. Each test checks
/// what a user sees (Python's contextvars / asyncio answers); a probe that
/// could read freed memory or stop runs as an exit test.
@Suite struct ScopeBreakTests {
    struct Boom: Error {}

    // MARK: task-group bodies

    /// `withThrowingTaskGroup`: an async `withValue` and an async
    /// `Context.run` in the body, children added inside and outside each
    /// scope (the inside ones read after their scope ended), a child that
    /// opens scopes of its own and reads its inherited value again after.
    @Test func asyncScopesInAThrowingGroupBody() async throws {
        let v = ContextVar<Int>("sbk_throwing", default: 0)
        let gate = LockedBox(false)
        let result = try await v.withValue(1) { () async throws -> [Int] in
            try await withThrowingTaskGroup(of: (Int, Int).self) { group in
                await v.withValue(2) { () async in
                    group.addTask {
                        while !gate.value { await Task.yield() }
                        return (0, v.value!)
                    }
                    await Task.yield()
                }
                try await Context().run { () async in
                    v.set(3)
                    group.addTask {
                        // A child opening scopes of its own, sync and async.
                        let inner = v.withValue(30) { v.value! }
                        let innerAsync = await v.withValue(31) { () async -> Int in
                            await Task.yield()
                            return v.value!
                        }
                        let again = v.value!
                        return (1, inner == 30 && innerAsync == 31 && again == 3 ? 3 : -1)
                    }
                }
                group.addTask { (2, v.value!) }
                let own = v.value!
                gate.mutate { $0 = true }
                var slots = [0, 0, 0]
                for try await (slot, value) in group { slots[slot] = value }
                return slots + [own]
            }
        }
        #expect(result == [2, 3, 1, 1])
        #expect(v.value == 0)
    }

    /// `withDiscardingTaskGroup` and `withThrowingDiscardingTaskGroup`:
    /// children added inside a scope (sync and async) read it after it
    /// ended; the body reads its own value after each scope.
    @Test func scopesInDiscardingGroupBodies() async throws {
        let v = ContextVar<Int>("sbk_discarding", default: 0)
        let seen = LockedBox<[Int]>([])
        let gate = LockedBox(false)
        await withDiscardingTaskGroup { group in
            v.withValue(4) {
                group.addTask {
                    while !gate.value { await Task.yield() }
                    seen.mutate { $0.append(v.value!) }
                }
            }
            await v.withValue(5) { () async in
                group.addTask {
                    while !gate.value { await Task.yield() }
                    seen.mutate { $0.append(v.value!) }
                }
            }
            seen.mutate { $0.append(v.value!) }
            gate.mutate { $0 = true }
        }
        #expect(seen.value.first == 0)
        #expect(seen.value.dropFirst().sorted() == [4, 5])
        let after = try await withThrowingDiscardingTaskGroup { group -> Int in
            try await Context().run { () async throws in
                v.set(6)
                group.addTask {
                    await Task.yield()
                    if v.value != 6 { throw Boom() }
                }
            }
            return v.value!
        }
        #expect(after == 0)
    }

    /// Nested groups: a scope in the outer body around an inner group whose
    /// body opens another scope; children at each level read their own
    /// level's value, the inner group's body reads the outer scope's after
    /// its own scope, and a child of the outer group added after the outer
    /// scope reads the value around the outer group.
    @Test func nestedGroupsWithScopesAtEachLevel() async {
        let v = ContextVar<Int>("sbk_nested", default: -1)
        let values = await v.withValue(0) { () async -> [Int] in
            await withTaskGroup(of: [Int].self) { outer in
                await v.withValue(1) { () async in
                    outer.addTask { [v.value!] }
                    let inner = await withTaskGroup(of: Int.self) { inner -> [Int] in
                        v.withValue(2) {
                            inner.addTask {
                                await Task.yield()
                                return v.value!
                            }
                        }
                        let own = v.value!
                        var all: [Int] = []
                        for await value in inner { all.append(value) }
                        return all + [own]
                    }
                    outer.addTask { inner }
                }
                outer.addTask { [v.value!] }
                var all: [[Int]] = []
                for await value in outer { all.append(value) }
                return all.sorted { $0.count == $1.count ? $0[0] < $1[0] : $0.count < $1.count }.flatMap { $0 }
            }
        }
        // [0] (after the outer scope), [1] (inside it), [2, 1] (inner child, inner body).
        #expect(values == [0, 1, 2, 1])
        #expect(v.value == -1)
    }

    /// A throw out of a scope in a group body: the scope ends (its value is
    /// gone, its context can be entered again), the child it added still
    /// reads it, and the body reads its own value after; a throw out of the
    /// group itself leaves nothing entered either.
    @Test func throwsOutOfScopesInAGroupBody() async throws {
        let v = ContextVar<Int>("sbk_throw", default: 0)
        let context = Context()
        let (child, own) = try await withThrowingTaskGroup(of: Int.self) { group -> (Int, Int) in
            do {
                try await context.run { () async throws in
                    v.set(7)
                    group.addTask {
                        await Task.yield()
                        return v.value!
                    }
                    throw Boom()
                }
            } catch is Boom {}
            do {
                try v.withValue(8) { () throws in
                    group.addTask { v.value! }
                    throw Boom()
                }
            } catch is Boom {}
            var values: [Int] = []
            for try await value in group { values.append(value) }
            return (values.sorted().reduce(0) { $0 * 10 + $1 }, v.value!)
        }
        #expect(child == 78)
        #expect(own == 0)
        #expect(!context.isEntered)
        #expect(context[v] == 7)
        // The group itself throws out of a scope in its body.
        await #expect(throws: Boom.self) {
            try await withThrowingTaskGroup(of: Void.self) { group in
                try await context.run { () async throws in
                    v.set(9)
                    group.addTask { try await Task.sleep(for: .seconds(600)) }
                    throw Boom()
                }
            }
        }
        #expect(!context.isEntered)
        #expect(context[v] == 9)
        try context.run { #expect(v.value == 9) }
    }

    /// Cancellation inside a scope in a group body: the children the scope
    /// added see the cancellation and still read the scope's value; the
    /// `CancellationError` leaves the scope (its context is no longer
    /// entered) and the task reads what it read before.
    @Test func cancellationInsideAScopeInAGroupBody() async throws {
        let v = ContextVar<Int>("sbk_cancel", default: 0)
        let context = Context()
        let started = LockedBox(0)
        let task = Task { () async -> [String] in
            await withTaskGroup(of: String.self) { group in
                do {
                    try await context.run { () async throws in
                        v.set(11)
                        for _ in 0..<2 {
                            group.addTask {
                                started.mutate { $0 += 1 }
                                do { try await Task.sleep(for: .seconds(600)) } catch {}
                                return "\(Task.isCancelled):\(v.value!)"
                            }
                        }
                        started.mutate { $0 += 1 }
                        try await Task.sleep(for: .seconds(600))
                    }
                } catch {
                    group.addTask { "thrown:\(error is CancellationError):\(v.value!)" }
                }
                var all: [String] = []
                for await line in group { all.append(line) }
                return all.sorted()
            }
        }
        #expect(await eventuallyYielding(seconds: 60) { started.value == 3 })
        task.cancel()
        let lines = await task.value
        #expect(lines == ["thrown:true:0", "true:11", "true:11"])
        #expect(!context.isEntered)
        #expect(context[v] == 11)
    }

    /// `@TaskLocal` user values bound around the group, inside the body
    /// around and inside ContextKit scopes, and inside children: every read
    /// of both sees its innermost binding. (The runtime copies the bindings
    /// a group child needs from the body's stack by key: ContextKit's scopes
    /// and the user's share that stack.)
    @Test func userTaskLocalsMixWithScopesInGroupBodies() async {
        let v = ContextVar<Int>("sbk_mixed", default: 0)
        let lines = await ScopeBreakLocals.$user.withValue(100) { () async -> [String] in
            await v.withValue(1) { () async -> [String] in
                await withTaskGroup(of: String.self) { group in
                    func read(_ tag: String) -> String { "\(tag):\(ScopeBreakLocals.user):\(v.value!)" }
                    // A ContextKit scope alone in the body.
                    v.withValue(2) { group.addTask { read("a") } }
                    // A user binding alone in the body.
                    ScopeBreakLocals.$user.withValue(200) { group.addTask { read("b") } }
                    // User outside ContextKit, both in the body.
                    ScopeBreakLocals.$user.withValue(300) {
                        v.withValue(3) { group.addTask { read("c") } }
                    }
                    // ContextKit outside the user's, both in the body, async.
                    await v.withValue(4) { () async in
                        await ScopeBreakLocals.$user.withValue(400) { () async in
                            group.addTask { read("d") }
                            await Task.yield()
                        }
                        group.addTask { read("e") }
                    }
                    // Children binding both themselves.
                    group.addTask {
                        await ScopeBreakLocals.$user.withValue(500) { () async in
                            await v.withValue(5) { () async in
                                await Task.yield()
                                return read("f")
                            }
                        }
                    }
                    group.addTask { read("g") }
                    var all = [read("body")]
                    for await line in group { all.append(line) }
                    return all.sorted()
                }
            }
        }
        #expect(
            lines == [
                "a:100:2", "b:200:1", "body:100:1", "c:300:3", "d:400:4", "e:100:4", "f:500:5", "g:100:1",
            ])
        #expect(ScopeBreakLocals.user == 0)
        #expect(v.value == 0)
    }

    /// Many children in many group bodies opening scopes while their parent
    /// opens scopes around adding them (for ThreadSanitizer and for reads
    /// of a binding after its scope ended on another thread).
    @Test func groupBodyScopesUnderLoad() async {
        let v = ContextVar<Int>("sbk_load", default: 0)
        let rounds = scaled(60)
        let wrong = await withTaskGroup(of: Int.self) { outer in
            for worker in 0..<4 {
                outer.addTask {
                    var wrong = 0
                    for round in 0..<rounds {
                        let expected = worker * 10_000 + round
                        wrong += await withTaskGroup(of: Int.self) { group in
                            v.withValue(expected) {
                                for _ in 0..<3 {
                                    group.addTask {
                                        let inherited = v.value!
                                        let own = v.withValue(-1) { v.value! }
                                        return inherited == expected && own == -1 ? 0 : 1
                                    }
                                }
                            }
                            var wrong = v.value == 0 ? 0 : 1
                            for await childWrong in group { wrong += childWrong }
                            return wrong
                        }
                    }
                    return wrong
                }
            }
            var wrong = 0
            for await childWrong in outer { wrong += childWrong }
            return wrong
        }
        #expect(wrong == 0)
    }

    /// The same `Context` run by a group body and, inside that scope, by
    /// a child the scope added: the child's `run` throws
    /// `contextAlreadyEntered` and changes nothing; after the body's scope
    /// ended the child may run it, and its writes are the context's.
    @Test func aGroupChildRunsTheBodysContextOnlyAfterItsScope() async throws {
        let v = ContextVar<Int>("sbk_same_context", default: 0)
        let context = Context()
        let phase = LockedBox(0)
        let lines = try await withThrowingTaskGroup(of: String.self) { group -> [String] in
            try await context.run { () async throws in
                v.set(1)
                group.addTask {
                    var line = ""
                    do {
                        try context.run { v.set(99) }
                        line += "ran;"
                    } catch {
                        line += "\((error as? ContextError) == .contextAlreadyEntered):\(v.value!);"
                    }
                    phase.mutate { $0 = 1 }
                    while phase.value != 2 { await Task.yield() }
                    try await context.run { () async in
                        line += "\(v.value!);"
                        v.set(3)
                    }
                    return line + "\(v.value!)"
                }
                while phase.value != 1 { await Task.yield() }
                #expect(v.value == 1)
            }
            phase.mutate { $0 = 2 }
            var all: [String] = []
            for try await line in group { all.append(line) }
            return all
        }
        // The child's last read: it inherited the body's binding, whose
        // scope ended while the child held it (a child added to a group
        // made outside the scope gets a copy of the task-local items, as a
        // `Task {}` does). So it reads what that scope ended with, 1, not
        // its own later `run`'s write to `context` (asyncio: the child runs
        // in the copy taken at creation; docs/concurrency.md, "After the
        // scope").
        #expect(lines == ["true:1;1;1"])
        #expect(context[v] == 3)
        #expect(!context.isEntered)
    }

    /// `currentChainDescription` read by a group child and a `Task {}`
    /// after the scope they inherited ended (its enclosing bindings are
    /// held weakly and may be gone): no stop, and the inherited binding is
    /// named as ended.
    @Test func chainDescriptionsAfterTheInheritedScopeEnded() async {
        let v = ContextVar<Int>("sbk_chain", default: 0)
        let gate = LockedBox(false)
        let (inGroup, task) = await v.withValue(1) { () async -> (String, Task<String, Never>) in
            let task = await v.withValue(2) { () async -> Task<String, Never> in
                Task {
                    while !gate.value { await Task.yield() }
                    return Context.currentChainDescription
                }
            }
            let inGroup = await withTaskGroup(of: String.self) { group -> String in
                await v.withValue(3) { () async in
                    group.addTask {
                        while !gate.value { await Task.yield() }
                        return Context.currentChainDescription
                    }
                }
                gate.mutate { $0 = true }
                return await group.next()!
            }
            return (inGroup, task)
        }
        let fromTask = await task.value
        #expect(inGroup.contains("withValue(sbk_chain), scope ended"))
        #expect(inGroup.contains("sbk_chain"))
        #expect(fromTask.contains("withValue(sbk_chain), scope ended"))
    }

    // MARK: handle ownership on every way out of a scope

    /// Values set in scopes are released exactly once (never twice, never
    /// leaked) on each exit: a normal return, a throw, a cancellation, in a
    /// task and on a thread, through `withValue` and `Context.run`.
    @Test func scopeValuesReleasedOnceOnEveryExit() async {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("sbk_release")
        // Task: normal return, throw.
        await v.withValue(counter.make(1)) { () async in
            v.set(counter.make(2))
            await Task.yield()
        }
        _ = try? await v.withValue(counter.make(3)) { () async throws in
            v.set(counter.make(4))
            throw Boom()
        }
        _ = try? await Context().run { () async throws in
            v.set(counter.make(5))
            throw Boom()
        }
        // Cancellation.
        let started = LockedBox(false)
        let task = Task {
            try await v.withValue(counter.make(6)) { () async throws in
                started.mutate { $0 = true }
                try await Task.sleep(for: .seconds(600))
            }
        }
        #expect(await eventuallyYielding(seconds: 60) { started.value })
        task.cancel()
        _ = await task.result
        // Thread: normal return, throw, nested.
        onNewThread {
            v.withValue(counter.make(7)) {
                v.set(counter.make(8))
                _ = try? v.withValue(counter.make(9)) { () throws in throw Boom() }
                _ = try? Context().run { () throws in
                    v.set(counter.make(10))
                    throw Boom()
                }
            }
        }
        #expect(await eventuallyYielding(seconds: 30) { counter.alive == 0 })
        #expect(counter.made.load(ordering: .sequentiallyConsistent) == 10)
        #expect(counter.releasedCount == 10)
    }

    /// `runFresh(adopting:)` takes over the reference it is given (sync and
    /// async, return and throw): the context is released with the scope.
    @Test func runFreshAdoptingReleasesTheHandleItWasGiven() async {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("sbk_fresh")
        Context.runFresh(adopting: Context.newHandle(), origin: .run) { _ = v.set(counter.make(1)) }
        _ = try? Context.runFresh(adopting: Context.newHandle(), origin: .run) { () throws in
            v.set(counter.make(2))
            throw Boom()
        }
        await Context.runFresh(adopting: Context.newHandle(), origin: .run) { () async in
            v.set(counter.make(3))
            await Task.yield()
        }
        _ = try? await Context.runFresh(adopting: Context.newHandle(), origin: .run) { () async throws in
            v.set(counter.make(4))
            throw Boom()
        }
        #expect(await eventuallyYielding(seconds: 30) { counter.alive == 0 })
        #expect(counter.releasedCount == counter.made.load(ordering: .sequentiallyConsistent))
    }

    /// What outlives a scope keeps its values, and only as long as it
    /// lives: a `Task {}` made inside, a `Context.copyCurrent()` taken
    /// inside (read, run in, copied again after the scope), on a thread and
    /// in a task.
    @Test func copiesTakenInsideAScopeOutliveIt() async throws {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("sbk_outlive")
        let (go, open) = AsyncStream<Void>.makeStream()
        let (copy, task) = await v.withValue(counter.make(1)) { () async -> (Context, Task<Int?, Never>) in
            v.set(counter.make(2))
            let task = Task { () async -> Int? in
                for await _ in go { break }
                return v.value?.id
            }
            return (Context.copyCurrent(), task)
        }
        // The scope's context went; what the copy and the task hold stays.
        #expect(copy[v]?.id == 2)
        try copy.run { v.set(counter.make(3)) }
        #expect(copy[v]?.id == 3)
        #expect(copy.copy()[v]?.id == 3)
        open.yield()
        #expect(await task.value == 2)
        let threadCopy = onNewThread { () -> Context in
            v.withValue(counter.make(4)) { Context.copyCurrent() }
        }
        #expect(threadCopy[v]?.id == 4)
        #expect(counter.alive >= 2)
        _ = consume copy
        _ = consume threadCopy
        #expect(await eventuallyYielding(seconds: 30) { counter.alive == 0 })
        #expect(counter.releasedCount == 4)
    }

    /// Values whose deinit uses the library while the scope that held them
    /// is released: reads, sets (with a token reset), a new `withValue`
    /// scope and a `copyCurrent()` inside the deinit; on every exit of a
    /// scope (return, throw, cancellation), in a task and on a thread. Each
    /// deinit runs once and never stops the process.
    @Test func deinitsUsingTheLibraryAsScopesRelease() async {
        await #expect(processExitsWith: .success) {
            // Inside a scope of its own, so that the deinits that run in
            // this task set there: a task's unscoped binding would live
            // until the process exits, and LeakSanitizer reports the weak
            // reference side table of an object alive at exit as a leak
            // (the object's refcount word holds it encoded, not as a
            // pointer it can trace).
            try! await Context().run { () async in
                let started = LockedBox(false)
                await LibraryUser.variable.withValue(LibraryUser(1)) { () async in
                    LibraryUser.variable.set(LibraryUser(2))
                    await Task.yield()
                }
                _ = try? await LibraryUser.variable.withValue(LibraryUser(3)) { () async throws in
                    throw Boom()
                }
                let task = Task {
                    try await LibraryUser.variable.withValue(LibraryUser(4)) { () async throws in
                        started.mutate { $0 = true }
                        try await Task.sleep(for: .seconds(600))
                    }
                }
                while !started.value { await Task.yield() }
                task.cancel()
                _ = await task.result
                onNewThread {
                    LibraryUser.variable.withValue(LibraryUser(5)) {
                        _ = try? LibraryUser.variable.withValue(LibraryUser(6)) { () throws in throw Boom() }
                    }
                }
                // The last holders are children: a group child and a
                // `Task {}` made in the scope release it as they end (in
                // their teardown).
                let gate = LockedBox(false)
                let copy = await withTaskGroup(of: Void.self) { group -> Task<Void, Never> in
                    let copy = LibraryUser.variable.withValue(LibraryUser(7)) { () -> Task<Void, Never> in
                        group.addTask {
                            while !gate.value { await Task.yield() }
                            _ = LibraryUser.variable.value
                        }
                        return Task {
                            while !gate.value { await Task.yield() }
                            _ = LibraryUser.variable.value
                        }
                    }
                    gate.mutate { $0 = true }
                    return copy
                }
                await copy.value
            }
            _ = await eventuallyYielding(seconds: 60) { LibraryUser.ended.value.count >= 7 }
            let ids = LibraryUser.ended.value.sorted()
            if ids != [1, 2, 3, 4, 5, 6, 7] {
                FileHandle.standardError.write(Data((LibraryUser.log.value.joined(separator: "\n") + "\n").utf8))
                exit(1)
            }
            if LibraryUser.other.value != 0 { exit(2) }
            // The unscoped bindings the children's deinits made go with
            // their tasks (see above).
            if !(await eventuallyYielding(seconds: 60) { UnscopedBindings.shared.reap() == 0 }) { exit(3) }
        }
    }

    /// `withUnsafeHandle` / `withCurrentUnsafeHandle` inside scopes: the
    /// owner gets its scope's context, writable, and a C write there is
    /// what it reads next; a child gets a read-only copy; a handle taken
    /// through `Context.copyCurrent()` inside a scope reads the same after
    /// the scope ended.
    @Test func unsafeHandlesInsideScopes() async throws {
        let v = ContextVar<Int>("sbk_unsafe", default: 0)
        let (inside, childWritable, copy) = await v.withValue(1) { () async -> (Int?, Bool, Context) in
            let inside = Context.withCurrentUnsafeHandle { handle, writable -> Int? in
                #expect(writable)
                #expect(cctx_context_count(handle) == 1)
                // A C write through the handle, as C code would make it.
                let box = v.makeBox(2)
                let status = box.withOpaquePointer { cctx_context_set(handle, v.handle, $0, nil) }
                #expect(status == CCTX_OK)
                return nil
            }
            async let childWritable = Context.withCurrentUnsafeHandle { _, writable in writable }
            _ = inside
            return (v.value, await childWritable, Context.copyCurrent())
        }
        #expect(inside == 2)
        #expect(!childWritable)
        copy.withUnsafeHandle { handle in
            #expect(cctx_context_count(handle) == 1)
        }
        #expect(copy[v] == 2)
        // On a thread, inside a sync scope: a snapshot, read-only.
        let threadRead = onNewThread { () -> Int in
            v.withValue(5) {
                Context.withCurrentUnsafeHandle { handle, writable in
                    writable ? -1 : Int(cctx_context_count(handle))
                }
            }
        }
        #expect(threadRead == 1)
    }

    // MARK: tokens

    /// Tokens of variables of many value types (generic struct, class,
    /// struct, optional, existential, array, closure): `set` returns a
    /// token of the variable's own type, whose `oldValue` and `reset` work.
    @Test func tokensOfManyValueTypes() throws {
        struct Pair<A: Sendable & Equatable, B: Sendable & Equatable>: Sendable, Equatable {
            var a: A
            var b: B
        }
        final class Ref: Sendable {
            let n: Int
            init(_ n: Int) { self.n = n }
        }
        func roundTrip<T: Sendable>(_ first: T, _ second: T, _ same: (T, T) -> Bool) throws {
            let variable = ContextVar<T>("sbk_token_\(T.self)")
            try Context().run {
                let t1 = variable.set(first)
                #expect(type(of: t1) == Token<T>.self)
                #expect(t1.variable === variable)
                #expect(t1.oldValue == nil)
                let t2 = variable.set(second)
                #expect(t2.oldValue.map { same($0, first) } == true)
                try variable.reset(t2)
                #expect(same(variable.value!, first))
                #expect(t2.isUsed)
                try variable.reset(t1)
                #expect(variable.value == nil)
            }
        }
        try roundTrip(Pair(a: 1, b: "x"), Pair(a: 2, b: "y"), ==)
        try roundTrip(Pair(a: [1.0], b: Pair(a: 1, b: 2)), Pair(a: [], b: Pair(a: 3, b: 4)), ==)
        try roundTrip(Ref(1), Ref(2)) { $0 === $1 }
        try roundTrip("s", "t", ==)
        try roundTrip([1, 2], [3], ==)
        try roundTrip(Int?.none, Int?.some(3), ==)
        try roundTrip(1 as any Sendable, "two" as any Sendable) {
            "\($0)" == "\($1)"
        }
        try roundTrip({ 1 } as @Sendable () -> Int, { 2 } as @Sendable () -> Int) { $0() == $1() }
        // Optional values: a stored nil is not "missing".
        let optional = ContextVar<Int?>("sbk_token_optional")
        try Context().run {
            optional.set(nil)
            let token = optional.set(4)
            #expect(token.oldValue == .some(nil))
            try optional.reset(token)
            #expect(optional.value == .some(nil))
        }
    }

    /// A `DefaultedContextVar`'s tokens are its variable's: set and reset
    /// through the wrapper and through `variable` mix; a second reset
    /// throws `tokenAlreadyUsed` and changes nothing.
    @Test func defaultedVariableTokens() throws {
        let v = DefaultedContextVar("sbk_defaulted", default: "-")
        try Context().run {
            let t1 = v.set("a")
            #expect(t1.variable === v.variable)
            let t2 = v.variable.set("b")
            try v.reset(t2)
            #expect(v.value == "a")
            v.set("c")
            #expect(throws: ContextError.tokenAlreadyUsed) { try v.reset(t2) }
            #expect(v.value == "c")
            try v.variable.reset(t1)
            #expect(v.value == "-")
            #expect(throws: ContextError.tokenAlreadyUsed) { try v.reset(t1) }
            #expect(v.value == "-")
        }
    }

    /// Resetting twice: `tokenAlreadyUsed`, and the value set since stays,
    /// in a task scope and on a thread.
    @Test func resetTwiceChangesNothing() async throws {
        let v = ContextVar<Int>("sbk_twice", default: 0)
        try await Context().run { () async throws in
            let token = v.set(1)
            try v.reset(token)
            v.set(2)
            #expect(throws: ContextError.tokenAlreadyUsed) { try v.reset(token) }
            #expect(v.value == 2)
        }
        let threadOK = onNewThread { () -> Bool in
            let token = v.set(3)
            guard (try? v.reset(token)) != nil else { return false }
            v.set(4)
            do {
                try v.reset(token)
                return false
            } catch {
                return (error as? ContextError) == .tokenAlreadyUsed && v.value == 4
            }
        }
        #expect(threadOK)
    }

    /// A token made inside a scope, used after the scope ended (in the
    /// enclosing context, in a task and on a thread): the scope's context
    /// was a different one, so `tokenFromDifferentContext`, and nothing
    /// changes.
    @Test func tokensOutliveTheirScope() async throws {
        let v = ContextVar<Int>("sbk_token_scope", default: 0)
        try await Context().run { () async throws in
            v.set(1)
            let token = await v.withValue(2) { () async -> Token<Int> in v.set(3) }
            #expect(throws: ContextError.tokenFromDifferentContext) { try v.reset(token) }
            #expect(v.value == 1)
            #expect(!token.isUsed)
            #expect(token.oldValue == 2)
        }
        let threadOK = onNewThread { () -> Bool in
            v.set(4)
            let token = v.withValue(5) { v.set(6) }
            do {
                try v.reset(token)
                return false
            } catch {
                return (error as? ContextError) == .tokenFromDifferentContext && v.value == 4 && !token.isUsed
            }
        }
        #expect(threadOK)
    }

    /// A token made in one task's context, reset in another (a group child,
    /// a `Task {}`, an `async let`, before and after that task wrote
    /// anything; a thread; a different variable): `tokenFromDifferentContext`
    /// (`tokenFromDifferentVariable`), nothing changes, the token stays
    /// unused and its own context can still reset with it.
    @Test func resetWithTokensAcrossTasks() async throws {
        let v = ContextVar<Int>("sbk_cross", default: 0)
        let w = ContextVar<Int>("sbk_cross_other", default: 0)
        let context = Context()
        try await context.run { () async throws in
            v.set(1)
            let token = v.set(2)
            @Sendable func attempt(writeFirst: Bool) -> String {
                if writeFirst { v.set(50) }
                let before = v.value!
                do {
                    try v.reset(token)
                    return "reset!"
                } catch {
                    return "\(error == .tokenFromDifferentContext):\(v.value! == before):\(token.isUsed)"
                }
            }
            let lines = await withTaskGroup(of: String.self) { group -> [String] in
                group.addTask { attempt(writeFirst: false) }
                group.addTask { attempt(writeFirst: true) }
                group.addTask { await Task { attempt(writeFirst: false) }.value }
                group.addTask { await Task { attempt(writeFirst: true) }.value }
                group.addTask {
                    async let child = attempt(writeFirst: true)
                    return await child
                }
                group.addTask {
                    // In a scope of the child's own.
                    await v.withValue(60) { () async in attempt(writeFirst: false) }
                }
                group.addTask {
                    // On a thread (outside any task).
                    onNewThread { attempt(writeFirst: false) }
                }
                var all: [String] = []
                for await line in group { all.append(line) }
                return all
            }
            #expect(lines == Array(repeating: "true:true:false", count: 7))
            #expect(v.value == 2)
            #expect(!token.isUsed)
            // A token of another variable.
            let other = w.set(5)
            #expect(throws: ContextError.tokenFromDifferentVariable) { try v.reset(other) }
            #expect(w.value == 5)
            try v.reset(token)
            #expect(v.value == 1)
        }
        // A token made on a thread, reset in a task and in another scope.
        let threadToken = onNewThread { v.set(7) }
        await #expect(throws: ContextError.tokenFromDifferentContext) {
            try await Context().run { () async throws in try v.reset(threadToken) }
        }
        #expect(throws: ContextError.tokenFromDifferentContext) { try v.reset(threadToken) }
        #expect(!threadToken.isUsed)
        #expect(context[v] == 1)
    }
}

/// A value whose deinit uses the library: reads its variable, sets and
/// resets another, opens a `withValue` scope and copies the current
/// context (for `deinitsUsingTheLibraryAsScopesRelease`).
final class LibraryUser: Sendable {
    static let variable = ContextVar<LibraryUser>("sbk_library_user")
    static let other = ContextVar<Int>("sbk_library_other", default: 0)
    static let ended = LockedBox<[Int]>([])
    static let log = LockedBox<[String]>([])
    let id: Int
    init(_ id: Int) { self.id = id }
    deinit {
        let read = LibraryUser.variable.value?.id
        let token = LibraryUser.other.set(id)
        let afterSet = LibraryUser.other.value
        let nested = LibraryUser.other.withValue(-id) { LibraryUser.other.value }
        let copied = Context.copyCurrent()[LibraryUser.other]
        let resetError: String
        do { try LibraryUser.other.reset(token); resetError = "ok" } catch { resetError = "\(error)" }
        let line = "id \(id) read \(read.map(String.init) ?? "nil") set \(afterSet.map(String.init) ?? "nil") nested \(nested.map(String.init) ?? "nil") copied \(copied.map(String.init) ?? "nil") reset \(resetError) inTask \(!isOutsideTask())"
        LibraryUser.log.mutate { $0.append(line) }
        if nested == -id && copied == id { LibraryUser.ended.mutate { $0.append(id) } }
    }
}
