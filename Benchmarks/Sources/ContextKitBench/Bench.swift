// ContextKitBench — the Swift rows of `make bench`.
//
// Rows (group swift unless said; impl in parentheses):
//   get_outside            ContextVar.get() on a thread, outside any task
//                          (ContextKit); @TaskLocal read outside a task
//                          (TaskLocal); raw pthread_getspecific (pthread)
//   get_task_run_N         get() inside `try await Context.run {}` with N = 1
//                          or 10 variables set in that context (ContextKit)
//   get_task_withValue_N   get() of the outermost of N nested withValue
//                          scopes, inside a task (ContextKit)
//   get_task_N             @TaskLocal read inside a task, the outermost of N
//                          bindings (TaskLocal)
//   withValue_sync         v.withValue(x) { 1 } outside a task (ContextKit,
//                          TaskLocal: $tl.withValue)
//   withValue_async        await v.withValue(x) { 1 } inside a task
//   run_sync               try ctx.run { 1 } outside a task (ContextKit)
//   run_async              try await ctx.run { 1 } inside a task (ContextKit)
//   withValue_sync/_async  (TaskLocal reference) the floor: $tl.withValue(r)
//                          of a class instance, the least a binding that a
//                          `Task {}` copy may outlive holds (a counted
//                          reference: a retain at the push, a release at the
//                          pop)
//   run_sync               (floor) that push and pop around a C
//                          cctx_context_enter + cctx_context_exit: the two
//                          things a sync `Context.run` cannot leave out
//   get_task_unscoped_1    get() in a task after an unscoped set(_:) in it
//                          (ContextKit; compare with get_task_1 TaskLocal)
//   request_pattern        one request: `Context().run { set; get x4; async
//                          let child get }` (ContextKit) vs `$tl.withValue(x)
//                          { read x4; async let child read }` (TaskLocal)
//   threadlocal_get/set    ThreadLocal<Int>.value read / write (ContextKit);
//                          swift-nio's ThreadSpecificVariable pattern (NIO
//                          pattern); raw pthread_getspecific/setspecific
//   map_lookup_N (group map)  Context[var] (ContextKit Swift) vs
//                          TreeDictionary[var] (TreeDictionary), shuffled
//                          keys, N = 1e3, 1e5, 1e6; the keys are the same
//                          ContextVar objects in both
//   map_insert_N (group map)  persistent insert of a new key: Context.copy()
//                          + run { set } vs `var c = base; c[key] = v`
import CContextCore
import ContextKit
import Dispatch
import HashTreeCollections

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - Peers

/// What the floor rows bind: an object, so that the task-local item holds a
/// counted reference, as any binding must that carries a context a
/// `Task {}` copy of the items can outlive.
final class BenchReference: Sendable {}

enum TL {
    @TaskLocal static var t0: Int = 0
    @TaskLocal static var t1: Int = 0
    @TaskLocal static var t2: Int = 0
    @TaskLocal static var t3: Int = 0
    @TaskLocal static var t4: Int = 0
    @TaskLocal static var t5: Int = 0
    @TaskLocal static var t6: Int = 0
    @TaskLocal static var t7: Int = 0
    @TaskLocal static var t8: Int = 0
    @TaskLocal static var t9: Int = 0

    /// The floor rows' binding: a class instance (see `BenchReference`).
    @TaskLocal static var reference = BenchReference()

    static var all: [TaskLocal<Int>] {
        [$t0, $t1, $t2, $t3, $t4, $t5, $t6, $t7, $t8, $t9]
    }
}

/// swift-nio's `ThreadSpecificVariable` pattern: one pthread key, a box per
/// thread; get = getspecific + unmanaged take (no retain); set = allocate a
/// box, setspecific, release the old box.
final class NIOBox {
    let value: Int
    init(_ value: Int) { self.value = value }
}

final class NIOStyleThreadSpecific: @unchecked Sendable {
    let key: pthread_key_t

    init() {
        var k = pthread_key_t()
        let rc = pthread_key_create(&k) { raw in
            guard let raw else { return }
            Unmanaged<NIOBox>.fromOpaque(raw).release()
        }
        precondition(rc == 0, "pthread_key_create")
        key = k
    }

