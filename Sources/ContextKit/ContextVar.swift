import CContextCore
import CContextKitShims

/// A context variable: Python's `contextvars.ContextVar`.
///
/// A variable has a name and an optional default. Its value lives in the
/// current ``Context``: the calling thread's, or — in a Swift task — the
/// context the task entered with `Context.run` or `withValue`,
/// the private copy its first ``set(_:)`` made, or what it inherited.
///
/// ```swift
/// let requestID = ContextVar<Int>("request_id", default: 0)
/// let token = requestID.set(7)
/// try requestID.get()          // 7
/// try requestID.reset(token)
/// try requestID.get()          // 0
/// ```
///
/// Variables compare and hash by identity. Declare them once (as `static let`
/// or globals) and share them; a variable stays alive while any context holds
/// one of its values.
public final class ContextVar<Value: Sendable>: Hashable, Sendable, CustomStringConvertible {
    /// The C variable (`cctx_var *`); one reference, released in `deinit`.
    ///
    /// `nonisolated(unsafe)` is sound: the pointer never changes, and the C
    /// variable is immutable after creation with an atomic reference count.
    @usableFromInline
    nonisolated(unsafe) let handle: OpaquePointer

    /// The C variable's hash (`cctx_var_hash`), fixed for its life: kept
    /// beside `handle` so that `Context[var]` (`cctx_context_peek`) never
    /// loads the C variable, a second cache miss per lookup in a large map.
    @usableFromInline
    let hamtHash: UInt32

    /// The variable's name, as given at creation.
    public let name: String

    /// The variable's default: what ``get()`` returns when the current
    /// context has no value. `nil` when created without one.
    public let defaultValue: Value?

    /// Whether the variable's values flow into child tasks and into the
    /// copies that helpers make for other threads and tasks.
    public let inheritance: ContextVarInheritance

    /// Creates a variable with no default: ``get()`` throws
    /// ``ContextError/lookupError(variable:)`` until a value is set.
    public convenience init(_ name: String) {
        self.init(name: name, defaultValue: nil, inheritance: .inherited)
    }

    /// Creates a variable whose ``get()`` returns `default` when the current
    /// context has no value.
    public convenience init(_ name: String, default: Value) {
        self.init(name: name, defaultValue: .some(`default`), inheritance: .inherited)
    }

    /// Creates a variable with no default and the given inheritance policy.
    ///
    /// ```swift
    /// // Visible only in the task or thread that set it.
    /// let spanID = ContextVar<UInt64>("span_id", inheritance: .notInherited)
    /// ```
    public convenience init(_ name: String, inheritance: ContextVarInheritance) {
        self.init(name: name, defaultValue: nil, inheritance: inheritance)
    }

    /// Creates a variable with a default and the given inheritance policy.
    /// Where a `.notInherited` value does not flow, ``get()`` returns
    /// `default`.
    public convenience init(_ name: String, default: Value, inheritance: ContextVarInheritance) {
        self.init(name: name, defaultValue: .some(`default`), inheritance: inheritance)
    }

    /// `ValueBox<Value>.self`, looked up once: code that is not specialised
    /// for `Value` (this module's `setResolving`, `withValue`) would otherwise ask
    /// the runtime for the generic class's metadata on every new box
    /// (`swift_getGenericMetadata`, about 300 instructions).
    @usableFromInline
    let boxType: ValueBox<Value>.Type

    /// `Token<Value>.self`, looked up once for the same reason:
    /// `setResolving` (the out-of-line half of `set`) is not specialised
    /// for `Value`, and would ask the runtime for the token class's
    /// metadata on every call (≈ 320 instructions).
    let tokenType: Token<Value>.Type

    /// A new box holding `value` for this variable.
    @inlinable
    func makeBox(_ value: Value) -> ValueBox<Value> {
        boxType.init(variable: self, value: value)
    }

    private init(name: String, defaultValue: Value?, inheritance: ContextVarInheritance) {
        boxType = ValueBox<Value>.self
        tokenType = Token<Value>.self
        self.name = name
        self.defaultValue = defaultValue
        self.inheritance = inheritance
        var out: OpaquePointer?
        // The Swift default stays in Swift: the C variable has none, so
        // CCTX_NOT_FOUND from C always means "no value in the context".
        let flags = UInt32(inheritance == .inherited ? CCTX_VAR_INHERITED : CCTX_VAR_NOT_INHERITED)
        let status = withUnsafePointer(to: AnyValueBox.ops) { ops in
            cctx_var_new_ex(name, ops, false, nil, flags, &out)
        }
        checkOrTrap(status, "creating ContextVar '\(name)'")
        handle = out!
        hamtHash = cctx_var_hash(out!)
    }

