#!/bin/sh
# fresh-scratch.sh DIR... — empties each SwiftPM build folder DIR of a
# package that uses ContextKit by path when ContextKit's list of source
# files has changed since DIR was last built.
#
# Why: such a package keeps its build plan for ContextKit's targets across
# builds; after a C file is added to one of them, the next incremental build
# links without the new file's objects ("undefined reference"). A clean
# clone never meets this; a working copy does after `git pull`. File names,
# not contents, decide: edits to existing files build incrementally as
# usual.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
stamp=$(cd "$top" && find Sources Package.swift -type f | LC_ALL=C sort | cksum)
for dir in "$@"; do
    if [ -d "$dir" ] && [ "$(cat "$dir/.contextkit-sources" 2>/dev/null)" != "$stamp" ]; then
        echo "fresh-scratch: ContextKit's source files changed since $dir was built: emptying it"
        rm -rf "$dir"
    fi
    mkdir -p "$dir"
    printf '%s\n' "$stamp" > "$dir/.contextkit-sources"
done
