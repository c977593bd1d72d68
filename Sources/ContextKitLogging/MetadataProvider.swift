// Logging metadata from ContextKit variables: the Swift form of structlog's
// `merge_contextvars` (Python code binds a request id in a ContextVar once,
// and every log line anywhere in the request carries it).
//
// swift-log asks a `Logger.MetadataProvider` for metadata at each log call,
// on the thread and in the task that logs. A provider built here reads the
// chosen variables there, so a log line carries what that code sees: the
// task's context in a task (child tasks, `Context.task`,
// `addTaskInCopiedContext`), the thread's on a thread (including threads and
// queue work started by `Thread.detachNewThreadInCopiedContext` and
// `DispatchQueue.asyncInCopiedContext`, which run in a copy of the caller's
// context).
#if Logging  // the package trait that enables this product (see Package.swift)
import ContextKit
import Logging

/// One ContextKit variable as one key of swift-log metadata.
///
/// ```swift
/// let requestID = ContextVar<String>("request_id")
/// let user = ContextVar<Int>("user_id")
///
/// let provider = Logger.MetadataProvider.contextKit([
///     ContextVarMetadata(requestID),                 // key "request_id"
///     ContextVarMetadata(user, key: "user"),
/// ])
/// LoggingSystem.bootstrap({ label, provider in
///     StreamLogHandler.standardOutput(label: label, metadataProvider: provider)
/// }, metadataProvider: provider)
/// ```
public struct ContextVarMetadata: Sendable {
    /// The metadata key.
    public let key: String

    private let read: @Sendable () -> Logger.MetadataValue?

    /// `variable` under `key` (by default the variable's name), its value
    /// rendered as a string (`String(describing:)`).
    ///
    /// - Parameters:
    ///   - variable: the variable to read at each log call.
    ///   - key: the metadata key; `nil` uses `variable.name`.
    ///   - includeDefault: when the variable has no value in the current
    ///     context: `true` logs its default (if it has one), `false` leaves
    ///     the key out (structlog's behaviour: only bound values appear).
    public init<Value: Sendable>(_ variable: ContextVar<Value>, key: String? = nil, includeDefault: Bool = true) {
        self.init(variable, key: key, includeDefault: includeDefault) { .string(String(describing: $0)) }
    }

    /// `variable` under `key`, rendered by `render` (for a dictionary, an
    /// array, or a `.stringConvertible` value).
    ///
    /// - Parameters:
    ///   - variable: the variable to read at each log call.
    ///   - key: the metadata key; `nil` uses `variable.name`.
    ///   - includeDefault: see ``init(_:key:includeDefault:)``.
    ///   - render: turns the value into a metadata value; called on the
    ///     logging thread at each log call, so keep it cheap.
    public init<Value: Sendable>(
        _ variable: ContextVar<Value>,
        key: String? = nil,
        includeDefault: Bool = true,
        render: @escaping @Sendable (Value) -> Logger.MetadataValue
    ) {
        self.key = key ?? variable.name
        self.read = {
            let value = includeDefault ? variable.value : variable.valueWithoutDefault
            return value.map(render)
        }
    }

    /// A `DefaultedContextVar` under `key` (by default its
    /// name); it always has a value, so the key is always present.
    ///
    /// - Parameters:
    ///   - variable: the variable to read at each log call.
    ///   - key: the metadata key; `nil` uses `variable.name`.
    public init<Value: Sendable>(_ variable: DefaultedContextVar<Value>, key: String? = nil) {
        self.init(variable.variable, key: key, includeDefault: true)
    }

    /// The value for this key as the calling code sees it now, or `nil`.
    public func currentValue() -> Logger.MetadataValue? { read() }
}

extension Logger.MetadataProvider {
    /// A metadata provider that reads `entries` from ContextKit at each log
    /// call: every `logger.info(…)` carries, for example, the request id
    /// bound in the current context, in whichever task or thread it runs.
    ///
    /// Metadata given at the log call wins over these keys; these keys win
    /// over metadata set on the logger (`logger[metadataKey:]`). That is the
    /// order swift-log's own `StreamLogHandler` merges in (the handler's
    /// metadata, then the provider's, then the call's); another
    /// `LogHandler` decides its own.
    ///
    /// - Parameter entries: the variables and their keys; a variable with no
    ///   value (see ``ContextVarMetadata/init(_:key:includeDefault:)-(ContextVar<Value>,_,_)``)
    ///   adds no key.
    /// - Returns: a provider for `LoggingSystem.bootstrap(_:metadataProvider:)`
    ///   or `Logger(label:metadataProvider:)`.
    public static func contextKit(_ entries: [ContextVarMetadata]) -> Logger.MetadataProvider {
        Logger.MetadataProvider {
            var metadata: Logger.Metadata = [:]
            for entry in entries {
                if let value = entry.currentValue() { metadata[entry.key] = value }
            }
            return metadata
        }
    }
}
#endif
