import CContextKitShims
import Foundation
import Testing
@testable import ContextKit

/// Adversarial checks of two mechanisms: scopes in tasks reusing the
/// thread's spare binding (`TaskBinding.park`/`rebind`), and the light
/// tokens `ContextVar.set` makes (no reference to their context, which C
/// names by a never-reused serial).
@Suite struct ReuseAndLightTokenReviewTests {
    static var currentAddress: UnsafeMutableRawPointer? {
        TaskBinding.current.map { Unmanaged.passUnretained($0).toOpaque() }
    }

    // MARK: Spare bindings

    /// The per-thread value cache names a binding and its write count: a
    /// scope that reuses the binding the previous scope filled the cache
    /// from (same object, new C context) must not be served the previous
    /// scope's value — for a variable the new scope does not bind, and for
    /// one it binds to another value — synchronous and async, `run` and
    /// `withValue`.
    @Test func aReusedBindingIsNeverServedThePreviousScopesCachedValue() async throws {
        let v = ContextVar<Int>("review_cache_v")
        let w = ContextVar<Int>("review_cache_w", default: 0)
        var reusedSeen = 0
        for round in 0..<200 {
            let first = v.withValue(round) { () -> UnsafeMutableRawPointer? in
                // Twice: the second read is served by the cache.
                #expect(v.value == round && v.value == round)
                return Self.currentAddress
            }
            // Sync scope of another variable: v is unset there.
            let (second, unset) = w.withValue(1) { (Self.currentAddress, v.value) }
            #expect(unset == nil)
            if second == first { reusedSeen += 1 }
            // Async scope rebinding v: the new value, never the cached one.
            let inner = await v.withValue(round + 1_000) { () async -> Int? in
                _ = v.value
                return v.value
            }
            #expect(inner == round + 1_000)
            // A `run` of a context where v holds something else, and an
            // empty one.
            let context = Context()
            try context.run { v.set(-round) }
            let ran = try await context.run { () async -> Int? in
                _ = v.value
                return v.value
            }
            #expect(ran == -round)
            let empty = try await Context().run { () async -> Int? in v.value }
            #expect(empty == nil)
            #expect(v.value == nil)
        }
        // The case under test happened (the sync scopes ran back to back on
        // one thread with no suspension in between).
        #expect(reusedSeen > 0)
    }

