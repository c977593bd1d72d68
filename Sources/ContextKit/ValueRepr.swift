/// The text ContextKit's descriptions use for a value: strings quoted and
/// escaped (`"ann"`), `nil` for an empty optional, optionals unwrapped,
/// everything else as `String(describing:)`.
func valueRepr(_ value: Any) -> String {
    if let string = value as? String { return String(reflecting: string) }
    if let substring = value as? Substring { return String(reflecting: String(substring)) }
    if let character = value as? Character { return String(reflecting: character) }
    let mirror = Mirror(reflecting: value)
    if mirror.displayStyle == .optional {
        guard let wrapped = mirror.children.first?.value else { return "nil" }
        return valueRepr(wrapped)
    }
    return String(describing: value)
}

/// `0x…` for an object's address, as Python's reprs print `id()`.
func addressRepr(_ object: AnyObject) -> String {
    "0x" + String(UInt(bitPattern: Unmanaged.passUnretained(object).toOpaque()), radix: 16)
}
