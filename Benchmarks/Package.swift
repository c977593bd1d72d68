// swift-tools-version:6.0
//
// ContextKit's Swift benchmark: its own package, so that `swift build` and
// `swift test` at the root never build it or fetch swift-collections.
// `make bench` builds it in release mode and runs ContextKitBench, which
// prints TSV rows (see Sources/ContextKitBench/Harness.swift) read by
// scripts/bench/table.py.
import PackageDescription

let package = Package(
    name: "ContextKitBenchmarks",
    dependencies: [
        .package(name: "ContextKit", path: ".."),
        .package(url: "https://github.com/apple/swift-collections", exact: "1.6.0"),
    ],
    targets: [
        .executableTarget(
            name: "ContextKitBench",
            dependencies: [
                .product(name: "ContextKit", package: "ContextKit"),
                .product(name: "HashTreeCollections", package: "swift-collections"),
            ]
        ),
    ],
    swiftLanguageModes: [.v5]
)
