// swift-tools-version:6.1
//
// The server benchmark: one Hummingbird 2 server whose per-request context
// is either ContextKit or `@TaskLocal` (chosen at start, `--mode`), with the
// same handler shape in both. `make bench-server` builds it in release mode
// and scripts/bench/server.py drives it with wrk in alternating runs.
//
// Its own package, as Benchmarks/ and Tests/Integration are: Hummingbird
// takes minutes to build, and neither the root `swift build`/`swift test`
// nor `make bench` should ever resolve or build it.
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its folder (a clone or worktree may
// be called anything): derive it.
let contextKitFolder = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let contextKit = contextKitFolder.lastPathComponent

let package = Package(
    name: "ContextKitServerBenchmark",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: contextKitFolder.path),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        .executableTarget(
            name: "ServerBench",
            dependencies: [
                .product(name: "ContextKit", package: contextKit),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
