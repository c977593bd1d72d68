import Testing
@testable import ContextKit

/// Values are released exactly once, as soon as nothing refers to them
/// (swift-nio's testThreadSpecificDoesNotLeakIfThreadExitsWhilstSet style).
@Suite(.serialized) struct LifetimeTests {
    @Test func valueReleasedOnceAfterReset() throws {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("v")
        try Context().run { () throws in
            let token = v.set(counter.make(1))
            #expect(counter.alive == 1)
            try v.reset(token)
            #expect(counter.alive == 0)
            #expect(counter.releasedCount == 1)
        }
        #expect(counter.releasedCount == 1)
    }

    @Test func overwrittenValueReleasedWhenItsTokenGoes() throws {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("v")
        let ctx = Context()
        try ctx.run { () throws in
            do {
                let token = v.set(counter.make(1))
                v.set(counter.make(2))      // the token of 1 remembers MISSING
                _ = token
            }
            #expect(counter.alive == 1, "value 1 is gone: no token holds it as an old value")
            do {
                let token = v.set(counter.make(3))   // remembers value 2
                #expect(counter.alive == 2)
                _ = token
            }
            #expect(counter.alive == 1, "value 2 went with the token that remembered it")
        }
        #expect(ctx[v]?.id == 3)
    }

    @Test func valueLivesUntilItsContextAndAllCopiesAreGone() throws {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("v")
        var ctx: Context? = Context()
        try ctx!.run { v.set(counter.make()) }
        var copies: [Context] = (0..<3).map { _ in ctx!.copy() }
        ctx = nil
        #expect(counter.alive == 1)
        copies.removeLast(2)
        #expect(counter.alive == 1)
        copies.removeAll()
        #expect(counter.alive == 0)
        #expect(counter.releasedCount == 1)
    }

    @Test func valueReleasedWhenItsThreadExits() {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("v")
        onNewThread {
            v.set(counter.make())
            v.set(counter.make())
        }
        // onNewThread returns after pthread_join, so the thread's state
        // (and its base context) has been destroyed.
        #expect(counter.alive == 0)
        #expect(counter.releasedCount == 2)
    }

    @Test func withValueCopyReleasedWhenTheOperationReturns() async {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("v")
        await v.withValue(counter.make()) {
            await Task.yield()
            #expect(counter.alive == 1)
        }
        #expect(counter.alive == 0)
    }

    @Test func snapshotsKeepValuesAliveUntilReleased() throws {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("v")
        let ctx = Context()
        var items: [Context.Element]? = nil
        try ctx.run { () throws in
            let t = v.set(counter.make())
            items = Array(ctx)
            try v.reset(t)
        }
        #expect(counter.alive == 1)
        items = nil
        _ = items
        #expect(counter.alive == 0)
    }

    @Test func variableLivesWhileAContextHoldsItsValue() throws {
        let ctx = Context()
        weak var weakVar: ContextVar<Int>?
        do {
            let v = ContextVar<Int>("v")
            weakVar = v
            try ctx.run { v.set(1) }
        }
        #expect(weakVar != nil, "the box in the context holds the variable")
        let recovered = try #require(ctx.variables.first as? ContextVar<Int>)
        #expect(recovered.name == "v")
        #expect(ctx[recovered] == 1)
        _ = recovered
    }

    @Test func variableReleasedWithItsLastValue() throws {
        weak var weakVar: ContextVar<Int>?
        do {
            let ctx = Context()
            let v = ContextVar<Int>("v")
            weakVar = v
            try ctx.run { v.set(1) }
        }
        #expect(weakVar == nil)
    }

    @Test func concurrentReadersDoNotLeakOrDoubleRelease() async {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("v")
        let ctx = Context()
        let n = scaled(5_000)
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                onNewThread {
                    try? ctx.run { () -> Void in for i in 0..<n { v.set(counter.make(i)) } }
                }
            }
            for _ in 0..<3 {
                group.addTask {
                    for _ in 0..<n { _ = ctx[v]?.id }
                }
            }
        }
        #expect(eventually { counter.alive == 1 }, "deferred reclamation finishes")
        #expect(counter.releasedCount == n - 1)
        #expect(ctx[v]?.id == n - 1)
    }
}
