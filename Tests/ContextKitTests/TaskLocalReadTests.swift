import Foundation
import Synchronization
import Testing
@testable import ContextKit

/// A task's place-cache miss reads ContextKit's task-local through
/// `cctx_shim_task_local_get_binding` (`task_local.c`, the runtime's
/// `swift_task_localValueGet`) instead of the generic `TaskLocal.get`, and
/// hands the binding back unretained (`CurrentPlace.resolveMissedForRead`).
/// These check that the shim reads what the standard getter reads
/// everywhere a binding can come from, that a binding pushed by the
/// standard `withValue` before any push through the shim (so before the key
/// is registered in C) is still found, and that children's first reads —
/// every one a miss — see their scope's value while many tasks open and end
/// scopes whose values' deinits use the library.
@Suite struct TaskLocalReadTests {
    static func binding() -> TaskBinding {
        TaskBinding(adopting: Context.newHandle(), owner: nil, origin: .run, enclosing: nil)
    }

    /// The shim's answer is the standard getter's: none, a shim push, a
    /// nested one, `withValue(nil)` (the spawn helpers' unbinding), an
    /// `async let` child, a `Task {}` copy, a group child, and after the pops.
    @Test func theShimReadsWhatTheStandardGetterReads() async {
        let outer = Self.binding(), inner = Self.binding()
        func agrees() -> Bool {
            TaskBinding.currentUnretained?.toOpaque() == TaskBinding.current.map { Unmanaged.passUnretained($0).toOpaque() }
        }
        let seen = await Task.detached { () async -> [Bool] in
            var seen = [agrees(), TaskBinding.currentUnretained == nil]
            await TaskBinding.withCurrent(Unmanaged.passUnretained(outer)) { () async in
                seen.append(agrees() && TaskBinding.currentUnretained?.takeUnretainedValue() === outer)
                async let child = agrees()
                seen.append(await child)
                seen.append(await Task { agrees() }.value)
                seen.append(await withTaskGroup(of: Bool.self) { group in
                    group.addTask { agrees() }
                    return await group.next()!
                })
                TaskBinding.$current.withValue(nil) { seen.append(agrees() && TaskBinding.currentUnretained == nil) }
                await TaskBinding.withCurrent(Unmanaged.passUnretained(inner)) { () async in
                    await Task.yield()
                    seen.append(agrees() && TaskBinding.currentUnretained?.takeUnretainedValue() === inner)
                }
                seen.append(agrees() && TaskBinding.currentUnretained?.takeUnretainedValue() === outer)
            }
            seen.append(agrees() && TaskBinding.currentUnretained == nil)
            return seen
        }.value
        #expect(seen == Array(repeating: true, count: 10))
    }

    /// In a fresh process, the first binding is pushed by the standard
    /// `TaskLocal.withValue` (`Context.task`'s `runFresh`), which does not
    /// register the key with the shim; an `async let` child's first read (a
    /// place-cache miss) must still find it. Fails if the shim's
    /// "not registered" answer is taken as "no binding" (checked: the
    /// child read nil).
    @Test func aBindingPushedBeforeTheKeyIsRegisteredIsFound() async {
        await #expect(processExitsWith: .success) {
            let v = ContextVar<Int>("pushed_by_withValue_first")
            v.set(7)  // the exit test's task: an unscoped binding, no push
            let read = await Context.task { () async -> Int in
                async let child = v.value ?? -1
                return await child
            }.value
            guard read == 7 else { exit(1) }
        }
    }

    /// Many tasks, each opening scopes whose children — `async let`, group
    /// children, `Task {}` — read first (a place miss, the binding handed
    /// back unretained), while the scopes end and their values' deinits
    /// open scopes and read again. Every read sees its scope's value; every
    /// value is released.
    @Test func childrenFirstReadsUnderManyTasks() async {
        let tally = Tally()
        let v = ContextVar<ReleaseHook>("first_read_stress")
        let w = ContextVar<Int>("first_read_stress_deinit")
        let rounds = scaled(150)
        await withTaskGroup(of: Void.self) { tasks in
            for t in 0..<8 {
                tasks.addTask {
                    for round in 0..<rounds {
                        let id = t * 100_000 + round
                        let sums = try! await Context().run { () async -> Int in
                            // The fresh context holds the only reference: its
                            // release at the scope's end runs the deinit.
                            v.set(ReleaseHook(id: id) {
                                w.withValue(id) { if w.value != id { tally.failures.add(1, ordering: .relaxed) } }
                                tally.released.add(1, ordering: .relaxed)
                            })
                            async let a = v.value?.id ?? -1
                            async let b = w.withValue(round) { () async -> Int in
                                async let inner = (v.value?.id ?? -1) == id && w.value == round
                                return await inner ? 1 : 0
                            }
                            let grouped = await withTaskGroup(of: Int.self) { group in
                                for _ in 0..<2 { group.addTask { v.value?.id ?? -1 } }
                                return await group.reduce(0) { $0 + ($1 == id ? 1 : 0) }
                            }
                            let copied = await Task { v.value?.id ?? -1 }.value
                            return (await a == id ? 1 : 0) + (await b) + grouped + (copied == id ? 1 : 0)
                        }
                        if sums != 5 { tally.failures.add(1, ordering: .relaxed) }
                    }
                }
            }
        }
        #expect(tally.failures.load(ordering: .relaxed) == 0)
        #expect(eventually { tally.released.load(ordering: .relaxed) == 8 * rounds })
    }
}

/// Counts shared by the stress test's tasks.
private final class Tally: Sendable {
    let failures = Atomic<Int>(0)
    let released = Atomic<Int>(0)
}