    /// Every kind of child a scope can have, created inside scopes whose
    /// bindings the running threads keep reusing: a `Task {}` that reads
    /// only after the scope ended (and after hundreds of later scopes on
    /// the same threads), one that reads before and after, a child of a
    /// group made outside the scope, a discarding-group child, `async let`,
    /// `Task.detached` (sees nothing), and a `Task.immediate`. Each reads
    /// its own scope's values; every value is released.
    @Test func childrenOfEveryKindReadTheirOwnScopeAcrossReuse() async throws {
        let counter = LifetimeCounter()
        let v = DefaultedContextVar<Int>("review_children_v", default: -1)
        let tracked = ContextVar<Tracked>("review_children_tracked")
        let reasons = LockedBox<[String]>([])
        let workers = 6
        let rounds = scaled(60)
        let failures = await withTaskGroup(of: Int.self) { outer in
            for worker in 0..<workers {
                outer.addTask {
                    var failures = 0
                    let gate = AsyncGate()
                    var late: [(Int, Task<(Int, Int?), Never>)] = []
                    await withTaskGroup(of: (Int, Int).self) { held in
                        for round in 0..<rounds {
                            let mine = worker * 100_000 + round * 10
                            let ok = await tracked.withValue(counter.make(mine)) { () async -> Bool in
                                await v.withValue(mine) { () async -> Bool in
                                    // Reads only after the scope ended.
                                    late.append((mine, Task {
                                        await gate.wait()
                                        return (v.value, tracked.value?.id)
                                    }))
                                    // Reads now and later.
                                    let both = Task { () -> (Int, Int) in
                                        let before = v.value
                                        await Task.yield()
                                        return (before, v.value)
                                    }
                                    // A child of a group made outside the scope
                                    // (reads after the scope ended, as `late`).
                                    held.addTask {
                                        await gate.wait()
                                        return (mine + 1, v.value)
                                    }
                                    async let structured = v.value
                                    let detached = await Task.detached { v.value }.value
                                    let discarded = LockedBox<[Int]>([])
                                    await withDiscardingTaskGroup { group in
                                        for _ in 0..<2 { group.addTask { discarded.mutate { $0.append(v.value) } } }
                                    }
                                    // Before the set: an inherited read of a live
                                    // scope sees the owner's later writes.
                                    let (before, after) = await both.value
                                    let s = await structured
                                    v.set(mine + 1)
                                    let immediate = await Task.immediate { v.value }.value
                                    let seen = [s, detached, immediate, before, after, v.value] + discarded.value
                                    let expected = [mine, -1, mine + 1, mine, mine, mine + 1, mine, mine]
                                    if seen != expected { reasons.mutate { $0.append("in scope: \(seen) != \(expected)") } }
                                    return seen == expected
                                }
                            }
                            if !ok { failures += 1 }
                            // Later scopes on the same threads reuse bindings.
                            for later in 0..<3 {
                                let sync = v.withValue(later) { v.value }
                                let async = await v.withValue(later) { () async -> Int in
                                    await Task.yield()
                                    return v.value
                                }
                                if sync != later || async != later {
                                    reasons.mutate { $0.append("later: \(sync) \(async) != \(later)") }
                                    failures += 1
                                }
                            }
                        }
                        await gate.open()
                        for await (expected, seen) in held where seen != expected {
                            reasons.mutate { $0.append("group child: \(seen) != \(expected)") }
                            failures += 1
                        }
                    }
                    for (expected, task) in late {
                        let (seen, id) = await task.value
                        // The late Task copied the items while v was `mine`;
                        // the scope then set mine + 1 and ended: it reads
                        // what the scope ended with.
                        if seen != expected + 1 || id != expected {
                            reasons.mutate { $0.append("late task: \(seen) \(String(describing: id)) for \(expected)") }
                            failures += 1
                        }
                    }
                    return failures
                }
            }
            return await outer.reduce(0, +)
        }
        #expect(failures == 0, "\(reasons.value.prefix(10))")
        #expect(eventually { counter.alive == 0 })
    }

