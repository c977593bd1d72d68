import ContextKit
import Dispatch
import Foundation
import Testing

// A variable declared with a default reads without optional handling; every
// read, write and binding goes to the wrapped ContextVar.

@Suite struct DefaultedContextVarTests {
    @Test func readsTheDefaultUntilSetAndAfterReset() throws {
        let requestID = DefaultedContextVar("request_id", default: "-")
        let read: String = requestID.value  // not optional: the point of the type
        #expect(read == "-")
        try Context().run {
            let token = requestID.set("r-1")
            #expect(requestID.value == "r-1")
            #expect(token.oldValue == nil)  // MISSING: the default is not a value
            try requestID.reset(token)
            #expect(requestID.value == "-")
            #expect(throws: ContextError.tokenAlreadyUsed) { try requestID.reset(token) }
        }
    }

    @Test func wrapsTheVariableItIsGiven() throws {
        let plain = ContextVar<Int>("count", default: 3)
        let wrapped = try #require(DefaultedContextVar(plain))
        #expect(wrapped.variable == plain)
        #expect(wrapped == DefaultedContextVar(plain))
        #expect(Set([wrapped, DefaultedContextVar(plain)!]).count == 1)
        #expect(wrapped.name == "count" && wrapped.defaultValue == 3)
        #expect(DefaultedContextVar(ContextVar<Int>("no_default")) == nil)
        // Writes through the wrapper are the variable's, and back.
        try Context().run {
            wrapped.set(4)
            #expect(plain.value == 4)
            plain.set(5)
            #expect(wrapped.value == 5)
        }
    }

    @Test func contextLookupUsesTheDefault() throws {
        let level = DefaultedContextVar("level", default: 1)
        let context = Context()
        #expect(context.get(level) == 1)
        #expect(context[level.variable] == nil)  // the mapping itself has no value
        try context.run { level.set(9) }
        #expect(context.get(level) == 9)
        #expect(level.value == 1)  // the caller's context is unchanged
    }

    @Test func withValueSyncAndAsync() async {
        let user = DefaultedContextVar("user", default: "anonymous")
        #expect(user.withValue("ann") { user.value } == "ann")
        let seen = await user.withValue("bob") { () async -> [String] in
            async let child = user.value
            await Task.yield()
            return [user.value, await child]
        }
        #expect(seen == ["bob", "bob"])
        #expect(user.value == "anonymous")
    }

    @Test func notInheritedChildrenReadTheDefault() async {
        let spanID = DefaultedContextVar<UInt64>("span_id", default: 0, inheritance: .notInherited)
        let seen = await spanID.withValue(42) { () async -> [UInt64] in
            async let child = spanID.value
            return [spanID.value, await child]
        }
        #expect(seen == [42, 0])
    }

    @Test func manyThreadsEachSeeTheirOwnValue() {
        let slot = DefaultedContextVar("slot", default: -1)
        let mismatches = ManagedAtomicCounter()
        DispatchQueue.concurrentPerform(iterations: 64) { index in
            slot.withValue(index) {
                for _ in 0..<200 where slot.value != index { mismatches.increment() }
            }
            if slot.value != -1 { mismatches.increment() }
        }
        #expect(mismatches.value == 0)
    }
}

/// A counter many threads may bump.
final class ManagedAtomicCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func increment() { lock.withLock { count += 1 } }
    var value: Int { lock.withLock { count } }
}
