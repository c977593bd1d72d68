// The one place where ContextKit values meet swift-distributed-tracing on the
// sending side.
//
// Why an instrument and not `ServiceContext.current`: `ServiceContext.current`
// is a Swift task-local, which only a `withValue` scope can bind. ContextKit's
// `set` has no scope (it changes the context until a `reset`), and the
// ContextKit product may depend on no other package, so ContextKit cannot
// keep `ServiceContext.current` in step with its variables. What every
// library that propagates a request does instead is call
// `InstrumentationSystem.instrument.inject(ServiceContext.current ?? .topLevel, …)`
// (or a tracer's, which is an instrument too). Bootstrapping the instrument
// wrapped in a `ContextKitInstrument` makes each of those calls carry the
// mirrored ContextKit values, whoever makes it: one source of truth, with no
// scope to forget.
#if Tracing  // the package trait that enables this product (see Package.swift)
import ContextKit
import Instrumentation
import ServiceContextModule

/// An `Instrument` that adds the current values of mirrored ContextKit
/// variables to every `ServiceContext` it injects, then lets the wrapped
/// instrument write the headers.
///
/// ```swift
/// InstrumentationSystem.bootstrap(
///     ContextKitInstrument(wrapping: W3CInstrument(), mirroring: mirrors))
///
/// // anywhere later, in any task or thread:
/// traceParent.set(parent)
/// InstrumentationSystem.instrument.inject(
///     ServiceContext.current ?? .topLevel, into: &headers, using: injector)
/// // headers carry `parent`, although ServiceContext.current never saw it
/// ```
///
/// For a mirrored key, the ContextKit variable is the source of truth: a
/// value the variable has (its default does not count) replaces the key's
/// value in the injected `ServiceContext`; a variable without a value leaves
/// the key as it was. Extraction is the wrapped instrument's; on the
/// receiving side, run the request in
/// `Context.withValues(from:mirroring:operation:)` (or in a fresh context
/// made by `Context/merging(_:mirroring:)`) so that the
/// extracted values reach ContextKit variables.
public struct ContextKitInstrument: Instrument {
    /// The instrument that writes and reads the headers.
    public let base: any Instrument
    /// The variables whose values are added on `inject`.
    public let mirrors: [ContextVarMirror]

    /// Wraps `base` so that every `inject` carries the current values of
    /// `mirrors`.
    ///
    /// - Parameters:
    ///   - base: the instrument that formats the carrier (W3C headers, B3, …).
    ///   - mirrors: the ContextKit variables and the `ServiceContext` keys
    ///     they are stored under.
    public init(wrapping base: any Instrument, mirroring mirrors: [ContextVarMirror]) {
        self.base = base
        self.mirrors = mirrors
    }

    /// Injects `context` with the mirrored variables' current values (as the
    /// calling code sees them) stored over it.
    ///
    /// - Parameters:
    ///   - context: the service context to propagate, usually
    ///     `ServiceContext.current ?? .topLevel`.
    ///   - carrier: the headers (or other carrier) to write into.
    ///   - injector: writes one key into `carrier`.
    public func inject<Carrier, Inject: Injector>(
        _ context: ServiceContext, into carrier: inout Carrier, using injector: Inject
    ) where Inject.Carrier == Carrier {
        base.inject(ServiceContext.mirroring(mirrors, into: context), into: &carrier, using: injector)
    }

    /// The wrapped instrument's `extract`, unchanged.
    ///
    /// - Parameters:
    ///   - carrier: the received headers.
    ///   - context: the service context to fill.
    ///   - extractor: reads one key from `carrier`.
    public func extract<Carrier, Extract: Extractor>(
        _ carrier: Carrier, into context: inout ServiceContext, using extractor: Extract
    ) where Extract.Carrier == Carrier {
        base.extract(carrier, into: &context, using: extractor)
    }
}
#endif
