import Dispatch
import Foundation
import Synchronization
import Testing
@testable import ContextKit

/// Threads: each thread's own context, and the helpers that start work on
/// another thread or queue in a copy of the caller's context.
@Suite struct ThreadTests {
    @Test func threadHelperRunsInACopyTakenAtTheCall() {
        let v = ContextVar<String>("v")
        let results = onNewThread { () -> [String?] in
            v.set("parent")
            let seen = PThreadLocked<[String?]>([])
            let started = DispatchSemaphore(value: 0)
            let proceed = DispatchSemaphore(value: 0)
            let done = DispatchSemaphore(value: 0)
            Thread.detachNewThreadInCopiedContext(name: "child") {
                seen.withLock { $0.append(v.value) }
                started.signal()
                proceed.wait()
                seen.withLock { $0.append(v.value) }   // the parent's later set is not seen
                v.set("child")
                seen.withLock { $0.append(v.value) }
                done.signal()
            }
            started.wait()
            v.set("parent-after")
            proceed.signal()
            done.wait()
            return seen.withLock { $0 } + [v.value]  // the child's set is not seen
        }
        #expect(results == ["parent", "parent", "child", "parent-after"])
    }

    @Test func threadHelperFromATaskCopiesTheTasksContext() async throws {
        let v = ContextVar<Int>("v")
        let seen = try await Context().run {
            v.set(11)
            await Task.yield()
            return await withCheckedContinuation { (continuation: CheckedContinuation<Int?, Never>) in
                Thread.detachNewThreadInCopiedContext {
                    continuation.resume(returning: isOutsideTask() ? v.value : -1)
                }
            }
        }
        #expect(seen == 11)
    }

    @Test func queueHelperRunsInACopyTakenAtTheCall() {
        let v = ContextVar<Int>("v", default: 0)
        let results = onNewThread { () -> [Int] in
            let queue = DispatchQueue(label: "contextkit.test")
            let gate = DispatchSemaphore(value: 0)
            let group = DispatchGroup()
            let seen = PThreadLocked<[Int]>([])
            v.set(1)
            queue.async { gate.wait() }                       // hold the queue
            queue.asyncInCopiedContext(group: group) {
                seen.withLock { $0.append(v.value ?? -1) }
                v.set(99)
            }
            queue.async(group: group) {                       // a plain block: empty context
                seen.withLock { $0.append(v.value ?? -1) }
            }
            v.set(2)                                          // after the call: not seen
            gate.signal()
            group.wait()
            return seen.withLock { $0 } + [v.value ?? -1]
        }
        #expect(results == [1, 0, 2])
    }

    @Test func threadsStartEmptyAndDoNotShare() {
        let v = ContextVar<Int>("v")
        let values = onNewThread { () -> [Int?] in
            v.set(1)
            let other = onNewThread { () -> Int? in
                let before = v.value
                v.set(2)
                return before
            }
            return [other, v.value]
        }
        #expect(values == [nil, 1])
    }
}
