import Testing
@testable import ContextKit

/// Reads in a task come from a per-thread cache of the task's place,
/// invalidated whenever the task binds or unbinds a scope or makes its
/// unscoped binding. Each test reads right before and right after such a
/// change in the same task, with no await in between (so the read runs on
/// the thread whose cache answered the one before): a missed invalidation
/// shows as a stale value.
@Suite struct PlaceCacheTests {
    static let v = ContextVar<Int>("place_cache", default: 0)

    @Test func readsFollowScopesInAndOut() async {
        let v = Self.v
        let seen = await Task.detached { () -> [Int] in
            var seen = [v.value!]
            v.withValue(1) {
                seen.append(v.value!)
                v.withValue(2) { seen.append(v.value!) }
                seen.append(v.value!)
            }
            seen.append(v.value!)
            let context = Context()
            try! context.run {
                seen.append(v.value!)
                v.set(3)
                seen.append(v.value!)
            }
            seen.append(v.value!)
            return seen
        }.value
        #expect(seen == [0, 1, 2, 1, 0, 0, 3, 0])
    }

    @Test func asyncScopesInAndOut() async {
        let v = Self.v
        let seen = await Task.detached { () async -> [Int] in
            var seen = [v.value!]
            await v.withValue(1) { () async in
                seen.append(v.value!)
                try! await Context().run { () async in
                    seen.append(v.value!)
                    v.set(2)
                    seen.append(v.value!)
                }
                seen.append(v.value!)
            }
            seen.append(v.value!)
            return seen
        }.value
        #expect(seen == [0, 1, 0, 2, 1, 0])
    }

    /// A first unscoped write after a cached read of an inherited binding:
    /// the next read must see the task's own copy.
    @Test func firstUnscopedWriteAfterACachedInheritedRead() async {
        let v = Self.v
        let seen = await v.withValue(5) { () async -> [Int] in
            await Task { () -> [Int] in
                let before = v.value!
                v.set(6)
                let after = v.value!
                return [before, after]
            }.value
        }
        #expect(seen == [5, 6])
        #expect(v.value == 0)
    }

    /// A child's first read of an inherited binding leaves the thread's
    /// entry alone (the second one fills it): children that read once,
    /// twice or three times, one after another at one address (the
    /// parent's task allocator reuses it) with and without a scope change
    /// in between, and the parent's reads between them, all see their own
    /// values.
    @Test func childReadsOnceOrMoreAndTheParentReadsBetween() async {
        let v = Self.v
        let seen = await v.withValue(1) { () async -> [Int] in
            var seen: [Int] = []
            for round in 0..<3 {
                seen.append(v.value!)
                async let once = v.value!
                seen.append(await once)
                seen.append(v.value!)
                async let twice = [v.value!, v.value!]
                seen += await twice
                await v.withValue(10 + round) { () async in
                    async let thrice = [v.value!, v.value!, v.value!]
                    seen += await thrice
                    seen.append(v.value!)
                }
                seen.append(v.value!)
            }
            return seen
        }
        let round = { (r: Int) in [1, 1, 1, 1, 1, 10 + r, 10 + r, 10 + r, 10 + r, 1] }
        #expect(seen == round(0) + round(1) + round(2))
    }

    /// The spawn helpers unbind around task creation; reads after them in
    /// the same scope still see the scope.
    @Test func readsAfterASpawnHelperSeeTheScope() async {
        let v = Self.v
        let seen = await v.withValue(7) { () async -> [Int] in
            let before = v.value!
            let child = Context.task { v.value! }
            let after = v.value!
            return [before, after, await child.value]
        }
        #expect(seen == [7, 7, 7])
    }

    /// Many tasks at once, each in its own scopes, reading around every
    /// change across awaits: no task reads another's place.
    @Test func concurrentScopesReadTheirOwnValues() async {
        let v = Self.v
        let wrong = await withTaskGroup(of: Int.self) { group in
            for i in 1...scaled(1000) {
                group.addTask {
                    var wrong = 0
                    if v.value != 0 { wrong += 1 }
                    await v.withValue(i) { () async in
                        if v.value != i { wrong += 1 }
                        await Task.yield()
                        if v.value != i { wrong += 1 }
                        v.withValue(-i) { if v.value != -i { wrong += 1 } }
                        if v.value != i { wrong += 1 }
                    }
                    if v.value != 0 { wrong += 1 }
                    v.set(i * 2)
                    await Task.yield()
                    if v.value != i * 2 { wrong += 1 }
                    return wrong
                }
            }
            return await group.reduce(0, +)
        }
        #expect(wrong == 0)
    }
}
