/// An error thrown by ContextKit.
///
/// Each case names one failure of Python's `contextvars` and says which
/// `cctx_status` of the C runtime stands behind it. The ``description`` carries
/// Python's message, so logs read the same in both languages.
///
/// C statuses that can only come from a bug in ContextKit itself
/// (`CCTX_EINVAL`, `CCTX_NOT_CURRENT`, `CCTX_NOT_ENTERED`) are not errors a
/// caller can handle: the facade stops the program instead, with a message
/// that names the call and is printed in release builds too (`fatalError`).
public enum ContextError: Error, Equatable, CustomStringConvertible {
    /// `get()` found no value in the current context and no default
    /// (Python's `LookupError`). The payload is the variable's name; the
    /// description is the last line of Python's traceback without the
    /// variable's address: `LookupError: <ContextVar name='x'>`.
    ///
    /// C: `CCTX_NOT_FOUND` from `cctx_var_get`.
    case lookupError(variable: String)

    /// `reset(_:)` was given a token that has already been used once.
    ///
    /// C: `CCTX_TOKEN_USED`.
    case tokenAlreadyUsed

    /// `reset(_:)` was given a token that another variable's `set(_:)` made.
    ///
    /// C: `CCTX_TOKEN_WRONG_VAR`.
    case tokenFromDifferentVariable

    /// `reset(_:)` was given a token made in a context other than the current
    /// one.
    ///
    /// C: `CCTX_TOKEN_WRONG_CONTEXT`.
    case tokenFromDifferentContext

    /// `Context.run` was called on a context that is already entered: on this
    /// or another thread, by a task, or by an enclosing `run` of the same
    /// context. Nothing changed.
    ///
    /// C: `CCTX_ALREADY_ENTERED` from `cctx_context_enter` or
    /// `cctx_context_claim`.
    case contextAlreadyEntered

    /// ``Context/addWatcher(_:)`` found every watcher slot taken (the C
    /// runtime has `CCTX_MAX_WATCHERS`, 8, shared by C and Swift); nothing
    /// was installed.
    ///
    /// C: `CCTX_TOO_MANY_WATCHERS` from `cctx_add_watcher`.
    case tooManyWatchers

    /// The runtime could not allocate memory; nothing changed.
    ///
    /// C: `CCTX_ENOMEM`.
    case outOfMemory

    /// Python's message for the failure.
    ///
    /// The token and context cases carry no payload, so the object is written
    /// generically (`<Token>`, `<Context>`) where Python prints its repr.
    public var description: String {
        switch self {
        case .lookupError(let variable):
            return "LookupError: <ContextVar name='\(variable)'>"
        case .tokenAlreadyUsed:
            return "<Token> has already been used once"
        case .tokenFromDifferentVariable:
            return "<Token> was created by a different ContextVar"
        case .tokenFromDifferentContext:
            return "<Token> was created in a different Context"
        case .contextAlreadyEntered:
            return "cannot enter context: <Context> is already entered"
        case .tooManyWatchers:
            return "cannot add watcher: all 8 context watcher slots are in use"
        case .outOfMemory:
            return "out of memory"
        }
    }
}
