// swift-tools-version:6.1
//
// ContextKit across a real network hop, as a service would use it (run by
// `make integration-test`, part of `make ci`; not `swift test`: Hummingbird
// and AsyncHTTPClient take minutes to build).
//
//   TracePropagation  W3C Trace Context (`traceparent`, `baggage`) carried in
//                     ContextKit variables: a swift-distributed-tracing
//                     Instrument, header injectors/extractors for
//                     AsyncHTTPClient and Hummingbird, and a Hummingbird
//                     middleware that runs each request in a fresh ContextKit
//                     context holding what the caller sent.
//   TraceE2E          two processes on 127.0.0.1: the client starts the server
//                     (the same executable), sends requests with values set
//                     through ContextKit, and checks what the server saw.
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its folder (a CI clone may be called
// anything): derive it.
let contextKitFolder = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let contextKit = contextKitFolder.lastPathComponent

let package = Package(
    name: "ContextKitIntegration",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: contextKitFolder.path, traits: ["Logging", "Tracing"]),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
        .package(url: "https://github.com/apple/swift-service-context", from: "1.5.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
    ],
    targets: [
        .target(
            name: "TracePropagation",
            dependencies: [
                .product(name: "ContextKit", package: contextKit),
                .product(name: "ContextKitServiceContext", package: contextKit),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
                .product(name: "ServiceContextModule", package: "swift-service-context"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "TraceE2E",
            dependencies: [
                "TracePropagation",
                .product(name: "ContextKit", package: contextKit),
                .product(name: "ContextKitLogging", package: contextKit),
                .product(name: "ContextKitServiceContext", package: contextKit),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
                .product(name: "ServiceContextModule", package: "swift-service-context"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
