#if Logging  // the package trait that enables ContextKitLogging (see Package.swift)
import ContextKit
import ContextKitLogging
import Foundation
import Logging
import Testing

/// A new user's checks of what the ContextKitLogging docs promise, through
/// swift-log's own handler (`StreamLogHandler`), as the docs wire it.
@Suite struct NewUserSwiftReviewLoggingTests {
    /// `Logger.MetadataProvider.contextKit(_:)` and docs/integrations.md:
    /// metadata given at the log call wins over the provider's keys, which
    /// win over metadata set on the logger (the docs said the logger's won
    /// too). Logged with `StreamLogHandler.standardOutput` (as README and
    /// the *Logging and Tracing* article bootstrap it), in a process of its
    /// own (its standard output is the log).
    @Test func callMetadataWinsOverTheProvidersKeysWhichWinOverTheLoggers() async {
        let result = await #expect(processExitsWith: .success, observing: [\.standardOutputContent]) {
            let requestID = ContextVar<String>("request_id")
            let provider = Logger.MetadataProvider.contextKit([ContextVarMetadata(requestID)])
            var logger = Logger(label: "app") { label in
                StreamLogHandler.standardOutput(label: label, metadataProvider: provider)
            }
            logger[metadataKey: "request_id"] = "on-the-logger"
            requestID.withValue("from-context") {
                logger.info("logger metadata")
                logger.info("call metadata", metadata: ["request_id": "at-the-call"])
            }
            fflush(nil)
        }
        let output = result.map { String(decoding: $0.standardOutputContent, as: UTF8.self) } ?? ""
        let lines = output.split(separator: "\n")
        #expect(lines.count == 2, "\(output)")
        #expect(lines.first?.contains("request_id=from-context") == true, "\(output)")
        #expect(lines.last?.contains("request_id=at-the-call") == true, "\(output)")
    }
}
#endif