    deinit {
        cctx_var_release(handle)
    }

    // MARK: Reading

    /// The value in the current context; else the variable's default.
    ///
    /// - Throws: ``ContextError/lookupError(variable:)`` when the current
    ///   context has no value and the variable has no default.
    @inlinable
    public func get() throws(ContextError) -> Value {
        if let value = currentValue() { return value }
        if let defaultValue { return defaultValue }
        throw .lookupError(variable: name)
    }

    /// The value in the current context; else `default` (the variable's own
    /// default is not used).
    @inlinable
    public func get(default: Value) -> Value {
        currentValue() ?? `default`
    }

    /// ``get()``, or `nil` when it would throw.
    @inlinable
    public var value: Value? {
        currentValue() ?? defaultValue
    }

    /// The value the current context holds (no default), or nil.
    ///
    /// Inlinable with everything it reads, so that a client specialises it
    /// for its `Value` (no generic metadata lookup on the hot path).
    @inlinable
    func currentValue() -> Value? {
        // Inlined (one call: the running task), as is the thread's read
        // below: outside a task the read is then the runtime's answer and
        // a few loads.
        let place = cctx_shim_current_place_inline()
        guard place.task != nil else {
            // Outside any task: the thread's current context. A box pointer
            // is never NULL, so NULL means no value (the C variable has no
            // default). Borrowed until this thread next writes its context,
            // which cannot happen during the read. The C read's hit path is
            // inlined here (`cctx_var_value_inline`): a call, a frame and
            // the handle check fewer than `cctx_var_value`.
            guard let pointer = cctx_var_value_inline(handle, hamtHash) else { return nil }
            return ValueBox<Value>.borrowedValue(pointer)
        }
        // The fast path: a task whose place this thread has cached reads
        // its binding borrowed (the cache's guarantee keeps it alive for
        // the read), without a retain/release or a `CurrentPlace` value.
        if let entry = place.entry {
            guard let cached = entry.pointee.binding else { return nil }
            let owned = entry.pointee.owned
            return Unmanaged<TaskBinding>.fromOpaque(cached)._withUnsafeGuaranteedRef {
                owned ? ownedValue(in: $0, entry: entry) : value(in: $0, owned: false)
            }
        }
        // Unretained: alive for the read (see `resolveMissedForRead`).
        let (binding, owned) = CurrentPlace.resolveMissedForRead(in: place.task!)
        guard let binding else { return nil }
        return binding._withUnsafeGuaranteedRef { value(in: $0, owned: owned) }
    }

    /// The value `binding` holds, read by its owner, the running task,
    /// whose place is the calling thread's `entry`: from the entry's value
    /// cache when it holds this variable at the binding's current write
    /// count (the map still holds that box: see `place_cache.c`), else from
    /// the map, filling the cache.
    @inlinable
    func ownedValue(in binding: TaskBinding, entry: UnsafeMutablePointer<cctx_shim_place_entry>) -> Value? {
        let box: UnsafeMutableRawPointer?
        if entry.pointee.variable == UnsafeRawPointer(handle), entry.pointee.version == binding.writes {
            box = entry.pointee.value
        } else {
            box = binding.readFilling(entry, variable: handle)
        }
        guard let box else { return nil }
        return ValueBox<Value>.borrowedValue(box)
    }

    /// The value `binding` holds, read by the running task, which owns the
    /// binding or not (`owned`).
    @inlinable
    func value(in binding: TaskBinding, owned: Bool) -> Value? {
        var pointer: UnsafeMutableRawPointer?
        if owned {
            // The owner is the binding's only writer: a borrowed read is
            // stable.
            guard foundValue(cctx_context_get(binding.handle, handle, &pointer)),
                let pointer
            else { return nil }
            return ValueBox<Value>.borrowedValue(pointer)
        }
        // A binding inherited from another task or a thread: a
        // `.notInherited` value stays with the task or thread that set it.
        if inheritance == .notInherited { return nil }
        // Its owner may be writing it on another thread: copy the value out
        // inside the C runtime's read guard (`value(inContext:)`).
        // After its scope ended, the snapshot it ended with (`readInherited`).
        return binding.readInherited { context in value(inContext: context) }
    }

