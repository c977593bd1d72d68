import Testing
@testable import ContextKit

/// ContextVar: creation, identity, repr, and get/default precedence
/// (CPython test_context: test_context_var_new_1, test_context_var_repr_1,
/// test_context_getset_1/3).
@Suite struct ContextVarTests {
    @Test func nameAndDefault() {
        let a = ContextVar<Int>("aaa")
        #expect(a.name == "aaa")
        #expect(a.defaultValue == nil)
        let b = ContextVar<Int>("bbb", default: 7)
        #expect(b.defaultValue == 7)
    }

    @Test func identityEqualityAndHash() {
        let a = ContextVar<Int>("same")
        let b = ContextVar<Int>("same")
        #expect(a == a)
        #expect(a != b)
        let set: Set<ContextVar<Int>> = [a, b, a]
        #expect(set.count == 2)
        #expect(a.hashValue == a.hashValue)
        #expect(a.hashValue != "same".hashValue)
    }

    @Test func reprWithoutAndWithDefault() {
        let a = ContextVar<Int>("a")
        #expect(a.description.wholeMatch(of: /<ContextVar name='a' at 0x[0-9a-f]+>/) != nil)
        let b = ContextVar<Int>("request_id", default: 0)
        #expect(b.description.wholeMatch(of: /<ContextVar name='request_id' default=0 at 0x[0-9a-f]+>/) != nil)
        let s = ContextVar<String>("user", default: "ann")
        #expect(s.description.contains("default=\"ann\""))
    }

    @Test func getPrecedenceInAContext() throws {
        let c = ContextVar<Int>("c")
        let d = ContextVar<Int>("d", default: 42)
        try Context().run { () throws in
            #expect(throws: ContextError.lookupError(variable: "c")) { try c.get() }
            #expect(c.get(default: 5) == 5)
            #expect(c.value == nil)
            #expect(try d.get() == 42)
            #expect(d.get(default: 5) == 5, "the default given to the call beats the variable's")
            #expect(d.value == 42)
            c.set(1)
            d.set(2)
            #expect(try c.get() == 1)
            #expect(c.get(default: 5) == 1, "the context's value beats every default")
            #expect(try d.get() == 2)
            #expect(d.value == 2)
        }
    }

    @Test func getPrecedenceOnAThread() {
        let ok = onNewThread {
            let c = ContextVar<String>("c", default: "dflt")
            guard (try? c.get()) == "dflt", c.get(default: "call") == "call" else { return false }
            c.set("v")
            return (try? c.get()) == "v" && c.get(default: "call") == "v"
        }
        #expect(ok)
    }

    @Test func lookupErrorNamesTheVariable() {
        // Python 3: `ContextVar('x').get()` ends its traceback with
        // "LookupError: <ContextVar name='x' at 0x…>"; the address is the
        // one part a name cannot give.
        let error = ContextError.lookupError(variable: "x")
        #expect(error.description == "LookupError: <ContextVar name='x'>")
    }

    @Test func optionalValuesAreDistinctFromMissing() throws {
        let o = ContextVar<Int?>("o")
        let withNilDefault = ContextVar<Int?>("n", default: nil)
        #expect(withNilDefault.defaultValue == .some(nil))
        try Context().run { () throws in
            #expect(throws: ContextError.lookupError(variable: "o")) { try o.get() }
            #expect(try withNilDefault.get() == nil)
            o.set(nil)
            #expect(try o.get() == nil)
            #expect(o.value == .some(nil))
            o.set(3)
            #expect(try o.get() == 3)
        }
    }

    @Test func genericValueTypes() throws {
        struct Point: Sendable, Equatable { var x, y: Int }
        let p = ContextVar<Point>("p")
        let s = ContextVar<[String]>("s", default: [])
        try Context().run { () throws in
            p.set(Point(x: 1, y: 2))
            s.set(["a"])
            #expect(p.value == Point(x: 1, y: 2))
            #expect(s.value == ["a"])
        }
    }

    /// test_context_getset_5: a copy-run changes only the copy.
    @Test func setInCopyLeavesOuterContext() throws {
        let c = ContextVar<[Int]>("c", default: [42])
        try Context().run { () throws in
            c.set([])
            try Context.copyCurrent().run { () throws in
                c.set([])
                c.set((try c.get()) + [42])
                #expect(try c.get() == [42])
            }
            #expect(try c.get() == [])
        }
    }

    @Test func syncWithValueOnAThread() {
        let results = onNewThread { () -> [Int?] in
            let v = ContextVar<Int>("v")
            var seen: [Int?] = [v.value]
            v.withValue(1) {
                seen.append(v.value)
                seen.append(Context.copyCurrent()[v])
                v.set(2)
                seen.append(v.value)
            }
            seen.append(v.value)
            return seen
        }
        #expect(results == [nil, 1, 1, 2, nil])
    }
}
