#!/usr/bin/env python3
"""Profiles the 1-worker gateway under the benchmark's load (bench/run.sh --profile):

1. `perf record` (cpu-clock, frame pointers) while wrk runs: the hottest functions, self time,
   and the same grouped into coarse buckets (kernel/network, TLS-free HTTP, tokio, JWT, ...);
2. `perf stat` with uprobes on libc's malloc/calloc/realloc/free and the syscall tracepoint:
   allocations, syscalls and context switches per request;
3. `perf record` on the malloc uprobe: which functions allocate, per request.

The gateway is built with symbols and frame pointers into target/bench-profile (the normal release
build is stripped). Writes bench/results/profile/profile.md (and the raw reports beside it).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import ROOT, BenchError, Context, log  # noqa: E402

PROFILE_TARGET = "target/bench-profile"


def build_profiling_binary(args) -> Path:
    target_dir = (ROOT / os.environ.get("BENCH_PROFILE_TARGET_DIR", PROFILE_TARGET)).resolve()
    if not args.no_build:
        log(f"building the gateway with symbols and frame pointers into {target_dir}")
        env = {
            **os.environ,
            "CARGO_TARGET_DIR": str(target_dir),
            "CARGO_PROFILE_RELEASE_STRIP": "false",
            "CARGO_PROFILE_RELEASE_DEBUG": "line-tables-only",
            "RUSTFLAGS": "-C force-frame-pointers=yes",
        }
        done = subprocess.run(["cargo", "build", "--release", "--locked", "-p", "gateway"],
                              cwd=ROOT, env=env)
        if done.returncode != 0:
            raise BenchError("cargo build of the profiling binary failed")
    return target_dir / "release" / "gateway"


def perf(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["perf", *argv], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise BenchError(f"perf {' '.join(argv[:2])} failed: {done.stderr.strip()[-500:]}")
    return done


def under_load(args, port: int, cookie: str, seconds: int, perf_argv: list[str]) -> dict:
    """perf attaches first and stops a second after wrk, so that every request wrk counts falls
    inside perf's window: per-request figures divide by wrk's own count."""
    watcher = subprocess.Popen(["perf", *perf_argv, "--", "sleep", str(seconds + 1.5)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    try:
        output, _ = harness.wrk(args, port, seconds, cookie)
    finally:
        _, err = watcher.communicate(timeout=seconds + 60)
    if watcher.returncode != 0:
        raise BenchError(f"perf {perf_argv[0]} failed: {err.strip()[-500:]}")
    return harness.parse_wrk(output)


BUCKETS = [
    ("kernel (TCP, epoll, syscalls)", r"^\[k\]"),
    ("malloc/free/realloc, memcpy/memmove", r"malloc|free|realloc|_int_|memcpy|memmove|memset|"
     r"__rust_alloc|__rust_dealloc|alloc::raw_vec|cfree"),
    ("JWT: HMAC-SHA256, base64, JSON claims", r"sha2|hmac|Sha256|base64|jsonwebtoken|serde_json|"
     r"serde::de|compress256"),
    ("HTTP/1 parsing and encoding (hyper, httparse, http)", r"hyper::|httparse|http::header|"
     r"http::uri|h1::|HeaderMap|HeaderName|HeaderValue"),
    ("HTTP client (hyper-util pool)", r"hyper_util::client|pool"),
    ("warp filters, routing, the gateway's own code", r"warp::|gateway::|common::|cookie"),
    ("tokio runtime (scheduler, I/O driver, timers)", r"tokio::|mio::|parking_lot|std::sync"),
    ("logging, time formatting", r"log::|env_logger|time::|fmt::"),
]


def bucket_of(symbol: str) -> str:
    for name, pattern in BUCKETS:
        if re.search(pattern, symbol):
            return name
    return "other"


def top_symbols(report: str) -> list[tuple[float, str]]:
    rows = []
    for line in report.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(\[[k.]\])\s+(.*)$", line)
        if match:
            rows.append((float(match.group(1)), f"{match.group(2)} {match.group(3).strip()}"))
    return rows


NOT_A_CALLER = re.compile(
    r"malloc|calloc|realloc|__rust_|__rdl_|alloc::alloc::|alloc::raw_vec|RawVec|finish_grow|"
    r"do_reserve_and_handle|grow_one|grow_amortized|alloc::vec::Vec::(with_capacity|reserve|push)|"
    r"alloc::boxed::Box::new|alloc::sync::Arc::new|^\[unknown\]$"
)


GENERIC = re.compile(
    r"futures_util::|core::future::|IntoFuture|AndFuture|EitherFuture|MapFuture|Then<|"
    r"::poll$|tokio::runtime::|std::panicking|catch_unwind|\{\{closure\}\}$"
)


def malloc_sites(script: str, mallocs_per_request: float, limit: int = 25):
    """Each sample of `perf script` is one malloc call. Attribute it to its first frame that is
    not allocator plumbing, shown with the next two frames for context, and scale the shares to
    mallocs per request (from perf stat)."""
    counts: Counter[str] = Counter()
    components: Counter[str] = Counter()
    for sample in script.split("\n\n"):
        frames = []
        for line in sample.splitlines()[1:]:
            parts = line.strip().split(None, 1)
            if not parts:
                continue
            symbol = parts[1] if len(parts) > 1 else parts[0]
            symbol = re.sub(r"\+0x[0-9a-f]+$", "", symbol.strip())
            frames.append(shorten_symbol(symbol))
        callers = [f for f in frames if not NOT_A_CALLER.search(f)]
        if not frames:
            continue
        specific = [f for f in callers if not GENERIC.search(f)] or callers or ["?"]
        counts[" < ".join(specific[:3])] += 1
        components[component_of(callers)] += 1
    total = sum(counts.values()) or 1
    return (
        [(mallocs_per_request * count / total, site) for site, count in counts.most_common(limit)],
        [(mallocs_per_request * count / total, name) for name, count in components.most_common()],
    )


def shorten_symbol(symbol: str) -> str:
    """Drops hashes and generic arguments, and `<A as Trait>::f` becomes `A::f`."""
    symbol = re.sub(r"::h[0-9a-f]{16}$", "", symbol)
    previous = None
    while previous != symbol:
        previous = symbol
        symbol = re.sub(r"(?<=[\w\]])<[^<>]*>", "", symbol)
        symbol = re.sub(r"<([^<>]*?) as [^<>]*>", r"\1", symbol)
    return symbol


COMPONENTS = [
    ("JWT verification (jsonwebtoken: base64, serde_json)", r"jsonwebtoken|common::token"),
    ("upstream URI built (Upstream::uri_for)", r"uri_for|http::uri::"),
    ("path check (routes::check_path)", r"check_path"),
    ("request id (common::request_id)", r"request_id"),
    ("outgoing request headers (prepare_request_headers, cookie strip)",
     r"prepare_request_headers|strip_from|strip_hop_by_hop|SessionCookie"),
    ("metrics and access log", r"metrics|prometheus|log::|Observer"),
    ("http::Extensions inserts (peer, user, latency, ...)", r"http::extensions::Extensions"),
    ("warp boxed filters (BoxingFilter::filter)", r"BoxingFilter"),
    ("HeaderMap clones", r"HeaderMap::clone|headers_cloned"),
    ("hyper-util client (upstream request, pool, connection)",
     r"hyper::client|role::Client|hyper_util::client"),
    ("hyper server (parse, dispatch, encode)", r"hyper::|hyper_util::|http::"),
    ("warp filters (other)", r"warp::"),
    ("the gateway's own code (other)", r"gateway::|common::"),
]


def component_of(frames: list[str]) -> str:
    for frame in frames:
        for name, pattern in COMPONENTS:
            if re.search(pattern, frame):
                return name
    return "other (tokio, std)"


def shorten(symbol: str) -> str:
    symbol = re.sub(r"::h[0-9a-f]{16}$", "", symbol)
    return symbol if len(symbol) <= 140 else symbol[:137] + "..."


def tidy(report: str) -> str:
    """perf pads every line to the terminal's width: trailing blanks and dots go."""
    return "\n".join(re.sub(r"\s*\.\.\.$", "", line).rstrip() for line in report.splitlines()) + "\n"