    /// The variable's value in the C context `context` (borrowed), or `nil`:
    /// safe from any thread, also while another thread or task writes it.
    ///
    /// The value is copied out of its box while the C read guard (a hazard
    /// pointer, `cctx_context_peek`) keeps the map and the box alive, so the
    /// box is neither retained nor released (`cctx_context_lookup` would
    /// retain it, and the caller release it: two atomic writes to a line
    /// that is otherwise only read). `cctx_context_peek_end` is an opaque
    /// call after the copy: the compiler cannot move the box's load past
    /// it. Copying `V` runs no user code (Swift has no copy constructors),
    /// only retains of what `V` holds.
    @inlinable
    func value(inContext context: OpaquePointer) -> Value? {
        var guardState = cctx_read_guard()
        guard let pointer = peekBegin(context, handle, hamtHash, &guardState) else { return nil }
        let value = ValueBox<Value>.borrowedValue(pointer)
        peekEnd(&guardState)
        return value
    }

    /// The value the running code sees in its current context, without the
    /// default (for the ContextKitServiceContext bridge).
    package var valueWithoutDefault: Value? { currentValue() }

    // MARK: Writing

    /// Sets the variable to `value` in the current context, and returns a
    /// token that ``reset(_:)`` takes to restore the previous value
    /// (Python's `ContextVar.set`).
    ///
    /// Works everywhere: on a thread, and in any task — a structured child,
    /// `Task {}`, `Task.detached`, async `main`, a task started outside any
    /// `Context.run`, and synchronous code called from them. A task's
    /// first `set` outside a scope of its own gives it a private copy of the
    /// context it sees (copy-on-write), so its parent and siblings never see
    /// the change. See docs/concurrency.md.
    ///
    /// Inlinable, so that a client specialises it for its `Value`: the
    /// common case — the running task writing its own binding, found in its
    /// place entry — then allocates the box and the token with their
    /// metadata known, and calls no closure (the generic version took a
    /// context for each of its three nested closures). Anything else goes
    /// to `setResolving(_:place:)`.
    @inlinable @inline(__always) @discardableResult
    public func set(_ value: Value) -> Token<Value> {
        let place = cctx_shim_current_place_inline()
        guard let entry = place.entry, entry.pointee.owned, let cached = entry.pointee.binding else {
            return setResolving(value, place: place)
        }
        // The running task's own binding, from its place entry: alive for
        // the call as for a read (its scope is active, or it is the task's
        // unscoped binding, kept until the task ends), borrowed without the
        // retain/release a `CurrentPlace` value takes. Making the box runs
        // no user code, so the place stays the task's.
        let box = ValueBox<Value>(variable: self, value: value)
        let boxPointer = Unmanaged.passUnretained(box).toOpaque()
        var token: OpaquePointer?
        let status = Unmanaged<TaskBinding>.fromOpaque(cached)._withUnsafeGuaranteedRef { writable -> cctx_status in
            let before = writable.writes
            let generation = entry.pointee.generation
            let status = writable.withWrite { cctx_context_set_light(writable.handle, handle, boxPointer, &token) }
            // Fill the value cache with the box just written, as the next
            // read's `readFilling` would (set-then-read is the common shape:
            // that read then hits instead of a map lookup). Sound for the
            // same reason as that fill: the map holds `box` at the write
            // count the write left — no other write to the binding came in
            // between: the count moved by this write's two bumps only — until
            // the owner's next write bumps it; and the entry still names
            // `writable`, owned, so it is its owner's, the running task's
            // (making the box runs no user code). Not inside an
            // unsafe-handle window (`fill_blocked`), whose C writes do not
            // bump the count — nor after one opened and closed DURING the
            // write: user code can run inside the C write (the write
            // retires the old root when another thread reads it, and every
            // 64th retirement frees retired roots, releasing values only
            // they held: their deinits run after the new box is
            // published), and a deinit that writes this variable through
            // the unsafe handle replaces the box without moving the count.
            // A window bumps the place generation as it opens and closes,
            // so after one the entry is either stale (its generation is
            // behind: a fill would never be read) or was made again by a
            // read since, at a later generation: an entry generation
            // unchanged across the write proves no window ran in it.
            if status == CCTX_OK, writable.writes == before &+ 2, entry.pointee.binding == UnsafeRawPointer(cached),
                entry.pointee.owned, entry.pointee.fill_blocked == 0, entry.pointee.generation == generation
            {
                entry.pointee.variable = UnsafeRawPointer(handle)
                entry.pointee.version = writable.writes
                entry.pointee.value = boxPointer
            }
            return status
        }
        // C took its own reference to the box (or none, on failure).
        _fixLifetime(box)
        guard status == CCTX_OK, let token else { setFailed(status) }
        return Token(adopting: token, variable: self)
    }

