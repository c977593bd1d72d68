#if Tracing  // the package trait that enables this product (see Package.swift)
import ContextKit
import ContextKitServiceContext
import Instrumentation
import ServiceContextModule
import Foundation
import Testing

// A W3C-style trace parent carried in a ContextKit variable, mirrored into a
// ServiceContext key, injected into HTTP headers by an instrument and
// extracted on the "downstream" side.

let traceParent = ContextVar<String>("traceparent")
let tenant = ContextVar<String>("tenant", default: "none")

enum TraceParentKey: ContextVarServiceContextKey {
    typealias Value = String
    static var contextVar: ContextVar<String> { traceParent }
    static var nameOverride: String? { "traceparent" }
}

enum TenantKey: ContextVarServiceContextKey {
    typealias Value = String
    static var contextVar: ContextVar<String> { tenant }
}

let mirrors = [ContextVarMirror(TraceParentKey.self), ContextVarMirror(TenantKey.self)]

struct HeaderInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
        carrier[key] = value
    }
}

struct HeaderExtractor: Extractor {
    func extract(key: String, from carrier: [String: String]) -> String? {
        carrier[key]
    }
}

/// Injects the `traceparent` key as a W3C `traceparent` header (validating
/// its shape on extract) and a tenant as `x-tenant`.
struct W3CTestInstrument: Instrument {
    func inject<Carrier, Inject>(_ context: ServiceContext, into carrier: inout Carrier, using injector: Inject)
    where Inject: Injector, Inject.Carrier == Carrier {
        if let parent = context[TraceParentKey.self] { injector.inject(parent, forKey: "traceparent", into: &carrier) }
        if let tenant = context[TenantKey.self] { injector.inject(tenant, forKey: "x-tenant", into: &carrier) }
    }

    func extract<Carrier, Extract>(_ carrier: Carrier, into context: inout ServiceContext, using extractor: Extract)
    where Extract: Extractor, Extract.Carrier == Carrier {
        if let parent = extractor.extract(key: "traceparent", from: carrier),
            parent.split(separator: "-").count == 4
        {
            context[TraceParentKey.self] = parent
        }
        if let tenant = extractor.extract(key: "x-tenant", from: carrier) { context[TenantKey.self] = tenant }
    }
}

@Suite struct ServiceContextBridgeTests {
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    @Test func contextVarReachesServiceContextAndBack() async {
        await traceParent.withValue(parent) {
            let serviceContext = ServiceContext.mirroring(mirrors)
            #expect(serviceContext[TraceParentKey.self] == parent)
            #expect(serviceContext[TenantKey.self] == nil)     // the default is not mirrored
            #expect(TraceParentKey.name == "traceparent")

            // Back into a fresh context, in another task.
            let seen = await Task.detached {
                #expect(traceParent.value == nil)
                return Context.withValues(from: serviceContext, mirroring: mirrors) {
                    (traceParent.value, tenant.value, ServiceContext.current?[TraceParentKey.self])
                }
            }.value
            #expect(seen.0 == parent)
            #expect(seen.1 == "none")
            #expect(seen.2 == parent)
        }
    }

    @Test func roundTripThroughInjectedHeaders() async throws {
        let instrument = W3CTestInstrument()
        // Upstream: values set through ContextKit.
        var headers: [String: String] = [:]
        try Context().run {
            traceParent.set(parent)
            tenant.set("acme")
            Context.withMirroredServiceContext(mirrors) {
                instrument.inject(ServiceContext.current!, into: &headers, using: HeaderInjector())
            }
        }
        #expect(headers == ["traceparent": parent, "x-tenant": "acme"])
        #expect(traceParent.value == nil)

        // Downstream: a request arrives with those headers.
        var extracted = ServiceContext.topLevel
        instrument.extract(headers, into: &extracted, using: HeaderExtractor())
        let downstream = await Task.detached {
            await Context.withValues(from: extracted, mirroring: mirrors) { () async -> [String?] in
                await Task.yield()
                return [traceParent.value, tenant.value]
            }
        }.value
        #expect(downstream == [parent, "acme"])
    }

    @Test func explicitContextAndMerging() throws {
        let source = Context()
        try source.run { traceParent.set(parent) }
        let serviceContext = ServiceContext.mirroring(mirrors, from: source, into: .topLevel)
        #expect(serviceContext.count == 1)
        let target = Context()
        try target.run { tenant.set("acme") }
        let merged = target.merging(serviceContext, mirroring: mirrors)
        #expect(merged[traceParent] == parent)
        #expect(merged[tenant] == "acme")
        #expect(target[traceParent] == nil)              // the original is unchanged
    }

    @Test func malformedHeaderIsNotExtracted() {
        var extracted = ServiceContext.topLevel
        W3CTestInstrument().extract(["traceparent": "garbage"], into: &extracted, using: HeaderExtractor())
        let seen = Context.withValues(from: extracted, mirroring: mirrors) { traceParent.value }
        #expect(seen == nil)
    }
    /// The wrapper instrument: every `inject` of `ServiceContext.current`
    /// carries ContextKit values, with no `withMirroredServiceContext` scope.
    @Test func contextKitInstrumentInjectsCurrentValuesEverywhere() async throws {
        let instrument = ContextKitInstrument(wrapping: W3CTestInstrument(), mirroring: mirrors)
        @Sendable func headersNow() -> [String: String] {
            var headers: [String: String] = [:]
            instrument.inject(ServiceContext.current ?? .topLevel, into: &headers, using: HeaderInjector())
            return headers
        }
        #expect(headersNow() == [:])
        try await Context().run {
            traceParent.set(parent)
            #expect(ServiceContext.current == nil)  // nothing bound it ...
            #expect(headersNow() == ["traceparent": parent])  // ... yet inject sees the value
            async let child = headersNow()
            #expect(await child == ["traceparent": parent])
            let thread = await withCheckedContinuation { continuation in
                Thread.detachNewThreadInCopiedContext { continuation.resume(returning: headersNow()) }
            }
            #expect(thread == ["traceparent": parent])
            // The ContextKit value wins over a key already in the service context.
            var stale = ServiceContext.topLevel
            stale[TraceParentKey.self] = "stale"
            stale[TenantKey.self] = "from-service-context"
            var headers: [String: String] = [:]
            instrument.inject(stale, into: &headers, using: HeaderInjector())
            #expect(headers == ["traceparent": parent, "x-tenant": "from-service-context"])
        }
        // Extraction is the wrapped instrument's.
        var extracted = ServiceContext.topLevel
        instrument.extract(["traceparent": parent], into: &extracted, using: HeaderExtractor())
        #expect(extracted[TraceParentKey.self] == parent)
    }
}
#endif
