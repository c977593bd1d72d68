// Header carriers for the two HTTP stacks: AsyncHTTPClient sends NIO's
// `HTTPHeaders`, Hummingbird receives swift-http-types' `HTTPFields`.
import Hummingbird
import Instrumentation
import NIOHTTP1

/// Writes propagation headers into an AsyncHTTPClient request.
public struct HTTPHeadersInjector: Injector {
    public init() {}
    public func inject(_ value: String, forKey key: String, into headers: inout HTTPHeaders) {
        headers.replaceOrAdd(name: key, value: value)
    }
}

/// Reads propagation headers from a Hummingbird request.
public struct HTTPFieldsExtractor: Extractor {
    public init() {}
    public func extract(key: String, from fields: HTTPFields) -> String? {
        let name = key.lowercased()  // field names are case-insensitive
        return fields.first { $0.name.canonicalName == name }?.value
    }
}