    /// ``set(_:)`` when the calling thread's place entry is not the running
    /// task's own binding: resolves the place (thread, or the task's first
    /// write outside a scope of its own, which makes its private copy).
    @usableFromInline
    func setResolving(_ value: Value, place: cctx_shim_place) -> Token<Value> {
        let box = makeBox(value)
        var token: OpaquePointer?
        let status: cctx_status
        switch CurrentPlace.resolve(place) {
        case .thread:
            status = box.withOpaquePointer { cctx_var_set_light(handle, $0, &token) }
        case .task(let task, let binding, let owned):
            let writable = TaskBinding.writableBinding(task: task, visible: binding, owned: owned)
            status = writable.withWrite {
                box.withOpaquePointer { cctx_context_set_light(writable.handle, handle, $0, &token) }
            }
        }
        guard status == CCTX_OK, let token else { setFailed(status) }
        return tokenType.init(adopting: token, variable: self)
    }

    /// The stop of a failed ``set(_:)`` (out of memory: C changed nothing),
    /// out of line so that the inlined `set` carries only the test.
    @usableFromInline @inline(never)
    func setFailed(_ status: cctx_status) -> Never {
        checkOrTrap(status == CCTX_OK ? CCTX_EINVAL : status, "ContextVar '\(name)': set(_:)")
        fatalError("ContextKit: ContextVar '\(name)': set(_:) failed")
    }

    /// Restores the variable in the current context to what it was before
    /// the ``set(_:)`` that made `token`: its old value, or no value at all
    /// (Python's `ContextVar.reset`).
    ///
    /// - Throws, in Python's order: ``ContextError/tokenAlreadyUsed``,
    ///   ``ContextError/tokenFromDifferentVariable``,
    ///   ``ContextError/tokenFromDifferentContext`` (also for a token made in
    ///   another task's context: a child task's context is its own copy).
    ///   Nothing changes then.
    public func reset(_ token: Token<Value>) throws(ContextError) {
        let place = cctx_shim_current_place()
        if let entry = place.entry, entry.pointee.owned, let cached = entry.pointee.binding {
            // The running task's own binding, borrowed as in `set`.
            let status = Unmanaged<TaskBinding>.fromOpaque(cached)._withUnsafeGuaranteedRef { binding in
                binding.withWrite { cctx_context_reset(binding.handle, handle, token.handle) }
            }
            try check(status)
            return
        }
        switch CurrentPlace.resolve(place) {
        case .thread:
            try check(cctx_var_reset(handle, token.handle))
        case .task(_, let binding?, owned: true):
            try binding.withWrite { () throws(ContextError) in
                try check(cctx_context_reset(binding.handle, handle, token.handle))
            }
        case .task:
            // The task has not written yet: its context would be a fresh
            // copy, which no token can have been made in. Python's order of
            // checks; nothing is installed or changed.
            if token.isUsed { throw .tokenAlreadyUsed }
            if token.variable !== self { throw .tokenFromDifferentVariable }
            throw .tokenFromDifferentContext
        }
    }

    // MARK: Identity and description

    /// Identity: a variable equals only itself.
    public static func == (lhs: ContextVar, rhs: ContextVar) -> Bool {
        lhs === rhs
    }

