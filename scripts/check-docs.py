#!/usr/bin/env python3
"""Checks the DocC output of `make docs`.

  * every public symbol declared in this package (the symbol graphs of
    ContextKit, ContextKitLogging, ContextKitServiceContext, extensions of
    other modules' types included) has a doc comment and a rendered page;
  * no rendered text refers to documents that are not in the repository
    (the specification's section numbers: "SPEC", "§").

Usage: scripts/check-docs.py SYMBOL_GRAPH_DIR DOCS_DIR
"""
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def page_names(docs_dir, module):
    """Lower-cased page paths under documentation/, hash suffixes removed."""
    data = os.path.join(docs_dir, module, "data", "documentation")
    names = set()
    for path in glob.glob(os.path.join(data, "**", "*.json"), recursive=True):
        rel = os.path.relpath(path, data)[: -len(".json")]
        names.add(re.sub(r"-[0-9a-z]{3,8}(?=/|$)", "", rel).lower())
        names.add(rel.lower())
    return names


def main():
    graphs, docs = sys.argv[1], sys.argv[2]
    problems, symbols = [], 0
    for module in sorted(os.listdir(graphs)):
        pages = page_names(docs, module)
        for graph_file in sorted(glob.glob(os.path.join(graphs, module, "*.symbols.json"))):
            graph = json.load(open(graph_file))
            for symbol in graph["symbols"]:
                location = symbol.get("location", {}).get("uri", "")
                if ROOT not in location:  # inherited or synthesized (Sequence's, Equatable's)
                    continue
                if symbol["kind"]["identifier"] == "swift.extension":
                    continue  # the extension block itself; its members are checked
                symbols += 1
                path = ".".join(symbol["pathComponents"])
                where = f"{os.path.relpath(location.replace('file://', ''), ROOT)}:{symbol['location']['position']['line'] + 1}"
                if not symbol.get("docComment"):
                    problems.append(f"{where}: {module} {path} has no doc comment")
                tail = "/".join(symbol["pathComponents"]).lower()
                if not any(name.endswith(tail) for name in pages):
                    problems.append(f"{where}: {module} {path}: no rendered page")
        for path in glob.glob(os.path.join(docs, module, "data", "**", "*.json"), recursive=True):
            text = open(path).read()
            for match in re.finditer(r"[^\"]{0,60}(SPEC\b|§)[^\"]{0,40}", text):
                problems.append(f"{os.path.relpath(path, docs)}: refers to a document not in the repo: "
                                f"...{match.group(0)}...")
    for problem in problems:
        print("FAILED:", problem)
    print(f"check-docs: {symbols} public symbols, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
