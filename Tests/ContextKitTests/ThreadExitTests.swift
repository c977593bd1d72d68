import Foundation
import Synchronization
import Testing
@testable import ContextKit

#if canImport(Glibc)
import Glibc
#endif

// A `deinit` that uses ContextKit while its thread exits: the thread's
// values are released by its teardown, which must keep the thread's state
// usable until the last of them is gone (docs/reliability.md, "Thread exit").

/// Values whose `deinit` reads or sets context variables; what the exit
/// tests below store on threads that then exit.
private enum ExitProbe {
    static let requestID = ContextVar<Int>("request_id", default: -1)
    static let holder = ContextVar<Reader>("holder")
    static let sink = ContextVar<Int>("sink")
    static let released = Atomic<Int>(0)

    final class Reader: Sendable {
        let expected: Int
        init(expected: Int) { self.expected = expected }
        deinit {
            // The thread's own value, or the default once its base is gone.
            let seen = (try? ExitProbe.requestID.get()) ?? -2
            if seen != expected && seen != -1 {
                fatalError("deinit at thread exit read \(seen), not \(expected) or the default")
            }
            ExitProbe.released.add(1, ordering: .sequentiallyConsistent)
        }
    }

    final class Setter: Sendable {
        deinit {
            ExitProbe.sink.set(42)
            if ExitProbe.sink.value != 42 { fatalError("a set during thread exit was not seen") }
            ExitProbe.released.add(1, ordering: .sequentiallyConsistent)
        }
    }

    static let setters = ContextVar<Setter>("setters")
}

/// ThreadLocals for the local-teardown test: the first one's value uses the
/// second, which its thread never touched before.
private enum LocalExitProbe {
    static let live = Atomic<Int>(0)

    final class Counted: Sendable {
        init() { LocalExitProbe.live.add(1, ordering: .sequentiallyConsistent) }
        deinit { LocalExitProbe.live.subtract(1, ordering: .sequentiallyConsistent) }
    }

    final class UsesOther: Sendable {
        init() { LocalExitProbe.live.add(1, ordering: .sequentiallyConsistent) }
        deinit {
            _ = LocalExitProbe.second.value // runs the initialiser on this thread
            LocalExitProbe.live.subtract(1, ordering: .sequentiallyConsistent)
        }
    }

    static let first = ThreadLocal<UsesOther?> { nil }
    static let second = ThreadLocal<Counted> { Counted() }
}

@Suite struct ThreadExitTests {
    @Test func deinitReadingAContextVarWhileItsThreadExits() async {
        await #expect(processExitsWith: .success) {
            let threads = 200
            runOnJoinedThreads(threads) { i in
                ExitProbe.requestID.set(i)
                ExitProbe.holder.set(ExitProbe.Reader(expected: i))
            }
            let released = ExitProbe.released.load(ordering: .sequentiallyConsistent)
            if released != threads { fatalError("released \(released) of \(threads)") }
        }
    }

    @Test func deinitSettingAContextVarWhileItsThreadExits() async {
        await #expect(processExitsWith: .success) {
            let threads = 200
            runOnJoinedThreads(threads) { _ in
                ExitProbe.setters.set(ExitProbe.Setter())
            }
            let released = ExitProbe.released.load(ordering: .sequentiallyConsistent)
            if released != threads { fatalError("released \(released) of \(threads)") }
        }
    }

    @Test func threadLocalDeinitUsingAnUntouchedThreadLocalLeaksNothing() {
        let before = LocalExitProbe.live.load(ordering: .sequentiallyConsistent)
        runOnJoinedThreads(8) { _ in
            LocalExitProbe.first.value = LocalExitProbe.UsesOther()
        }
        // Each thread's exit released its UsesOther, whose deinit made a
        // Counted in `second`; that one must be released by the same exit.
        #expect(LocalExitProbe.live.load(ordering: .sequentiallyConsistent) == before)
    }
}
