// swift-tools-version:6.0
//
// A downstream package: depends on ContextKit by path, as an application
// would, and checks that it links (Concurrency Kit included) and works.
// `make downstream-test` builds and runs it.
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its folder, which differs between
// checkouts (a CI clone may be called anything): derive it.
let contextKitFolder = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

let package = Package(
    name: "Downstream",
    dependencies: [
        .package(path: contextKitFolder.path),
    ],
    targets: [
        .executableTarget(
            name: "DownstreamCheck",
            dependencies: [
                .product(name: "ContextKit", package: contextKitFolder.lastPathComponent),
                .product(name: "CContextCore", package: contextKitFolder.lastPathComponent),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
