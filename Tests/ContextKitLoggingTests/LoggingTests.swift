#if Logging  // the package trait that enables ContextKitLogging (see Package.swift)
import ContextKit
import ContextKitLogging
import Dispatch
import Foundation
import Logging
import Synchronization
import Testing

// A request id in every log line, wherever the logging code runs: the same
// task, child tasks, the spawn helpers, and threads or queue work started by
// the copy helpers. Each test logs through a handler that records the merged
// metadata of every line.

/// Records each log line's message and metadata (provider metadata merged
/// under the call's, as swift-log's own handlers do).
///
/// `@unchecked Sendable` is sound: `recorded` is read and written only while
/// `lock` is held; `provider` never changes. (`NSLock` rather than the
/// standard library's `Mutex`: it locks through pthread, which
/// ThreadSanitizer sees; `Mutex` locks inside an uninstrumented module.)
final class CapturingLogHandler: LogHandler, @unchecked Sendable {
    struct Line: Sendable {
        let message: String
        let metadata: Logger.Metadata
    }

    private let lock = NSLock()
    private var recorded: [Line] = []
    private let provider: Logger.MetadataProvider?

    init(metadataProvider: Logger.MetadataProvider?) { self.provider = metadataProvider }

    var lines: [Line] { lock.withLock { recorded } }

    func metadataValue(of message: String, _ key: String) -> String? {
        guard let line = lines.first(where: { $0.message == message }), let value = line.metadata[key] else {
            return nil
        }
        return "\(value)"
    }

    // LogHandler
    var logLevel: Logger.Level {
        get { .trace }
        set {}
    }
    var metadata: Logger.Metadata {
        get { [:] }
        set {}
    }
    var metadataProvider: Logger.MetadataProvider? {
        get { provider }
        set {}
    }
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { nil }
        set {}
    }

    func log(
        level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
        file: String, function: String, line: UInt
    ) {
        var merged = provider?.get() ?? [:]
        merged.merge(metadata ?? [:]) { _, call in call }
        let entry = Line(message: message.description, metadata: merged)
        lock.withLock { recorded.append(entry) }
    }
}

let requestID = ContextVar<String>("request_id")
let userID = DefaultedContextVar("user_id", default: 0)

func makeLogger() -> (Logger, CapturingLogHandler) {
    let provider = Logger.MetadataProvider.contextKit([
        ContextVarMetadata(requestID),
        ContextVarMetadata(userID, key: "user"),
    ])
    let handler = CapturingLogHandler(metadataProvider: provider)
    return (Logger(label: "test", factory: { _ in handler }), handler)
}

/// Waits (bounded, no sleeps) until `count` signals arrived.
func wait(_ semaphore: DispatchSemaphore, count: Int) -> Bool {
    for _ in 0..<count where semaphore.wait(timeout: .now() + 60) == .timedOut { return false }
    return true
}

@Suite struct LoggingMetadataTests {
    @Test func keysAppearOnlyWhereBound() async throws {
        let (logger, handler) = makeLogger()
        logger.info("outside")
        try await Context().run {
            requestID.set("r-1")
            logger.info("inside")
        }
        #expect(handler.metadataValue(of: "outside", "request_id") == nil)
        #expect(handler.metadataValue(of: "outside", "user") == "0")  // a defaulted variable always logs
        #expect(handler.metadataValue(of: "inside", "request_id") == "r-1")
    }

    @Test func includeDefaultFalseLeavesUnboundKeysOut() async throws {
        let plan = ContextVar<String>("plan", default: "free")
        let handler = CapturingLogHandler(
            metadataProvider: .contextKit([
                ContextVarMetadata(plan), ContextVarMetadata(plan, key: "bound_plan", includeDefault: false),
            ]))
        let logger = Logger(label: "test", factory: { _ in handler })
        logger.info("unset")
        plan.withValue("pro") { logger.info("set") }
        #expect(handler.metadataValue(of: "unset", "plan") == "free")
        #expect(handler.metadataValue(of: "unset", "bound_plan") == nil)
        #expect(handler.metadataValue(of: "set", "bound_plan") == "pro")
    }

    @Test func callMetadataWinsOverProvider() {
        let (logger, handler) = makeLogger()
        requestID.withValue("from-context") {
            logger.info("explicit", metadata: ["request_id": "from-call"])
        }
        #expect(handler.metadataValue(of: "explicit", "request_id") == "from-call")
    }

    @Test func childTasksAndSpawnHelpersCarryTheRequestID() async throws {
        let (logger, handler) = makeLogger()
        try await Context().run {
            requestID.set("r-2")
            userID.set(7)
            async let child: Void = logger.info("async let")
            await child
            await withTaskGroup(of: Void.self) { group in
                group.addTask { logger.info("addTask") }
                group.addTaskInCopiedContext {
                    userID.set(8)  // the copy is the child's own
                    logger.info("addTaskInCopiedContext")
                }
            }
            await Context.task { logger.info("Context.task") }.value
            await Task { logger.info("Task {}") }.value
        }
        for message in ["async let", "addTask", "addTaskInCopiedContext", "Context.task", "Task {}"] {
            #expect(handler.metadataValue(of: message, "request_id") == "r-2", "\(message)")
        }
        #expect(handler.metadataValue(of: "addTask", "user") == "7")
        #expect(handler.metadataValue(of: "addTaskInCopiedContext", "user") == "8")
        // A detached task starts from an empty context, as a new thread does.
        await Task.detached { logger.info("detached") }.value
        #expect(handler.metadataValue(of: "detached", "request_id") == nil)
    }

    @Test func threadAndQueueHelpersCarryTheRequestID() throws {
        let (logger, handler) = makeLogger()
        let done = DispatchSemaphore(value: 0)
        let queue = DispatchQueue(label: "logging-test", attributes: .concurrent)
        let context = Context()
        try context.run {
            requestID.set("r-3")
            Thread.detachNewThreadInCopiedContext {
                logger.info("thread")
                done.signal()
            }
            queue.asyncInCopiedContext {
                logger.info("queue")
                done.signal()
            }
            // A plain thread does not inherit: it starts in an empty context.
            Thread.detachNewThread {
                logger.info("plain thread")
                done.signal()
            }
        }
        #expect(wait(done, count: 3))
        #expect(handler.metadataValue(of: "thread", "request_id") == "r-3")
        #expect(handler.metadataValue(of: "queue", "request_id") == "r-3")
        #expect(handler.metadataValue(of: "plain thread", "request_id") == nil)
    }

    @Test func manyConcurrentRequestsNeverMix() async throws {
        let (logger, handler) = makeLogger()
        await withTaskGroup(of: Void.self) { group in
            for index in 0..<200 {
                group.addTask {
                    await requestID.withValue("req-\(index)") {
                        await Task.yield()
                        logger.info("request \(index)")
                    }
                }
            }
        }
        let lines = handler.lines
        #expect(lines.count == 200)
        for line in lines {
            let index = line.message.dropFirst("request ".count)
            #expect(line.metadata["request_id"].map { "\($0)" } == "req-\(index)")
        }
    }
}
#endif
