#!/usr/bin/env python3
"""Compiles every Swift and C snippet of README.md, docs/concurrency.md,
docs/locals.md and the DocC articles.

Run by `make snippet-test` (part of `make test`). Each fenced block tagged
```swift or ```c is one snippet. An HTML comment right before a block (GitHub
and DocC do not render it) may say how to check it:

    <!-- snippet: skip REASON -->         not compiled (say why: a manifest
                                          fragment, a sketch of user code)
    <!-- snippet: file=PATH region=NAME -->
                                          the block is, verbatim, the region
                                          between `// snippet:NAME begin` and
                                          `// snippet:NAME end` of PATH, a
                                          file compiled elsewhere (Hummingbird
                                          code lives in Tests/Integration)
    <!-- snippet: setup                   hidden lines compiled before the
    LINES                                 block (declarations the block uses)
    -->
    <!-- snippet: after                   hidden lines compiled after it
    LINES
    -->
    <!-- snippet: output                  also run it; its standard output
    LINES                                 must be exactly LINES
    -->

Swift: each snippet becomes the main.swift of one executable target of a
package generated in BUILD/snippets (ContextKit by path with its Logging and
Tracing traits; swift-log, swift-service-context, swift-distributed-tracing).
One `swift build` compiles them all; warnings are errors. C: each snippet is
compiled with -Wall -Wextra -Werror against contextcore.h and linked with
BUILD/libcontextcore.a.

Usage: scripts/check-snippets.py BUILD_DIR
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["README.md", "docs/concurrency.md", "docs/locals.md"] + sorted(
    os.path.join("Sources/ContextKit/ContextKit.docc", f)
    for f in os.listdir(os.path.join(ROOT, "Sources/ContextKit/ContextKit.docc"))
    if f.endswith(".md")
)
SWIFT = os.environ.get("SWIFT", "swift")
CC = os.environ.get("SNIPPET_CC", "cc")

FENCE = re.compile(r"^```(\w*)\s*$")
COMMENT = re.compile(r"<!--\s*snippet:\s*(\w+)(.*?)-->", re.S)


class Snippet:
    def __init__(self, source, line, lang, code, directives):
        self.source, self.line, self.lang, self.code = source, line, lang, code
        self.setup, self.after, self.output = "", "", None
        self.skip = self.region = None
        for kind, body in directives:
            if kind == "skip":
                self.skip = body.strip() or "no reason given"
            elif kind == "file":
                m = re.match(r"=(\S+)\s+region=(\S+)", body.strip() and "=" + body.strip().lstrip("="))
                if not m:
                    raise SystemExit(f"{source}:{line}: bad file= directive")
                self.region = (m.group(1), m.group(2))
            elif kind == "setup":
                self.setup = body.strip("\n") + "\n"
            elif kind == "after":
                self.after = "\n" + body.strip("\n") + "\n"
            elif kind == "output":
                self.output = body.strip("\n") + "\n"
            else:
                raise SystemExit(f"{source}:{line}: unknown snippet directive {kind!r}")
        if self.skip == "no reason given":
            raise SystemExit(f"{source}:{line}: `snippet: skip` needs a reason")

    @property
    def where(self):
        return f"{self.source}:{self.line}"


def parse(path):
    text = open(os.path.join(ROOT, path)).read()
    lines = text.split("\n")
    snippets, i = [], 0
    # Offsets of each line start, to find the comments just before a fence.
    starts, pos = [], 0
    for line in lines:
        starts.append(pos)
        pos += len(line) + 1
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        lang, begin = m.group(1), i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        code = "\n".join(lines[begin + 1 : j]) + "\n"
        # The HTML comments between the previous non-comment text and this fence.
        before = text[: starts[begin]]
        directives = []
        while True:
            stripped = before.rstrip()
            if not stripped.endswith("-->"):
                break
            start = stripped.rfind("<!--")
            m2 = COMMENT.fullmatch(stripped[start:])
            if not m2:
                break
            directives.insert(0, (m2.group(1), m2.group(2)))
            before = stripped[:start]
        if lang in ("swift", "c"):
            snippets.append(Snippet(path, begin + 1, lang, code, directives))
        i = j + 1
    return snippets


def region_text(path, name):
    text = open(os.path.join(ROOT, path)).read()
    m = re.search(rf"^[ \t]*// snippet:{re.escape(name)} begin\n(.*?)^[ \t]*// snippet:{re.escape(name)} end",
                  text, re.S | re.M)
    return m.group(1) if m else None


def write_if_changed(path, content):
    if os.path.exists(path) and open(path).read() == content:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(content)


def main():
    build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
    work = os.path.join(build, "snippets")
    snippets = [s for path in SOURCES for s in parse(path)]
    passed, failed, skipped = 0, 0, []

    def ok(s, what):
        nonlocal passed
        passed += 1

    def fail(s, what):
        nonlocal failed
        failed += 1
        print(f"FAILED: {s.where} ({s.lang}): {what}")

    swift_snippets, c_snippets = [], []
    for s in snippets:
        if s.skip:
            skipped.append(s)
        elif s.region:
            expected = region_text(*s.region)
            if expected is None:
                fail(s, f"no region {s.region[1]!r} in {s.region[0]}")
            elif expected.strip("\n") != s.code.strip("\n"):
                fail(s, f"differs from region {s.region[1]!r} of {s.region[0]} (copy the file's text into the doc)")
            else:
                ok(s, "region")
        elif s.lang == "swift":
            swift_snippets.append(s)
        else:
            c_snippets.append(s)

    # ---- Swift: one package, one target per snippet.
    if swift_snippets:
        pkg = os.path.join(work, "swift")
        folder = os.path.basename(ROOT)
        targets = []
        for n, s in enumerate(swift_snippets):
            name = "Snippet%02d" % n
            s.target = name
            header = f"// {s.where}\n"
            write_if_changed(os.path.join(pkg, "Sources", name, "main.swift"), header + s.setup + s.code + s.after)
            targets.append(name)
        products = ", ".join(
            f'.product(name: "{p}", package: "{pk}")'
            for p, pk in [
                ("ContextKit", folder), ("ContextKitLogging", folder), ("ContextKitServiceContext", folder),
                ("Logging", "swift-log"), ("Instrumentation", "swift-distributed-tracing"),
                ("Tracing", "swift-distributed-tracing"), ("ServiceContextModule", "swift-service-context"),
            ]
        )
        target_lines = ",\n".join(
            f'        .executableTarget(name: "{t}", dependencies: [{products}], '
            f'swiftSettings: [.unsafeFlags(["-warnings-as-errors"])])'
            for t in targets
        )
        manifest = f"""// swift-tools-version:6.1
