#!/usr/bin/env python3
"""Drive the server benchmark of `make bench-server` and print its table.

Starts Benchmarks/Server's ServerBench twice on 127.0.0.1 (each picks a free
port): once with ContextKit per request, once with `@TaskLocal` per request
(same middleware and handler; see Benchmarks/Server/Sources/ServerBench).
wrk (scripts/bench/request-id.lua: a unique x-request-id per request) loads
one server at a time: a warm-up for each, then PAIRS alternating runs
(ContextKit, @TaskLocal, ContextKit, ...) of DURATION seconds (defaults: 5
pairs of 6 s after 5 s of warm-up each). For each run:

  requests/s   wrk's completed requests / its measured duration
  p99          wrk's 99th-percentile latency
  CPU/request  the server's utime+stime (/proc/<pid>/stat, all threads)
               after the run minus before, divided by the requests

Then the medians over the runs for each mode, and the ratios
ContextKit / @TaskLocal of those medians, against the targets (CPU per
request <= 1.01x, requests/s >= 0.98x). CPU per request is the steady figure
on a shared machine: requests/s and p99 also move with whatever else runs.

Before measuring, a self-check: a deliberately wrong server mode (one
process-wide slot instead of a per-request binding) must report crossed ids,
which shows that the servers' read checks can fail. After measuring, both
servers must report zero mismatches, no request without its header, and at
least as many fully checked requests as wrk counted; otherwise the script
exits non-zero. A missed speed target is printed, not an error.

    server.py --server PATH [--ck-mode run|withvalue] [--pairs N]
              [--duration S] [--warmup S] [--threads T] [--connections C]

Python 3 standard library only; needs wrk on PATH (the Makefile installs it).
"""
import argparse
import http.client
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.path.join(HERE, "request-id.lua")
CLK_TCK = os.sysconf("SC_CLK_TCK")

CK_MODES = {"run": ("contextkit-run", "ContextKit (Context().run + set)"),
            "withvalue": ("contextkit-withvalue", "ContextKit (withValue)")}
TL_MODE = ("tasklocal", "@TaskLocal (withValue)")

TARGET_CPU = 1.01   # ContextKit CPU per request <= 1.01x @TaskLocal's
TARGET_RPS = 0.98   # ContextKit requests/s >= 0.98x @TaskLocal's