    /// Hashes the variable's identity.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(ObjectIdentifier(self))
    }

    /// Python's repr: `<ContextVar name='request_id' default=0 at 0x…>`
    /// (no `default=` part when the variable has none).
    public var description: String {
        var text = "<ContextVar name='\(name)'"
        if let defaultValue { text += " default=\(valueRepr(defaultValue))" }
        return text + " at \(addressRepr(self))>"
    }
}

extension ContextVar: AnyContextVar {}

extension ContextVar {
    /// Runs `operation` in a copy of the current context in which this
    /// variable is `value`; the caller's context never changes.
    ///
    /// Inside `operation`, ``get()`` and ``Context/copyCurrent()`` see
    /// `value`, and ``set(_:)`` changes the copy (gone when `withValue`
    /// returns or throws). Tasks created inside (`Task {}`, `async let`, task
    /// groups) see it too; `Task.detached` does not.
    ///
    /// `@inlinable` (as the asynchronous `withValue`): the scope runs in the
    /// caller's frame, specialised for `Value` and `R`.
    ///
    /// - Parameters:
    ///   - value: the value inside `operation`.
    ///   - operation: the code to run.
    ///   - file: the caller's file: a body that leaves a C context entered
    ///     (`cctx_context_enter` without its exit) stops the process with a
    ///     message naming this call (defaults to the call site).
    ///   - line: the caller's line, named by that stop.
    /// - Returns: what `operation` returns.
    ///
    /// As `TaskLocal.withValue`, which also takes its caller's file and
    /// line: an unapplied reference (`v.withValue` as a function value)
    /// has all four parameters.
    @inlinable
    public func withValue<R>(
        _ value: Value, operation: () throws -> R, file: StaticString = #fileID, line: UInt = #line
    ) rethrows -> R {
        let (copy, place) = copyWithValue(value)
        return try Context.runFresh(
            adopting: copy, place: place, origin: .withValue(variable: name), operation, file: file, line: line)
    }

    /// Sets this variable to `value` in `context`, which the caller has just
    /// created and nobody has entered (for the ContextKitServiceContext
    /// bridge).
    package func setInFreshContext(_ context: Context, to value: Value) {
        let box = makeBox(value)
        let status = box.withOpaquePointer { cctx_context_set(context.handle, handle, $0, nil) }
        checkOrTrap(status, "ContextVar '\(name)': setting a value in a new Context")
    }

    /// A new C context (one reference, the caller's): the current one with
    /// this variable set to `value`, before anyone else can see it.
    /// The copy and the set are one C call (`cctx_context_copy_with`: the
    /// copy's root is the insert's path copy; no token, no write claim,
    /// nothing published), except from a binding the task does not own,
    /// whose `.notInherited` variables are first left out. Also returns the
    /// place it asked (`cctx_shim_current_place()`), for the scope to enter
    /// the copy without asking again: nothing between the two calls runs
    /// code that changes the task's place (the copy retains values through
    /// `ValueBox`'s operations only).
    ///
    /// `@inlinable`: specialised in the caller for `Value`, the box is made
    /// without a generic call.
    ///
    /// The box is made for the copy alone, so its one reference (the
    /// allocation's) is handed to C: `cctx_context_copy_with_adopting` and
    /// `cctx_context_new_with_adopting` store it in the copy instead of
    /// retaining the box through the variable's callback, which the
    /// box's release here would follow (an indirect call and two atomic
    /// writes per scope). On success the reference is the copy's (C
    /// releases it itself when the copy needed none: never the last);
    /// on failure it is still ours, and `withValueFailed` releases it.
    @inlinable
    func copyWithValue(_ value: Value) -> (OpaquePointer, cctx_shim_place) {
        // +1, owned by this call until C takes it: `passRetained` consumes
        // the new box's reference (no retain of its own).
        let box = Unmanaged<AnyValueBox>.passRetained(makeBox(value)).toOpaque()
        var out: OpaquePointer?
        let status: cctx_status
        let place = cctx_shim_current_place()
        switch CurrentPlace.resolve(place) {
        case .thread:
            status = cctx_context_copy_with_adopting(nil, handle, box, &out)
        case .task(_, let binding?, true):
            status = cctx_context_copy_with_adopting(binding.handle, handle, box, &out)
        case .task(_, let binding?, false):
            // The rare path keeps the retaining set: the box goes back to
            // a Swift reference, released when the call ends.
            let owned = Unmanaged<ValueBox<Value>>.fromOpaque(box).takeRetainedValue()
            (status, out) = copyInheritedWithValue(owned, from: binding)
            if status != CCTX_OK { withValueFailed(status, box: nil) }
            return (out!, place)
        case .task(_, nil, _):
            status = cctx_context_new_with_adopting(handle, box, &out)
        }
        // The stop out of line: `checkOrTrap`'s message closure captured
        // `name` (a retain and a release of its storage per call).
        if status != CCTX_OK { withValueFailed(status, box: box) }
        return (out!, place)
    }

