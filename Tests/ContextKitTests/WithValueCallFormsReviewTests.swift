import Testing
@testable import ContextKit

/// Review (session 11b): `withValue` gained defaulted `file:`/`line:`
/// parameters after `operation`. Every call form a caller may have written
/// before must still compile and mean the same (this file compiling is half
/// the test), for `ContextVar` and `DefaultedContextVar`, sync and async.
@Suite struct WithValueCallFormsReviewTests {
    struct Failure: Error {}

    static func plain() -> Int { 1 }
    static func throwing() throws -> Int { throw Failure() }

    /// Calls `withValue` the way a generic caller would: a rethrowing
    /// wrapper over any `R`.
    static func wrapped<R>(_ v: ContextVar<Int>, _ body: () throws -> R) rethrows -> R {
        try v.withValue(3, operation: body)
    }

    static func wrappedAsync<R: Sendable>(_ v: ContextVar<Int>, _ body: () async throws -> R) async rethrows -> R {
        try await v.withValue(3, operation: body)
    }

    @Test func syncCallForms() throws {
        let v = ContextVar<Int>("review11b_forms_v")
        let d = DefaultedContextVar<Int>("review11b_forms_d", default: 0)
        #expect(v.withValue(1) { v.value } == 1)
        #expect(v.withValue(1, operation: { v.value }) == 1)
        #expect(v.withValue(1, operation: Self.plain) == 1)
        #expect(throws: Failure.self) { try v.withValue(1, operation: Self.throwing) }
        #expect(throws: Failure.self) { try v.withValue(1) { () throws -> Int in throw Failure() } }
        #expect(Self.wrapped(v) { v.value } == 3)
        #expect(throws: Failure.self) { try Self.wrapped(v, Self.throwing) }
        v.withValue(1) {}
        #expect(d.withValue(4) { d.value } == 4)
        #expect(d.withValue(4, operation: Self.plain) == 1)
        #expect(try d.withValue(4) { () throws -> Int in d.value } == 4)
        // Explicit location (a wrapper forwarding its caller's): the closure
        // must then be labelled, as a trailing closure cannot follow them.
        #expect(v.withValue(5, operation: { v.value }, file: "Caller.swift", line: 7) == 5)
    }

    @Test func asyncCallForms() async throws {
        let v = ContextVar<Int>("review11b_forms_async_v")
        let d = DefaultedContextVar<Int>("review11b_forms_async_d", default: 0)
        #expect(await v.withValue(1) { () async -> Int? in await Task.yield(); return v.value } == 1)
        #expect(await v.withValue(1, operation: reviewAsynchronous) == 2)
        #expect(await v.withValue(1, operation: { () async -> Int? in v.value }) == 1)
        await #expect(throws: Failure.self) {
            try await v.withValue(1) { () async throws -> Int in throw Failure() }
        }
        #expect(await Self.wrappedAsync(v) { () async -> Int? in v.value } == 3)
        #expect(await d.withValue(4) { () async -> Int in d.value } == 4)
        #expect(await d.withValue(4, operation: reviewAsynchronous) == 2)
        #expect(await v.withValue(5, operation: { () async -> Int? in v.value }, file: "Caller.swift", line: 7) == 5)
    }
}

/// An async function passed by reference as `operation`. A global one: a
/// static method reference (`Self.asynchronous`) passed to a
/// `nonisolated(nonsending)` closure parameter crashes the Swift 6.3.1
/// type checker (signal 11 in `determineClosureIsolation`), with or
/// without the `file:`/`line:` parameters (checked on a stand-in method of
/// the same signature): a toolchain bug, not this change's.
func reviewAsynchronous() async -> Int { 2 }
