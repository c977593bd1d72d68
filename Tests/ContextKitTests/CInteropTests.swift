import CContextCore
import Testing
@testable import ContextKit

/// C called from async code: the task hands its context to C explicitly
/// (`Context.withCurrentUnsafeHandle`), and C uses the functions that take a
/// context (`cctx_context_set/lookup/...`), since the thread's implicit
/// context is not the task's.
@Suite struct CInteropTests {
    /// A variable created in C, as a C library would.
    final class CVariable: Sendable {
        nonisolated(unsafe) let handle: OpaquePointer  // immutable; the C variable is thread-safe
        init(_ name: String) {
            var out: OpaquePointer?
            precondition(cctx_var_new(name, nil, &out) == CCTX_OK)
            handle = out!
        }
        deinit { cctx_var_release(handle) }
    }

    static func cLookup(_ context: OpaquePointer, _ variable: CVariable) -> UInt? {
        var raw: UnsafeMutableRawPointer?
        guard cctx_context_lookup(context, variable.handle, &raw) == CCTX_OK else { return nil }
        return UInt(bitPattern: raw)
    }

    @Test func asyncCodeHandsItsContextToC() async throws {
        let trace = CVariable("trace_id")
        let ctx = Context()
        try await ctx.run {
            let wrote = Context.withCurrentUnsafeHandle { handle, isWritable in
                isWritable && cctx_context_set(handle, trace.handle, UnsafeMutableRawPointer(bitPattern: 0xBEEF), nil) == CCTX_OK
            }
            #expect(wrote)
            try await Task.sleep(nanoseconds: 500_000)      // hop threads
            let read = Context.withCurrentUnsafeHandle { handle, _ in Self.cLookup(handle, trace) }
            #expect(read == 0xBEEF)
            // The thread's implicit context is not the task's.
            var raw: UnsafeMutableRawPointer?
            #expect(cctx_var_get(trace.handle, &raw) == CCTX_NOT_FOUND)
            // A child task sees the context read-only.
            async let child = Context.withCurrentUnsafeHandle { handle, isWritable in
                (Self.cLookup(handle, trace), isWritable)
            }
            let (childRead, childWritable) = await child
            #expect(childRead == 0xBEEF)
            #expect(!childWritable)
        }
        #expect(ctx.count == 1)
        #expect(ctx.withUnsafeHandle { Self.cLookup($0, trace) } == 0xBEEF)
    }

    @Test func taskWithoutContextHandsAnEmptyReadOnlyContext() async {
        let trace = CVariable("trace_id")
        let (count, writable) = await Task.detached {
            Context.withCurrentUnsafeHandle { handle, isWritable in
                (cctx_context_count(handle), isWritable)
            }
        }.value
        #expect(count == 0)
        #expect(!writable)
        _ = trace
    }

    @Test func threadCodeUsesTheImplicitContext() {
        let trace = CVariable("trace_id")
        let outcome = onNewThread { () -> (UInt?, Bool) in
            let ok = cctx_var_set(trace.handle, UnsafeMutableRawPointer(bitPattern: 0x42), nil) == CCTX_OK
            let snapshot = Context.withCurrentUnsafeHandle { handle, isWritable in
                (Self.cLookup(handle, trace), isWritable)
            }
            return (ok ? snapshot.0 : nil, snapshot.1)
        }
        #expect(outcome.0 == 0x42)
        #expect(!outcome.1)
    }
}
