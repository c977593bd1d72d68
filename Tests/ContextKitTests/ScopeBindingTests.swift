import Foundation
import Testing
@testable import ContextKit

/// The scope binding as `withValue` and `run` make it: it holds the C
/// context itself (no `Context` object per scope), and it is pushed as the
/// task-local through the runtime's push alone, also inside a
/// `withTaskGroup` body. Each test checks what a user sees: the values,
/// and when a value goes (its deinit using the library).
@Suite struct ScopeBindingTests {
    /// Synchronous `withValue` and `run` in a `withTaskGroup` body (the
    /// runtime's push binds there without a check of ours first): children
    /// added inside read the scope's value, also after the scope ended; a
    /// `Task {}` made inside reads it after the scope; the body reads its
    /// own value again after each scope.
    @Test func syncScopesInsideATaskGroupBody() async throws {
        let v = ContextVar<Int>("sb_group_sync", default: 0)
        let (slots, copied, after) = try await Context().run { () async -> ([Int], Task<Int, Never>, Int) in
            v.set(1)
            return await withTaskGroup(of: (Int, Int).self) { group in
                let gate = LockedBox(false)
                let copy = v.withValue(2) { () -> Task<Int, Never> in
                    group.addTask {
                        while !gate.value { await Task.yield() }
                        return (0, v.value!)
                    }
                    return Task {
                        while !gate.value { await Task.yield() }
                        return v.value!
                    }
                }
                try! Context().run {
                    v.set(3)
                    group.addTask { (1, v.value!) }
                }
                let after = v.value!
                gate.mutate { $0 = true }
                group.addTask { (2, v.value!) }
                var slots = [0, 0, 0]
                for await (slot, value) in group { slots[slot] = value }
                return (slots, copy, after)
            }
        }
        #expect(slots == [2, 3, 1])
        #expect(await copied.value == 2)
        #expect(after == 1)
        #expect(v.value == 0)
    }

    /// A `withValue` value whose deinit reads its own variable and sets
    /// and resets another: on a thread, released as the scope ends (it then
    /// reads the enclosing value); kept by a `Task {}` made in the scope
    /// until that task ends (it then reads whatever the releasing code
    /// sees: never a freed value, never a stop).
    @Test func withValueValuesGoWithTheirScopeOrTheLastTaskCopy() async {
        let other = ContextVar<Int>("sb_other", default: 0)
        let seen = LockedBox<[String]>([])
        final class Reader: Sendable {
            static let variable = ContextVar<Reader>("sb_reader")
            let id: Int
            let other: ContextVar<Int>
            let seen: LockedBox<[String]>
            init(_ id: Int, _ other: ContextVar<Int>, _ seen: LockedBox<[String]>) {
                self.id = id
                self.other = other
                self.seen = seen
            }
            deinit {
                let read = Reader.variable.value?.id
                let token = other.set(id)
                let set = other.value
                try? other.reset(token)
                seen.mutate { $0.append("\(id):\(read.map(String.init) ?? "nil"):\(set ?? -1)") }
            }
        }
        let (go, open) = AsyncStream<Void>.makeStream()
        let task = onNewThread { () -> Task<Int?, Never> in
            Reader.variable.withValue(Reader(1, other, seen)) {
                let task = Reader.variable.withValue(Reader(2, other, seen)) { () -> Task<Int?, Never> in
                    Task {
                        for await _ in go { break }
                        return Reader.variable.value?.id
                    }
                }
                // Reader(2) is kept by the task; Reader(1) still readable.
                #expect(Reader.variable.value?.id == 1)
                return task
            }
        }
        // Reader(1) went with the outer scope's context, on the thread
        // where nothing encloses the scope (or later through the C
        // runtime's reclamation, outside any scope): it read nothing and
        // set its own id. Reader(2) stays while the task runs.
        #expect(await eventuallyYielding(seconds: 30) { !seen.value.isEmpty })
        #expect(seen.value == ["1:nil:1"])
        open.yield()
        #expect(await task.value == 2)
        #expect(await eventuallyYielding(seconds: 30) { seen.value.count == 2 })
        let second = seen.value.last ?? ""
        #expect(second == "2:nil:2" || second == "2:2:2")
        #expect(other.value == 0)
    }

    /// The same in a task, with async scopes and an `async let` child that
    /// reads the scope's value: the value goes when the scope ends (its
    /// deinit reads the enclosing value), not later.
    @Test func asyncWithValueValueGoesWhenTheScopeEnds() async {
        let counter = LifetimeCounter()
        let v = ContextVar<Tracked>("sb_async")
        let read = await v.withValue(counter.make(1)) { () async -> [Int?] in
            let inner = await v.withValue(counter.make(2)) { () async -> [Int?] in
                async let child = v.value?.id
                await Task.yield()
                return [v.value?.id, await child]
            }
            // The inner value went with its scope's context (at once, or
            // through the C runtime's reclamation soon after).
            #expect(await eventuallyYielding(seconds: 30) { counter.alive == 1 })
            return inner + [v.value?.id]
        }
        #expect(read == [2, 2, 1])
        #expect(await eventuallyYielding(seconds: 30) { counter.alive == 0 })
    }
}
