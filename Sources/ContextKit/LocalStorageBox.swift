import CContextCore

/// The per-thread box a `ThreadLocal` or `Local` stores in a C
/// `cctx_local` slot.
///
/// Ownership, written once for both locals: the Swift code creates a box
/// and hands it to `cctx_local_set` with `Unmanaged.passUnretained` while
/// its own strong reference is alive; the C runtime takes its own reference
/// through `localBoxOps.retain` and drops it through `localBoxOps.release`
/// when the thread deletes the value, exits, or the local is released.
/// Reads (`cctx_local_value`) borrow: `takeUnretainedValue()`.
///
/// A box is only ever read or written by the thread whose slot holds it
/// (the runtime never hands one thread's slot to another), which is why it
/// can be a plain mutable class.
@usableFromInline
final class LocalStorageBox<Stored> {
    // Dynamic exclusivity checks would guard against overlapping accesses
    // from two threads, which cannot happen here (see above): skip them on
    // the hot path.
    @exclusivity(unchecked) @usableFromInline var stored: Stored

    @usableFromInline
    init(_ stored: Stored) { self.stored = stored }
}

/// Retain/release callbacks for boxes stored in `cctx_local` slots.
@usableFromInline
let localBoxOps = cctx_value_ops(
    retain: { pointer in
        guard let pointer else { return }
        _ = Unmanaged<AnyObject>.fromOpaque(pointer).retain()
    },
    release: { pointer in
        guard let pointer else { return }
        Unmanaged<AnyObject>.fromOpaque(pointer).release()
    }
)

/// Creates a C local whose values are `LocalStorageBox`es; traps on
/// out-of-memory (as Swift allocation does).
func makeCLocal() -> OpaquePointer {
    var handle: OpaquePointer?
    let status = withUnsafePointer(to: localBoxOps) {
        cctx_local_new($0, nil, nil, &handle)
    }
    guard status == CCTX_OK, let handle else {
        fatalError("ContextKit: cannot create a thread-local: \(String(cString: cctx_strerror(status)))")
    }
    return handle
}
