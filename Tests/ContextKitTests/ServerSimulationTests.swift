import Testing
@testable import ContextKit

/// Issue 4's server: many concurrent requests, each in a context of its own,
/// suspending, sleeping and fanning out into child tasks; every read at
/// every step must see its own request's id. Scale with
/// CONTEXTKIT_TEST_SCALE (percent; default 100 = 10,000 requests).
@Suite struct ServerSimulationTests {
    static let requestID = ContextVar<Int>("request_id")
    static let user = ContextVar<String>("user", default: "anonymous")

    static func handle(request id: Int) async throws -> Int {
        try await Context().run {
            var mismatches = 0
            func check() { if requestID.value != id { mismatches += 1 } }
            requestID.set(id)
            check()
            await Task.yield()
            check()
            try await Task.sleep(nanoseconds: UInt64.random(in: 0...1_000_000))
            check()
            await user.withValue("user\(id)") {
                check()
                let childMismatches = await withTaskGroup(of: Int.self) { group in
                    for _ in 0..<3 {
                        group.addTask {
                            await Task.yield()
                            let ok = requestID.value == id && user.value == "user\(id)"
                            return ok ? 0 : 1
                        }
                    }
                    return await group.reduce(0, +)
                }
                mismatches += childMismatches
                check()
            }
            if user.value != "anonymous" { mismatches += 1 }
            check()
            return mismatches
        }
    }

    @Test func tenThousandConcurrentRequests() async throws {
        let n = scaled(10_000)
        let mismatches = try await withThrowingTaskGroup(of: Int.self) { group in
            for id in 0..<n {
                group.addTask { try await Self.handle(request: id) }
            }
            return try await group.reduce(0, +)
        }
        #expect(mismatches == 0)
        #expect(Self.requestID.value == nil)
    }
}
