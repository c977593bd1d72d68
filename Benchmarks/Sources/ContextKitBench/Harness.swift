// The timing harness: the same method as Benchmarks/c/bench_common.h.
//
// For every row: calibrate the iteration count until one loop takes at least
// 25 ms (so a loop lasts ~25-50 ms), run one untimed warm-up loop, then time
// `reps` (7) loops with clock_gettime(CLOCK_MONOTONIC) and report the median
// and min-max in ns per operation.
//
// A loop body returns an Int folded from every result it produced (`&+=` of
// the values, or of pointer bits); the harness passes it to `blackHole`, an
// @inline(never) sink, so no result can be optimised away while the sink
// costs one call per loop, not per operation.
//
// Output: one TSV line per row on stdout,
//   group  operation  impl  median  min  max  unit  note
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#else
import Darwin
#endif

nonisolated(unsafe) var blackHoleStore = 0

@inline(never)
func blackHole(_ x: Int) {
    blackHoleStore &+= x
}

@inline(never)
func blackHole(_ x: UnsafeMutableRawPointer?) {
    blackHoleStore &+= Int(bitPattern: x)
}

struct Stats {
    var median: Double
    var min: Double
    var max: Double
}

let reps = 7
let targetNs = 25_000_000.0

@inline(__always)
func nowNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

func summarise(_ values: [Double]) -> Stats {
    let v = values.sorted()
    let n = v.count
    let median = n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2
    return Stats(median: median, min: v[0], max: v[n - 1])
}

func nextIterations(_ n: Int, _ dt: Double) -> Int {
    dt > 1e6 ? Int(Double(n) * (targetNs * 1.1) / dt) + 1 : n * 4
}

/// Counting mode, for callgrind (steady on a loaded machine, unlike the
/// times): CKBENCH_N=<n> CKBENCH_INDEX=<k> runs loop number k (in the order
/// the rows are measured; the rows print their numbers) once with n
/// operations and every other loop once with 1, untimed; the map rows are
/// skipped. Two runs with different n give a row's instructions per
/// operation: (total(n2) - total(n1)) / (n2 - n1).
let countingIterations: Int? = getenv("CKBENCH_N").flatMap { Int(String(cString: $0)) }
let countingIndex: Int = getenv("CKBENCH_INDEX").flatMap { Int(String(cString: $0)) } ?? -1
nonisolated(unsafe) var loopsMeasured = 0

/// The iteration count of the next loop in counting mode.
func nextCountingIterations(_ n: Int) -> Int {
    defer { loopsMeasured += 1 }
    return loopsMeasured == countingIndex ? n : 1
}

/// Times `body(n)`, a loop of n operations returning a folded result.
func measure(_ body: (Int) -> Int) -> Stats {
    if let n = countingIterations {
        blackHole(body(nextCountingIterations(n)))
        return Stats(median: 0, min: 0, max: 0)
    }
    var n = 16
    while true {
        let t0 = nowNs()
        blackHole(body(n))
        let dt = Double(nowNs() - t0)
        if dt >= targetNs { break }
        n = nextIterations(n, dt)
    }
    blackHole(body(n))  // warm-up
    var samples: [Double] = []
    samples.reserveCapacity(reps)
    for _ in 0..<reps {
        let t0 = nowNs()
        blackHole(body(n))
        samples.append(Double(nowNs() - t0) / Double(n))
    }
    return summarise(samples)
}

/// `measure` for loops that await.
func measureAsync(_ body: (Int) async -> Int) async -> Stats {
    if let n = countingIterations {
        blackHole(await body(nextCountingIterations(n)))
        return Stats(median: 0, min: 0, max: 0)
    }
    var n = 16
    while true {
        let t0 = nowNs()
        blackHole(await body(n))
        let dt = Double(nowNs() - t0)
        if dt >= targetNs { break }
        n = nextIterations(n, dt)
    }
    blackHole(await body(n))
    var samples: [Double] = []
    samples.reserveCapacity(reps)
    for _ in 0..<reps {
        let t0 = nowNs()
        blackHole(await body(n))
        samples.append(Double(nowNs() - t0) / Double(n))
    }
    return summarise(samples)
}

func emit(_ group: String, _ op: String, _ impl: String, _ s: Stats,
          unit: String = "ns", note: String = "") {
    if countingIterations != nil {
        print("loop \(loopsMeasured - 1)\t\(op)\t\(impl)")
        return
    }
    print("\(group)\t\(op)\t\(impl)\t\(fmt(s.median))\t\(fmt(s.min))\t\(fmt(s.max))\t\(unit)\t\(note)")
    fflush(stdout)
    let line = "  \(pad(group, 8)) \(pad(op, 26)) \(pad(impl, 16)) \(fmt(s.median)) \(unit)  [\(fmt(s.min)) .. \(fmt(s.max))]\n"
    fputs(line, stderr)
}

func fmt(_ x: Double) -> String {
    let scaled = (x * 1000).rounded() / 1000
    return "\(scaled)"
}

func pad(_ s: String, _ n: Int) -> String {
    s.count >= n ? s : s + String(repeating: " ", count: n - s.count)
}

func progress(_ s: String) {
    fputs("ContextKitBench: \(s)\n", stderr)
}

/// The xorshift generator and shuffle of bench_common.h (same orders).
struct XorShift {
    var state: UInt64
    init(seed: UInt64) { state = seed | 1 }
    mutating func next() -> UInt64 {
        var x = state
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        state = x
        return x
    }
}

func shuffledIndices(_ n: Int, seed: UInt64) -> [Int] {
    var p = Array(0..<n)
    var rng = XorShift(seed: seed)
    var i = n
    while i > 1 {
        let j = Int(rng.next() % UInt64(i))
        p.swapAt(i - 1, j)
        i -= 1
    }
    return p
}
