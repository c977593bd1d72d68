// W3C Trace Context (https://www.w3.org/TR/trace-context/) and W3C Baggage
// carried in ContextKit variables: the values a tracer needs, set and read
// with ContextKit's API, mirrored into ServiceContext keys so that any
// swift-distributed-tracing instrument can propagate them.
import ContextKit
import ContextKitServiceContext
import Instrumentation
import ServiceContextModule

/// A parsed `traceparent` header: `00-<trace id>-<parent span id>-<flags>`.
public struct TraceParent: Sendable, Hashable, CustomStringConvertible {
    /// 32 lowercase hex digits, not all zero.
    public var traceID: String
    /// 16 lowercase hex digits, not all zero: the caller's span.
    public var parentID: String
    /// Trace flags (bit 0: sampled).
    public var flags: UInt8

    public init(traceID: String, parentID: String, flags: UInt8 = 1) {
        self.traceID = traceID
        self.parentID = parentID
        self.flags = flags
    }

    /// Parses a version-00 header; `nil` for anything malformed.
    public init?(header: String) {
        let parts = header.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "00",
            Self.isHex(parts[1], count: 32), Self.isHex(parts[2], count: 16), Self.isHex(parts[3], count: 2),
            parts[1].contains(where: { $0 != "0" }), parts[2].contains(where: { $0 != "0" }),
            let flags = UInt8(parts[3], radix: 16)
        else { return nil }
        self.init(traceID: String(parts[1]), parentID: String(parts[2]), flags: flags)
    }

    /// The header value.
    public var description: String {
        let hexFlags = String(flags, radix: 16)
        return "00-\(traceID)-\(parentID)-\(hexFlags.count == 1 ? "0" + hexFlags : hexFlags)"
    }

    private static func isHex(_ text: Substring, count: Int) -> Bool {
        text.utf8.count == count && text.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }
}

/// The trace this code runs in, as the caller sent it or as this service set it.
public let traceParent = ContextVar<TraceParent>("traceparent")
/// W3C baggage: key-value pairs that travel with the request.
public let baggage = DefaultedContextVar<[String: String]>("baggage", default: [:])

/// The `ServiceContext` key that mirrors ``traceParent``.
public enum TraceParentKey: ContextVarServiceContextKey {
    public typealias Value = TraceParent
    public static var contextVar: ContextVar<TraceParent> { traceParent }
    public static var nameOverride: String? { "traceparent" }
}

/// The `ServiceContext` key that mirrors ``baggage``.
public enum BaggageKey: ContextVarServiceContextKey {
    public typealias Value = [String: String]
    public static var contextVar: ContextVar<[String: String]> { baggage.variable }
    public static var nameOverride: String? { "baggage" }
}

/// The variables that cross process boundaries.
public let traceMirrors = [ContextVarMirror(TraceParentKey.self), ContextVarMirror(BaggageKey.self)]

/// Writes and reads the `traceparent` and `baggage` headers.
public struct W3CTraceContextInstrument: Instrument {
    public init() {}

    public func inject<Carrier, Inject: Injector>(
        _ context: ServiceContext, into carrier: inout Carrier, using injector: Inject
    ) where Inject.Carrier == Carrier {
        if let parent = context[TraceParentKey.self] {
            injector.inject(parent.description, forKey: "traceparent", into: &carrier)
        }
        if let items = context[BaggageKey.self], !items.isEmpty {
            let header = items.sorted { $0.key < $1.key }
                .map { "\(Self.encode($0.key))=\(Self.encode($0.value))" }
                .joined(separator: ",")
            injector.inject(header, forKey: "baggage", into: &carrier)
        }
    }

    public func extract<Carrier, Extract: Extractor>(
        _ carrier: Carrier, into context: inout ServiceContext, using extractor: Extract
    ) where Extract.Carrier == Carrier {
        if let header = extractor.extract(key: "traceparent", from: carrier), let parent = TraceParent(header: header) {
            context[TraceParentKey.self] = parent
        }
        if let header = extractor.extract(key: "baggage", from: carrier) {
            var items: [String: String] = [:]
            for member in header.split(separator: ",") {
                // Properties after ';' are ignored.
                let pair = member.split(separator: ";", maxSplits: 1)[0].split(separator: "=", maxSplits: 1)
                guard pair.count == 2 else { continue }
                let key = Self.decode(pair[0].trimmingSpaces), value = Self.decode(pair[1].trimmingSpaces)
                if !key.isEmpty { items[key] = value }
            }
            if !items.isEmpty { context[BaggageKey.self] = items }
        }
    }

    /// Percent-encodes everything but unreserved characters.
    static func encode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            if (48...57).contains(byte) || (65...90).contains(byte) || (97...122).contains(byte)
                || byte == 45 || byte == 46 || byte == 95 || byte == 126
            {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                let hex = String(byte, radix: 16, uppercase: true)
                out += "%" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        return out
    }

    static func decode(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        var index = text.utf8.startIndex
        let utf8 = text.utf8
        while index != utf8.endIndex {
            let byte = utf8[index]
            if byte == 37, let hi = utf8.index(index, offsetBy: 1, limitedBy: utf8.endIndex), hi != utf8.endIndex,
                let lo = utf8.index(hi, offsetBy: 1, limitedBy: utf8.endIndex), lo != utf8.endIndex,
                let value = UInt8(String(decoding: [utf8[hi], utf8[lo]], as: UTF8.self), radix: 16)
            {
                bytes.append(value)
                index = utf8.index(after: lo)
            } else {
                bytes.append(byte)
                index = utf8.index(after: index)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var text = self
        while text.first == " " || text.first == "\t" { text.removeFirst() }
        while text.last == " " || text.last == "\t" { text.removeLast() }
        return text
    }
}
