import Testing
@testable import ContextKit

/// The rule for `set`/`reset` in tasks (docs/concurrency.md): only the task
/// that entered a context writes it; anywhere else the program stops with a
/// message naming the fix.
@Suite struct WriteRuleTests {
    @Test func setInTaskWithoutContextStops() async throws {
        let result = try #require(
            await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
                let requestID = ContextVar<Int>("request_id")
                await Task.detached { _ = requestID.set(1) }.value
            })
        let stderr = String(decoding: result.standardErrorContent, as: UTF8.self)
        #expect(stderr.contains(
            "ContextVar 'request_id': set(_:) in a task that has not entered a context of its own"))
        #expect(stderr.contains("`request_id.withValue(…) { … }`"))
    }

    @Test func exitTestsDetectASurvivingProcess() async {
        // Guards against the exit tests above passing vacuously.
        await #expect(processExitsWith: .success) {
            let requestID = ContextVar<Int>("request_id")
            try Context().run { _ = requestID.set(1) }
        }
    }

    @Test func setInChildTaskOfAnotherTasksContextStops() async {
        await #expect(processExitsWith: .failure) {
            let requestID = ContextVar<Int>("request_id")
            try await Context().run {
                async let child: Void = { _ = requestID.set(2) }()
                await child
            }
        }
    }

    @Test func resetInChildTaskOfAnotherTasksContextStops() async {
        await #expect(processExitsWith: .failure) {
            let requestID = ContextVar<Int>("request_id")
            try await Context().run {
                let token = requestID.set(1)
                await withTaskGroup(of: Void.self) { group in
                    group.addTask { try? requestID.reset(token) }
                }
            }
        }
    }

    @Test func setInOwnContextWorks() async throws {
        let requestID = ContextVar<Int>("request_id")
        let seen = try await Context().run {
            requestID.set(3)
            await Task.yield()
            return requestID.value
        }
        #expect(seen == 3)
    }

    @Test func decisionWithoutFrameIsNoContext() {
        #expect(WriteDecision.decide(frame: nil, task: 42) == .noContext)
    }

    @Test func decisionForOwnerOfActiveFrameAllows() {
        let frame = TaskFrame(context: Context(), owner: 42)
        #expect(WriteDecision.decide(frame: frame, task: 42) == .allowed)
        #expect(WriteDecision.decide(frame: frame, task: 43) == .inheritedContext)
        frame.deactivate()
        #expect(WriteDecision.decide(frame: frame, task: 42) == .endedContext)
    }

    @Test func threadFrameIsNeverWritableByATask() {
        let frame = TaskFrame(context: Context(), owner: 0)
        #expect(WriteDecision.decide(frame: frame, task: 7) == .inheritedContext)
    }

    @Test func messageNamesVariableAndFix() {
        let message = WriteDecision.message(for: .inheritedContext, variable: "request_id", operation: "set(_:)")
        #expect(message.hasPrefix(
            "ContextVar 'request_id': set(_:) in a task that has not entered a context of its own "
                + "would change a context other tasks share"))
        #expect(message.contains("`try await Context.copyCurrent().run { … }`"))
        #expect(message.contains("`Context.task { … }`"))
        #expect(message.contains("`request_id.withValue(…) { … }`"))
    }

    @Test func resetWithoutContextThrowsInPythonOrder() async throws {
        let x = ContextVar<Int>("x")
        let y = ContextVar<Int>("y")
        let (token, used) = try Context().run {
            let t = x.set(1)
            let u = x.set(2)
            try x.reset(u)
            return (t, u)
        }
        await Task.detached {
            #expect(throws: ContextError.tokenAlreadyUsed) { try x.reset(used) }
            #expect(throws: ContextError.tokenFromDifferentVariable) { try y.reset(token) }
            #expect(throws: ContextError.tokenFromDifferentContext) { try x.reset(token) }
        }.value
    }
}
