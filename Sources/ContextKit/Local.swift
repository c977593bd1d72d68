import CContextCore

/// An attribute-style `threading.local`: a namespace whose attributes are
/// separate for each OS thread.
///
/// ```swift
/// let local = Local()
/// local.user = "ann"            // this thread only
/// local.user as? String         // "ann" here, nil on other threads
/// local.user = nil              // deletes the attribute
/// ```
///
/// An optional `setUp` closure runs once per thread — on the creating thread
/// when the `Local` is created, and on every other thread at its first
/// access — like the `__init__` of a Python `threading.local` subclass.
/// A thread's attributes are released when the thread exits; all threads'
/// attributes are released when the `Local` is released.
@dynamicMemberLookup
public final class Local: @unchecked Sendable {
    // Sendable is sound: attributes live in per-thread dictionaries, each
    // read and written only by its own thread (through the C local's
    // per-thread slot); `setUp` is @Sendable; `handle` is a C local, safe to
    // use from any thread.
    private let handle: OpaquePointer
    private let setUp: (@Sendable (Local) -> Void)?

    /// Creates a thread-local namespace.
    /// - Parameter setUp: Runs once on each thread before that thread's
    ///   first access (on this thread: now), with the `Local` itself, so it
    ///   can assign initial attributes.
    public init(_ setUp: (@Sendable (Local) -> Void)? = nil) {
        self.setUp = setUp
        self.handle = makeCLocal()
        _ = attributes()
    }

    deinit {
        cctx_local_release(handle)
    }

    /// This thread's value of the attribute `name`; `nil` when it has none.
    /// Assigning `nil` deletes the attribute (Python's `del local.name`).
    ///
    /// - Parameter name: the attribute's name (`local.requestID` passes
    ///   `"requestID"`).
    @available(*, noasync, message: "a thread's attributes are meaningless across await; use ContextVar in async code")
    public subscript(dynamicMember name: String) -> Any? {
        get { attributes().stored[name] }
        set {
            // The old value leaves the dictionary first and is released
            // after the mutation has finished: its deinit may use this
            // `Local` on this thread (SPEC: deinits may use locals), and
            // `stored[name] = newValue` released it inside the
            // dictionary's in-place modify, with its bucket moved out but
            // still marked occupied (reading `dictionary` there crashed).
            let box = attributes()
            let old: Any?
            if let newValue {
                old = box.stored.updateValue(newValue, forKey: name)
            } else {
                old = box.stored.removeValue(forKey: name)
            }
            withExtendedLifetime(old) {}
        }
    }

    /// This thread's attributes, as a dictionary (Python's `__dict__`).
    @available(*, noasync, message: "a thread's attributes are meaningless across await; use ContextVar in async code")
    public var dictionary: [String: Any] {
        attributes().stored
    }

    /// This thread's attribute box; creates it and runs `setUp` on the
    /// thread's first access. The box is stored before `setUp` runs, so the
    /// closure's own accesses land in it.
    private func attributes() -> LocalStorageBox<[String: Any]> {
        if let pointer = cctx_local_value(handle) {
            return Unmanaged<LocalStorageBox<[String: Any]>>.fromOpaque(pointer).takeUnretainedValue()
        }
        let fresh = LocalStorageBox<[String: Any]>([:])
        let status = cctx_local_set(handle, Unmanaged.passUnretained(fresh).toOpaque())
        if status != CCTX_OK {
            fatalError("ContextKit: cannot store thread-local attributes: \(String(cString: cctx_strerror(status)))")
        }
        setUp?(self)
        return fresh
    }
}