    var currentValue: Int? {
        get {
            guard let raw = pthread_getspecific(key) else { return nil }
            return Unmanaged<NIOBox>.fromOpaque(raw).takeUnretainedValue().value
        }
        set {
            let box = newValue.map { Unmanaged.passRetained(NIOBox($0)).toOpaque() }
            let prev = pthread_getspecific(key)
            pthread_setspecific(key, box)
            if let prev { Unmanaged<NIOBox>.fromOpaque(prev).release() }
        }
    }
}

// MARK: - Helpers

/// Runs `body` in a detached task and waits for it (the main thread itself
/// stays outside any task).
func runInTask(_ body: @escaping @Sendable () async -> Void) {
    let done = DispatchSemaphore(value: 0)
    Task.detached {
        await body()
        done.signal()
    }
    done.wait()
}

/// `body` inside nested withValue scopes of `vars`, outermost first.
func nestedWithValue(_ vars: ArraySlice<ContextVar<Int>>, _ body: () async -> Void) async {
    guard let first = vars.first else {
        await body()
        return
    }
    await first.withValue(1) { () async -> Void in
        await nestedWithValue(vars.dropFirst(), body)
    }
}

/// `body` inside nested @TaskLocal bindings, outermost first.
func nestedTaskLocals(_ locals: ArraySlice<TaskLocal<Int>>, _ body: () async -> Void) async {
    guard let first = locals.first else {
        await body()
        return
    }
    await first.withValue(1) { () async -> Void in
        await nestedTaskLocals(locals.dropFirst(), body)
    }
}

@inline(__always)
func read(_ v: ContextVar<Int>) -> Int {
    do { return try v.get() } catch { return -1 }
}

func getLoop(_ v: ContextVar<Int>) -> Stats {
    measure { n in
        var acc = 0
        for _ in 0..<n { acc &+= read(v) }
        return acc
    }
}

func taskLocalLoop() -> Stats {
    measure { n in
        var acc = 0
        for _ in 0..<n { acc &+= TL.t0 }
        return acc
    }
}

// MARK: - Rows

let vars = (0..<10).map { ContextVar<Int>("bench\($0)", default: 0) }

func threadRows() {
    let v = vars[0]
    v.set(1)  // in this thread's context
    emit("swift", "get_outside", "ContextKit", getLoop(v), note: "ContextVar.get() on a thread")
    emit("swift", "get_outside", "TaskLocal", taskLocalLoop(), note: "@TaskLocal read, no task")

    var key = pthread_key_t()
    pthread_key_create(&key, nil)
    pthread_setspecific(key, UnsafeMutableRawPointer(bitPattern: 0x1000))
    let rawGet = measure { n in
        var acc = 0
        for _ in 0..<n { acc &+= Int(bitPattern: pthread_getspecific(key)) }
        return acc
    }
    emit("swift", "get_outside", "pthread", rawGet, note: "raw pthread_getspecific from Swift")
    emit("swift", "threadlocal_get", "pthread", rawGet, note: "raw pthread_getspecific from Swift")
    let rawSet = measure { n in
        for i in 0..<n { pthread_setspecific(key, UnsafeMutableRawPointer(bitPattern: 0x1000 + (i & 7) * 16)) }
        return n
    }
    emit("swift", "threadlocal_set", "pthread", rawSet, note: "raw pthread_setspecific from Swift")

    let tl = ThreadLocal<Int> { 0 }
    tl.value = 1
    emit("swift", "threadlocal_get", "ContextKit", measure { n in
        var acc = 0
        for _ in 0..<n { acc &+= tl.value }
        return acc
    }, note: "ThreadLocal<Int>.value read")
    emit("swift", "threadlocal_set", "ContextKit", measure { n in
        for i in 0..<n { tl.value = i }
        return tl.value
    }, note: "ThreadLocal<Int>.value write")

    let nio = NIOStyleThreadSpecific()
    nio.currentValue = 1
    emit("swift", "threadlocal_get", "NIO pattern", measure { n in
        var acc = 0
        for _ in 0..<n { acc &+= nio.currentValue ?? 0 }
        return acc
    }, note: "getspecific + Unmanaged.takeUnretainedValue")
    emit("swift", "threadlocal_set", "NIO pattern", measure { n in
        for i in 0..<n { nio.currentValue = i }
        return nio.currentValue ?? 0
    }, note: "new box + setspecific + release old")

    emit("swift", "withValue_sync", "ContextKit", measure { n in
        var acc = 0
        for i in 0..<n { acc &+= v.withValue(i) { 1 } }
        return acc
    }, note: "v.withValue(x) { 1 }, no task")
    emit("swift", "withValue_sync", "TaskLocal", measure { n in
        var acc = 0
        for i in 0..<n { acc &+= TL.$t0.withValue(i) { 1 } }
        return acc
    }, note: "$tl.withValue(x) { 1 }, no task")

    let ctx = Context()
    emit("swift", "run_sync", "ContextKit", measure { n in
        var acc = 0
        for _ in 0..<n { acc &+= try! ctx.run { 1 } }
        return acc
    }, note: "try ctx.run { 1 }, no task")

    // The floors (last, so that the loops above keep their counting
    // indices): the task-local push and pop of a counted reference, alone
    // and around the C enter and exit of a context.
    let reference = BenchReference()
    emit("swift", "withValue_sync", "TaskLocal reference", measure { n in
        var acc = 0
        for _ in 0..<n { acc &+= TL.$reference.withValue(reference) { 1 } }
        return acc
    }, note: "$tl.withValue(object) { 1 }, no task: the floor of a binding holding a reference")
    let floorContext = Context()
    emit("swift", "run_sync", "floor", floorContext.withUnsafeHandle { handle in
        measure { n in
            var acc = 0
            for _ in 0..<n {
                acc &+= TL.$reference.withValue(reference) {
                    _ = cctx_context_enter(handle)
                    _ = cctx_context_exit(handle)
                    return 1
                }
            }
            return acc
        }
    }, note: "$tl.withValue(object) { C enter + exit }, no task: the floor of a sync run")
}

