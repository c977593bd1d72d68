// Uses both products of ContextKit from outside the package and reports in
// the plain "N passed, N failed" form; exits non-zero on any failure.
import CContextCore
import ContextKit
import Foundation

@main
struct DownstreamCheck {
    nonisolated(unsafe) static var passed = 0
    nonisolated(unsafe) static var failed = 0

    static func check(_ condition: Bool, _ what: String) {
        if condition {
            passed += 1
        } else {
            failed += 1
            print("FAILED: \(what)")
        }
    }

    /// Thread-locals are per OS thread, so they are used from sync code.
    static func threadLocalCounts() -> Bool {
        let counter = ThreadLocal { 0 }
        counter.value += 1
        return counter.value == 1
    }

    static func main() async throws {
        // An async main is a task: it sets variables in a context of its own.
        try await Context().run { try await checks() }
        print("downstream: \(passed) passed, \(failed) failed")
        if failed > 0 { exit(1) }
    }

    static func checks() async throws {
        let user = ContextVar<String>("user", default: "anonymous")
        check(user.value == "anonymous", "default value")
        let token = user.set("ann")
        check(user.value == "ann", "set")
        try user.reset(token)
        check(user.value == "anonymous", "reset")

        let copy = Context.copyCurrent()
        try copy.run { _ = user.set("bob") }
        check(copy[user] == "bob" && user.value == "anonymous", "run on a copy")

        let seen = try await Context().run { () async -> String? in
            user.set("task")
            await Task.yield()
            return user.value
        }
        check(seen == "task", "async run")

        check(threadLocalCounts(), "ThreadLocal")

        // The C API from the same program.
        var cvar: OpaquePointer?
        check(cctx_var_new("c_var", nil, &cvar) == CCTX_OK, "cctx_var_new")
        check(String(cString: cctx_strerror(CCTX_TOKEN_USED)) == "token has already been used once",
              "cctx_strerror")
        cctx_var_release(cvar)
    }
}
