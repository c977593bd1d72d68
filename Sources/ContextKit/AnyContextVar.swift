/// A context variable of any value type.
///
/// ``ContextVar`` conforms. Iterating a ``Context`` yields its variables as
/// `any AnyContextVar`; compare them with `===` or cast back to the concrete
/// `ContextVar<Value>`.
public protocol AnyContextVar: AnyObject, Sendable {
    /// The variable's name, as given at creation.
    var name: String { get }
}
