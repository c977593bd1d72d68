import Testing
import ContextKit   // not @testable: only the public API

/// The fixed public Swift names, spelled exactly as the contract gives them,
/// compile and behave through the public API alone.
@Suite struct APISurfaceTests {
    actor Holder {
        var count = 0
        func bump(_ ctx: Context, _ v: ContextVar<Int>) async throws -> Int {
            try await ctx.run {
                count += 1                       // actor-isolated state in a non-Sendable body
                v.set(count)
                await Task.yield()
                return try v.get()
            }
        }
        func scoped(_ v: ContextVar<Int>) async -> Int? {
            await v.withValue(5) {
                count += 1
                await Task.yield()
                return v.value
            }
        }
    }

    @Test func section8Names() async throws {
        let v: ContextVar<Int> = ContextVar("x")
        let w = ContextVar<Int>("y", default: 1)
        let _: String = v.name
        let _: Int? = w.defaultValue
        let anyVar: any AnyContextVar = v
        #expect(anyVar.name == "x")
        let ctx = Context()
        let token: Token<Int> = try ctx.run { v.set(3) }
        let _: ContextVar<Int> = token.variable
        let _: Int? = token.oldValue
        let _: Bool = token.isUsed
        #expect(ctx[v] == 3)
        #expect(ctx.get(v, default: 0) == 3)
        #expect(ctx.contains(v))
        #expect(ctx.count == 1)
        let _: [any AnyContextVar] = ctx.variables
        let _: [any Sendable] = ctx.values
        for element in ctx {
            let _: any AnyContextVar = element.variable
            let _: any Sendable = element.value
        }
        let copied: Context = Context.copyCurrent().copy()
        #expect(copied.count == 0)
        let r: Int = try await ctx.run { await Task.yield(); return try v.get() }
        #expect(r == 3)
        let x: Int = await w.withValue(9) { await Task.yield(); return w.get(default: 0) }
        #expect(x == 9)
        let y: Int = w.withValue(8) { w.value ?? 0 }
        #expect(y == 8)
        let errors: [ContextError] = [
            .lookupError(variable: "x"), .tokenAlreadyUsed, .tokenFromDifferentVariable,
            .tokenFromDifferentContext, .contextAlreadyEntered,
        ]
        #expect(Set(errors.map(\.description)).count == 5)
        #expect(try await Holder().bump(Context(), v) == 1)
        #expect(await Holder().scoped(v) == 5)
        let _: any Sendable = ctx                  // Context is Sendable
        let _: any Sendable = token
    }
}
