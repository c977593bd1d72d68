import Testing
@testable import ContextKit

/// Random set/reset/copy/run operations over many variables, checked after
/// every step against a `Dictionary` model (swift-collections' habit).
/// Full size: 20,000 operations over 500 variables (CONTEXTKIT_TEST_SCALE
/// scales the operation count).
@Suite struct ModelTests {
    /// A context under test and the dictionary it must equal.
    final class Pair {
        let context: Context
        var model: [Int: Int]
        var isEntered = false
        init(_ context: Context, _ model: [Int: Int]) { self.context = context; self.model = model }
    }

    struct SplitMix: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    final class Run {
        let vars = (0..<500).map { ContextVar<Int>("v\($0)") }
        var rng = SplitMix(state: 0x5EED)
        var steps = 0
        var failures = 0
        var counts: [String: Int] = [:]
        /// The pairs entered right now, outermost first.
        var chain: [Pair] = []
        let limit: Int
        var saved: [Pair] = []
        /// Tokens made by set: which pair they were made in, the variable,
        /// the old value, and whether they were used.
        var tokens: [(pair: Pair, index: Int, old: Int?, token: Token<Int>)] = []

        init(limit: Int) { self.limit = limit }

        func fail(_ message: @autoclosure () -> String) {
            failures += 1
            if failures < 10 { Issue.record(Comment(rawValue: message())) }
        }

        /// Checks the current context against `pair.model`: the touched
        /// variable and the count every step; everything every 250 steps.
        func check(_ pair: Pair, touched: Int?) {
            if let i = touched, vars[i].value != pair.model[i] {
                fail("step \(steps): v\(i) = \(String(describing: vars[i].value)), model \(String(describing: pair.model[i]))")
            }
            if pair.context.count != pair.model.count {
                fail("step \(steps): count \(pair.context.count), model \(pair.model.count)")
            }
            if steps % 250 == 0 {
                for (i, v) in vars.enumerated() where v.value != pair.model[i] {
                    fail("step \(steps): full check v\(i)")
                }
                var seen: [Int: Int] = [:]
                for (variable, value) in pair.context {
                    seen[Int(variable.name.dropFirst())!] = value as? Int
                }
                if seen != pair.model { fail("step \(steps): iteration differs from model") }
            }
        }

        /// Runs random operations in `pair` (already entered) until the
        /// budget is spent or a `return` operation is drawn.
        func operate(in pair: Pair, depth: Int) {
            while steps < limit {
                steps += 1
                let i = Int.random(in: 0..<vars.count, using: &rng)
                switch Int.random(in: 0..<100, using: &rng) {
                case 0..<55:
                    let value = Int.random(in: 0..<1_000_000, using: &rng)
                    let token = vars[i].set(value)
                    if token.oldValue != pair.model[i] { fail("step \(steps): token old value") }
                    tokens.append((pair, i, pair.model[i], token))
                    counts["set", default: 0] += 1
                    if tokens.count > 1_500 { tokens.removeFirst(500) }
                    pair.model[i] = value
                    check(pair, touched: i)
                case 55..<80 where !tokens.isEmpty:
                    // Mostly tokens of this context (resets that succeed),
                    // sometimes any token (the error paths).
                    let own = tokens.indices.filter { tokens[$0].pair === pair }
                    let k = (!own.isEmpty && Int.random(in: 0..<4, using: &rng) > 0)
                        ? own[Int.random(in: 0..<own.count, using: &rng)]
                        : Int.random(in: 0..<tokens.count, using: &rng)
                    let entry = tokens[k]
                    let variable = vars[entry.index]
                    do {
                        try variable.reset(entry.token)
                        if entry.pair !== pair { fail("step \(steps): reset accepted a foreign token") }
                        if let old = entry.old { pair.model[entry.index] = old } else { pair.model[entry.index] = nil }
                        tokens.remove(at: k)
                        counts["reset", default: 0] += 1
                    } catch {
                        counts["reset error", default: 0] += 1
                        let expected: ContextError = entry.token.isUsed ? .tokenAlreadyUsed : .tokenFromDifferentContext
                        if error != expected || entry.pair === pair { fail("step \(steps): reset threw \(error)") }
                        if entry.pair !== pair && tokens.count > 2_000 { tokens.remove(at: k) }
                    }
                    check(pair, touched: entry.index)
                case 80..<88:
                    let copy = Pair(Context.copyCurrent(), pair.model)
                    if copy.context.count != pair.model.count { fail("step \(steps): copy count") }
                    saved.append(copy)
                    counts["copy", default: 0] += 1
                    if saved.count > 16 { saved.removeFirst() }
                case 88..<96 where depth < 6 && !saved.isEmpty:
                    // Sometimes a context that is entered right now (refused).
                    let target = Int.random(in: 0..<10, using: &rng) == 0
                        ? chain[Int.random(in: 0..<chain.count, using: &rng)]
                        : saved[Int.random(in: 0..<saved.count, using: &rng)]
                    let outer = pair.model
                    do {
                        try target.context.run {
                            target.isEntered = true
                            chain.append(target)
                            defer { chain.removeLast() }
                            counts["run", default: 0] += 1
                            check(target, touched: i)
                            operate(in: target, depth: depth + 1)
                            target.isEntered = false
                        }
                        if !target.context.isEntered, target.isEntered { fail("step \(steps): flag") }
                        if pair.model != outer { fail("step \(steps): run changed the outer model") }
                        // After run: the target's mapping equals its model.
                        for (k, v) in target.model where target.context[vars[k]] != v {
                            fail("step \(steps): context differs from its model after run")
                        }
                        if target.context.count != target.model.count { fail("step \(steps): count after run") }
                    } catch {
                        counts["run refused", default: 0] += 1
                        if !(target.isEntered && (error as? ContextError) == .contextAlreadyEntered) {
                            fail("step \(steps): run threw \(error)")
                        }
                    }
                    check(pair, touched: i)
                case 96..<100 where depth > 0:
                    return
                default:
                    check(pair, touched: i)
                }
            }
        }
    }

    @Test func randomOperationsMatchADictionary() throws {
        let run = Run(limit: scaled(20_000))
        let root = Pair(Context(), [:])
        try root.context.run {
            root.isEntered = true
            run.chain = [root]
            while run.steps < run.limit { run.operate(in: root, depth: 0) }
            root.isEntered = false
        }
        #expect(run.steps == run.limit)
        #expect(run.failures == 0)
        // Every kind of operation really happened.
        for kind in ["set", "reset", "reset error", "copy", "run", "run refused"] {
            #expect(run.counts[kind, default: 0] > 0, "no \(kind) operation ran: \(run.counts)")
        }
        #expect(root.context.count == root.model.count)
    }
}
