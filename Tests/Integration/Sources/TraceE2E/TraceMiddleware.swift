// The Hummingbird middleware shown in the ContextKit documentation (the
// article "Logging and tracing" quotes the region between the snippet
// markers verbatim; scripts/check-snippets.py checks that it still does).
import ContextKit
import ContextKitServiceContext
import Hummingbird
import Instrumentation
import ServiceContextModule
import TracePropagation

// snippet:hummingbird-middleware begin
/// Runs each request in a fresh ContextKit context that holds what the caller
/// propagated (`traceparent`, `baggage`), with `ServiceContext.current` bound
/// for tracers.
struct ContextKitTracingMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(
        _ request: Request, context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        var extracted = ServiceContext.topLevel
        InstrumentationSystem.instrument.extract(
            request.headers, into: &extracted, using: HTTPFieldsExtractor())
        // Inside a middleware, `Context` is Hummingbird's generic parameter:
        // name ContextKit's type with its module.
        let requestContext = ContextKit.Context().merging(extracted, mirroring: traceMirrors)
        return try await ServiceContext.withValue(extracted) {
            try await requestContext.run { try await next(request, context) }
        }
    }
}
// snippet:hummingbird-middleware end
