#!/bin/sh
# The first hour of a SwiftPM user, checked (run by `make consumer-test`,
# part of `make test`) on Tests/Downstream/MinimalConsumer, a package that
# depends on the ContextKit product alone, by path, with no Makefile:
#
#  1. It resolves nothing but ContextKit: the integrations (swift-log,
#     swift-service-context, swift-distributed-tracing) are opt-in traits.
#  2. On a machine without Concurrency Kit, the build fails with SwiftPM's
#     hint naming the Debian package (libck-dev), not only with the
#     compiler's "'ck_pr.h' file not found". To get such a machine without
#     uninstalling anything, the build runs in a private mount namespace
#     (unshare --mount) in which overlay mounts hide Concurrency Kit's
#     headers and ck.pc; the rest of the system is unchanged and nothing
#     outside the namespace sees the change.
#
# That it builds and runs when Concurrency Kit is present is
# `make downstream-test` (Tests/Downstream, also a path dependency).
#
# Usage: scripts/check-consumer.sh BUILD_DIR   (SWIFT overrides `swift`)
set -eu
SWIFT=${SWIFT:-swift}
root=$(cd "$(dirname "$0")/.." && pwd)
consumer=$root/Tests/Downstream/MinimalConsumer
work=$(mkdir -p "$1" && cd "$1" && pwd)/consumer-check
rm -rf "$work"; mkdir -p "$work"
passed=0; failed=0
pass() { passed=$((passed + 1)); echo "ok: $1"; }
fail() { failed=$((failed + 1)); echo "FAILED: $1"; }

# 1. The dependency graph of a ContextKit-only consumer.
$SWIFT package --package-path "$consumer" --scratch-path "$work/scratch-deps" \
    show-dependencies --format json > "$work/deps.json" 2> "$work/deps.err" || {
    cat "$work/deps.err"; fail "swift package show-dependencies"; }
if python3 - "$work/deps.json" <<'PY'
import json, sys
graph = json.load(open(sys.argv[1]))
deps = graph["dependencies"]
names = [d["name"] for d in deps]
nested = [n["name"] for d in deps for n in d["dependencies"]]
print("  consumer depends on:", names, "; ContextKit depends on:", nested)
sys.exit(0 if len(deps) == 1 and nested == [] else 1)
PY
then pass "a ContextKit-only consumer resolves no other package"
else fail "a ContextKit-only consumer resolves other packages (see above)"; fi

# 2. No Concurrency Kit: SwiftPM must name libck-dev.
if [ "$(id -u)" != 0 ] || ! unshare --mount true 2>/dev/null; then
    echo "SKIPPED: the libck-dev hint check needs root and unshare --mount (private mount namespace)"
else
    incdir=$(pkg-config --variable=includedir ck)
    pcdir=$(pkg-config --variable=pcfiledir ck)
    mkdir -p "$work/inc-upper" "$work/inc-work" "$work/pc-upper" "$work/pc-work"
    cat > "$work/hide-ck.sh" <<SH
set -e
mount -t overlay overlay -o lowerdir=$incdir,upperdir=$work/inc-upper,workdir=$work/inc-work $incdir
mount -t overlay overlay -o lowerdir=$pcdir,upperdir=$work/pc-upper,workdir=$work/pc-work $pcdir
rm -f $incdir/ck_*.h $incdir/gcc/*/ck_*.h $incdir/gcc/ck_*.h $pcdir/ck.pc
! pkg-config --exists ck
! test -e $incdir/ck_pr.h
set +e
$SWIFT build --package-path "$consumer" --scratch-path "$work/scratch-nock"
echo "swift build exit status: \$?"
SH
    unshare --mount sh "$work/hide-ck.sh" > "$work/no-ck.log" 2>&1 || true
    if grep -q "swift build exit status: [1-9]" "$work/no-ck.log" &&
        grep -q "apt-get install libck-dev" "$work/no-ck.log"; then
        pass "without Concurrency Kit, SwiftPM says: $(grep -m1 'apt-get install libck-dev' "$work/no-ck.log" | sed 's/^ *//')"
    else
        cat "$work/no-ck.log"; fail "without Concurrency Kit, the build does not name libck-dev"
    fi
    # The namespace is gone: the headers are back for everyone.
    test -e "$incdir/ck_pr.h" && pkg-config --exists ck || fail "ck headers visible again"
fi

echo "consumer-test: $passed passed, $failed failed"
[ "$failed" = 0 ]