    /// A scope whose body throws, and one whose task is cancelled, ends as
    /// any other: the next scopes on the thread (which may reuse its
    /// binding) see their own values, the task reads what it read before,
    /// and the thrown-out scope's values are released.
    @Test func throwingAndCancelledScopesLeaveReusableBindingsClean() async throws {
        struct Boom: Error {}
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("review_throw_v")
        let w = DefaultedContextVar<Int>("review_throw_w", default: 0)
        for round in 0..<100 {
            await #expect(throws: Boom.self) {
                try await v.withValue(counter.make(round)) { () async throws in
                    w.set(round)
                    await Task.yield()
                    throw Boom()
                }
            }
            #expect(throws: Boom.self) {
                try v.withValue(counter.make(round)) { () throws in throw Boom() }
            }
            #expect(v.value == nil)
            #expect(w.value == 0)
            #expect(counter.alive == 0)
            let task = Task {
                try await Context().run { () async throws -> Int in
                    w.set(round)
                    try await Task.sleep(nanoseconds: 60_000_000_000)
                    return w.value
                }
            }
            task.cancel()
            await #expect(throws: CancellationError.self) { try await task.value }
            #expect(await w.withValue(round + 1) { () async -> Int in w.value } == round + 1)
        }
        #expect(counter.alive == 0)
    }

    /// Scopes nested 300 deep (async and synchronous alternating) in many
    /// tasks at once: every level reads its own value on the way down and
    /// again on the way up after the inner scopes ended (their bindings
    /// parked and reused by the other levels and tasks).
    @Test func deepNestingInManyTasksReadsEachLevelOnTheWayBack() async {
        let v = DefaultedContextVar<Int>("review_deep_v", default: -1)
        let depth = 300
        @Sendable func descend(_ level: Int, _ base: Int) async -> Int {
            if level == depth { return 0 }
            let value = base + level
            if level % 2 == 0 {
                return await v.withValue(value) { () async -> Int in
                    var bad = v.value == value ? 0 : 1
                    if level % 16 == 0 { await Task.yield() }
                    bad += await descend(level + 1, base)
                    return bad + (v.value == value ? 0 : 1)
                }
            }
            // A synchronous scope around a short-lived async continuation:
            // the level reads after the inner sync scope has parked.
            let inner = v.withValue(value) { v.value == value ? 0 : 1 }
            return await v.withValue(value) { () async -> Int in
                inner + (await descend(level + 1, base)) + (v.value == value ? 0 : 1)
            }
        }
        let bad = await withTaskGroup(of: Int.self) { group in
            for task in 0..<8 { group.addTask { await descend(0, task * 10_000) } }
            return await group.reduce(0, +)
        }
        #expect(bad == 0)
        #expect(v.value == -1)
    }

    /// The user's own `@TaskLocal` scopes interleaved with ContextKit's,
    /// in both nesting orders, across suspensions and reused bindings: each
    /// sees its own value and both unwind.
    @Test func interleavedWithTheUsersOwnTaskLocal() async {
        let v = DefaultedContextVar<Int>("review_tl_v", default: 0)
        var bad = 0
        for round in 1...200 {
            bad += await ReviewTaskLocal.$number.withValue(round) { () async -> Int in
                await v.withValue(round * 2) { () async -> Int in
                    var bad = 0
                    await Task.yield()
                    bad += await ReviewTaskLocal.$number.withValue(-round) { () async -> Int in
                        let sync = v.withValue(round * 3) { v.value + ReviewTaskLocal.number }
                        await Task.yield()
                        let child = await Task { v.value + ReviewTaskLocal.number }.value
                        return (sync == round * 3 - round ? 0 : 1) + (child == round * 2 - round ? 0 : 1)
                    }
                    return bad + (ReviewTaskLocal.number == round && v.value == round * 2 ? 0 : 1)
                }
            }
            if ReviewTaskLocal.number != 0 || v.value != 0 { bad += 1 }
        }
        #expect(bad == 0)
    }

    /// Scopes opened by an actor-isolated method (the inlined async `run`
    /// and `withValue` run in the actor's frame) around awaits of other
    /// actors and nonisolated work, from many tasks at once.
    @Test func actorIsolatedCallersReuseBindingsSafely() async {
        let v = DefaultedContextVar<Int>("review_actor_v", default: 0)
        let actors = (0..<4).map { _ in ReviewScopeActor(v) }
        let bad = await withTaskGroup(of: Int.self) { group in
            for index in 0..<16 {
                let actor = actors[index % actors.count]
                let other = actors[(index + 1) % actors.count]
                group.addTask { await actor.rounds(100, base: index * 1_000, other: other) }
            }
            return await group.reduce(0, +)
        }
        #expect(bad == 0)
    }

    /// Chain walks of tasks that inherited a scope (they mark what they
    /// reach read, so it is never reused) race the owner ending that scope
    /// and opening new ones that reuse bindings: the walk never crashes and
    /// the walker's values stay its own.
    @Test func chainWalksRaceScopeEndsAndReuse() async {
        let v = DefaultedContextVar<Int>("review_walk_v", default: 0)
        let bad = await withTaskGroup(of: Int.self) { group in
            for worker in 0..<4 {
                group.addTask {
                    var bad = 0
                    var walkers: [Task<Int, Never>] = []
                    for round in 0..<scaled(150) {
                        let mine = worker * 10_000 + round
                        await v.withValue(mine) { () async in
                            await v.withValue(mine + 1) { () async in
                                walkers.append(Task {
                                    var bad = 0
                                    for _ in 0..<3 {
                                        let text = Context.currentChainDescription
                                        if !text.contains("withValue(review_walk_v)") { bad += 1 }
                                        if v.value != mine + 1 { bad += 1 }
                                        await Task.yield()
                                    }
                                    return bad
                                })
                                await Task.yield()
                            }
                            if v.value != mine { bad += 1 }
                        }
                        for later in 0..<2 {
                            let read = v.withValue(later) { v.value }
                            if read != later { bad += 1 }
                        }
                        if walkers.count > 8 {
                            for walker in walkers { bad += await walker.value }
                            walkers.removeAll()
                        }
                    }
                    for walker in walkers { bad += await walker.value }
                    return bad
                }
            }
            return await group.reduce(0, +)
        }
        #expect(bad == 0)
    }

    /// The async `run` is inlined into its caller, and its binding borrows
    /// the caller's C context (a claim takes no reference): the `Context`
    /// must stay alive until the scope's end, also when it is a temporary
    /// (`Context().run`) and when the caller drops its only variable
    /// inside the body. Were it freed early, the next `Context()` in the
    /// body would take the same C object from the thread's cache and the
    /// outer scope would read the inner one's values (or the end of the
    /// scope would stop on an unclaimed context). In a child process: a
    /// stop fails this test only. Meaningful in an optimised build.
    @Test func anInlinedAsyncRunKeepsItsContextAliveToTheScopesEnd() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("review_inline_lifetime")
            for round in 0..<200 {
                let outer = try! await Context().run { () async -> Int? in
                    v.set(round)
                    await Task.yield()
                    _ = try! await Context().run { () async -> Int? in
                        v.set(-round)
                        return v.value
                    }
                    _ = try! Context().run { () -> Int? in
                        v.set(-round - 1)
                        return v.value
                    }
                    return v.value
                }
                if outer != round { exit(2) }
                var holder: Context? = Context()
                let dropped = try! await holder!.run { () async -> Int? in
                    v.set(round)
                    holder = nil
                    await Task.yield()
                    _ = try! await Context().run { () async -> Int? in
                        v.set(-round)
                        return v.value
                    }
                    return v.value
                }
                if dropped != round || holder != nil { exit(3) }
            }
            exit(0)
        }
    }

    /// On a plain thread (outside any task): a synchronous scope starts a
    /// `Task.immediate` (it runs on this thread until it suspends, copying
    /// the thread's task-local items) and a `Task {}`, then ends; the
    /// thread's next scopes reuse its spare binding. The tasks read what
    /// their scope ended with, never a later scope's value.
    @Test func tasksStartedInAThreadScopeReadItsSnapshotAcrossReuse() async {
        let v = DefaultedContextVar<Int>("review_thread_immediate", default: -1)
        let gate = AsyncGate()
        let tasks = await onNewThreadUntilExit { () -> [(Int, Task<(Int, Int), Never>)] in
            var tasks: [(Int, Task<(Int, Int), Never>)] = []
            for round in 0..<50 {
                v.withValue(round) {
                    tasks.append((round, Task.immediate {
                        let first = v.value
                        await gate.wait()
                        return (first, v.value)
                    }))
                    tasks.append((round + 1, Task {
                        await gate.wait()
                        return (v.value - 1, v.value)
                    }))
                    v.set(round + 1)
                }
                // Later scopes on this thread reuse its spare binding.
                for later in 0..<3 { _ = v.withValue(1_000 + later) { v.value } }
            }
            return tasks
        }
        await gate.open()
        var bad: [String] = []
        for (index, (expected, task)) in tasks.enumerated() {
            let (first, last) = await task.value
            // The immediate task read `round` before the set; after the
            // scope ended both read what it ended with (round + 1).
            let want = index % 2 == 0 ? (expected, expected + 1) : (expected - 1, expected)
            if first != want.0 || last != want.1 { bad.append("#\(index): (\(first), \(last)) != \(want)") }
        }
        #expect(bad.isEmpty, "\(bad.prefix(5))")
    }

    // MARK: Light tokens

    /// What `reset` threw, or nil when it reset.
    static func resetError<V>(_ variable: ContextVar<V>, _ token: Token<V>) -> ContextError? {
        do throws(ContextError) {
            try variable.reset(token)
            return nil
        } catch {
            return error
        }
    }

    /// A token made in one scope, reset in the next scope — which reuses
    /// the same binding and very likely a C context at the freed one's
    /// address — throws tokenFromDifferentContext and changes nothing; in
    /// its own scope it resets once, then throws tokenAlreadyUsed.
    @Test func aTokenOfAnEndedScopeIsForeignToTheScopeThatReusesItsBinding() async throws {
        let v = ContextVar<Int>("review_token_reuse")
        for round in 0..<200 {
            let token = v.withValue(round) { v.set(round + 1) }
            #expect(token.oldValue == round)
            v.withValue(-1) {
                #expect(throws: ContextError.tokenFromDifferentContext) { try v.reset(token) }
                #expect(v.value == -1)
                #expect(!token.isUsed)
            }
            let asyncToken = await v.withValue(round) { () async -> Token<Int> in v.set(round + 2) }
            await v.withValue(-2) { () async in
                #expect(throws: ContextError.tokenFromDifferentContext) { try v.reset(asyncToken) }
                #expect(throws: ContextError.tokenFromDifferentContext) { try v.reset(token) }
                #expect(v.value == -2)
            }
            try await v.withValue(round) { () async throws in
                let own = v.set(round + 3)
                await Task.yield()
                try v.reset(own)
                #expect(v.value == round)
                #expect(throws: ContextError.tokenAlreadyUsed) { try v.reset(own) }
                #expect(v.value == round)
            }
        }
    }

    /// Tokens across tasks: a token of a task's private context is foreign
    /// to every other task's (and to its parent's), and a child's failed
    /// reset leaves the parent's value alone; the parent resets it after.
    @Test func tokensAcrossTasksNameTheirOwnContext() async throws {
        let v = ContextVar<Int>("review_token_tasks", default: 0)
        try await Context().run { () async throws in
            let token = v.set(1)
            let results = await withTaskGroup(of: Bool.self) { group in
                for _ in 0..<8 {
                    group.addTask {
                        var ok = true
                        ok = ok && Self.resetError(v, token) == .tokenFromDifferentContext
                        // After the child's first write (its own copy).
                        v.set(5)
                        ok = ok && Self.resetError(v, token) == .tokenFromDifferentContext
                        return ok && v.value == 5 && !token.isUsed
                    }
                }
                return await group.reduce(true) { $0 && $1 }
            }
            #expect(results)
            let childToken = await Task { v.set(9) }.value
            #expect(throws: ContextError.tokenFromDifferentContext) { try v.reset(childToken) }
            #expect(v.value == 1)
            try v.reset(token)
            #expect(v.value == 0)
        }
    }

    /// A token outlives its variable (the user drops the variable) and the
    /// context it was made in: its old value and its variable stay readable,
    /// and releasing the token last releases the old value, whose deinit
    /// uses the library (sets, opens a scope) on the releasing thread.
    @Test func aTokenOutlivesItsVariableAndContext() async {
        let counter = LifetimeCounter()
        let seen = LockedBox<[Int]>([])
        let other = ContextVar<Int>("review_token_other", default: 0)
        var tokens: [Token<ReviewLibraryInDeinit>] = []
        for round in 0..<50 {
            // The variable and the context exist only in here.
            let token = try! Context().run { () -> Token<ReviewLibraryInDeinit> in
                let v = ContextVar<ReviewLibraryInDeinit>("review_token_dropped_\(round)")
                v.set(ReviewLibraryInDeinit(round, counter: counter, other: other, seen: seen))
                return v.set(ReviewLibraryInDeinit(round + 1_000, counter: counter, other: other, seen: seen))
            }
            tokens.append(token)
        }
        // Only the tokens' old values are alive (the contexts are gone).
        #expect(counter.alive == 50)
        for (round, token) in tokens.enumerated() {
            #expect(token.oldValue?.id == round)
            #expect(token.variable.name == "review_token_dropped_\(round)")
            #expect(!token.isUsed)
        }
        // Released from a task on the pool, half of them, and the rest here.
        let half = LockedBox(Array(tokens.prefix(25)))
        tokens.removeFirst(25)
        await Task.detached { half.mutate { $0.removeAll() } }.value
        #expect(counter.alive == 25)
        tokens.removeAll()
        #expect(counter.alive == 0)
        #expect(seen.value.count == 100)
        #expect(seen.value.allSatisfy { $0 == 8 })
        #expect(other.value == 0)
    }

    /// After in-place sets (the context's map is its own, so the old value's
    /// reference moves into the token): each token keeps its old value,
    /// also after later in-place sets overwrote the slot, MISSING stays
    /// distinct from a stored nil, and resets in reverse order restore each.
    @Test func inPlaceSetsMoveOldValuesIntoTheirTokens() throws {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked?>("review_inplace")
        try Context().run {
            let t0 = v.set(nil)
            #expect(t0.oldValue == nil)  // MISSING
            var tokens: [Token<Tracked?>] = [t0]
            for round in 0..<20 { tokens.append(v.set(counter.make(round))) }
            // t1's old value is the stored nil: .some(nil), not MISSING.
            let stored: Tracked?? = tokens[1].oldValue
            #expect(stored != nil && stored! == nil)
            for round in 2..<21 { #expect(tokens[round].oldValue??.id == round - 2) }
            #expect(counter.alive == 20)
            for round in stride(from: 20, through: 1, by: -1) {
                try v.reset(tokens[round])
                #expect(tokens[round].isUsed)
                if round >= 2 { #expect((v.value ?? nil)?.id == round - 2) }
            }
            let afterFirst: Tracked?? = v.value
            #expect(afterFirst != nil && afterFirst! == nil)
            try v.reset(t0)
            let missing: Tracked?? = v.value
            #expect(missing == nil)
            // The tokens keep their old values until they go.
            #expect(counter.alive == 19)
            tokens.removeAll()
        }
        #expect(counter.alive == 0)
    }

    /// Many tasks and threads set and reset in their own scopes (reused
    /// bindings, recycled C contexts) and try every other worker's latest
    /// token: a foreign reset always throws and never changes the value.
    @Test func foreignTokensNeverResetUnderChurn() async {
        let v = ContextVar<Int>("review_token_churn", default: 0)
        let board = LockedBox<[Int: Token<Int>]>([:])
        let bad = await withTaskGroup(of: Int.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    var bad = 0
                    for round in 0..<scaled(300) {
                        let mine = worker * 100_000 + round
                        let foreign = board.value.filter { $0.key != worker }.map(\.value)
                        let ok = await v.withValue(mine) { () async -> Bool in
                            let token = v.set(mine + 1)
                            board.mutate { $0[worker] = token }
                            var ok = true
                            for other in foreign {
                                let error = Self.resetError(v, other)
                                ok = ok && (error == .tokenFromDifferentContext || error == .tokenAlreadyUsed)
                            }
                            if round % 7 == 0 { await Task.yield() }
                            ok = ok && v.value == mine + 1
                            ok = ok && Self.resetError(v, token) == nil
                            return ok && v.value == mine
                        }
                        if !ok { bad += 1 }
                    }
                    return bad
                }
            }
            return await group.reduce(0, +)
        }
        #expect(bad == 0)
    }
}

