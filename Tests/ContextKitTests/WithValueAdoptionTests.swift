import Testing
@testable import ContextKit

/// `withValue` hands its new box's one reference to C
/// (`cctx_context_copy_with_adopting` / `cctx_context_new_with_adopting`)
/// instead of letting C retain it and releasing its own: each value is
/// released exactly once, when the last context holding it goes — at the
/// scope's end, or later when a task made inside still holds the copy — on
/// every path that makes the copy (a thread's context that binds the
/// variable in its root or not, a large map, a task with no binding, a
/// task's own binding, a binding it inherited), and values whose deinit
/// uses the library again are released safely at the scope's end.
@Suite struct WithValueAdoptionTests {
    /// Sync, on a new thread: the variable bound in the root (the entry
    /// replaced), unbound (an entry added), and in a context of 40
    /// variables (the general insert, which retains and then releases the
    /// handed-over reference). One value alive inside, none after.
    @Test func syncScopesReleaseTheirValueOnceOnEveryPath() {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("v")
        let others = (0..<40).map { ContextVar<Int>("o\($0)") }
        runOnNewThreadAndJoin {
            v.withValue(counter.make(1)) {
                #expect(counter.alive == 1)
            }
            #expect(counter.alive == 0)
            _ = v.set(counter.make(2))  // now bound in the thread's root
            v.withValue(counter.make(3)) {
                #expect(v.value?.id == 3)
                #expect(counter.alive == 2)
            }
            #expect(counter.alive == 1)
            for o in others { _ = o.set(1) }  // a larger map
            for round in 0..<20 {
                v.withValue(counter.make(100 + round)) {
                    #expect(v.value?.id == 100 + round)
                    #expect(others[39].value == 1)
                    #expect(counter.alive == 2)
                }
                #expect(counter.alive == 1)
            }
            #expect(v.value?.id == 2)
        }
        // The thread's exit released its context's value.
        #expect(counter.alive == 0)
        #expect(counter.releasedCount == 23)
    }

    /// Async: a task with no binding (`new_with`), inside a scope (the
    /// task's own binding), and a child that inherits its parent's binding
    /// (the copy without `.notInherited` values, which keeps the retaining
    /// set). A copy a child task still holds keeps the value alive past
    /// the scope, and releases it once.
    @Test func asyncScopesReleaseTheirValueOnceOnEveryPath() async {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("v")
        await Task.detached {
            await v.withValue(counter.make(1)) {
                await Task.yield()
                #expect(counter.alive == 1)
                await v.withValue(counter.make(2)) {
                    await Task.yield()
                    #expect(v.value?.id == 2)
                    #expect(counter.alive == 2)
                }
                #expect(counter.alive == 1)
                await withTaskGroup(of: Void.self) { group in
                    group.addTask {
                        // Inherited, not owned: the rare path.
                        await v.withValue(counter.make(3)) {
                            await Task.yield()
                            #expect(v.value?.id == 3)
                        }
                    }
                }
                #expect(counter.alive == 1)
            }
        }.value
        #expect(counter.alive == 0)

        let escaped: Task<Int?, Never> = await v.withValue(counter.make(4)) {
            await Task.yield()
            return Task {
                try? await Task.sleep(nanoseconds: 1_000_000)
                return v.value?.id
            }
        }
        #expect(await escaped.value == 4)
        #expect(counter.alive == 0)
        #expect(counter.releasedCount == 4)
    }

    /// A value whose deinit opens `withValue` scopes of its own (sync and
    /// on the same thread) is released at the scope's end, with the
    /// adopted reference dropped exactly once, nested values included.
    @Test func deinitThatUsesTheLibraryAtTheScopeEnd() {
        let counter = LifetimeCounter()
        let v = ContextVar<ScopeOpeningValue>("v")
        let probe = ContextVar<Tracked>("probe")
        runOnNewThreadAndJoin {
            for round in 0..<10 {
                v.withValue(ScopeOpeningValue(probe: probe, counter: counter)) {
                    #expect(counter.alive == 0)
                }
                // The deinit ran at the scope's end: its own scope's value
                // came and went with it.
                #expect(counter.releasedCount == round + 1)
                #expect(counter.alive == 0)
            }
        }
        #expect(counter.releasedCount == 10)
    }
}

/// A value whose deinit uses ContextKit: it opens a `withValue` scope with
/// a tracked value and reads it back.
final class ScopeOpeningValue: Sendable {
    let probe: ContextVar<Tracked>
    let counter: LifetimeCounter
    init(probe: ContextVar<Tracked>, counter: LifetimeCounter) {
        self.probe = probe
        self.counter = counter
    }
    deinit {
        let probe = self.probe
        probe.withValue(counter.make(7)) {
            precondition(probe.value?.id == 7)
        }
    }
}