class BenchError(Exception):
    pass


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_ticks(pid):
    """utime + stime of the whole process (every thread, live or ended)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces: count fields after ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])   # fields 14 and 15 of proc(5)


class Server:
    """One ServerBench process; stopped through /stop, killed if it will not."""

    def __init__(self, binary, mode, deadline):
        self.mode = mode
        self.proc = subprocess.Popen(
            [binary, "--mode", mode, "--deadline", str(deadline)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.port = self._read_port(bound=120)
        self.url = f"http://127.0.0.1:{self.port}"

    def _read_port(self, bound):
        end = time.monotonic() + bound
        line = b""
        # Unbuffered reads of the raw pipe: a buffered reader could hold the
        # line while select() waits on the empty descriptor.
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = end - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.kill()
                raise BenchError(f"{self.mode}: server did not report its port "
                                 f"within {bound} s: {self.proc.stderr.read()!r}")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                char = os.read(fd, 1)
                if not char:
                    continue
                line += char
        line = line.decode(errors="replace")
        m = re.fullmatch(r"PORT (\d+)\n", line)
        if not m or m.group(1) == "-1":
            self.kill()
            raise BenchError(f"{self.mode}: unexpected first line {line!r}")
        return int(m.group(1))

    def stop(self):
        """Stops the server; returns its RESULT fields and its exit status."""
        try:
            urllib.request.urlopen(self.url + "/stop", timeout=30).read()
        except (OSError, http.client.HTTPException):
            # The server may close the connection before its reply is out
            # (it is shutting down): whether it stops is what counts.
            pass
        try:
            out, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate()
        out, err = out.decode(errors="replace"), err.decode(errors="replace")
        m = re.search(r"^RESULT (.*)$", out, re.M)
        if not m:
            raise BenchError(f"{self.mode}: no RESULT line (status {self.proc.returncode}): "
                             f"{out!r} {err!r}")
        result = dict(kv.split("=", 1) for kv in m.group(1).split())
        return result, self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_wrk(url, seconds, threads, connections):
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
           "-s", LUA, url + "/bench"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             timeout=seconds + 60).stdout
    except subprocess.CalledProcessError as e:
        raise BenchError(f"wrk failed ({e.returncode}): {e.stderr}")
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {seconds + 60} s")
    m = re.search(r"^WRK (.*)$", out, re.M)
    if not m:
        raise BenchError(f"no WRK line in wrk's output: {out!r}")
    r = {k: int(v) for k, v in (kv.split("=", 1) for kv in m.group(1).split())}
    if r["requests"] == 0:
        raise BenchError(f"wrk completed no request: {out!r}")
    return r


def measure(server, args):
    before = cpu_ticks(server.proc.pid)
    w = run_wrk(server.url, args.duration, args.threads, args.connections)
    after = cpu_ticks(server.proc.pid)
    errors = w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"]
    return {
        "requests": w["requests"],
        "rps": w["requests"] / (w["duration_us"] / 1e6),
        "p99_ms": w["p99_us"] / 1000,
        "cpu_us": (after - before) / CLK_TCK * 1e6 / w["requests"],
        "errors": errors,
    }


def self_check(binary, args):
    """The wrong mode must be caught: mismatches > 0 and wrk sees 500s."""
    server = Server(binary, "unscoped-global", deadline=300)
    try:
        w = run_wrk(server.url, 2, args.threads, max(args.connections, 8))
    finally:
        result, _ = server.stop()
    mismatches = int(result["mismatches"])
    if mismatches == 0 or w["status"] == 0:
        raise BenchError("self-check: a server whose requests share one slot reported no "
                         f"mismatch ({result}, wrk non-2xx {w['status']}): the read checks "
                         "are not working")
    print(f"self-check: a process-wide slot instead of a per-request binding: "
          f"{mismatches} mismatched reads, {w['status']} of {w['requests']} responses 500 "
          f"(the checks catch crossed ids)")


def median(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", required=True, help="the ServerBench executable")
    ap.add_argument("--ck-mode", choices=sorted(CK_MODES), default="run",
                    help="how the ContextKit server binds the id (default: run)")
    # Many short pairs rather than few long ones: on a shared machine load
    # comes in bursts, and a median over more pairs shrugs more of them off.
    ap.add_argument("--pairs", type=int, default=5, help="alternating run pairs (default 5)")
    ap.add_argument("--duration", type=int, default=6, help="seconds per run (default 6)")
    ap.add_argument("--warmup", type=int, default=5, help="warm-up seconds per server (default 5)")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--no-self-check", action="store_true", help="skip the self-check")
    args = ap.parse_args()
    if args.pairs < 1 or args.duration < 1 or args.warmup < 0:
        ap.error("need --pairs >= 1, --duration >= 1, --warmup >= 0")
    if not shutil.which("wrk"):
        print("server.py: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    if not os.access(args.server, os.X_OK):
        print(f"server.py: {args.server} is not an executable", file=sys.stderr)
        return 2

    start_load = loadavg()
    started = time.monotonic()
    if not args.no_self_check:
        self_check(args.server, args)

    ck_mode, ck_label = CK_MODES[args.ck_mode]
    modes = [(ck_mode, ck_label), TL_MODE]
    # The servers' own bound: the whole schedule, with room for a slow machine.
    deadline = 2 * (args.warmup + args.pairs * args.duration) + 600
    servers = {}
    runs = {mode: [] for mode, _ in modes}
    results = {}
    try:
        for mode, _ in modes:
            servers[mode] = Server(args.server, mode, deadline)
        for mode, _ in modes:
            if args.warmup:
                run_wrk(servers[mode].url, args.warmup, args.threads, args.connections)
        print(f"runs: {args.pairs} pairs x {args.duration} s, wrk -t{args.threads} "
              f"-c{args.connections}, after {args.warmup} s warm-up each; load at start {start_load}")
        print(f"{'run':>3}  {'mode':<34} {'req/s':>9} {'p99 ms':>8} {'CPU us/req':>11}  load")
        for i in range(args.pairs):
            for mode, label in modes:
                load = loadavg().split()[0]
                r = measure(servers[mode], args)
                runs[mode].append(r)
                print(f"{i + 1:>3}  {label:<34} {r['rps']:>9.0f} {r['p99_ms']:>8.2f} "
                      f"{r['cpu_us']:>11.2f}  {load}"
                      + (f"  ({r['errors']} errors)" if r["errors"] else ""), flush=True)
    finally:
        for mode, server in servers.items():
            try:
                results[mode] = server.stop()
            except BenchError as e:
                print(f"server.py: {e}", file=sys.stderr)
            finally:
                server.kill()

    # Correctness first: a fast wrong server measures nothing.
    failures = []
    for mode, label in modes:
        if mode not in results:
            failures.append(f"{label}: no result")
            continue
        result, status = results[mode]
        # The servers also served the warm-up, which wrk's runs here do not count.
        counted = sum(r["requests"] for r in runs[mode])
        errors = sum(r["errors"] for r in runs[mode])
        print(f"{label}: served {result['served']} fully checked requests "
              f"({result['reads']} reads), {result['mismatches']} mismatches, "
              f"{result['missing_header']} without header; wrk errors {errors}")
        if (status != 0 or result["mismatches"] != "0" or result["missing_header"] != "0"
                or result["stopped"] != "stop"):
            failures.append(f"{label}: {result} (exit status {status})")
        if int(result["served"]) < counted:
            failures.append(f"{label}: served {result['served']} < wrk's {counted} requests")
        if errors:
            failures.append(f"{label}: wrk reported {errors} errors")

    med = {mode: {k: median([r[k] for r in runs[mode]]) for k in ("rps", "p99_ms", "cpu_us")}
           for mode, _ in modes}
    ck, tl = med[ck_mode], med[TL_MODE[0]]
    rps_ratio = ck["rps"] / tl["rps"]
    p99_ratio = ck["p99_ms"] / tl["p99_ms"]
    cpu_ratio = ck["cpu_us"] / tl["cpu_us"]
    pair_cpu = [a["cpu_us"] / b["cpu_us"] for a, b in zip(runs[ck_mode], runs[TL_MODE[0]])]
    pair_rps = [a["rps"] / b["rps"] for a, b in zip(runs[ck_mode], runs[TL_MODE[0]])]

    def verdict(ok):
        return "met" if ok else "MISSED"

    print()
    print(f"Server benchmark (Hummingbird 2, release; medians of {args.pairs} runs of "
          f"{args.duration} s per mode; 7 checked reads per request)")
    print()
    print("| mode | requests/s | p99 (ms) | server CPU per request (µs) |")
    print("|---|---:|---:|---:|")
    for mode, label in modes:
        m = med[mode]
        print(f"| {label} | {m['rps']:.0f} | {m['p99_ms']:.2f} | {m['cpu_us']:.2f} |")
    print(f"| ratio ContextKit / @TaskLocal | {rps_ratio:.3f}× "
          f"({verdict(rps_ratio >= TARGET_RPS)}: ≥ {TARGET_RPS}×) | {p99_ratio:.3f}× | "
          f"{cpu_ratio:.3f}× ({verdict(cpu_ratio <= TARGET_CPU)}: ≤ {TARGET_CPU}×), "
          f"{ck['cpu_us'] - tl['cpu_us']:+.2f} µs |")
    print()
    print("per-pair ratios (run i of each mode): CPU/request "
          + " ".join(f"{x:.3f}" for x in pair_cpu) + f" (median {median(pair_cpu):.3f}); "
          + "requests/s " + " ".join(f"{x:.3f}" for x in pair_rps)
          + f" (median {median(pair_rps):.3f})")
    print(f"load average: {start_load} at start, {loadavg()} at end "
          f"({os.cpu_count()} CPUs); wall {time.monotonic() - started:.0f} s")
    if failures:
        print("\nserver.py: FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"server.py: {e}", file=sys.stderr)
        sys.exit(1)
