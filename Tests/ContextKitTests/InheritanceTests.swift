import CContextCore
import Dispatch
import Synchronization
import Foundation
import Testing
@testable import ContextKit

/// Per-variable inheritance: each policy × each way code can come
/// to read the variable. `expected` is what a reader that does not inherit
/// sees: the value for `.inherited`, the default (0) for `.notInherited`.
@Suite struct InheritanceTests {
    static let policies: [ContextVarInheritance] = [.inherited, .notInherited]

    func inherited(_ policy: ContextVarInheritance) -> Int { policy == .inherited ? 7 : 0 }

    @Test(arguments: policies) func asyncLetChild(policy: ContextVarInheritance) async {
        let v = ContextVar<Int>("v", default: 0, inheritance: policy)
        #expect(v.inheritance == policy)
        await v.withValue(7) {
            async let child = v.value
            #expect(await child == inherited(policy))
            #expect(v.value == 7)                       // the task itself still sees it
        }
    }

    @Test(arguments: policies) func taskGroupChild(policy: ContextVarInheritance) async throws {
        let v = ContextVar<Int>("v", default: 0, inheritance: policy)
        try await Context().run {
            v.set(7)                                    // set, not withValue: same rule
            let seen = await withTaskGroup(of: Int.self) { group in
                group.addTask { v.value ?? -1 }
                return await group.next()!
            }
            #expect(seen == inherited(policy))
        }
    }

    @Test(arguments: policies) func unstructuredTask(policy: ContextVarInheritance) async {
        let v = ContextVar<Int>("v", default: 0, inheritance: policy)
        await v.withValue(7) {
            #expect(await Task { v.value }.value == inherited(policy))
            // What the child copies is what it sees.
            #expect(await Task { Context.copyCurrent()[v] }.value == (policy == .inherited ? 7 : nil))
            let other = ContextVar<Int>("other", default: 0)
            #expect(await Task { other.withValue(1) { v.value } }.value == inherited(policy))
        }
    }

    @Test(arguments: policies) func detachedTask(policy: ContextVarInheritance) async {
        let v = ContextVar<Int>("v", default: 0, inheritance: policy)
        await v.withValue(7) {
            #expect(await Task.detached { v.value }.value == 0)
        }
    }

    @Test(arguments: policies) func spawnHelpers(policy: ContextVarInheritance) async {
        let v = ContextVar<Int>("v", default: 0, inheritance: policy)
        await v.withValue(7) {
            #expect(await Context.task { v.value }.value == inherited(policy))
            let seen = await withTaskGroup(of: Int?.self) { group in
                group.addTaskInCopiedContext { v.value }
                return await group.next()!
            }
            #expect(seen == inherited(policy))
        }
    }

    @Test(arguments: policies) func threadHelper(policy: ContextVarInheritance) async {
        let v = ContextVar<Int>("v", default: 0, inheritance: policy)
        let seen = await v.withValue(7) {
            await withCheckedContinuation { (done: CheckedContinuation<Int?, Never>) in
                Thread.detachNewThreadInCopiedContext { done.resume(returning: v.value) }
            }
        }
        #expect(seen == inherited(policy))
        // From a thread too (the thread's own context).
        let fromThread = onNewThread { () -> Int? in
            v.set(7)
            let box = PThreadLocked<Int?>(nil)
            let sem = DispatchSemaphore(value: 0)
            Thread.detachNewThreadInCopiedContext {
                box.withLock { $0 = v.value }
                sem.signal()
            }
            sem.wait()
            return box.withLock { $0 }
        }
        #expect(fromThread == inherited(policy))
    }

    @Test(arguments: policies) func queueHelper(policy: ContextVarInheritance) async {
        let v = ContextVar<Int>("v", default: 0, inheritance: policy)
        let seen = await v.withValue(7) {
            await withCheckedContinuation { (done: CheckedContinuation<Int?, Never>) in
                DispatchQueue.global().asyncInCopiedContext { done.resume(returning: v.value) }
            }
        }
        #expect(seen == inherited(policy))
    }

    @Test(arguments: policies) func plainThread(policy: ContextVarInheritance) async {
        let v = ContextVar<Int>("v", default: 0, inheritance: policy)
        await v.withValue(7) {
            await Task.yield()
            #expect(onNewThread { v.value } == 0)
        }
    }

    @Test(arguments: policies) func explicitCopyKeepsIt(policy: ContextVarInheritance) async throws {
        let v = ContextVar<Int>("v", default: 0, inheritance: policy)
        try await v.withValue(7) {
            let copy = Context.copyCurrent()
            #expect(copy[v] == 7)
            #expect(copy.copy()[v] == 7)
            let seen = try await copy.run { () async -> Int? in
                await Task.yield()
                return v.value
            }
            #expect(seen == 7)
        }
        // On a thread as well.
        let onThread = onNewThread { () -> [Int?] in
            v.set(7)
            let copy = Context.copyCurrent()
            return [copy[v], try! copy.run { v.value }]
        }
        #expect(onThread == [7, 7])
    }

    @Test(arguments: policies) func nestedScopesOfTheSameTaskOrThread(policy: ContextVarInheritance) async throws {
        let v = ContextVar<Int>("v", default: 0, inheritance: policy)
        let other = ContextVar<Int>("other", default: 0)
        try await Context().run {
            v.set(7)
            await other.withValue(1) {
                await Task.yield()
                #expect(v.value == 7)
                other.withValue(2) { #expect(v.value == 7) }
            }
            let copied = try Context.copyCurrent().run { v.value }   // sync run, claimed by the task
            #expect(copied == 7)
        }
        let onThread = onNewThread { () -> [Int?] in
            v.withValue(7) {
                [v.value, other.withValue(1) { v.value }, try! Context.copyCurrent().run { v.value }]
            }
        }
        #expect(onThread == [7, 7, 7])
    }

    @Test func withCurrentUnsafeHandleInAChildLeavesItOut() async {
        let v = ContextVar<Int>("v", default: 0, inheritance: .notInherited)
        let plain = ContextVar<Int>("plain", default: 0)
        await v.withValue(7) {
            await plain.withValue(1) {
                let counts = await Task {
                    Context.withCurrentUnsafeHandle { handle, writable in
                        (Int(cctxCount(handle)), writable)
                    }
                }.value
                #expect(counts.0 == 1)                  // `plain` only
                #expect(counts.1 == false)
            }
        }
    }
}


func cctxCount(_ handle: OpaquePointer) -> Int { Int(cctx_context_count(handle)) }
