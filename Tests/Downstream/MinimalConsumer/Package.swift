// swift-tools-version:6.1
//
// The smallest user of ContextKit: one path dependency, the ContextKit
// product only, no Makefile. scripts/check-consumer.sh checks that
//   * it resolves no package but ContextKit (the integrations are opt-in
//     traits), and
//   * on a machine without libck-dev, SwiftPM's error names libck-dev.
// (Tests/Downstream, one folder up, checks that it builds and runs.)
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its folder (a CI clone may be called
// anything): derive it.
let contextKitFolder = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()

let package = Package(
    name: "MinimalConsumer",
    dependencies: [
        .package(path: contextKitFolder.path),
    ],
    targets: [
        .executableTarget(
            name: "MinimalConsumer",
            dependencies: [.product(name: "ContextKit", package: contextKitFolder.lastPathComponent)]
        ),
    ],
    swiftLanguageModes: [.v6]
)
