import Testing
@testable import ContextKit

/// Token: old value (MISSING distinct from any value), use-once, the three
/// reset errors in Python's order, repr (CPython test_context_getset_1/2/4,
/// test_token_repr_1).
@Suite struct TokenTests {
    @Test func oldValueMissingThenPrevious() throws {
        let c = ContextVar<String>("c")
        try Context().run { () throws in
            let t0 = c.set("42")
            #expect(t0.oldValue == nil, "MISSING")
            #expect(t0.variable === c)
            let t = c.set("spam")
            #expect(t.oldValue == "42")
            try c.reset(t)
            #expect(try c.get() == "42")
            try c.reset(t0)
            #expect(c.value == nil, "reset to MISSING removes the variable again")
            #expect(!Context.copyCurrent().contains(c))
        }
    }

    @Test func storedNilIsNotMissing() throws {
        let o = ContextVar<Int?>("o")
        try Context().run { () throws in
            let t0 = o.set(nil)
            #expect(t0.oldValue == nil)          // Optional<Int?>.none: MISSING
            let t1 = o.set(5)
            #expect(t1.oldValue == .some(nil))   // the stored nil
            if case .some(.none) = t1.oldValue {} else { Issue.record("expected .some(nil)") }
            try o.reset(t1)
            #expect(try o.get() == nil)
            #expect(Context.copyCurrent().contains(o))
        }
    }

    @Test func tokenIsUsableOnce() throws {
        let c = ContextVar<Int>("c")
        try Context().run { () throws in
            let t = c.set(1)
            #expect(!t.isUsed)
            c.set(2)
            let t2 = c.set(3)
            try c.reset(t2)
            try c.reset(t)
            #expect(t.isUsed)
            c.set(9)
            #expect(throws: ContextError.tokenAlreadyUsed) { try c.reset(t) }
            #expect(try c.get() == 9, "a failed reset changes nothing")
        }
    }

    @Test func tokenFromDifferentVariable() throws {
        let v1 = ContextVar<Int>("v1")
        let v2 = ContextVar<Int>("v2")
        try Context().run { () throws in
            let t1 = v1.set(42)
            #expect(throws: ContextError.tokenFromDifferentVariable) { try v2.reset(t1) }
            #expect(try v1.get() == 42)
            #expect(!t1.isUsed)
        }
    }

    @Test func tokenFromDifferentContext() throws {
        let c = ContextVar<Int>("c", default: 42)
        let ctx = Context()
        let token = try ctx.run { c.set(1) }
        try Context().run { () throws in
            #expect(throws: ContextError.tokenFromDifferentContext) { try c.reset(token) }
        }
        #expect(ctx[c] == 1)
        #expect(!token.isUsed)
    }

    /// A token does not keep its context alive (C names the context by a
    /// serial, never reused): after the context is gone, a new one —
    /// usually made from the same C object, at the same address — is a
    /// different context to the token, and its reset changes nothing.
    @Test func tokenOfAGoneContextIsForeignToTheNextOne() throws {
        let c = ContextVar<Int>("c")
        for i in 0..<8 {
            let token = try Context().run { c.set(i) }
            try Context().run { () throws in
                c.set(100)
                #expect(throws: ContextError.tokenFromDifferentContext) { try c.reset(token) }
                #expect(try c.get() == 100, "a failed reset changes nothing")
            }
            #expect(!token.isUsed)
            #expect(token.oldValue == nil)
        }
    }

    /// The token keeps its variable (the C token borrows it from the
    /// Swift one): with the context and every other reference gone, its
    /// old value and variable stay readable, and dropping it releases both.
    @Test func tokenKeepsItsVariableAlone() throws {
        weak var weakVar: ContextVar<String>?
        var token: Token<String>?
        try Context().run {
            let v = ContextVar<String>("solo")
            weakVar = v
            v.set("a")
            token = v.set("b")
        }
        #expect(weakVar != nil)
        #expect(token?.oldValue == "a")
        #expect(token?.variable.name == "solo")
        token = nil
        #expect(weakVar == nil, "the token held the last reference")
    }

    @Test func errorsComeInPythonOrder() throws {
        let x = ContextVar<Int>("x")
        let y = ContextVar<Int>("y")
        let ctx = Context()
        let used = try ctx.run { () throws -> Token<Int> in
            let t = x.set(1)
            try x.reset(t)
            return t
        }
        try Context().run { () throws in
            // used, wrong variable and wrong context all at once: "used" first.
            #expect(throws: ContextError.tokenAlreadyUsed) { try y.reset(used) }
        }
        let fresh = try ctx.run { x.set(2) }
        try Context().run { () throws in
            // wrong variable and wrong context: "different ContextVar" first.
            #expect(throws: ContextError.tokenFromDifferentVariable) { try y.reset(fresh) }
        }
    }

    @Test func errorMessagesArePythons() {
        #expect(ContextError.tokenAlreadyUsed.description.hasSuffix("has already been used once"))
        #expect(ContextError.tokenFromDifferentVariable.description.hasSuffix("was created by a different ContextVar"))
        #expect(ContextError.tokenFromDifferentContext.description.hasSuffix("was created in a different Context"))
        #expect(ContextError.contextAlreadyEntered.description.hasPrefix("cannot enter context:"))
        #expect(ContextError.contextAlreadyEntered.description.hasSuffix("is already entered"))
    }

    @Test func repr() throws {
        let c = ContextVar<Int>("a")
        try Context().run { () throws in
            let t = c.set(1)
            #expect(t.description.wholeMatch(of: /<Token var=<ContextVar name='a' at 0x[0-9a-f]+> at 0x[0-9a-f]+>/) != nil)
            #expect(t.description.contains(c.description))
            #expect(!t.description.contains(" used "))
            try c.reset(t)
            #expect(t.description.hasPrefix("<Token used var="))
            #expect(t.description.contains(" used "))
        }
    }

    @Test func resetOnAThread() {
        let ok = onNewThread { () -> Bool in
            let c = ContextVar<Int>("c")
            let t = c.set(1)
            guard (try? c.reset(t)) != nil, c.value == nil else { return false }
            do { try c.reset(t); return false } catch { return (error as? ContextError) == .tokenAlreadyUsed }
        }
        #expect(ok)
    }
}
