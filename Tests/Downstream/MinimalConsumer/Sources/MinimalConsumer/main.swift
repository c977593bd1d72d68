import ContextKit

let requestID = DefaultedContextVar("request_id", default: "-")
requestID.withValue("r-1") { print(requestID.value) }
