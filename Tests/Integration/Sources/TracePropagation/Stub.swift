import ContextKit
