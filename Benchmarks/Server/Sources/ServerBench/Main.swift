// ServerBench: the Hummingbird 2 server of `make bench-server`.
//
//   ServerBench --mode tasklocal|contextkit-run|contextkit-withvalue|unscoped-global
//               [--port N] [--deadline SECONDS]
//
// (unscoped-global is wrong on purpose: the driver's self-check that
// crossed ids are caught; see Binding.swift.)
//
// Listens on 127.0.0.1 (port 0: the system picks a free one) and prints
// "PORT <n>" once it accepts connections. Routes:
//
//   GET /bench   the measured request (RequestIDProbe.swift); needs the
//                header x-request-id
//   GET /stop    stops the server
//
// It stops on /stop, or by itself after --deadline seconds (default 900) so
// that a driver that died leaves nothing running. At exit it prints
//
//   RESULT mode=<m> served=<n> reads=<7n> mismatches=<k> missing_header=<j> stopped=<stop|deadline>
//
// and exits 0 only when stopped by /stop with no mismatch and no request
// lacking its header.
import Foundation
import Hummingbird
import Logging

struct Options {
    var binding: any RequestIDBinding.Type = TaskLocalBinding.self
    var port = 0
    var deadline = Duration.seconds(900)

    static func parse(_ arguments: [String]) -> Options {
        var options = Options()
        var modeGiven = false
        var rest = arguments[...]
        func fail(_ message: String) -> Never {
            FileHandle.standardError.write(Data("ServerBench: \(message)\n".utf8))
            exit(2)
        }
        while let flag = rest.popFirst() {
            guard let value = rest.popFirst() else { fail("\(flag) needs a value") }
            switch flag {
            case "--mode":
                guard let binding = allBindings.first(where: { $0.mode == value }) else {
                    fail("unknown mode \(value); one of \(allBindings.map { $0.mode })")
                }
                options.binding = binding
                modeGiven = true
            case "--port":
                guard let port = Int(value), (0...65535).contains(port) else { fail("bad port \(value)") }
                options.port = port
            case "--deadline":
                guard let seconds = Int(value), seconds > 0 else { fail("bad deadline \(value)") }
                options.deadline = .seconds(seconds)
            default:
                fail("unknown argument \(flag)")
            }
        }
        if !modeGiven { fail("--mode is required") }
        return options
    }
}

enum Stop: Sendable { case requested, deadline }

/// The router of one mode: its middleware on /bench, the handler specialised
/// for its binding.
func buildRouter(mode: String, stop: AsyncStream<Void>.Continuation) -> Router<BasicRequestContext> {
    let router = Router(context: BasicRequestContext.self)
    let bench = router.group("bench")
    switch mode {
    case TaskLocalBinding.mode:
        bench.add(middleware: TaskLocalMiddleware())
            .get { request, _ in await respond(request, TaskLocalBinding.self) }
    case ContextKitRunBinding.mode:
        bench.add(middleware: ContextKitRunMiddleware())
            .get { request, _ in await respond(request, ContextKitRunBinding.self) }
    case ContextKitWithValueBinding.mode:
        bench.add(middleware: ContextKitWithValueMiddleware())
            .get { request, _ in await respond(request, ContextKitWithValueBinding.self) }
    case UnscopedGlobalBinding.mode:
        bench.add(middleware: UnscopedGlobalMiddleware())
            .get { request, _ in await respond(request, UnscopedGlobalBinding.self) }
    default:
        fatalError("no router for mode \(mode)")  // Options.parse accepts only known modes
    }
    router.get("stop") { _, _ -> String in
        stop.yield()
        return "stopping\n"
    }
    return router
}

func serve(_ options: Options) async throws -> Stop {
    let (stopRequests, stop) = AsyncStream.makeStream(of: Void.self)
    let app = Application(
        router: buildRouter(mode: options.binding.mode, stop: stop),
        configuration: .init(address: .hostname("127.0.0.1", port: options.port)),
        onServerRunning: { channel in
            // Unbuffered, straight to the driver's pipe.
            FileHandle.standardOutput.write(Data("PORT \(channel.localAddress?.port ?? -1)\n".utf8))
        },
        logger: Logger(label: "server-bench", factory: { _ in SwiftLogNoOpLogHandler() })
    )
    return try await withThrowingTaskGroup(of: Stop.self) { group in
        group.addTask {
            try await app.runService(gracefulShutdownSignals: [])
            return .requested
        }
        group.addTask {
            for await _ in stopRequests { return .requested }
            return .requested
        }
        group.addTask {
            // A bound, not a timing assumption: the driver stops the server
            // long before.
            do { try await Task.sleep(for: options.deadline) } catch { return .requested }
            return .deadline
        }
        let how = try await group.next() ?? .deadline
        group.cancelAll()
        stop.finish()
        return how
    }
}

@main
enum ServerBench {
    static func main() async {
        let options = Options.parse(Array(CommandLine.arguments.dropFirst()))
        let how: Stop
        do {
            how = try await serve(options)
        } catch {
            FileHandle.standardError.write(Data("ServerBench: \(error)\n".utf8))
            exit(1)
        }
        let served = Tally.served.load(ordering: .relaxed)
        let mismatches = Tally.mismatches.load(ordering: .relaxed)
        let missing = Tally.missingHeader.load(ordering: .relaxed)
        print(
            "RESULT mode=\(options.binding.mode) served=\(served) reads=\(served * readsPerRequest)"
                + " mismatches=\(mismatches) missing_header=\(missing)"
                + " stopped=\(how == .requested ? "stop" : "deadline")")
        if how == .deadline {
            FileHandle.standardError.write(Data("ServerBench: no /stop within \(options.deadline)\n".utf8))
        }
        exit(how == .requested && mismatches == 0 && missing == 0 ? 0 : 1)
    }
}