    /// The stop of a failed ``copyWithValue(_:)``: releases the box's
    /// reference C did not take (`box`, or nil when none is ours), then
    /// traps.
    @usableFromInline @inline(never)
    func withValueFailed(_ status: cctx_status, box: UnsafeMutableRawPointer?) {
        if let box { Unmanaged<AnyValueBox>.fromOpaque(box).release() }
        checkOrTrap(status, "ContextVar '\(name)': withValue(_:operation:)")
    }

    /// ``copyWithValue(_:)`` from a binding the task does not own: a copy
    /// without the `.notInherited` variables of what the task sees — after
    /// the binding's scope ended, the snapshot it ended with, never the
    /// live context a later scope may write (`copyInheritedForSpawn`) —
    /// then the set (nobody has entered the fresh copy: the write needs no
    /// claim). Out of line: the rare case.
    @usableFromInline
    func copyInheritedWithValue(_ box: ValueBox<Value>, from binding: TaskBinding) -> (cctx_status, OpaquePointer) {
        let context = binding.copyInheritedForSpawn()
        let status = box.withOpaquePointer { cctx_context_set(context, handle, $0, nil) }
        return (status, context)
    }
}

/// Whether a ``ContextVar``'s value flows beyond the task or thread that set
/// it.
///
/// | Where the value is read | `.inherited` | `.notInherited` |
/// |---|---|---|
/// | same task or thread, nested `run` / `withValue` | value | value |
/// | explicit `copy()` / `copyCurrent()` in that task or thread | value | value |
/// | child task: `async let`, task group, `Task {}` | value | default |
/// | `Task.detached`, plain `Thread` | default | default |
/// | spawn helpers (`Context.task`, `addTaskInCopiedContext`) | value | default |
/// | thread and queue helpers | value | default |
///
/// The C runtime knows the policy too (`CCTX_VAR_NOT_INHERITED`), so C's
/// `cctx_thread_create` leaves such values out as well.
public enum ContextVarInheritance: Sendable, Hashable {
    /// The default: the value flows into child tasks and into the copies the
    /// spawn, thread and queue helpers make.
    case inherited
    /// The value is visible only in the context where it was set, in the
    /// same task or thread (nested scopes included) and in explicit copies;
    /// child tasks and helper-made copies see the variable's default. For
    /// per-task state that must not leak into children: a span ID, a
    /// re-entrancy guard, a per-request buffer.
    case notInherited
}

// The two halves of a guarded read, as Swift functions that say they release
// no Swift object (`@_effects(releasenone)`; true: neither runs a value
// callback or touches a Swift reference). Called directly, C functions are
// opaque to the optimizer, which then retained a caller's variable (loaded
// from an array, say) around them and released it after: two atomic writes
// per `ctx[var]` to the variable's line, a cache miss in a large map.
// `@inline(never)` keeps the declaration in force (an inlined body would be
// judged by its C calls again); a direct call costs less than the pair.

/// `cctx_context_peek`: the borrowed value, or `nil` when `variable` has
/// none; on a value the read stays open until ``peekEnd(_:)``.
@usableFromInline @inline(never) @_effects(releasenone)
func peekBegin(
    _ context: OpaquePointer, _ variable: OpaquePointer, _ hash: UInt32,
    _ guardState: inout cctx_read_guard
) -> UnsafeMutableRawPointer? {
    var pointer: UnsafeMutableRawPointer?
    guard foundValue(cctx_context_peek(context, variable, hash, &guardState, &pointer)) else {
        return nil
    }
    return pointer
}

/// `cctx_context_peek_end`.
@usableFromInline @inline(never) @_effects(releasenone)
func peekEnd(_ guardState: inout cctx_read_guard) {
    cctx_context_peek_end(&guardState)
}
