// swift-tools-version:6.1
//
// ContextKit: Python's contextvars and threading.local for Swift and C.
//
//   CContextCore      the C runtime (public header: include/contextcore.h)
//   ContextKit        the Swift facade over it
//   CConcurrencyKit   Concurrency Kit as a system library (Debian's libck-dev,
//                     pkg-config name `ck`): when it is missing, SwiftPM names
//                     the package to install
//   CContextKitShims  the little C only the Swift facade needs (not public)
//
// Integrations are opt-in through package traits, so that a package that
// depends on the ContextKit product alone resolves no other package:
//
//   trait "Logging"  product ContextKitLogging         (swift-log)
//   trait "Tracing"  product ContextKitServiceContext  (swift-service-context,
//                                                       swift-distributed-tracing)
//
//   .package(url: "https://github.com/OWNER/ContextKit", from: "0.1.0",
//            traits: ["Logging", "Tracing"])
//
// Inside this package, `make test` builds with every trait enabled.
import PackageDescription

let package = Package(
    name: "ContextKit",
    products: [
        .library(name: "ContextKit", targets: ["ContextKit"]),
        .library(name: "CContextCore", targets: ["CContextCore"]),
        // Opt-in products: each needs its trait (see above); without it the
        // product is empty and resolves nothing.
        .library(name: "ContextKitLogging", targets: ["ContextKitLogging"]),
        .library(name: "ContextKitServiceContext", targets: ["ContextKitServiceContext"]),
    ],
    traits: [
        .trait(
            name: "Logging",
            description: "The ContextKitLogging product: swift-log metadata from ContextVars."),
        .trait(
            name: "Tracing",
            description:
                "The ContextKitServiceContext product: ContextVars mirrored into ServiceContext for swift-distributed-tracing instruments."
        ),
        .default(enabledTraits: []),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-service-context", from: "1.5.1"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
    ],
    targets: [
        .systemLibrary(
            name: "CConcurrencyKit",
            pkgConfig: "ck",
            providers: [.apt(["libck-dev"])]
        ),
        .target(
            name: "CContextCore",
            dependencies: ["CConcurrencyKit"],
            cSettings: [
                .define("_GNU_SOURCE"),
            ],
            linkerSettings: [
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
            name: "ContextKitLogging",
            dependencies: [
                "ContextKit",
                .product(name: "Logging", package: "swift-log", condition: .when(traits: ["Logging"])),
            ]
        ),
        .target(
            name: "ContextKitServiceContext",
            dependencies: [
                "ContextKit",
                .product(
                    name: "ServiceContextModule", package: "swift-service-context",
                    condition: .when(traits: ["Tracing"])),
                .product(
                    name: "Instrumentation", package: "swift-distributed-tracing",
                    condition: .when(traits: ["Tracing"])),
            ]
        ),
        .testTarget(
            name: "ContextKitTests",
            dependencies: ["ContextKit", "CContextCore"]
        ),
        .testTarget(
            name: "DefaultedContextVarTests",
            dependencies: ["ContextKit"]
        ),
        .testTarget(
            name: "ContextKitLoggingTests",
            dependencies: [
                "ContextKit",
                "ContextKitLogging",
                .product(name: "Logging", package: "swift-log", condition: .when(traits: ["Logging"])),
            ]
        ),
        .testTarget(
            name: "ContextKitServiceContextTests",
            dependencies: [
                "ContextKit",
                "ContextKitServiceContext",
                .product(
                    name: "ServiceContextModule", package: "swift-service-context",
                    condition: .when(traits: ["Tracing"])),
                .product(
                    name: "Instrumentation", package: "swift-distributed-tracing",
                    condition: .when(traits: ["Tracing"])),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
