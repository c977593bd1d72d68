import Testing
import Foundation
@testable import ContextKit

struct Boom: Error, Equatable {}

/// Context: creation, copies, run (CPython test_context_run_*,
/// test_context_copy_1, test_context_get_context_1, is-already-entered).
@Suite struct ContextTests {
    @Test func newContextIsEmpty() {
        let ctx = Context()
        #expect(ctx.count == 0)
        #expect(ctx.isEmpty)
        #expect(Array(ctx).isEmpty)
        #expect(!ctx.isEntered)
    }

    @Test func runReturnsTheBodysResult() throws {
        let ctx = Context()
        #expect(try ctx.run { 41 + 1 } == 42)
        #expect(try ctx.run { "x" } == "x")
    }

    /// test_context_run_4: sets inside run are visible through the context
    /// after run returns; a nested run of another context does not see them.
    @Test func runVisibilityAfterReturn() throws {
        let ctx1 = Context()
        let ctx2 = Context()
        let v = ContextVar<String>("var")
        let returned = try ctx1.run { () throws -> Context in
            #expect(v.get(default: "none") == "none")
            v.set("spam")
            try ctx2.run { #expect(v.value == nil) }
            #expect(v.value == "spam")
            let current = Context.copyCurrent()
            #expect(current.count == 1)
            #expect(current[v] == "spam")
            return current
        }
        #expect(returned[v] == "spam")
        #expect(ctx1[v] == "spam")
        #expect(ctx1.contains(v))
        #expect(!ctx2.contains(v))
    }

    /// test_context_run_3/5: errors propagate out of run, the context is
    /// exited, and the caller's context did not change.
    @Test func errorsPropagateAndTheContextIsExited() throws {
        let ctx = Context()
        let v = ContextVar<String>("var")
        try Context().run { () throws in
            #expect(throws: Boom.self) {
                try ctx.run { () throws in
                    v.set("spam")
                    throw Boom()
                }
            }
            #expect(v.value == nil)
            #expect(!ctx.isEntered)
            #expect(ctx[v] == "spam")
            try ctx.run { #expect(v.value == "spam") }  // can enter again
        }
    }

    @Test func errorsPropagateOnAThread() {
        let ok = onNewThread { () -> Bool in
            let ctx = Context()
            let v = ContextVar<Int>("v")
            do {
                try ctx.run { () throws in v.set(1); throw Boom() }
                return false
            } catch {
                return error is Boom && v.value == nil && !ctx.isEntered && ctx[v] == 1
            }
        }
        #expect(ok)
    }

    /// test_context_run_6: the variable's default does not show through the
    /// mapping.
    @Test func defaultIsNotInTheMapping() throws {
        let ctx = Context()
        let c = ContextVar<Int>("a", default: 0)
        try ctx.run { () throws in
            #expect(try c.get() == 0)
            #expect(ctx[c] == nil)
            c.set(42)
            #expect(try c.get() == 42)
            #expect(ctx[c] == 42)
        }
    }

    /// test_context_run_7: a nested run of the same context is refused and
    /// changes nothing.
    @Test func nestedRunOfSameContextIsRefused() throws {
        let ctx = Context()
        let v = ContextVar<Int>("v")
        var ran = false
        try ctx.run { () throws in
            v.set(1)
            #expect(throws: ContextError.contextAlreadyEntered) {
                try ctx.run { ran = true }
            }
            #expect(v.value == 1)
            #expect(ctx.isEntered)
        }
        #expect(!ran)
        #expect(!ctx.isEntered)
    }

    @Test func nestedRunOfSameContextIsRefusedOnAThread() {
        let ok = onNewThread { () -> Bool in
            let ctx = Context()
            var refused = false
            try? ctx.run {
                do { try ctx.run {} } catch { refused = (error as? ContextError) == .contextAlreadyEntered }
            }
            return refused
        }
        #expect(ok)
    }

    /// test_context_copy_1: copies never affect each other.
    @Test func copiesAreIndependent() throws {
        let ctx1 = Context()
        let c = ContextVar<Int>("c", default: 42)
        try ctx1.run { () throws in
            c.set(10)
            let ctx2 = ctx1.copy()
            #expect(ctx2[c] == 10)
            c.set(20)
            #expect(ctx1[c] == 20)
            #expect(ctx2[c] == 10)
            try ctx2.run { () throws in
                #expect(try c.get() == 10)
                c.set(30)
                #expect(try c.get() == 30)
            }
            #expect(ctx1[c] == 20)
            #expect(ctx2[c] == 30)
        }
    }

    @Test func copyCurrentInATaskWithoutContextIsEmpty() async {
        let v = ContextVar<Int>("v")
        let count = await Task.detached { Context.copyCurrent().count }.value
        #expect(count == 0)
        _ = try? Context().run { v.set(1) }
        #expect(Context.copyCurrent()[v] == nil)
    }

    /// Python's context-manager tests: re-entering after exit sees the
    /// values set before.
    @Test func enterAgainAfterExit() throws {
        let v = ContextVar<String>("cvar", default: "initial")
        try Context().run { () throws in
            let ctx = Context.copyCurrent()
            try ctx.run { v.set("updated") }
            #expect(try v.get() == "initial")
            try ctx.run { #expect(v.value == "updated") }
        }
    }

    @Test func contextEnteredOnOneThreadIsRefusedOnAnother() {
        let ctx = Context()
        let v = ContextVar<Int>("v")
        let outcome = onNewThread { () -> [String] in
            var log: [String] = []
            try? ctx.run {
                v.set(1)
                // While this thread is inside, another thread may not enter …
                let other = onNewThread { () -> String in
                    do { try ctx.run {}; return "entered" } catch { return "\(error)" }
                }
                log.append(other)
                // … but may read it.
                log.append(onNewThread { "\(ctx[v] ?? -1)" })
            }
            // After exit, another thread may enter it.
            log.append(onNewThread { (try? ctx.run { v.value }).flatMap { $0 }.map(String.init) ?? "refused" })
            return log
        }
        #expect(outcome == [ContextError.contextAlreadyEntered.description, "1", "1"])
    }

    @Test func contextRunByATaskIsRefusedOnAThread() async throws {
        let ctx = Context()
        let refused = try await ctx.run {
            await Task.yield()
            return onNewThread { () -> Bool in
                do { try ctx.run {}; return false } catch { return (error as? ContextError) == .contextAlreadyEntered }
            }
        }
        #expect(refused)
    }

    @Test func newThreadStartsEmpty() throws {
        let v = ContextVar<Int>("v", default: -1)
        try Context().run { () throws in
            v.set(5)
            let seen = onNewThread { (v.value, Context.copyCurrent().count) }
            #expect(seen.0 == -1)
            #expect(seen.1 == 0)
        }
    }

    /// test_context_threads_1: each thread has its own current context.
    @Test func threadsHaveTheirOwnContexts() async {
        let cvar = ContextVar<Int>("cvar")
        let results = await withTaskGroup(of: Bool.self) { group in
            for num in 0..<10 {
                group.addTask {
                    onNewThread {
                        for i in 0..<10 {
                            cvar.set(num + i)
                            usleep(UInt32.random(in: 100...2_000))
                            if cvar.value != num + i { return false }
                        }
                        return true
                    }
                }
            }
            return await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        #expect(results == Array(repeating: true, count: 10))
    }
}
