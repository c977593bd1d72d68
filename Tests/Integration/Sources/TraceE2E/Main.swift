// trace-e2e           the client: starts the server, checks, reports
// trace-e2e server    the server alone (stops on /stop or after 120 s)
import Foundation

@main
struct TraceE2E {
    static func main() async throws {
        let status: Int32
        if CommandLine.arguments.dropFirst().first == "server" {
            status = try await Server.run(deadline: .seconds(120))
        } else {
            status = try await Client.run()
        }
        exit(status)
    }
}
