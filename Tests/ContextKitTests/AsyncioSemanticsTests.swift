import Foundation
import Testing
import ContextKit

#if canImport(Glibc)
import Glibc
#endif

/// asyncio's task semantics, case by case: each test runs the Swift twin of
/// a case in Tests/Semantics/asyncio_twins.py and asserts the result that
/// CPython's asyncio prints for it. Python's `create_task` maps to `Task {}`
/// or `Context.task`, `gather` to a task group, `ctx.run` to `Context.run`;
/// each case starts in a `Task.detached` (a fresh task in an empty context,
/// as each Python case starts in a fresh `asyncio.run`).
@Suite struct AsyncioSemanticsTests {
    /// The results CPython prints, by case name (run once per process).
    static let python: [String: String] = {
        let script = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Semantics/asyncio_twins.py")
        // popen rather than Foundation's Process, which leaks a weak
        // reference under LeakSanitizer (make swift-asan).
        guard let pipe = popen("python3 '\(script.path)'", "r") else { return [:] }
        var output = ""
        var buffer = [CChar](repeating: 0, count: 4096)
        while fgets(&buffer, Int32(buffer.count), pipe) != nil {
            output += String(cString: buffer)
        }
        pclose(pipe)
        var results: [String: String] = [:]
        for line in output.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            results[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return results
    }()

    /// Asserts that the Swift twin of `name` gives what asyncio gives.
    func expectTwin(_ name: String, _ swift: @escaping @Sendable () async -> String) async throws {
        let expected = try #require(Self.python[name], "python3 did not print case \(name)")
        let actual = await Task.detached { await swift() }.value
        #expect(actual == expected, "case \(name): Swift \(actual), asyncio \(expected)")
    }

    static let v = ContextVar<Int>("v", default: 0)

    @Test func childSetIsPrivate() async throws {
        let v = Self.v
        try await expectTwin("child_set_is_private") {
            v.set(1)
            let c = await Task {
                v.set(2)
                await Task.yield()
                return v.value!
            }.value
            return "\(c),\(v.value!)"
        }
    }

    @Test func siblingsAreIsolated() async throws {
        let v = Self.v
        try await expectTwin("siblings_are_isolated") {
            let mismatches = await withTaskGroup(of: Bool.self) { group in
                for i in 1...10 {
                    group.addTask {
                        v.set(i)
                        await Task.yield()
                        return v.value == i
                    }
                }
                var bad = 0
                for await ok in group where !ok { bad += 1 }
                return bad
            }
            return "\(mismatches),\(v.value!)"
        }
    }

    @Test func foreignTokenResetRaises() async throws {
        let v = Self.v
        try await expectTwin("foreign_token_reset_raises") {
            let token = v.set(5)
            let result = await Task {
                do {
                    try v.reset(token)
                    return "no error"
                } catch let error as ContextError {
                    return error == .tokenFromDifferentContext ? "ValueError" : "\(error)"
                } catch {
                    return "\(error)"
                }
            }.value
            return "\(result),\(v.value!)"
        }
    }

    /// `Context.task` is the exact twin of `create_task`: a copy taken at
    /// creation. (`Task {}` is not, after an unscoped `set`: see
    /// TaskWriteTests.plainTaskSeesLaterUnscopedSet and docs/concurrency.md.)
    @Test func taskSeesContextAtCreation() async throws {
        let v = Self.v
        try await expectTwin("task_sees_context_at_creation") {
            v.set(1)
            let (go, open) = AsyncStream<Void>.makeStream()
            let t = Context.task {
                for await _ in go { break }
                return v.value!
            }
            v.set(2)
            open.yield()
            return "\(await t.value),\(v.value!)"
        }
    }

    @Test func runChangesThatContext() async throws {
        let v = Self.v
        try await expectTwin("run_changes_that_context") {
            let context = Context()
            try? context.run { v.set(7) }
            return "\(context[v]!),\(v.value!)"
        }
    }

    @Test func enteringAnEnteredContextRaises() async throws {
        try await expectTwin("entering_an_entered_context_raises") {
            let context = Context()
            return (try? context.run { () -> String in
                do {
                    try context.run {}
                    return "no error"
                } catch let error as ContextError {
                    return error == .contextAlreadyEntered ? "RuntimeError" : "\(error)"
                } catch {
                    return "\(error)"
                }
            }) ?? "outer run failed"
        }
    }

    @Test func resetRestoresInOrder() async throws {
        let v = Self.v
        try await expectTwin("reset_restores_in_order") {
            let t1 = v.set(1)
            let t2 = v.set(2)
            let a = v.value!
            try? v.reset(t2)
            let b = v.value!
            try? v.reset(t1)
            return "\(a),\(b),\(v.value!)"
        }
    }

    @Test func syncHelperCalledFromATask() async throws {
        let v = Self.v
        @Sendable func helper() -> Int {
            let token = v.set(9)
            let x = v.value!
            try? v.reset(token)
            return x
        }
        try await expectTwin("sync_helper_called_from_a_task") {
            await Task.yield()
            let a = helper()
            return "\(a),\(v.value!)"
        }
    }

    /// 2,000 concurrent tasks in a group, each setting its own id without
    /// any `Context.run`, reading it across awaits and in an `async let`
    /// child: zero mismatches in asyncio. In Swift the `async let` child
    /// does not see its parent's unscoped `set` (docs/concurrency.md,
    /// "Unscoped writes"): a known issue, so that the day it passes this
    /// test says so. The reads across awaits are checked exactly by
    /// `groupOf2000EachSetsItsIDAcrossAwaits`.
    @Test func groupOf2000EachSetsItsID() async throws {
        let v = Self.v
        try await withKnownIssue("an async let child does not see its parent's unscoped set") {
            try await expectTwin("group_of_2000_each_sets_its_id") {
                await Self.group2000(v, asyncLetChild: true)
            }
        }
    }

    /// The same 2,000 tasks, reading their own id across awaits, in
    /// synchronous code, and in a child spawned with `Context.task` (the
    /// helper that passes unscoped values on): zero mismatches, as asyncio.
    @Test func groupOf2000EachSetsItsIDAcrossAwaits() async throws {
        let v = Self.v
        try await expectTwin("group_of_2000_each_sets_its_id") {
            await Self.group2000(v, asyncLetChild: false)
        }
    }

    /// Each of 2,000 group children sets its id, awaits, and compares what
    /// it reads and what a child reads (an `async let`, or a task started
    /// with `Context.task`) with its id; returns "mismatches,parent value".
    static func group2000(_ v: ContextVar<Int>, asyncLetChild: Bool) async -> String {
        let mismatches = await withTaskGroup(of: Int.self) { group in
            for i in 1...2000 {
                group.addTask {
                    v.set(i)
                    await Task.yield()
                    let fromChild: Int
                    if asyncLetChild {
                        async let inner = v.value!
                        fromChild = await inner
                    } else {
                        fromChild = await Context.task { v.value! }.value
                    }
                    let own = v.value!
                    return (own != i ? 1 : 0) + (fromChild != i ? 1 : 0)
                }
            }
            return await group.reduce(0, +)
        }
        return "\(mismatches),\(v.value!)"
    }
}
