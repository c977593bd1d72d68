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
        .target(
            name: "ContextKit",
            dependencies: ["CContextCore"]
        ),
        .testTarget(
            name: "ContextKitTests",
            dependencies: ["ContextKit", "CContextCore"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
