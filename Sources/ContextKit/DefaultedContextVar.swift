// A context variable that always has a value: its default when the current
// context holds none. Python code writes `request_id.get()` on a variable
// declared with a default and gets a `str`; `ContextVar.value` must stay
// optional (a variable may have no default), so a variable declared with a
// default gets a type of its own whose `value` is not optional.

/// A ``ContextVar`` declared with a default, read without optional handling:
/// `requestID.value` is a `Value`, never `nil`.
///
/// ```swift
/// let requestID = DefaultedContextVar("request_id", default: "-")
///
/// func log(_ message: String) {
///     print("[\(requestID.value)] \(message)")     // "-" until a request sets it
/// }
/// requestID.withValue("r-42") { log("handling") }   // [r-42] handling
/// ```
///
/// It is a thin wrapper over a ``ContextVar`` (``variable``), which holds the
/// value: use `variable` wherever an API takes a `ContextVar` (a
/// ``Context`` lookup, a mirror, a logging key). Reads, writes and
/// ``Token``s are the variable's; the wrapper adds nothing to the hot path
/// but the non-optional return.
///
/// Mirrors Python's `ContextVar(name, default=...)` followed by `var.get()`.
public struct DefaultedContextVar<Value: Sendable>: Sendable, Hashable, CustomStringConvertible {
    /// The underlying variable (its ``ContextVar/defaultValue`` is
    /// ``defaultValue``).
    public let variable: ContextVar<Value>

    /// What ``value`` reads when the current context holds no value.
    public let defaultValue: Value

    /// A new variable named `name` (for messages and introspection only)
    /// with `default` as its default.
    ///
    /// - Parameters:
    ///   - name: the variable's name, as in ``ContextVar/init(_:default:)``.
    ///   - default: the value read while the current context holds none.
    ///   - inheritance: whether the value flows into child tasks and helper
    ///     copies (``ContextVarInheritance``); `.inherited` unless given.
    public init(_ name: String, default: Value, inheritance: ContextVarInheritance = .inherited) {
        self.variable = ContextVar(name, default: `default`, inheritance: inheritance)
        self.defaultValue = `default`
    }

    /// Wraps an existing variable that was declared with a default; `nil`
    /// when `variable` has none.
    ///
    /// - Parameter variable: the variable to read and write through.
    public init?(_ variable: ContextVar<Value>) {
        guard let defaultValue = variable.defaultValue else { return nil }
        self.variable = variable
        self.defaultValue = defaultValue
    }

    /// The variable's name.
    public var name: String { variable.name }

    /// The value in the current context, else ``defaultValue``: Python's
    /// `var.get()` on a variable with a default, which cannot fail.
    @inlinable
    public var value: Value { variable.get(default: defaultValue) }

    /// Sets the value in the current context; see ``ContextVar/set(_:)``.
    ///
    /// - Parameter value: the new value.
    /// - Returns: a token for ``reset(_:)``.
    @discardableResult
    public func set(_ value: Value) -> Token<Value> { variable.set(value) }

    /// Restores the value from before the `set` that made `token`; see
    /// ``ContextVar/reset(_:)``.
    ///
    /// - Parameter token: the token ``set(_:)`` returned.
    /// - Throws: ``ContextError/tokenAlreadyUsed``,
    ///   ``ContextError/tokenFromDifferentVariable`` or
    ///   ``ContextError/tokenFromDifferentContext``; nothing changes then.
    public func reset(_ token: Token<Value>) throws(ContextError) { try variable.reset(token) }

    /// Runs `operation` with this variable bound to `value`; see
    /// `ContextVar.withValue`.
    ///
    /// - Parameters:
    ///   - value: the value inside `operation`.
    ///   - operation: the code to run.
    ///   - file: the caller's file, named by a stop (defaults to the call site).
    ///   - line: the caller's line, named by a stop.
    /// - Returns: what `operation` returns.
    public func withValue<R>(
        _ value: Value, operation: () throws -> R, file: StaticString = #fileID, line: UInt = #line
    ) rethrows -> R {
        try variable.withValue(value, operation: operation, file: file, line: line)
    }

    /// The asynchronous `withValue`; `operation` keeps the
    /// caller's isolation.
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
        try await variable.withValue(value, operation: operation, file: file, line: line)
    }

    /// Identity, as for ``ContextVar``: two wrappers are equal when they wrap
    /// the same variable.
    ///
    /// - Parameters:
    ///   - lhs: a wrapper.
    ///   - rhs: another wrapper.
    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.variable == rhs.variable }

    /// Hashes the wrapped variable's identity.
    ///
    /// - Parameter hasher: the hasher to feed.
    public func hash(into hasher: inout Hasher) { hasher.combine(variable) }

    /// The wrapped variable's description.
    public var description: String { variable.description }
}

extension Context {
    /// The value of `variable` in this context, else its default (Python's
    /// `ctx.get(var, default)` with the variable's own default).
    ///
    /// - Parameter variable: the variable to look up.
    /// - Returns: the value this context holds, or `variable.defaultValue`.
    public func get<V>(_ variable: DefaultedContextVar<V>) -> V {
        get(variable.variable, default: variable.defaultValue)
    }
}
