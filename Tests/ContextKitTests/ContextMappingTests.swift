import CContextCore
import Synchronization
import Testing
@testable import ContextKit

#if canImport(Glibc)
import Glibc
#endif

/// The read-only mapping API (CPython test_context_getset_1/3).
@Suite struct ContextMappingTests {
    @Test func mappingOfASnapshot() throws {
        let c = ContextVar<String>("c")
        try Context().run { () throws in
            c.set("spam2")
            let ctx1 = Context.copyCurrent()
            #expect(ctx1.contains(c))
            #expect(ctx1[c] == "spam2")
            #expect(ctx1.get(c, default: "aa") == "spam2")
            #expect(ctx1.count == 1)
            let items = Array(ctx1)
            #expect(items.count == 1)
            #expect(items.first?.variable === c)
            #expect(items.first?.value as? String == "spam2")
            #expect(ctx1.values.map { $0 as? String } == ["spam2"])
            #expect(ctx1.variables.map { ObjectIdentifier($0) } == [ObjectIdentifier(c)])

            let ctx2 = Context()
            #expect(!ctx2.contains(c))
            #expect(ctx2[c] == nil)
            #expect(ctx2.get(c, default: "aa") == "aa")
            #expect(ctx2.count == 0)
            #expect(Array(ctx2).isEmpty)
        }
    }

    /// test_context_getset_3: the mapping follows sets and resets made by
    /// the code running inside it; the variable's default never shows.
    @Test func mappingFollowsTheRunningContext() throws {
        let c = ContextVar<Int>("c", default: 42)
        let ctx = Context()
        try ctx.run { () throws in
            #expect(try c.get() == 42)
            #expect(ctx[c] == nil)
            #expect(ctx.get(c, default: 7) == 7)
            #expect(!ctx.contains(c))
            #expect(ctx.variables.isEmpty)
            let t = c.set(1)
            #expect(ctx.variables.count == 1)
            #expect(ctx[c] == 1)
            try c.reset(t)
            #expect(ctx.variables.isEmpty)
            #expect(ctx[c] == nil)
        }
    }

    @Test func manyVariablesIterateOnceEach() throws {
        let vars = (0..<100).map { ContextVar<Int>("v\($0)") }
        let ctx = Context()
        try ctx.run { () -> Void in for (i, v) in vars.enumerated() { v.set(i * 10) } }
        #expect(ctx.count == 100)
        var seen: [ObjectIdentifier: Int] = [:]
        for (variable, value) in ctx {
            seen[ObjectIdentifier(variable)] = value as? Int
        }
        #expect(seen.count == 100)
        for (i, v) in vars.enumerated() {
            #expect(seen[ObjectIdentifier(v)] == i * 10)
            #expect(ctx[v] == i * 10)
        }
        #expect(ctx.values.compactMap { $0 as? Int }.sorted() == (0..<100).map { $0 * 10 })
    }

    @Test func optionalNilIsAValue() throws {
        let o = ContextVar<Int?>("o")
        let ctx = Context()
        try ctx.run { o.set(nil) }
        #expect(ctx.contains(o))
        #expect(ctx[o] == .some(nil))
        #expect(ctx.get(o, default: 5) == nil)
    }

