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
    public func withValue<R>(
        _ value: Value,
        operation: () async throws -> R,
        isolation: isolated (any Actor)? = #isolation
    ) async rethrows -> R {
        try await copyWithValue(value).runFresh(origin: .withValue(variable: name), operation, isolation: isolation)
    }
}