def libc_of(pid: int) -> str:
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1]
        if re.search(r"/libc\.so\.6$|/libc-[\d.]+\.so$", path):
            return path
    raise BenchError("the gateway does not map libc: cannot probe malloc")


PROBES = ("malloc", "calloc", "realloc", "free")


def add_probes(libc: str) -> list[str]:
    existing = perf("probe", "-l", check=False).stdout
    added = []
    for function in PROBES:
        event = f"probe_libc:{function}"
        if event in existing:
            continue
        done = perf("probe", "-x", libc, "--add", function, check=False)
        if done.returncode != 0:
            raise BenchError(f"perf probe {function} failed: {done.stderr.strip()[-300:]}")
        added.append(event)
    return added


def stat_under_load(args, port, cookie, pid, path: Path, events: str) -> tuple[dict, dict]:
    load = under_load(args, port, cookie, args.duration, [
        "stat", "-x", ",", "-o", str(path), "-e", events, "-p", pid])
    counts = {}
    for line in path.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and re.fullmatch(r"[\d.]+", fields[0]):
            counts[fields[2]] = float(fields[0])
    return load, counts


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", action="store_true", help="(what bench/run.sh passes)")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "profile"))
    parser.add_argument("--keep-work", action="store_true")
    args = parser.parse_args(argv)
    cpus = os.cpu_count() or 1
    args.target_cpus = "0" if cpus >= 2 else None
    args.wrk_cpus = "1" if cpus >= 2 else None
    if perf("stat", "-e", "cpu-clock", "true", check=False).returncode != 0:
        log("perf cannot count here (perf_event_paranoid, or no linux-perf)")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gateway-profile-"))
    secret = harness.secrets.token_urlsafe(48).encode()
    ctx = Context(args=args, work=work, secret=secret)
    upstream = gateway = None
    added: list[str] = []
    try:
        binary = build_profiling_binary(args)
        if not args.no_build:
            harness.build(argparse.Namespace(no_build=False))
        ctx.upstream_port = harness.free_port()
        upstream = harness.start_service_one(ctx, ctx.upstream_port, "upstream", args.wrk_cpus)
        harness.wait_ready(upstream, "", 60)
        port = harness.free_port()
        gateway = harness.start_gateway(1, "warn", binary)(ctx, port, "gateway-1t",
                                                              args.target_cpus)
        cookie = f"token={harness.mint(secret)}"
        harness.wait_ready(gateway, cookie, 60)
        harness.check_answers(gateway, secret, True)
        pid = str(gateway.proc.pid)
        harness.wrk(args, port, 2, cookie)

        log(f"perf record, {args.duration} s under load")
        data = work / "perf.data"
        cpu = under_load(args, port, cookie, args.duration, [
            "record", "-e", "cpu-clock", "-F", "2999", "--call-graph", "fp", "-o", str(data),
            "-p", pid])
        self_report = perf("report", "-i", str(data), "--no-children", "--sort", "symbol",
                           "-g", "none", "--percent-limit", "0.3", "--stdio").stdout
        children_report = perf("report", "-i", str(data), "--children", "--sort", "symbol",
                               "-g", "none", "--percent-limit", "3", "--stdio").stdout
        (out / "perf-self.txt").write_text(tidy(self_report))
        (out / "perf-children.txt").write_text(tidy(children_report))
        full_self = perf("report", "-i", str(data), "--no-children", "--sort", "symbol",
                         "-g", "none", "--percent-limit", "0", "--stdio").stdout
        buckets: Counter[str] = Counter()
        for share, symbol in top_symbols(full_self):
            buckets[bucket_of(symbol)] += share

        log("perf stat: syscalls, context switches and CPU per request (no probes)")
        plain, plain_counts = stat_under_load(args, port, cookie, pid, work / "plain.csv",
                                              "raw_syscalls:sys_enter,context-switches,cpu-clock")
        log("perf stat with uprobes on libc: allocations per request")
        added = add_probes(libc_of(gateway.proc.pid))
        events = ",".join(f"probe_libc:{f}" for f in PROBES)
        counted, alloc_counts = stat_under_load(args, port, cookie, pid, work / "alloc.csv",
                                                events)
        per_request = {
            **{name: value / max(plain["requests"], 1) for name, value in plain_counts.items()},
            **{name: value / max(counted["requests"], 1) for name, value in alloc_counts.items()},
        }

        log("perf record on malloc: who allocates")
        malloc_data = work / "malloc.data"
        under_load(args, port, cookie, 3, [
            "record", "-e", "probe_libc:malloc", "-c", "7", "--call-graph", "dwarf,16384",
            "-o", str(malloc_data), "-p", pid])
        script = perf("script", "-i", str(malloc_data), "-F", "ip,sym", "--no-inline").stdout
        sites = malloc_sites(script, per_request.get("probe_libc:malloc", 0))
        write_profile(out, args, cpu, buckets, self_report, per_request, plain, counted, sites)
        log(f"wrote {out / 'profile.md'}")
    except BenchError as error:
        log(f"FAILED: {error}")
        return 1
    finally:
        for event in added:
            perf("probe", "-d", event, check=False)
        for running in (gateway, upstream):
            if running:
                running.stop()
        if args.keep_work:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def write_profile(out: Path, args, cpu: dict, buckets: Counter, self_report: str,
                  per_request: dict, plain: dict, counted: dict, sites) -> None:
    lines = [
        "# Profile of the 1-worker gateway under load",
        "",
        f"`bench/run.sh --profile`: the gateway (TOKIO_WORKER_THREADS=1, RUST_LOG=warn, built "
        f"with symbols and frame pointers) on CPU {args.target_cpus}, wrk "
        f"`-t1 -c{args.connections}` and service-one on CPU {args.wrk_cpus}, `GET /service1` with "
        f"a valid cookie; perf {args.duration} s at 2999 Hz (cpu-clock) while wrk ran at "
        f"{cpu['rps']:,.0f} req/s.",
        "",
        "## Where the CPU goes (self time, grouped)",
        "",
        "| bucket | share of samples |",
        "| --- | ---: |",
    ]
    for name, share in buckets.most_common():
        lines.append(f"| {name} | {share:.1f} % |")
    lines += ["", "## Hottest functions (self time, >= 0.3 %)", "", "```"]
    kept = [line for line in self_report.splitlines() if re.match(r"\s*[\d.]+%", line)]
    lines += [shorten(re.sub(r"\s*\.\.\.$", "", line).rstrip()) for line in kept[:45]]
    lines += ["```", "", "## Per request", "",
              f"Syscalls, context switches and CPU from a plain `perf stat` ({plain['rps']:,.0f} "
              f"req/s); allocations from uprobes on libc, which slow the gateway down "
              f"({counted['rps']:,.0f} req/s while counting) but not what it allocates.", "",
              "| event | per request |", "| --- | ---: |"]
    names = {
        "probe_libc:malloc": "malloc", "probe_libc:calloc": "calloc",
        "probe_libc:realloc": "realloc", "probe_libc:free": "free",
        "raw_syscalls:sys_enter": "syscalls", "context-switches": "context switches",
        "cpu-clock": "CPU ms (task clock)",
    }
    for event, label in names.items():
        if event == "cpu-clock" and event in per_request:
            lines.append(f"| CPU (task clock) | {per_request[event] * 1000:.1f} µs |")
        elif event in per_request:
            lines.append(f"| {label} | {per_request[event]:.1f} |")
    lines += ["", "## Who calls malloc, per request", "",
              "Every 7th malloc sampled with its DWARF stack (inlined frames fold into their "
              "caller). By component: the innermost frame that names one.", "",
              "| mallocs/request | component |", "| ---: | --- |"]
    by_site, by_component = sites
    lines += [f"| {count:.1f} | {name} |" for count, name in by_component]
    lines += ["", "The 25 commonest call sites:", "", "| mallocs/request | where |",
              "| ---: | --- |"]
    for count, site in by_site:
        lines.append(f"| {count:.2f} | `{site}` |")
    (out / "profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