enum ReviewTaskLocal {
    @TaskLocal static var number = 0
}

actor ReviewScopeActor {
    let v: DefaultedContextVar<Int>
    var state = 0
    init(_ v: DefaultedContextVar<Int>) { self.v = v }

    func touch() -> Int {
        state += 1
        return v.value
    }

    func rounds(_ count: Int, base: Int, other: ReviewScopeActor) async -> Int {
        var bad = 0
        for round in 0..<count {
            let mine = base + round
            bad += await v.withValue(mine) { () async -> Int in
                var bad = v.value == mine ? 0 : 1
                // Another actor inherits the task's scope.
                if await other.touch() != mine { bad += 1 }
                bad += (try? await Context().run { () async -> Int in
                    v.set(-mine)
                    await Task.yield()
                    return v.value == -mine ? 0 : 1
                }) ?? 1
                bad += v.withValue(mine + 1) { v.value == mine + 1 ? 0 : 1 }
                return bad + (v.value == mine ? 0 : 1)
            }
        }
        return bad + (v.value == 0 ? 0 : 1)
    }
}

/// A value whose deinit uses the library: sets a variable in a fresh
/// context and reads it in a scope.
final class ReviewLibraryInDeinit: Sendable {
    let id: Int
    let counter: LifetimeCounter
    let other: ContextVar<Int>
    let seen: LockedBox<[Int]>
    init(_ id: Int, counter: LifetimeCounter, other: ContextVar<Int>, seen: LockedBox<[Int]>) {
        self.id = id
        self.counter = counter
        self.other = other
        self.seen = seen
        counter.made.add(1, ordering: .sequentiallyConsistent)
    }
    deinit {
        let read = (try? Context().run { () -> Int in
            other.set(7)
            return other.withValue(other.value! + 1) { other.value! }
        }) ?? -1
        seen.mutate { $0.append(read) }
        counter.released.add(1, ordering: .sequentiallyConsistent)
    }
}
