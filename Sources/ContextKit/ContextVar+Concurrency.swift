import CContextKitShims

extension ContextVar {
    /// Runs the asynchronous `operation` in a copy of the current context in
    /// which this variable is `value`; the caller's context never changes.
    ///
    /// `operation` keeps the caller's isolation (it need not be `@Sendable`)
    /// and may suspend and resume on other threads: it sees `value` after
    /// every `await`. Child tasks created inside (`async let`, task groups,
    /// `Task {}`) see `value`; `Task.detached` does not. ``set(_:)`` inside
    /// `operation` changes the copy, which is gone when `withValue` returns
    /// or throws.
    ///
    /// `nonisolated(nonsending)`: runs on the caller's executor, with no hop
    /// in or out. `@inlinable`, as the async `Context.run`:
    /// the scope runs in the caller's async frame.
    ///
    /// - Parameters:
    ///   - value: the value inside `operation` and the child tasks it creates.
    ///   - operation: the code to run.
    ///   - file: the caller's file, named by a stop (defaults to the call site).
    ///   - line: the caller's line, named by a stop.
    /// - Returns: what `operation` returns.
    @inlinable
    public nonisolated(nonsending) func withValue<R>(
        _ value: Value,
        operation: nonisolated(nonsending) () async throws -> R,
        file: StaticString = #fileID, line: UInt = #line
    ) async rethrows -> R {
        let (copy, place) = copyWithValue(value)
        return try await Context.runFresh(
            adopting: copy, place: place, origin: .withValue(variable: name), operation, file: file, line: line)
    }
}
