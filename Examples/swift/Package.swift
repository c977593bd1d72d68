// swift-tools-version:6.0
//
// The Swift examples that `make demo` runs. A separate package that depends
// on ContextKit by path, exactly as an application would.
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its folder, which differs between
// checkouts (a CI clone may be called anything): derive it.
let contextKitFolder = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

let package = Package(
    name: "ContextKitExamples",
    dependencies: [
        .package(path: contextKitFolder.path),
    ],
    targets: [
        .executableTarget(
            name: "ContextKitDemo",
            dependencies: [
                .product(name: "ContextKit", package: contextKitFolder.lastPathComponent),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
