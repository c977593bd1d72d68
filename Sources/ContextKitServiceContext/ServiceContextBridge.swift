// The bridge between ContextKit and swift-service-context: a `ContextVar`
// mirrored into a `ServiceContext` key, so that values set through ContextKit
// reach swift-distributed-tracing instruments (`Instrument.inject`), and
// values an instrument extracts on the receiving side (`Instrument.extract`)
// fill ContextKit variables again.
//
// ServiceContext keys are types, ContextKit variables are objects: a key type
// conforming to `ContextVarServiceContextKey` names the variable it mirrors,
// and a `ContextVarMirror` is the type-erased pair that the functions below
// take in lists.
#if Tracing  // the package trait that enables this product (see Package.swift)
import ContextKit
import Instrumentation
import ServiceContextModule

/// A `ServiceContextKey` whose value mirrors a ContextKit `ContextVar`.
///
/// ```swift
/// let traceParent = ContextVar<String>("traceparent")
///
/// enum TraceParentKey: ContextVarServiceContextKey {
///     typealias Value = String
///     static var contextVar: ContextVar<String> { traceParent }
///     static var nameOverride: String? { "traceparent" }
/// }
/// ```
public protocol ContextVarServiceContextKey: ServiceContextKey {
    /// The variable this key mirrors; return the same object every time.
    static var contextVar: ContextVar<Value> { get }
}

/// One mirrored pair — a ``ContextVarServiceContextKey`` and its variable —
/// in a form that lists of mixed value types can hold.
public struct ContextVarMirror: Sendable {
    /// The mirrored variable.
    public let variable: any AnyContextVar
    /// The ServiceContext key's name (`nameOverride`, else the type's name).
    public let keyName: String

    private let intoServiceContext: @Sendable (Context?, inout ServiceContext) -> Void
    private let fromServiceContext: @Sendable (ServiceContext, Context) -> Void

    /// Mirrors `key`'s variable.
    ///
    /// - Parameter key: the key type; its `contextVar` is the variable.
    public init<Key: ContextVarServiceContextKey>(_ key: Key.Type) {
        let variable = Key.contextVar
        self.variable = variable
        self.keyName = Key.name
        self.intoServiceContext = { context, serviceContext in
            // The value set through ContextKit (not the variable's default):
            // in `context`, or as the running code sees it.
            let value = context.map { $0[variable] } ?? variable.valueWithoutDefault
            if let value { serviceContext[Key.self] = value }
        }
        self.fromServiceContext = { serviceContext, context in
            if let value = serviceContext[Key.self] {
                variable.setInFreshContext(context, to: value)
            }
        }
    }

    /// Copies the variable's value (if it has one) into `serviceContext`.
    func copy(from context: Context?, into serviceContext: inout ServiceContext) {
        intoServiceContext(context, &serviceContext)
    }

    /// Sets the variable in `context` (fresh, not entered) if
    /// `serviceContext` has the key.
    func copy(from serviceContext: ServiceContext, into context: Context) {
        fromServiceContext(serviceContext, context)
    }
}

extension ServiceContext {
    /// `base` (by default the task's `ServiceContext.current`, else
    /// `.topLevel`) with each mirrored variable's value, as the running code
    /// sees it, stored under its key — ready for `Instrument.inject`.
    ///
    /// A variable with no value in the current context (its default does not
    /// count) leaves its key as `base` has it.
    ///
    /// - Parameters:
    ///   - mirrors: the variables to copy, with their keys.
    ///   - base: the service context to start from.
    /// - Returns: `base` with the variables' values stored over it.
    public static func mirroring(
        _ mirrors: [ContextVarMirror],
        into base: ServiceContext = ServiceContext.current ?? .topLevel
    ) -> ServiceContext {
        var result = base
        for mirror in mirrors { mirror.copy(from: nil, into: &result) }
        return result
    }

