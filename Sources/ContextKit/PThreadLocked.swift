#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value guarded by a pthread mutex: ContextKit's one lock type (the
/// unscoped-binding table's shards) and the tests' (shared results).
///
/// Not the standard library's `Mutex`: on Linux that one locks with a
/// futex inside the Synchronization module, which is not built with
/// ThreadSanitizer, so `make swift-tsan` cannot see the ordering it gives
/// and reports the guarded accesses as races. ThreadSanitizer intercepts
/// `pthread_mutex_lock` wherever it is called.
///
/// `@unchecked Sendable` (for a `Sendable` value) is sound: `value` is read
/// and written only between `pthread_mutex_lock` and `pthread_mutex_unlock`
/// of `mutex`, the pointer never changes, and the value's own type may
/// cross threads.
final class PThreadLocked<Value> {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the value, the mutex held. `body` must not call
    /// `withLock` of the same instance (the mutex is not recursive).
    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}

extension PThreadLocked: @unchecked Sendable where Value: Sendable {}
