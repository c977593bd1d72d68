// The seed examples of ContextKit, in Swift: threading.local across threads,
// a ContextVar with a Token, Context.run on a copy, and tasks that keep their
// own request id across awaits.
import ContextKit
import Foundation

@main
struct Demo {
    static func main() async throws {
        // An async main is a task, and a task sets variables only in a
        // context of its own (docs/concurrency.md): give it one.
        try await Context().run {
            localAcrossThreads()
            try contextVarWithToken()
            try runOnACopy()
            await tasksKeepTheirOwnID()
        }
    }

    /// 1. threading.local: the same Local seen from two threads.
    static func localAcrossThreads() {
        print("threading.local (Swift): the same Local read from two threads")
        let local = Local()
        local.greeting = "hello from main"
        print("  main         sees greeting = \(local.greeting ?? "nothing")")
        let finished = DispatchSemaphore(value: 0)
        Thread {
            print("  worker       sees greeting = \(local.greeting ?? "nothing")")
            local.greeting = "hello from the worker"
            print("  worker       sees greeting = \(local.greeting ?? "nothing")")
            finished.signal()
        }.start()
        finished.wait()
        print("  main         sees greeting = \(local.greeting ?? "nothing")")
    }

    // Declared with a default: `value` is a String, never nil.
    static let requestID = DefaultedContextVar("request_id", default: "none")

    /// 2. ContextVar: set, get, set again with a Token, reset.
    static func contextVarWithToken() throws {
        print("ContextVar (Swift): set, get, set again with a Token, reset")
        print("  default:             request_id = \(requestID.value)")
        requestID.set("req-1")
        print("  after set:           request_id = \(requestID.value)")
        let token = requestID.set("req-2")
        print("  set again:           request_id = \(requestID.value) (token remembers \(token.oldValue ?? "MISSING"))")
        try requestID.reset(token)
        print("  after reset(token):  request_id = \(requestID.value)")
        do {
            try requestID.reset(token)
        } catch {
            print("  reset again:         \(error)")
        }
    }

    /// 3. Context.run on a copy does not affect the original.
    static func runOnACopy() throws {
        print("Context.run (Swift): a copy is changed, the original is not")
        let copy = Context.copyCurrent()
        try copy.run {
            requestID.set("req-inside-run")
            print("  inside run:          request_id = \(requestID.value)")
        }
        print("  the copy holds:      request_id = \(copy.get(requestID))")
        print("  the original holds:  request_id = \(requestID.value)")
        print("  the copy:            \(copy)")
    }

    /// 4. Tasks: each request keeps its own id across awaits, whatever
    ///    thread it resumes on.
    static func tasksKeepTheirOwnID() async {
        print("Tasks (Swift): five concurrent requests, each with its own request_id")
        let lines = await withTaskGroup(of: String.self) { group in
            for n in 1...5 {
                group.addTask {
                    (try? await Context().run {
                        requestID.set("req-\(n)")
                        var seen: [String] = []
                        for _ in 0..<3 {
                            try? await Task.sleep(nanoseconds: UInt64.random(in: 0...1_000_000))
                            seen.append(requestID.value)
                        }
                        return "  task \(n): saw \(seen.joined(separator: ", "))"
                    }) ?? "  task \(n): failed"
                }
            }
            var all: [String] = []
            for await line in group { all.append(line) }
            return all.sorted()
        }
        lines.forEach { print($0) }
        print("  outside the tasks:   request_id = \(requestID.value)")
    }
}
