import CContextCore

/// A typed `threading.local`: one value per OS thread.
///
/// Each thread sees its own value. The first read on a thread computes the
/// initial value by calling the initialiser given to `init(_:)`, on that
/// thread; a write before any read skips the initialiser. A thread's value
/// is released when the thread exits, and every thread's value is released
/// when the `ThreadLocal` itself is released.
///
/// ```swift
/// let counter = ThreadLocal { 0 }
/// counter.value += 1            // this thread's counter only
/// ```
///
/// Use `ThreadLocal` for state that belongs to an OS thread (a cache, a
/// scratch buffer). For state that must follow a request across `await`
/// and into child tasks, use ``ContextVar``: Swift tasks move between
/// threads, so a thread-local seen from async code is whatever the current
/// thread last held.
///
/// Any number of thread-locals may exist: they share one `pthread_key`.
public final class ThreadLocal<Value>: @unchecked Sendable {
    // Sendable is sound: the only shared state is `handle`, a C local whose
    // slot table is safe to use from any thread, and `initialValue`, which
    // is @Sendable. Each thread reads and writes only the box in its own
    // slot, so no value is ever touched by two threads.
    @usableFromInline let handle: OpaquePointer
    @usableFromInline let initialValue: @Sendable () -> Value

    /// Creates a thread-local whose value on each thread starts as the
    /// result of `initialValue`, computed on that thread's first read.
    /// - Parameter initialValue: Called at most once per thread.
    public init(_ initialValue: @escaping @Sendable () -> Value) {
        self.initialValue = initialValue
        self.handle = makeCLocal()
    }

    deinit {
        cctx_local_release(handle)
    }

    /// The calling thread's value.
    ///
    /// Reading on a thread that has no value yet stores and returns
    /// `initialValue()`. Writing replaces this thread's value only.
    @available(*, noasync, message: "a thread's value is meaningless across await; use ContextVar in async code")
    @inlinable
    public var value: Value {
        get {
            // This thread's box, borrowed: its slot holds it for the whole
            // read. A box pointer is never NULL, so NULL from
            // cctx_local_value means this thread has no box (yet, or any
            // more: released at its exit), and `box()` makes one.
            if let pointer = cctx_local_value(handle) {
                return Unmanaged<LocalStorageBox<Value>>.fromOpaque(pointer)
                    ._withUnsafeGuaranteedRef { $0.stored }
            }
            return box().stored
        }
        set {
            if let pointer = cctx_local_value(handle) {
                Unmanaged<LocalStorageBox<Value>>.fromOpaque(pointer)
                    ._withUnsafeGuaranteedRef { $0.stored = newValue }
            } else {
                store(LocalStorageBox(newValue))
            }
        }
    }

    /// This thread's box, created with the initial value on first use.
    @inlinable
    func box() -> LocalStorageBox<Value> {
        if let pointer = cctx_local_value(handle) {
            return Unmanaged<LocalStorageBox<Value>>.fromOpaque(pointer).takeUnretainedValue()
        }
        let fresh = LocalStorageBox(initialValue())
        store(fresh)
        return fresh
    }

    @usableFromInline
    func store(_ box: LocalStorageBox<Value>) {
        let status = cctx_local_set(handle, Unmanaged.passUnretained(box).toOpaque())
        if status != CCTX_OK {
            fatalError("ContextKit: cannot store a thread-local value: \(String(cString: cctx_strerror(status)))")
        }
    }
}
