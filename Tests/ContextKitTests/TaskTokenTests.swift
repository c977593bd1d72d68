import Synchronization
import Testing

@testable import ContextKit

/// Tokens made by `set` in a task inside its own scope: the write goes
/// through the specialised path (the task's binding from its place entry),
/// and a discarded token may live on the stack. Its old value, its errors
/// and its release must be exactly those of a token made anywhere else.
@Suite struct TaskTokenTests {
    @Test func oldValueAndResetInATaskScope() async throws {
        let v = ContextVar<Int>("task_token", default: 0)
        let seen = try await Context().run { () async throws -> [Int?] in
            let first = v.set(1)
            let second = v.set(2)
            var seen = [first.oldValue, second.oldValue, try v.get()]
            try v.reset(second)
            seen.append(try v.get())
            try v.reset(first)
            seen.append(try v.get())
            seen.append(first.isUsed && second.isUsed ? 1 : 0)
            return seen
        }
        #expect(seen == [nil, 1, 2, 1, 0, 1])
    }

    @Test func resetErrorsInPythonsOrderInATaskScope() async throws {
        let v = ContextVar<Int>("task_token_v", default: 0)
        let w = ContextVar<Int>("task_token_w", default: 0)
        let context = Context()
        let token = try await context.run { () async throws -> Token<Int> in
            let token = v.set(1)
            #expect(throws: ContextError.tokenFromDifferentVariable) { try w.reset(token) }
            try v.reset(token)
            #expect(throws: ContextError.tokenAlreadyUsed) { try v.reset(token) }
            return v.set(2)
        }
        // Made in `context`'s scope: another scope's context, and an
        // `async let` child of that scope (its own copy once it writes),
        // reject it and change nothing.
        try await Context().run { () async throws in
            #expect(throws: ContextError.tokenFromDifferentContext) { try v.reset(token) }
            #expect(try v.get() == 0)
        }
        let childError = try await context.run { () async throws -> ContextError? in
            async let child: ContextError? = {
                do {
                    try v.reset(token)
                    return nil
                } catch {
                    return error as? ContextError
                }
            }()
            return await child
        }
        #expect(childError == .tokenFromDifferentContext)
        #expect(context[v] == 2)
        #expect(!token.isUsed)
    }

    /// A discarded token's release drops the old value it kept, there and
    /// then; the value's deinit uses the library again (reads the variable,
    /// sets another one) inside the same scope.
    @Test func discardedTokenReleasesItsOldValueReentrantly() async throws {
        let v = ContextVar<ReleaseHook?>("task_token_reentrant", default: nil)
        let seenInDeinit = ContextVar<Int>("task_token_seen", default: 0)
        let log = LockedBox<[Int]>([])
        let after = try await Context().run { () async throws -> [Int] in
            v.set(ReleaseHook(id: 1) {
                // Runs when the discarded token of `set(2)` goes: the
                // variable already holds 2.
                let current = (try? v.get())??.id ?? -1
                seenInDeinit.set(current)
                log.mutate { $0.append(current) }
            })
            v.set(ReleaseHook(id: 2) {})
            return [log.value.count, seenInDeinit.value ?? -1]
        }
        #expect(after == [1, 2])
        #expect(log.value == [2])
    }

    /// Many tasks, each in its own scope, set and discard tokens and reset
    /// kept ones: every value is released once, none leaks.
    @Test func manyTasksSetAndDiscardTokens() async throws {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked?>("task_token_many", default: nil)
        let rounds = scaled(200)
        let wrong = await withTaskGroup(of: Int.self) { group -> Int in
            for _ in 0..<8 {
                group.addTask {
                    var wrong = 0
                    for i in 0..<rounds {
                        let ok = try? await Context().run { () async throws -> Bool in
                            v.set(counter.make(i))
                            let kept = v.set(counter.make(i + 1))
                            async let child = v.value??.id
                            let childSaw = await child
                            try v.reset(kept)
                            return childSaw == i + 1 && v.value??.id == i
                        }
                        if ok != true { wrong += 1 }
                    }
                    return wrong
                }
            }
            return await group.reduce(0, +)
        }
        #expect(wrong == 0)
        #expect(eventually { counter.alive == 0 })
    }
}

/// A value that runs `onDeinit` when released.
final class ReleaseHook: Sendable {
    let id: Int
    let onDeinit: @Sendable () -> Void
    init(id: Int, onDeinit: @escaping @Sendable () -> Void) {
        self.id = id
        self.onDeinit = onDeinit
    }
    deinit { onDeinit() }
}
