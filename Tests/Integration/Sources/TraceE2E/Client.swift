// The client process: starts the server (this executable, argument
// "server"), sends requests from ContextKit scopes through AsyncHTTPClient,
// and checks that the server's handler, child task, spawned task and helper
// thread all saw exactly what was set on this side.
//
// Injection goes through InstrumentationSystem.instrument, bootstrapped as
// ContextKitInstrument(wrapping: W3CTraceContextInstrument(), ...): the call
// site passes `ServiceContext.current ?? .topLevel` like any library does,
// and the ContextKit values come along.
import AsyncHTTPClient
import ContextKit
import ContextKitServiceContext
import Foundation
import Instrumentation
import NIOCore
import NIOHTTP1
import ServiceContextModule
import TracePropagation

/// Writes a line straight to stdout, unbuffered: a later crash must not
/// swallow what was already checked.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

enum Client {
    nonisolated(unsafe) static var passed = 0
    nonisolated(unsafe) static var failed = 0

    static func check(_ condition: Bool, _ what: String, _ detail: @autoclosure () -> String = "") {
        if condition {
            passed += 1
            say("ok: \(what)")
        } else {
            failed += 1
            say("FAILED: \(what) \(detail())")
        }
    }

    /// GET `path`, headers injected the way an instrumented library does.
    static func get(_ port: Int, _ path: String) async throws -> String {
        // A connection the server closed before answering (seen about once
        // in three runs on a loaded machine, on the first request) is a
        // transport event, not a propagation result: retry it, boundedly,
        // and say so. What a reply carries is checked whatever the attempt.
        for attempt in 1... {
            do {
                return try await getOnce(port, path)
            } catch let error as HTTPClientError where error == .remoteConnectionClosed && attempt < 5 {
                say("(GET /\(path): connection closed before a reply, attempt \(attempt); retrying)")
            }
        }
        fatalError("unreachable")
    }

    static func getOnce(_ port: Int, _ path: String) async throws -> String {
        var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)/\(path)")
        InstrumentationSystem.instrument.inject(
            ServiceContext.current ?? .topLevel, into: &request.headers, using: HTTPHeadersInjector())
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
        let body = try await response.body.collect(upTo: 1 << 20)
        guard response.status == .ok else { throw ClientError.status(Int(response.status.code)) }
        return String(buffer: body)
    }

    enum ClientError: Error { case status(Int), noPort, serverExited }

    static func expected(_ parent: TraceParent?, _ items: [String: String]) -> String {
        let line =
            "traceparent=\(parent?.description ?? "none") baggage=[\(items.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","))] logged_traceparent=\(parent?.description ?? "none")"
        return Array(repeating: line, count: 4).joined(separator: "\n")
    }

    static func hex(_ value: UInt64, width: Int) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: max(0, width - text.count)) + text
    }

    static func run() async throws -> Int32 {
        InstrumentationSystem.bootstrap(
            ContextKitInstrument(wrapping: W3CTraceContextInstrument(), mirroring: traceMirrors))

        // The server: a second process, same executable.
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        server.arguments = ["server"]
        let output = Pipe()
        server.standardOutput = output
        try server.run()
        let port = try readPort(output.fileHandleForReading)
        say("server pid \(server.processIdentifier) listening on 127.0.0.1:\(port)")

        let parent = TraceParent(traceID: "4bf92f3577b34da6a3ce929d0e0e4736", parentID: "00f067aa0ba902b7")
        let items = ["request_id": "r-1", "tenant": "acme corp;eu"]

        // 1. Values set with ContextKit's set, in a Context.run scope.
        let seen = try await ContextKit.Context().run {
            traceParent.set(parent)
            baggage.set(items)
            return try await get(port, "echo")
        }
        check(seen == expected(parent, items), "set in Context.run reaches the server", seen)

        // 2. From a child task of a withValue scope.
        let fromChild = try await traceParent.withValue(parent) {
            async let child = get(port, "echo")
            return try await child
        }
        check(fromChild == expected(parent, [:]), "a child task's request carries the parent's values", fromChild)

        // 3. Nothing set: nothing sent, nothing seen (a fresh context per request).
        let plain = try await get(port, "echo")
        check(plain == expected(nil, [:]), "no values: the server sees none", plain)

        // 4. Many concurrent requests, each from its own spawned task: no mixing.
        let results = try await withThrowingTaskGroup(of: (Int, String).self) { group in
            for index in 1...24 {
                group.addTaskInCopiedContext {
                    let mine = TraceParent(
                        traceID: hex(UInt64(index), width: 32), parentID: hex(UInt64(index) << 8, width: 16))
                    traceParent.set(mine)
                    baggage.set(["request_id": "r-\(index)"])
                    return (index, try await get(port, "echo"))
                }
            }
            var all: [(Int, String)] = []
            for try await result in group { all.append(result) }
            return all
        }
        let mismatched = results.filter { index, body in
            let mine = TraceParent(traceID: hex(UInt64(index), width: 32), parentID: hex(UInt64(index) << 8, width: 16))
            return body != expected(mine, ["request_id": "r-\(index)"])
        }
        check(results.count == 24 && mismatched.isEmpty, "24 concurrent requests each carry their own trace",
              "\(mismatched.prefix(2))")

        // Stop the server and wait for it (it also stops by itself at its deadline).
        // The server may close the connection as it shuts down, before the
        // reply is flushed: a lost reply is fine, its clean exit is checked.
        do { _ = try await getOnce(port, "stop") } catch { say("(the /stop reply was lost: \(error))") }
        server.waitUntilExit()
        check(server.terminationStatus == 0, "server stopped cleanly", "status \(server.terminationStatus)")
        say("trace-e2e: \(passed) passed, \(failed) failed")
        return failed == 0 ? 0 : 1
    }

    /// Reads the server's stdout until "PORT <n>" (or end of file: the
    /// server died, which fails the run).
    static func readPort(_ handle: FileHandle) throws -> Int {
        var buffer = ""
        while true {
            let data = handle.availableData
            if data.isEmpty { throw ClientError.serverExited }
            buffer += String(decoding: data, as: UTF8.self)
            if let line = buffer.split(separator: "\n").first(where: { $0.hasPrefix("PORT ") }) {
                guard let port = Int(line.dropFirst(5)), port > 0 else { throw ClientError.noPort }
                return port
            }
        }
    }
}
