// The server process: Hummingbird on 127.0.0.1, port chosen by the system
// (printed as "PORT <n>" for the client). Each request runs in a fresh
// ContextKit context filled by ContextKitTracingMiddleware; /echo reports
// what the handler, a child task, a spawned task and a helper thread see.
// The server stops on /stop, or by itself after `deadline` (then it exits
// non-zero), so no run leaves a process behind.
import ContextKit
import ContextKitLogging
import ContextKitServiceContext
import Foundation
import Hummingbird
import Instrumentation
import Logging
import TracePropagation

/// What the running code sees: the trace values and the log metadata a
/// `logger.info` here would carry. One line, compared by the client.
@Sendable func observe() -> String {
    let provider = Logger.MetadataProvider.contextKit([
        ContextVarMetadata(traceParent, includeDefault: false), ContextVarMetadata(baggage),
    ])
    let logged = provider.get()
    let items = baggage.value.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
    return "traceparent=\(traceParent.value?.description ?? "none") baggage=[\(items)] "
        + "logged_traceparent=\(logged["traceparent"].map { "\($0)" } ?? "none")"
}

enum Server {
    static func run(deadline: Duration) async throws -> Int32 {
        // The same instrument as the client's: extraction is the W3C one.
        InstrumentationSystem.bootstrap(
            ContextKitInstrument(wrapping: W3CTraceContextInstrument(), mirroring: traceMirrors))
        let (stopRequests, stop) = AsyncStream.makeStream(of: Void.self)
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: ContextKitTracingMiddleware())
        router.get("echo") { _, _ -> String in
            let here = observe()
            async let child = observe()
            let spawned = await ContextKit.Context.task { observe() }.value
            let thread = await withCheckedContinuation { continuation in
                Thread.detachNewThreadInCopiedContext { continuation.resume(returning: observe()) }
            }
            return [here, await child, spawned, thread].joined(separator: "\n")
        }
        router.get("stop") { _, _ -> String in
            stop.yield()
            return "stopping"
        }
        let app = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in
                // Unbuffered, straight to the pipe the client reads.
                FileHandle.standardOutput.write(Data("PORT \(channel.localAddress?.port ?? -1)\n".utf8))
            },
            logger: Logger(label: "trace-e2e-server", factory: { _ in SwiftLogNoOpLogHandler() })
        )
        return try await withThrowingTaskGroup(of: Int32.self) { group in
            group.addTask {
                try await app.runService(gracefulShutdownSignals: [])
                return 0
            }
            group.addTask {
                for await _ in stopRequests { return 0 }
                return 0
            }
            group.addTask {
                // A bound, not a timing assumption: the client stops the
                // server long before; this only ends a run whose client died.
                do { try await Task.sleep(for: deadline) } catch { return 0 }  // cancelled: stopped normally
                FileHandle.standardError.write(Data("server: no /stop within \(deadline); stopping\n".utf8))
                return 1
            }
            let status = try await group.next() ?? 1
            group.cancelAll()
            stop.finish()
            return status
        }
    }
}
