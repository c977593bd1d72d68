import CContextCore
import Synchronization

// Values cross into C as boxes, and this file is the one place their
// reference counting is written down.
//
// The pairing rule
// ----------------
// * Every `cctx_var` created by Swift carries `ValueBox.ops`, whose `retain`
//   and `release` callbacks are `Unmanaged<AnyValueBox>.retain()` and
//   `.release()`. So the C runtime owns exactly the references it took
//   through `retain`, and gives each back through `release`, on whatever
//   thread drops it.
// * Into C: `Unmanaged.passUnretained(box).toOpaque()` while a Swift
//   reference keeps the box alive for the whole call (`withOpaquePointer`);
//   C retains its own reference when it stores the value.
// * Borrowed pointers out of C (`cctx_var_get`, `cctx_context_get`,
//   `cctx_iter_next`, `cctx_token_old_value`): `takeUnretainedValue()` —
//   Swift takes its own strong reference at once, before anything can
//   change the context.
// * New references out of C (`cctx_context_lookup`): `takeRetainedValue()`,
//   which consumes the reference the lookup's retain callback took.
// * Guarded borrowed pointers (`cctx_context_peek`): the value is copied out
//   of the box (`borrowedValue`, no reference to the box) before
//   `cctx_context_peek_end`, while the read guard keeps the box alive.
//
// A box is immutable and holds its variable strongly: while any context,
// token or snapshot holds a value, the Swift `ContextVar` (and therefore its
// `cctx_var`) stays alive, and iteration can recover the variable.

/// The type-erased face of a value stored in a context.
///
/// `@unchecked Sendable`: a box is immutable after `init` (subclasses add only
/// `let` properties of `Sendable` types), and C reference counting is atomic,
/// so sharing one between threads is safe.
@usableFromInline
class AnyValueBox: @unchecked Sendable {
    @usableFromInline
    init() {}

    /// The variable this value belongs to.
    var anyVariable: any AnyContextVar { fatalError("abstract") }

    /// The value itself.
    var anyValue: any Sendable { fatalError("abstract") }

    /// The callbacks every Swift-created `cctx_var` is created with.
    static let ops = cctx_value_ops(
        retain: { pointer in
            _ = Unmanaged<AnyValueBox>.fromOpaque(pointer!).retain()
        },
        release: { pointer in
            Unmanaged<AnyValueBox>.fromOpaque(pointer!).release()
        })
}

/// A value of a `ContextVar<V>`, as the C runtime stores it.
@usableFromInline
final class ValueBox<V: Sendable>: AnyValueBox, @unchecked Sendable {
    /// Strong on purpose: keeps the variable alive while any context holds
    /// this value, and lets iteration find it.
    @usableFromInline let variable: ContextVar<V>
    @usableFromInline let value: V

    /// `required` so that ``ContextVar`` can create boxes through the
    /// metatype it looked up once (`ContextVar.makeBox`).
    @usableFromInline
    required init(variable: ContextVar<V>, value: V) {
        self.variable = variable
        self.value = value
    }

    override var anyVariable: any AnyContextVar { variable }
    override var anyValue: any Sendable { value }

    /// Calls `body` with the box as a C value; the box stays alive for the
    /// call and C retains its own reference if it keeps the pointer.
    ///
    /// `_fixLifetime` rather than `withExtendedLifetime`: the callers
    /// (`set`, `withValue`) are not specialised for `V`, and the generic
    /// `withExtendedLifetime` was then called out of line with a closure
    /// around `body`.
    @inlinable
    func withOpaquePointer<R>(_ body: (UnsafeMutableRawPointer) throws -> R) rethrows -> R {
        defer { _fixLifetime(self) }
        return try body(Unmanaged.passUnretained(self).toOpaque())
    }

    /// The box behind a borrowed pointer (C keeps its reference).
    @inlinable
    static func borrowed(_ pointer: UnsafeMutableRawPointer) -> ValueBox<V> {
        Unmanaged<ValueBox<V>>.fromOpaque(pointer).takeUnretainedValue()
    }

    /// The value inside the box behind a borrowed pointer, read without
    /// retaining the box: C holds its reference for the whole read (the
    /// caller is the context's only writer, or holds a `cctx_context_peek`
    /// read guard), so the box cannot go away.
    @inlinable
    static func borrowedValue(_ pointer: UnsafeMutableRawPointer) -> V {
        Unmanaged<ValueBox<V>>.fromOpaque(pointer)._withUnsafeGuaranteedRef { $0.value }
    }

    /// The box behind a new reference from C, which this consumes.
    @inlinable
    static func adopted(_ pointer: UnsafeMutableRawPointer) -> ValueBox<V> {
        Unmanaged<ValueBox<V>>.fromOpaque(pointer).takeRetainedValue()
    }
}

extension AnyValueBox {
    /// The type-erased box behind a borrowed pointer.
    static func borrowedAny(_ pointer: UnsafeMutableRawPointer) -> AnyValueBox {
        Unmanaged<AnyValueBox>.fromOpaque(pointer).takeUnretainedValue()
    }
}

extension AnyValueBox {
    /// Whether the C variable `handle` was created by Swift: its values are
    /// then boxes. Recognised by its retain callback being ``ops``' own —
    /// no registry, no lock.
    static func isSwiftVariable(_ handle: OpaquePointer) -> Bool {
        var theirs = cctx_value_ops()
        guard cctx_var_ops(handle, &theirs) == CCTX_OK, let retain = theirs.retain,
            let ours = ops.retain
        else { return false }
        return unsafeBitCast(retain, to: UnsafeRawPointer.self)
            == unsafeBitCast(ours, to: UnsafeRawPointer.self)
    }
}
