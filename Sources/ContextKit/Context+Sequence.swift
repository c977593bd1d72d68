import CContextCore

// The read-only mapping API of a context (Python's `Context` as a
// `Mapping[ContextVar, object]`). Every read here is safe from any thread,
// also while another thread or task runs in the context and sets variables.

extension Context: Sequence {
    /// One entry: a variable and its value in the context.
    public typealias Element = (variable: any AnyContextVar, value: any Sendable)

    /// Iterates a snapshot of the context taken when the iterator is made;
    /// later changes do not show. The order is unspecified.
    public func makeIterator() -> IndexingIterator<[Element]> {
        entries().makeIterator()
    }

    /// The exact number of entries; iterating does not consume the context.
    public var underestimatedCount: Int { count }

    /// The variable's value in this context, or `nil` when it has none (the
    /// variable's default is not used). Python's `context[var]`, with `nil`
    /// for `KeyError`.
    ///
    /// For a `ContextVar<Int?>` holding `nil`, this is `.some(nil)`.
    @inlinable
    public subscript<V>(_ variable: ContextVar<V>) -> V? {
        variable.value(inContext: handle)
    }

    /// The variable's value in this context, else `default` (Python's
    /// `context.get(var, default)`; the variable's own default is not used).
    @inlinable
    public func get<V>(_ variable: ContextVar<V>, default: V) -> V {
        self[variable] ?? `default`
    }

    /// Whether the variable has a value in this context (Python's
    /// `var in context`).
    @inlinable
    public func contains<V>(_ variable: ContextVar<V>) -> Bool {
        var guardState = cctx_read_guard()
        guard peekBegin(handle, variable.handle, variable.hamtHash, &guardState) != nil else {
            return false
        }
        peekEnd(&guardState)
        return true
    }

    /// The number of variables with a value in this context (Python's
    /// `len(context)`).
    public var count: Int {
        Int(cctx_context_count(handle))
    }

    /// Whether no variable has a value in this context.
    public var isEmpty: Bool { count == 0 }

    /// The variables with a value in this context (Python's `keys()`), from
    /// one snapshot.
    public var variables: [any AnyContextVar] {
        entries().map(\.variable)
    }

    /// The values in this context (Python's `values()`), from one snapshot,
    /// in the same order as ``variables`` would list them.
    public var values: [any Sendable] {
        entries().map(\.value)
    }

    /// The entries of one snapshot of the context.
    ///
    /// Variables created by Swift are ``ContextVar``s whose values are boxes;
    /// variables created in C appear as ``CContextVar`` with the raw value's
    /// address as a `UInt`.
    func entries() -> [Element] {
        var iterator: OpaquePointer?
        checkOrTrap(cctx_iter_new(handle, &iterator), "iterating a Context")
        defer { cctx_iter_free(iterator) }
        // The pairs are borrowed while the iterator lives.
        var raw: [(variable: OpaquePointer, value: UnsafeMutableRawPointer?)] = []
        var variable: OpaquePointer?
        var value: UnsafeMutableRawPointer?
        while cctx_iter_next(iterator, &variable, &value) {
            raw.append((variable!, value))
        }
        var result: [Element] = []
        result.reserveCapacity(raw.count)
        for entry in raw {
            if AnyValueBox.isSwiftVariable(entry.variable), let pointer = entry.value {
                let box = AnyValueBox.borrowedAny(pointer)
                result.append((box.anyVariable, box.anyValue))
            } else {
                result.append((CContextVar(retaining: entry.variable), UInt(bitPattern: entry.value)))
            }
        }
        return result
    }
}

extension Context: CustomStringConvertible {
    /// `<Context {request_id: 7, user: "ann"}>`: each variable's name and its
    /// value (strings quoted), from one snapshot.
    public var description: String {
        let items = entries().map { "\($0.variable.name): \(valueRepr($0.value))" }
        return "<Context {\(items.joined(separator: ", "))}>"
    }
}

/// A variable created by C code (not by a Swift ``ContextVar``), as iteration
/// over a ``Context`` shows it. Its values appear as the raw `void *` value's
/// address, as a `UInt`.
public final class CContextVar: AnyContextVar, CustomStringConvertible {
    /// The C variable; one reference, released in `deinit`.
    ///
    /// `nonisolated(unsafe)` is sound: the pointer never changes and the C
    /// variable is immutable with an atomic reference count.
    nonisolated(unsafe) let handle: OpaquePointer

    /// The variable's name, as given to `cctx_var_new`.
    public let name: String

    init(retaining handle: OpaquePointer) {
        self.handle = cctx_var_retain(handle)!
        self.name = String(cString: cctx_var_name(handle))
    }

    deinit {
        cctx_var_release(handle)
    }

    /// The C handle (`cctx_var *`), borrowed while this object lives.
    public var unsafeHandle: OpaquePointer { handle }

    /// `<ContextVar name='x' (C) at 0x…>`.
    public var description: String {
        "<ContextVar name='\(name)' (C) at \(addressRepr(self))>"
    }
}