// Generated by scripts/check-snippets.py: one target per documentation snippet.
import PackageDescription
let package = Package(
    name: "Snippets",
    dependencies: [
        .package(path: {ROOT!r}, traits: ["Logging", "Tracing"]),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-service-context", from: "1.5.1"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
    ],
    targets: [
{target_lines}
    ],
    swiftLanguageModes: [.v6]
)
""".replace("'", '"')
        write_if_changed(os.path.join(pkg, "Package.swift"), manifest)
        # Targets of snippets that no longer exist.
        for old in os.listdir(os.path.join(pkg, "Sources")):
            if old not in targets:
                subprocess.run(["rm", "-rf", os.path.join(pkg, "Sources", old)])
        result = subprocess.run(
            [SWIFT, "build", "--package-path", pkg, "--scratch-path", os.path.join(work, ".build-snippets")],
            capture_output=True, text=True,
            # SwiftPM compiles C targets with CC when set; it must be clang.
            env={k: v for k, v in os.environ.items() if k != "CC"},
        )
        log = result.stdout + result.stderr
        open(os.path.join(work, "swift-build.log"), "w").write(log)
        broken = {}
        for line in log.splitlines():
            m = re.search(r"/Sources/(Snippet\d+)/main\.swift:(\d+):\d+: (error|warning): (.*)", line)
            if m:
                broken.setdefault(m.group(1), []).append(f"line {m.group(2)}: {m.group(3)}: {m.group(4)}")
        for s in swift_snippets:
            if s.target in broken:
                offset = s.setup.count("\n") + 1
                fail(s, "does not compile (snippet line = main.swift line - %d):\n    " % offset
                     + "\n    ".join(dict.fromkeys(broken[s.target])))
            elif result.returncode != 0:
                print(f"unchecked: {s.where} (swift): the build stopped before it")
            elif s.output is not None:
                binary = os.path.join(work, ".build-snippets", "debug", s.target)
                run = subprocess.run([binary], capture_output=True, text=True, timeout=120)
                if run.returncode != 0 or run.stdout != s.output:
                    fail(s, f"printed {run.stdout!r} (status {run.returncode}), the doc says {s.output!r}")
                else:
                    ok(s, "ran")
            else:
                ok(s, "compiled")
        if result.returncode != 0 and not broken:
            print(log[-4000:])
            failed += 1
            print("FAILED: the snippet package did not build (see above)")

    # ---- C: compile each with warnings as errors, link, run if asked.
    lib = os.path.join(build, "libcontextcore.a")
    ck = subprocess.run(["pkg-config", "--libs", "ck"], capture_output=True, text=True).stdout.split()
    for n, s in enumerate(c_snippets):
        src = os.path.join(work, "c", "snippet%02d.c" % n)
        write_if_changed(src, f"/* {s.where} */\n" + s.setup + s.code + s.after)
        exe = src[:-2]
        cmd = [CC, "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", os.path.join(ROOT, "Sources/CContextCore/include"),
               "-o", exe, src, lib] + ck + ["-lpthread"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            fail(s, "does not compile without warnings:\n" + result.stderr)
            continue
        if s.output is not None:
            run = subprocess.run([exe], capture_output=True, text=True, timeout=120)
            if run.returncode != 0 or run.stdout != s.output:
                fail(s, f"printed {run.stdout!r} (status {run.returncode}), the doc says {s.output!r}")
                continue
        ok(s, "compiled")

    for s in skipped:
        print(f"not compiled: {s.where} ({s.lang}): {s.skip}")
    print(f"snippet-test ({len(SOURCES)} documents, {len(snippets)} snippets): {passed} passed, {failed} failed, "
          f"{len(skipped)} not compiled (reason given)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