func taskRows() async {
    // get inside Context.run, 1 and 10 variables set in that context.
    for count in [1, 10] {
        let ctx = Context()
        try! await ctx.run { () async -> Void in
            for (i, v) in vars.prefix(count).enumerated() { v.set(i + 1) }
        }
        let stats = try! await ctx.run { () async -> Stats in getLoop(vars[0]) }
        emit("swift", "get_task_run_\(count)", "ContextKit", stats,
             note: "get() in await ctx.run, \(count) var(s) set")
    }
    // get of the outermost of 1 or 10 nested withValue scopes.
    for count in [1, 10] {
        var stats: Stats?
        await nestedWithValue(vars.prefix(count)) { stats = getLoop(vars[0]) }
        emit("swift", "get_task_withValue_\(count)", "ContextKit", stats!,
             note: "get() of the outermost of \(count) withValue scope(s)")
    }
    // @TaskLocal: the outermost of 1 or 10 bindings.
    for count in [1, 10] {
        var stats: Stats?
        await nestedTaskLocals(TL.all.prefix(count)) { stats = taskLocalLoop() }
        emit("swift", "get_task_\(count)", "TaskLocal", stats!,
             note: "@TaskLocal read, outermost of \(count) binding(s)")
    }

    let v = vars[0]
    emit("swift", "withValue_async", "ContextKit", await measureAsync { n in
        var acc = 0
        for i in 0..<n { acc &+= await v.withValue(i) { () async -> Int in 1 } }
        return acc
    }, note: "await v.withValue(x) { 1 } in a task")
    emit("swift", "withValue_async", "TaskLocal", await measureAsync { n in
        var acc = 0
        for i in 0..<n { acc &+= await TL.$t0.withValue(i) { () async -> Int in 1 } }
        return acc
    }, note: "await $tl.withValue(x) { 1 } in a task")

    let ctx = Context()
    emit("swift", "run_async", "ContextKit", await measureAsync { n in
        var acc = 0
        for _ in 0..<n { acc &+= try! await ctx.run { () async -> Int in 1 } }
        return acc
    }, note: "try await ctx.run { 1 } in a task")

    // get() after an unscoped set, in a task with no scope of its own.
    let unscoped = await Task.detached { () -> Stats in
        v.set(1)
        return getLoop(v)
    }.value
    emit("swift", "get_task_unscoped_1", "ContextKit", unscoped,
         note: "get() in a task after an unscoped set")

    emit("swift", "request_pattern", "ContextKit", await measureAsync { n in
        var acc = 0
        for i in 0..<n {
            acc &+= try! await Context().run { () async -> Int in
                v.set(i)
                var sum = read(v) &+ read(v) &+ read(v) &+ read(v)
                async let child = read(v)
                sum &+= await child
                return sum
            }
        }
        return acc
    }, note: "Context().run { set; get x4; async let child get }")
    emit("swift", "request_pattern", "TaskLocal", await measureAsync { n in
        var acc = 0
        for i in 0..<n {
            acc &+= await TL.$t0.withValue(i) { () async -> Int in
                var sum = TL.t0 &+ TL.t0 &+ TL.t0 &+ TL.t0
                async let child = TL.t0
                sum &+= await child
                return sum
            }
        }
        return acc
    }, note: "$tl.withValue(x) { read x4; async let child read }")

    // The floor (last: see `threadRows`).
    let reference = BenchReference()
    emit("swift", "withValue_async", "TaskLocal reference", await measureAsync { n in
        var acc = 0
        for _ in 0..<n {
            acc &+= await TL.$reference.withValue(reference) { () async -> Int in 1 }
        }
        return acc
    }, note: "await $tl.withValue(object) { 1 } in a task: the floor of a binding holding a reference")
}

