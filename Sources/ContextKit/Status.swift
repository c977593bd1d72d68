import CContextCore

// The one place C statuses become Swift errors (swift-system's
// `valueOrErrno` pattern): `ContextError.result(of:)` is the internal result,
// `check(_:)` the one throwing wrapper, `checkOrTrap(_:_:)` its counterpart
// for APIs that cannot throw.

extension ContextError {
    /// The outcome a C status stands for.
    ///
    /// `CCTX_NOT_FOUND` is not mapped here: its meaning depends on the call
    /// (missing value, empty default), so callers handle it before asking.
    /// Statuses that only a facade bug can produce stop the program.
    @usableFromInline
    static func result(of status: cctx_status) -> Result<Void, ContextError> {
        switch status {
        case CCTX_OK: return .success(())
        case CCTX_ENOMEM: return .failure(.outOfMemory)
        case CCTX_TOKEN_USED: return .failure(.tokenAlreadyUsed)
        case CCTX_TOKEN_WRONG_VAR: return .failure(.tokenFromDifferentVariable)
        case CCTX_TOKEN_WRONG_CONTEXT: return .failure(.tokenFromDifferentContext)
        case CCTX_ALREADY_ENTERED: return .failure(.contextAlreadyEntered)
        case CCTX_TOO_MANY_WATCHERS: return .failure(.tooManyWatchers)
        default:
            fatalError(
                "ContextKit internal error: unexpected C status \(status.rawValue) "
                    + "(\(String(cString: cctx_strerror(status))))")
        }
    }
}

/// Throws the ``ContextError`` that `status` stands for; returns on `CCTX_OK`.
@usableFromInline
@inline(__always)
func check(_ status: cctx_status) throws(ContextError) {
    // The common case without building a `Result`.
    if status == CCTX_OK { return }
    try ContextError.result(of: status).get()
}

/// For calls that cannot fail except by running out of memory (or by a facade
/// bug): stops the program with the status text, as Swift itself does when an
/// allocation fails.
/// `file`/`line` name the caller (a stop must say where it came from, also
/// in release builds: `fatalError` prints there, `precondition` does not).
@usableFromInline
func checkOrTrap(
    _ status: cctx_status, _ what: @autoclosure () -> String,
    file: StaticString = #fileID, line: UInt = #line
) {
    if status == CCTX_OK { return }
    if case .failure(let error) = ContextError.result(of: status) {
        fatalError("ContextKit: \(what()) failed: \(error)", file: file, line: line)
    }
}

/// Whether a C read found a value: `CCTX_OK` yes, `CCTX_NOT_FOUND` no;
/// anything else is a facade bug.
@inlinable @inline(__always)
func foundValue(_ status: cctx_status) -> Bool {
    if status == CCTX_OK { return true }
    if status == CCTX_NOT_FOUND { return false }
    unexpectedReadStatus(status)
}

/// The stop of ``foundValue(_:)``, out of line so that every read inlines
/// only the two comparisons.
@usableFromInline @inline(never)
func unexpectedReadStatus(_ status: cctx_status) -> Never {
    fatalError("ContextKit internal error: \(String(cString: cctx_strerror(status)))")
}
