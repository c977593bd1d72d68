import Testing
@testable import ContextKit

/// A set in one task is never visible to its parent, its siblings or any
/// unrelated task — not even when they share a thread or an actor.
@Suite struct IsolationTests {
    actor Shared {
        var log: [String] = []
        func record(_ entry: String) { log.append(entry) }

        /// Runs in a context of its own on this actor, alternating with other
        /// callers at every suspension point.
        func session(_ name: String, variable: ContextVar<String>, steps: Int) async throws {
            try await Context().run {
                variable.set(name)
                for step in 0..<steps {
                    await Task.yield()
                    record("\(name):\(variable.value ?? "nil")")
                    variable.set(name)        // the actor's isolation is kept
                    if step % 3 == 0 { try await Task.sleep(nanoseconds: 100_000) }
                }
            }
        }
    }

    @Test func twoTasksAlternatingOnOneActor() async throws {
        let actor = Shared()
        let v = ContextVar<String>("who")
        async let a: Void = actor.session("a", variable: v, steps: 40)
        async let b: Void = actor.session("b", variable: v, steps: 40)
        try await a
        try await b
        let log = await actor.log
        #expect(log.count == 80)
        #expect(log.allSatisfy { $0 == "a:a" || $0 == "b:b" })
        #expect(v.value == nil)
    }

    @Test func thousandConcurrentTasksEachInItsOwnRun() async throws {
        let v = ContextVar<Int>("n")
        let n = scaled(1_000)
        let mismatches = try await withThrowingTaskGroup(of: Int.self) { group in
            for i in 0..<n {
                group.addTask {
                    try await Context().run {
                        var bad = 0
                        v.set(i)
                        for _ in 0..<5 {
                            await Task.yield()
                            if v.value != i { bad += 1 }
                        }
                        return bad
                    }
                }
            }
            return try await group.reduce(0, +)
        }
        #expect(mismatches == 0)
    }

    @Test func childSetIsNotSeenByParentOrSibling() async throws {
        let v = ContextVar<Int>("v")
        try await Context().run {
            v.set(0)
            let results = await withTaskGroup(of: (Int, Int?).self) { group in
                group.addTaskInCopiedContext {
                    v.set(1)
                    try? await Task.sleep(nanoseconds: 2_000_000)
                    return (1, v.value)
                }
                group.addTask {
                    try? await Task.sleep(nanoseconds: 1_000_000)
                    return (2, v.value)          // the sibling reads the parent's
                }
                return await group.reduce(into: [Int: Int?]()) { $0[$1.0] = $1.1 }
            }
            #expect(results[1] == 1)
            #expect(results[2] == 0)
            #expect(v.value == 0)
        }
    }
}