func mapRows() {
    // CKBENCH_MAP_MAX=<n> keeps the sizes up to n (counting mode under
    // callgrind: the 1e6 maps take minutes to build there).
    let mapMax = getenv("CKBENCH_MAP_MAX").flatMap { Int(String(cString: $0)) } ?? Int.max
    let sizes = [1_000, 100_000, 1_000_000].filter { $0 <= mapMax }
    let labels = ["1e3", "1e5", "1e6"]
    let nMax = sizes.last!
    progress("creating \(nMax) variables")
    let keys = (0..<nMax).map { ContextVar<Int>("k\($0)") }
    let fresh = ContextVar<Int>("fresh")

    progress("building contexts and TreeDictionaries")
    var contexts: [Context] = []
    let big = Context()
    try! big.run {
        var next = 0
        for size in sizes {
            while next < size {
                keys[next].set(next)
                next += 1
            }
            contexts.append(Context.copyCurrent())
        }
    }
    var dicts: [TreeDictionary<ContextVar<Int>, Int>] = []
    var d = TreeDictionary<ContextVar<Int>, Int>()
    var next = 0
    for size in sizes {
        while next < size {
            d[keys[next]] = next
            next += 1
        }
        dicts.append(d)
    }

    for (s, size) in sizes.enumerated() {
        let order = shuffledIndices(size, seed: 0x243f_6a88_85a3_08d3).map { keys[$0] }
        let ctx = contexts[s]
        let dict = dicts[s]
        emit("map", "map_lookup_\(labels[s])", "ContextKit Swift", measure { n in
            var acc = 0
            var k = 0
            for _ in 0..<n {
                acc &+= ctx[order[k]] ?? 0
                k = k + 1 == size ? 0 : k + 1
            }
            return acc
        }, note: "Context[var], shuffled")
        emit("map", "map_lookup_\(labels[s])", "TreeDictionary", measure { n in
            var acc = 0
            var k = 0
            for _ in 0..<n {
                acc &+= dict[order[k]] ?? 0
                k = k + 1 == size ? 0 : k + 1
            }
            return acc
        }, note: "TreeDictionary[var], shuffled")
        emit("map", "map_insert_\(labels[s])", "ContextKit Swift", measure { n in
            var acc = 0
            for i in 0..<n {
                let c = ctx.copy()
                try! c.run { fresh.set(i) }
                acc &+= 1
            }
            return acc
        }, note: "ctx.copy() + run { fresh.set(x) }")
        emit("map", "map_insert_\(labels[s])", "TreeDictionary", measure { n in
            var acc = 0
            for i in 0..<n {
                var c = dict
                c[fresh] = i
                acc &+= c.count
            }
            return acc
        }, note: "var c = base; c[fresh] = x")
    }
}

@main
struct ContextKitBench {
    static func main() {
        // CKBENCH_GROUP=map runs only the map rows (a quick before/after of
        // one change); unset, every row. Counting mode skips the map rows
        // unless asked for them this way.
        let only = getenv("CKBENCH_GROUP").map { String(cString: $0) }
        if only == nil || only == "thread" {
            progress("thread rows")
            threadRows()
        }
        if only == nil || only == "task" {
            progress("task rows")
            runInTask { await taskRows() }
        }
        if (countingIterations == nil && only == nil) || only == "map" { mapRows() }
    }
}
