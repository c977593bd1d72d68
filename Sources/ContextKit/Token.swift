import CContextCore

/// What ``ContextVar/set(_:)`` returns: pass it to ``ContextVar/reset(_:)``
/// to restore the value the variable had before that `set`
/// (Python's `contextvars.Token`). A token can be used once.
public final class Token<Value: Sendable>: Sendable, CustomStringConvertible {
    /// The C token (`cctx_token *`); one reference, released in `deinit`.
    /// A light token (`cctx_var_set_light`): it holds no reference to the
    /// C variable — ``variable``, released only after `deinit`'s body,
    /// keeps it alive — nor to the context, which C names by a serial that
    /// is never reused, so a reset still tells its context from any other.
    ///
    /// `nonisolated(unsafe)` is sound: the pointer never changes, the C
    /// token's old value is immutable, and its "used" flag is atomic.
    @usableFromInline nonisolated(unsafe) let handle: OpaquePointer

    /// The variable whose ``ContextVar/set(_:)`` made this token.
    public let variable: ContextVar<Value>

    /// `required`: the unspecialised path of ``ContextVar/set(_:)``
    /// constructs tokens through the metatype its variable looked up once
    /// (`ContextVar.tokenType`). Inlinable for the specialised one.
    @inlinable
    required init(adopting handle: OpaquePointer, variable: ContextVar<Value>) {
        self.handle = handle
        self.variable = variable
    }

    @inlinable
    deinit {
        cctx_token_release(handle)
    }

    /// The value the variable had before the `set`, or `nil` when it had
    /// none (Python's `Token.MISSING`).
    ///
    /// "Missing" stays distinct from a stored `nil` when `Value` is itself
    /// optional: for a `ContextVar<Int?>` whose old value was `nil`, this is
    /// `.some(nil)`.
    public var oldValue: Value? {
        var pointer: UnsafeMutableRawPointer?
        guard foundValue(cctx_token_old_value(handle, &pointer)), let pointer else { return nil }
        return ValueBox<Value>.borrowed(pointer).value
    }

    /// Whether ``ContextVar/reset(_:)`` has used this token.
    public var isUsed: Bool {
        cctx_token_is_used(handle)
    }

    /// Python's repr: `<Token var=<ContextVar name='x' at 0x…> at 0x…>`, with
    /// `used` after `Token` once used (`<Token used var=…>`).
    public var description: String {
        "<Token\(isUsed ? " used" : "") var=\(variable) at \(addressRepr(self))>"
    }
}