    /// As ``mirroring(_:into:)``, reading the values from `context` instead
    /// of the current context.
    ///
    /// - Parameters:
    ///   - mirrors: the variables to copy, with their keys.
    ///   - context: the context to read (missing is missing: defaults do
    ///     not count).
    ///   - base: the service context to start from.
    /// - Returns: `base` with the variables' values stored over it.
    public static func mirroring(
        _ mirrors: [ContextVarMirror],
        from context: Context,
        into base: ServiceContext = ServiceContext.current ?? .topLevel
    ) -> ServiceContext {
        var result = base
        for mirror in mirrors { mirror.copy(from: context, into: &result) }
        return result
    }
}

extension Context {
    /// A copy of this context in which every mirrored variable whose key
    /// `serviceContext` holds is set to the key's value; the others keep
    /// what this context has.
    ///
    /// - Parameters:
    ///   - serviceContext: the values to take (as after `Instrument.extract`).
    ///   - mirrors: the variables to set, with their keys.
    /// - Returns: a new context, entered by nobody; this one is unchanged.
    public func merging(_ serviceContext: ServiceContext, mirroring mirrors: [ContextVarMirror]) -> Context {
        let result = copy()
        for mirror in mirrors { mirror.copy(from: serviceContext, into: result) }
        return result
    }

    /// Runs `operation` in a copy of the current context with the mirrored
    /// variables set from `serviceContext` (as after `Instrument.extract` on
    /// the receiving side), and with `ServiceContext.current` bound to
    /// `serviceContext`. The caller's context never changes.
    ///
    /// - Parameters:
    ///   - serviceContext: the values to take (as after `Instrument.extract`).
    ///   - mirrors: the variables to set, with their keys.
    ///   - operation: the code to run.
    /// - Returns: what `operation` returns.
    public static func withValues<R>(
        from serviceContext: ServiceContext,
        mirroring mirrors: [ContextVarMirror],
        operation: () throws -> R
    ) rethrows -> R {
        let context = copyCurrent().merging(serviceContext, mirroring: mirrors)
        return try ServiceContext.withValue(serviceContext) {
            try context.runFresh(origin: .helper("withValues(from: ServiceContext)"), operation)
        }
    }

    /// The asynchronous ``withValues(from:mirroring:operation:)``; `operation`
    /// keeps the caller's isolation.
    ///
    /// - Parameters:
    ///   - serviceContext: the values to take (as after `Instrument.extract`).
    ///   - mirrors: the variables to set, with their keys.
    ///   - isolation: the caller's isolation (inferred).
    ///   - operation: the code to run.
    /// - Returns: what `operation` returns.
    public static func withValues<R>(
        from serviceContext: ServiceContext,
        mirroring mirrors: [ContextVarMirror],
        isolation: isolated (any Actor)? = #isolation,
        operation: () async throws -> R
    ) async rethrows -> R {
        let context = copyCurrent().merging(serviceContext, mirroring: mirrors)
        return try await ServiceContext.withValue(serviceContext, isolation: isolation) {
            try await context.runFresh(
                origin: .helper("withValues(from: ServiceContext)"), operation, isolation: isolation)
        }
    }

    /// Runs `operation` with `ServiceContext.current` bound to the current
    /// service context plus the mirrored variables' current values — so that
    /// tracers and instruments that read `ServiceContext.current` see what
    /// was set through ContextKit.
    ///
    /// - Parameters:
    ///   - mirrors: the variables to copy, with their keys.
    ///   - operation: the code to run.
    /// - Returns: what `operation` returns.
    public static func withMirroredServiceContext<R>(
        _ mirrors: [ContextVarMirror],
        operation: () throws -> R
    ) rethrows -> R {
        try ServiceContext.withValue(ServiceContext.mirroring(mirrors), operation: operation)
    }

    /// The asynchronous ``withMirroredServiceContext(_:operation:)``.
    ///
    /// - Parameters:
    ///   - mirrors: the variables to copy, with their keys.
    ///   - isolation: the caller's isolation (inferred).
    ///   - operation: the code to run.
    /// - Returns: what `operation` returns.
    public static func withMirroredServiceContext<R>(
        _ mirrors: [ContextVarMirror],
        isolation: isolated (any Actor)? = #isolation,
        operation: () async throws -> R
    ) async rethrows -> R {
        try await ServiceContext.withValue(ServiceContext.mirroring(mirrors), isolation: isolation, operation: operation)
    }
}
#endif
