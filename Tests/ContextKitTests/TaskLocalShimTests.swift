import Testing
@testable import ContextKit

/// `TaskBinding.withCurrent` binds ContextKit's task-local through the
/// runtime entry points that `TaskLocal.withValue` calls
/// (`CContextKitShims/task_local.c`). These fail loudly if those entry
/// points stop doing what `withValue` does: the binding must be what the
/// standard library's own getter reads, on a thread and in a task, nested,
/// in child tasks and `Task {}` copies, and gone after the scope.
@Suite struct TaskLocalShimTests {
    static func binding() -> TaskBinding {
        TaskBinding(adopting: Context.newHandle(), owner: nil, origin: .run, enclosing: nil)
    }

    /// On a thread the standard getter and ContextKit's per-thread copy
    /// (`TaskBinding.threadScope`, which a scope on a thread reads instead)
    /// agree at every level.
    @Test func aThreadReadsTheBindingThroughTheStandardGetter() {
        let outer = Self.binding(), inner = Self.binding()
        let seen = onNewThread { () -> [Bool] in
            func agrees(_ expected: TaskBinding?) -> Bool {
                TaskBinding.current === expected && TaskBinding.threadScope === expected
            }
            var seen = [agrees(nil)]
            TaskBinding.withCurrent(outer, onThread: true) {
                seen.append(agrees(outer))
                TaskBinding.withCurrent(inner, onThread: true) { seen.append(agrees(inner)) }
                seen.append(agrees(outer))
            }
            seen.append(agrees(nil))
            return seen
        }
        #expect(seen == [true, true, true, true, true])
    }

    @Test func aTaskAndItsChildrenReadTheBinding() async {
        let outer = Self.binding(), inner = Self.binding()
        let seen = await Task.detached { () async -> [Bool] in
            var seen = [TaskBinding.current == nil]
            await TaskBinding.withCurrent(Unmanaged.passUnretained(outer)) { () async in
                seen.append(TaskBinding.current === outer)
                await Task.yield()
                seen.append(TaskBinding.current === outer)
                async let child = TaskBinding.current === outer
                seen.append(await child)
                let copied = await Task { TaskBinding.current === outer }.value
                seen.append(copied)
                await TaskBinding.withCurrent(Unmanaged.passUnretained(inner)) { () async in
                    await Task.yield()
                    seen.append(TaskBinding.current === inner)
                }
                seen.append(TaskBinding.current === outer)
            }
            seen.append(TaskBinding.current == nil)
            return seen
        }.value
        #expect(seen == Array(repeating: true, count: 8))
    }

    /// A `Task {}` made inside a thread's scope keeps the binding (and so
    /// the context) alive after the scope: the runtime took a reference.
    @Test func aTaskCopyKeepsTheBindingAlive() async {
        let task = onNewThread { () -> Task<Bool, Never> in
            let binding = Self.binding()
            let id = ObjectIdentifier(binding)
            return TaskBinding.withCurrent(binding, onThread: true) {
                Task { TaskBinding.current.map(ObjectIdentifier.init) == id }
            }
        }
        #expect(await task.value)
    }

    /// Inside a `withTaskGroup` body the shim pushes as everywhere (the
    /// runtime's push handles a group body, as for `withValue`); the
    /// binding reads back.
    @Test func insideATaskGroupBodyTheBindingStillReadsBack() async {
        let binding = Self.binding()
        let seen = await withTaskGroup(of: Bool.self) { group -> Bool in
            group.addTask { TaskBinding.current == nil }
            let inside = try! await Context().run { () async -> Bool in
                Context.currentChainDescription.contains("run, owned by this task")
            }
            return await group.reduce(inside) { $0 && $1 }
        }
        #expect(seen)
        _ = binding
    }
}
