// swift-tools-version:6.0
//
// ContextKit: Python's contextvars and threading.local for Swift and C.
// CContextCore is the C runtime (public header: include/contextcore.h);
// ContextKit is the Swift facade over it. Concurrency Kit comes from
// Debian's libck-dev (`make deps` installs it; pkg-config name `ck`).
import PackageDescription

let package = Package(
    name: "ContextKit",
    products: [
        .library(name: "ContextKit", targets: ["ContextKit"]),
        .library(name: "CContextCore", targets: ["CContextCore"]),
        // The bridge to swift-service-context / swift-distributed-tracing: its
        // own product, so ContextKit itself keeps no package dependency.
        .library(name: "ContextKitServiceContext", targets: ["ContextKitServiceContext"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-service-context", from: "1.5.1"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
    ],
    targets: [
        .target(
            name: "CContextCore",
            cSettings: [
                .define("_GNU_SOURCE"),
            ],
            linkerSettings: [
                .linkedLibrary("ck"),
                .linkedLibrary("pthread"),
            ]
        ),
        // The Swift runtime entry points the facade calls, each behind a
        // one-line C function (Swift code may not name runtime symbols).
        .target(name: "CContextKitShims"),
        .target(
            name: "ContextKit",
            dependencies: ["CContextCore", "CContextKitShims"]
        ),
        .target(
            name: "ContextKitServiceContext",
            dependencies: [
                "ContextKit",
                .product(name: "ServiceContextModule", package: "swift-service-context"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
            ]
        ),
        .testTarget(
            name: "ContextKitTests",
            dependencies: ["ContextKit", "CContextCore"]
        ),
        .testTarget(
            name: "ContextKitServiceContextTests",
            dependencies: [
                "ContextKit",
                "ContextKitServiceContext",
                .product(name: "ServiceContextModule", package: "swift-service-context"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
