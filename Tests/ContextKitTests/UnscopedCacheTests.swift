import Testing
@testable import ContextKit

/// A task's reads after its unscoped `set` come from a per-thread cache
/// keyed by task id. These check that the cache never answers for a task
/// other than the one that wrote: tasks that run one after another on the
/// same pool threads (often at the same address), `async let` children
/// sharing their parent's memory, and many tasks at once hopping threads.
@Suite struct UnscopedCacheTests {
    static let v = ContextVar<Int>("unscoped_cache", default: -1)

    /// A writer task, then a reader task that never wrote, again and
    /// again: the reader must see the default, never the writer's value
    /// (a cache keyed by thread or address alone would give it).
    @Test func aTaskThatNeverWroteDoesNotReadAnEarlierTasksValue() async {
        let v = Self.v
        var wrong = 0
        for i in 0..<scaled(500) {
            let own = await Task.detached { () -> Int in
                v.set(i)
                return v.value!
            }.value
            let other = await Task.detached { () -> Int in v.value! }.value
            if own != i || other != -1 { wrong += 1 }
        }
        #expect(wrong == 0)
    }

    /// `async let` children one after another live at the same address;
    /// each that writes sees only its own value, each that does not sees
    /// what the parent sees.
    @Test func asyncLetChildrenAtOneAddressDoNotShareCachedBindings() async {
        let v = Self.v
        let wrong = await Task.detached { () async -> Int in
            var wrong = 0
            for i in 0..<scaled(500) {
                async let writer: Int = { v.set(i); await Task.yield(); return v.value! }()
                if await writer != i { wrong += 1 }
                async let reader: Int = { await Task.yield(); return v.value! }()
                if await reader != -1 { wrong += 1 }
            }
            return wrong + (v.value! == -1 ? 0 : 1)
        }.value
        #expect(wrong == 0)
    }

    /// Many tasks at once, each writing its id and reading it back across
    /// awaits (so each resumes on whatever thread is free): no task reads
    /// another's value.
    @Test func concurrentWritersReadOnlyTheirOwnValueAcrossThreads() async {
        let v = Self.v
        let wrong = await withTaskGroup(of: Int.self) { group in
            for i in 0..<scaled(2000) {
                group.addTask {
                    v.set(i)
                    var wrong = 0
                    for _ in 0..<4 {
                        await Task.yield()
                        if v.value! != i { wrong += 1 }
                    }
                    return wrong
                }
            }
            return await group.reduce(0, +)
        }
        #expect(wrong == 0)
    }
}