    @Test func descriptionListsEntries() throws {
        let requestID = ContextVar<Int>("request_id")
        let user = ContextVar<String>("user")
        let ctx = Context()
        #expect(ctx.description == "<Context {}>")
        try ctx.run { requestID.set(7) }
        #expect(ctx.description == "<Context {request_id: 7}>")
        try ctx.run { user.set("ann") }
        #expect(ctx.description == "<Context {request_id: 7, user: \"ann\"}>"
            || ctx.description == "<Context {user: \"ann\", request_id: 7}>")
    }

    @Test func variablesCreatedInCAreIterated() throws {
        var raw: OpaquePointer?
        #expect(cctx_var_new("c_side", nil, &raw) == CCTX_OK)
        defer { cctx_var_release(raw) }
        let swiftVar = ContextVar<Int>("swift_side")
        let ctx = Context()
        try ctx.run { swiftVar.set(1) }
        let cValue = UnsafeMutableRawPointer(bitPattern: 0x1234)
        #expect(cctx_context_set(ctx.handle, raw, cValue, nil) == CCTX_OK)
        #expect(ctx.count == 2)
        let entries = Array(ctx)
        #expect(entries.count == 2)
        let cEntry = try #require(entries.first { $0.variable.name == "c_side" })
        #expect(cEntry.variable is CContextVar)
        #expect(cEntry.value as? UInt == 0x1234)
        #expect(entries.contains { $0.variable === swiftVar && $0.value as? Int == 1 })
        #expect(ctx.description.contains("c_side: 4660"))
    }

    @Test func readingWhileAnotherThreadWrites() async {
        let v = ContextVar<Int>("v")
        let ctx = Context()
        let n = scaled(20_000)
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                onNewThread {
                    (try? ctx.run { () -> Void in for i in 0...n { v.set(i) } }) != nil
                }
            }
            group.addTask {
                var last = -1
                for _ in 0..<n {
                    guard let x = ctx[v] else { continue }
                    if x < last { return false }  // never goes backwards
                    last = x
                    _ = ctx.count
                }
                return true
            }
            for await ok in group { #expect(ok) }
        }
        #expect(ctx[v] == n)
    }

    /// `ctx[v]`, `get(_:default:)` and `contains` from several threads at
    /// once while another thread runs in `ctx` and sets and resets `v`
    /// (in-place overwrites, path copies and resets of the C map): every
    /// value read is alive when read (its deinit clears `alive`; under
    /// ASan a freed box or map would be reported) and was written by the
    /// writer; in the end every value made was released exactly once. The
    /// values' deinit reads a variable (the library in use from a release,
    /// on whichever thread drops the last reference).
    @Test func mappingReadsWhileAnotherThreadSetsAndResets() {
        let counter = LifetimeCounter()
        let v = ContextVar<ReadProbe>("probed")
        let other = ContextVar<Int>("other", default: 0)
        let ctx = Context()
        let writes = scaled(20_000)
        let done = Atomic<Bool>(false)
        let bad = Atomic<Int>(0)
        let reads = Atomic<Int>(0)
        let fallback = ReadProbe(-1, counter: counter, probe: other)
        var jobs: [@Sendable () -> Void] = [
            {
                try? ctx.run { () throws in
                    for i in 1...writes {
                        let token = v.set(ReadProbe(i, counter: counter, probe: other))
                        if i % 3 == 0 { try v.reset(token) }
                    }
                }
                done.store(true, ordering: .releasing)
            }
        ]
        for _ in 0..<3 {
            jobs.append {
                var n = 0
                repeat {
                    if let p = ctx[v], !p.isAlive || p.id < 1 || p.id > writes { bad.add(1, ordering: .relaxed) }
                    let q = ctx.get(v, default: fallback)
                    if !q.isAlive || (q !== fallback && (q.id < 1 || q.id > writes)) { bad.add(1, ordering: .relaxed) }
                    _ = ctx.contains(v)
                    n += 1
                } while !done.load(ordering: .acquiring)
                reads.add(n, ordering: .relaxed)
            }
        }
        runOnThreadsAndJoin(jobs)
        #expect(bad.load(ordering: .relaxed) == 0)
        #expect(reads.load(ordering: .relaxed) > 0)
        // The last write was a set unless `writes` is a multiple of 3.
        let last = ctx[v]
        #expect(last?.id == (writes % 3 == 0 ? writes - 1 : writes))
        // The writer's thread has exited (its deferred releases ran): what
        // is alive is the context's value and the fallback.
        #expect(counter.alive == 2)
        withExtendedLifetime(fallback) {}
    }
}

/// A value for ``ContextMappingTests/mappingReadsWhileAnotherThreadSetsAndResets()``:
/// counted, marks itself dead in `deinit`, and uses the library there.
final class ReadProbe: Sendable {
    let id: Int
    let counter: LifetimeCounter
    let probe: ContextVar<Int>
    private let alive = Atomic<Bool>(true)
    init(_ id: Int, counter: LifetimeCounter, probe: ContextVar<Int>) {
        self.id = id
        self.counter = counter
        self.probe = probe
        counter.made.add(1, ordering: .sequentiallyConsistent)
    }
    var isAlive: Bool { alive.load(ordering: .acquiring) }
    deinit {
        alive.store(false, ordering: .releasing)
        _ = try? probe.get()
        counter.released.add(1, ordering: .sequentiallyConsistent)
    }
}
