#!/usr/bin/env python3
"""Turns one bench/run.sh output directory into bench/RESULTS.md.

usage: report.py OUT_DIR RESULTS_MD
"""
import csv
import json
import os
import re
import statistics
import sys

PATHS = ["direct", "vigil", "haproxy"]
# How the report names each path in running text.
LABELS = {"direct": "direct", "vigil": "Vigil", "haproxy": "HAProxy"}
MODES = ["rate", "max"]
PROXY_ROLES = {
    "vigil": ["client-proxy", "server-proxy"],
    "haproxy": ["front-haproxy", "back-haproxy"],
}
ADDED_P99_TARGET_US = 500.0
# Other processes using more than this many cores during a phase make its latency suspect.
BUSY_CORES_LIMIT = 0.2
RSS_TARGET_MB = 12.0
# Against the HAProxy pair: Vigil's throughput at least this multiple of HAProxy's at maximum
# rate; CPU per request and added p99 at most HAProxy's.
THROUGHPUT_TARGET = 1.25
POLICY_P99_TARGET_US = 5.0


def load_env(out):
    env = {}
    with open(os.path.join(out, "env.txt")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            env[k] = v
    return env


def load_runs(out):
    runs = {}
    for path in PATHS:
        for mode in MODES:
            p = os.path.join(out, f"{path}-{mode}.json")
            if os.path.exists(p):
                with open(p) as f:
                    runs[(path, mode)] = json.load(f)
    return runs


def load_procs(out):
    procs = {}
    loads = {}
    with open(os.path.join(out, "procs.tsv")) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            key = (row["path"], row["mode"])
            loads[key] = (row["load1_before"], row["load1_after"])
            if row["role"] != "-":
                procs.setdefault(key, {})[row["role"]] = (
                    int(row["cpu_ticks"]),
                    int(row["vmhwm_kb"]),
                    int(row.get("rss_anon_kb") or 0),
                    int(row.get("rss_file_kb") or 0),
                )
    return procs, loads


def load_phases(out):
    phases = {}
    p = os.path.join(out, "phases.tsv")
    if os.path.exists(p):
        with open(p) as f:
            for row in csv.DictReader(f, delimiter="\t"):
                phases[(row["path"], row["mode"])] = (
                    float(row["wall_s"]), int(row["system_busy_ticks"]), int(row["upstream_ticks"])
                )
    return phases


def wrk_rps(out, path):
    p = os.path.join(out, f"{path}-wrk.txt")
    if not os.path.exists(p):
        return None
    m = re.search(r"Requests/sec:\s+([\d.]+)", open(p).read())
    return float(m.group(1)) if m else None


def load_idle(out):
    """(path, role, connections, private kB before, private kB after) per proxy, if measured."""
    path = os.path.join(out, "idle.tsv")
    if not os.path.exists(path):
        return []
    rows = []
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if len(f) == 5 and f[2].isdigit() and f[3].isdigit() and f[4].isdigit():
            rows.append((f[0], f[1], int(f[2]), int(f[3]), int(f[4])))
    return rows


def fmt_us(v):
    if v is None:
        return "–"
    return f"{v:,.0f} µs" if v >= 100 else f"{v:.1f} µs"


def idle_of(busy_ticks, wall, hz, nproc):
    """Cores nobody used over `wall` seconds in which every process together ran
    `busy_ticks`. A process that ends during the phase takes its earlier CPU time with it
    unless its parent reaps it, so the busy time can come out a little low: clamped."""
    if not nproc or wall <= 0:
        return None
    return min(float(nproc), max(0.0, nproc - busy_ticks / hz / wall))


def load_paired(out, hz, nproc, prefix="paired"):
    """Per round of the paired runs (`paired`: maximum rate, `rate-paired`: fixed rate):
    {round: {path: (req/s, CPU s per 10k of both proxies, idle cores, p99 µs)}}, each round's
    paths in the order they ran (the order of the rows run.sh wrote)."""
    rounds = {}
    p = os.path.join(out, f"{prefix}.tsv")
    if not os.path.exists(p):
        return rounds
    with open(p) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            try:
                with open(os.path.join(out, f"{prefix}-{row['round']}-{row['path']}.json")) as j:
                    run = json.load(j)
            except (OSError, ValueError):
                continue
            wall = float(row["wall_s"])
            cpu = int(row["proxy_ticks"]) / hz * 10_000 / run["requests"] if run["requests"] else None
            idle = idle_of(int(row["system_busy_ticks"]), wall, hz, nproc)
            p99 = (run.get("latency_us") or {}).get("p99")
            rounds.setdefault(int(row["round"]), {})[row["path"]] = (run["throughput_rps"], cpu, idle, p99)
    return rounds


def duration_us(text):
    """A Rust `Duration` as `{:?}` prints it (`812.00ns`, `3.10µs`, `1.20ms`, `2.00s`), in µs."""
    m = re.match(r"([\d.]+)(ns|µs|us|ms|s)$", text)
    if not m:
        return None
    scale = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}[m.group(2)]
    return float(m.group(1)) * scale


# Where profile samples go, in the order the report lists the parts.
PARTS = [
    "kernel (system calls, TCP, scheduling)",
    "TLS and crypto",
    "HTTP/2 framing (h2)",
    "HTTP/1 and the HTTP types (hyper, http, httparse)",
    "async runtime and service layers (tokio, futures, tower)",
    "Vigil's own code",
    "HAProxy's own code",
    "memory copies (libc)",
    "allocator (libc malloc and free)",
    "Rust core and std (generic code inlined there)",
    "other",
]

CRATE_PARTS = {
    "h2": 2,
    "hyper": 3, "hyper_util": 3, "http": 3, "httparse": 3, "http_body": 3, "http_body_util": 3, "httpdate": 3,
    "rustls": 1, "tokio_rustls": 1, "rustls_pki_types": 1, "ring": 1,
    "tokio": 4, "tokio_util": 4, "mio": 4, "futures": 4, "futures_util": 4, "futures_core": 4,
    "tower": 4, "tower_service": 4, "tower_layer": 4,
    "vigil_proxy": 5, "vigil_authz": 5, "vigil_identity": 5, "vigil_api": 5,
    "core": 9, "alloc": 9, "std": 9,
}


def part_of(dso, kind, sym):
    """Which of PARTS one profile line's function belongs to."""
    base = os.path.basename(dso)
    if kind == "k" or dso.startswith("[kernel"):
        return PARTS[0]
    if base.startswith(("libcrypto", "libssl")) or sym.startswith(("aws_lc", "mlkem", "mlk_")):
        return PARTS[1]
    if base.startswith("libc.so") or base.startswith("libc-"):
        if re.search(r"mem(move|cpy|set|cmp)", sym):
            return PARTS[7]
        if re.search(r"malloc|free|_int_|unlink_chunk|tcache|realloc|calloc|consolidate", sym):
            return PARTS[8]
        return PARTS[10]
    if base == "haproxy":
        return PARTS[6]
    # `<T as hyper::service::HttpService<B>>::call`: a blanket impl counts where its trait is.
    crate = re.match(r"<[A-Z] as (?:dyn |mut )*([A-Za-z_][A-Za-z0-9_]*)::", sym) or re.match(
        r"[<&\s]*(?:dyn |mut )*([A-Za-z_][A-Za-z0-9_]*)::", sym
    )
    if crate and crate.group(1) in CRATE_PARTS:
        return PARTS[CRATE_PARTS[crate.group(1)]]
    return PARTS[10]


def load_profile(out, hz):
    """{(path, role): ({part: share of samples}, CPU µs per request)} from the profile step."""
    found = {}
    tsv = os.path.join(out, "profile.tsv")
    if not os.path.exists(tsv):
        return found
    line_re = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$")
    for row in csv.reader(open(tsv), delimiter="\t"):
        if len(row) != 4:
            continue
        path, role, ticks, wall = row[0], row[1], int(row[2]), float(row[3])
        try:
            rps = json.load(open(os.path.join(out, f"profile-{path}.json")))["throughput_rps"]
            lines = open(os.path.join(out, f"profile-{path}-{role}.txt")).read().splitlines()
        except (OSError, ValueError, KeyError):
            continue
        shares = {}
        for line in lines:
            m = line_re.match(line)
            if m:
                part = part_of(m.group(2), m.group(3), m.group(4))
                shares[part] = shares.get(part, 0.0) + float(m.group(1)) / 100
        total = sum(shares.values())
        if not total or not rps or wall <= 0:
            continue
        us_per_req = ticks / hz / (rps * wall) * 1e6
        found[(path, role)] = ({k: v / total for k, v in shares.items()}, us_per_req)
    return found


def load_policy(out):
    """Rows of the policy bench's percentile pass: (policy, evaluator, requests, p50, p99,
    p99.9, mean, [each round's p99]), times in µs; the first four are medians of its rounds
    when it ran several."""
    rows = []
    p = os.path.join(out, "policy.txt")
    if not os.path.exists(p):
        return rows
    line_re = re.compile(
        r"^\s*(\S+)\s+(\S+)\s+(same request|distinct requests)\s+p50\s+(\S+)\s+p99\s+(\S+)\s+p99\.9\s+(\S+)\s+mean\s+(\S+)"
    )
    with open(p) as f:
        for line in f:
            m = line_re.match(line)
            if m:
                times = [duration_us(t) for t in m.groups()[3:]]
                rounds = re.search(r"rounds' p99 (.*)$", line)
                each = [duration_us(t) for t in rounds.group(1).split()] if rounds else []
                if None not in times and None not in each:
                    rows.append((m.group(1), m.group(2), m.group(3), *times, each))
    return rows


def main():
    out, dest = sys.argv[1], sys.argv[2]
    env = load_env(out)
    runs = load_runs(out)
    procs, loads = load_procs(out)
    phases = load_phases(out)
    hz = os.sysconf("SC_CLK_TCK")
    nproc = int(env["nproc"]) if env.get("nproc", "").isdigit() else None
    paired = {r: v for r, v in load_paired(out, hz, nproc).items() if "vigil" in v and "haproxy" in v}
    policy = load_policy(out)
    paired_thr = [v["vigil"][0] / v["haproxy"][0] for v in paired.values() if v["haproxy"][0]]
    paired_cpu = [v["vigil"][1] / v["haproxy"][1] for v in paired.values() if v["vigil"][1] and v["haproxy"][1]]
    # Fixed-rate rounds: each round's added p99 is against that round's direct run.
    rate_paired = {
        r: v for r, v in load_paired(out, hz, nproc, "rate-paired").items()
        if all(p in v and v[p][3] is not None for p in PATHS)
    }
    rate_added = {p: [v[p][3] - v["direct"][3] for v in rate_paired.values()] for p in ("vigil", "haproxy")}
    rate_cpu = [v["vigil"][1] / v["haproxy"][1] for v in rate_paired.values() if v["vigil"][1] and v["haproxy"][1]]

    def other_cores(path, mode):
        """Cores used by processes other than the benchmark's during a phase."""
        ph, run = phases.get((path, mode)), runs.get((path, mode))
        if not ph or not run:
            return None
        wall, busy, upstream = ph
        ours = upstream + sum(p[0] for p in procs.get((path, mode), {}).values())
        ours += run.get("loadgen_cpu_s", 0) * hz
        return max(0.0, (busy - ours) / hz / wall)

    def idle_cores(path, mode):
        """Cores nobody used during a phase: what a path leaves on the table at maximum rate."""
        ph = phases.get((path, mode))
        if not ph:
            return None
        wall, busy, _ = ph
        return idle_of(busy, wall, hz, nproc)

    busiest = max((v for v in (other_cores(p, m) for p in PATHS for m in MODES) if v is not None), default=None)
    noisy = busiest is not None and busiest > BUSY_CORES_LIMIT

    def cpu_per_10k(path, mode, role):
        run = runs.get((path, mode))
        p = procs.get((path, mode), {}).get(role)
        if not run or not p or run["requests"] == 0:
            return None
        return p[0] / hz / run["requests"] * 10_000

    def rss_mb(path, mode, role):
        p = procs.get((path, mode), {}).get(role)
        return p[1] / 1024 if p else None

    def rss_split_mb(path, mode, role):
        p = procs.get((path, mode), {}).get(role)
        if not p or len(p) < 4 or not (p[2] or p[3]):
            return None
        return p[2] / 1024, p[3] / 1024

    def lat(path, mode, q):
        run = runs.get((path, mode))
        if not run or not run.get("latency_us"):
            return None
        return run["latency_us"][q]

    def added_p99(path, mode):
        a, d = lat(path, mode, "p99"), lat("direct", mode, "p99")
        return None if a is None or d is None else a - d

    lines = []
    w = lines.append
    w("# Vigil benchmark results")
    w("")
    w("Generated by `bash bench/run.sh` (see [README.md](README.md) for what is measured and how to read it).")
    w("")
    w(f"- **Date:** {env.get('date')}")
    w(f"- **Machine:** {env.get('nproc')} cores, {env.get('cpu')}, {env.get('mem')}, Linux {env.get('kernel')}")
    w(f"- **Versions:** Vigil `{env.get('vigil')}` (vigil-proxy binary built {env.get('vigil_proxy_built')}, {env.get('rustc')}); {env.get('haproxy')}; {env.get('openssl')}")
    if env.get("threads"):
        w(f"- **Proxy threads:** {env.get('threads')}")
    if env.get("vigil_peer_connections") or env.get("haproxy_peer_connections"):
        w(
            f"- **Proxy-to-proxy mTLS connections open after the runs:** Vigil {env.get('vigil_peer_connections', '–')}, "
            f"HAProxy {env.get('haproxy_peer_connections', '–')} (the load generator holds {env.get('connections')})"
        )
    w(
        f"- **Load:** {env.get('duration')} s per measured phase after {env.get('warmup')} s warm-up; "
        f"{env.get('connections')} keep-alive HTTP/1.1 connections; {env.get('size')}-byte responses; "
        f"fixed rate {env.get('rate')} req/s (open loop, latency from intended send time) and maximum rate "
        f"(closed loop); load generator {env.get('loadgen_threads')} thread(s), upstream "
        f"{env.get('upstream_threads')} thread(s); HAProxy pair speaks {env.get('haproxy_alpn')} over TLS 1.3"
    )
    if env.get("note"):
        w(f"- **Note:** {env.get('note')}")
    w(f"- **Raw data:** `bench/out/{os.path.basename(out)}/` (`*.json` from the load generator, `procs.tsv`, `logs/`)")
    w("")
    w(
        "The machine has 2 cores shared by the load generator, the upstream and both proxies of a path "
        "(and by anything else running), so maximum-rate figures are a CPU-contention measurement, "
        "not a capacity figure for a dedicated host."
    )
    w("")
    if noisy:
        w(
            f"> **Warning: the machine was busy.** Processes other than the benchmark's used up to "
            f"{busiest:.2f} of the {env.get('nproc')} cores during a phase (see *Conditions* below). "
            "Tail latencies (p99, p99.9) and the maximum-rate figures are dominated by that contention "
            "and are not comparable between paths; CPU per request and RSS are still meaningful. "
            "Re-run `bash bench/run.sh` on a quiet machine for latency conclusions."
        )
        w("")

    titles = {
        "rate": f"Fixed rate: {env.get('rate')} req/s",
        "max": "Maximum rate (closed loop)",
    }
    for mode in MODES:
        if not any((p, mode) in runs for p in PATHS):
            continue
        w(f"## {titles[mode]}")
        w("")
        w("| path | throughput | errors | p50 | p99 | p99.9 | added p99 vs direct | CPU s per 10k req (per proxy) | peak RSS MB (per proxy) |")
        w("|---|---:|---:|---:|---:|---:|---:|---|---|")
        for path in PATHS:
            run = runs.get((path, mode))
            if not run:
                continue
            roles = PROXY_ROLES.get(path, [])
            cpu = " · ".join(
                f"{r.split('-')[0]} {cpu_per_10k(path, mode, r):.2f}" for r in roles if cpu_per_10k(path, mode, r) is not None
            ) or "–"
            rss = " · ".join(
                f"{r.split('-')[0]} {rss_mb(path, mode, r):.1f}" for r in roles if rss_mb(path, mode, r) is not None
            ) or "–"
            ap = added_p99(path, mode)
            added = "–" if path == "direct" or ap is None else f"{ap / 1000:+.3f} ms"
            w(
                f"| {path} | {run['throughput_rps']:,.0f} req/s | {run['errors']} | {fmt_us(lat(path, mode, 'p50'))} | "
                f"{fmt_us(lat(path, mode, 'p99'))} | {fmt_us(lat(path, mode, 'p99_9'))} | {added} | {cpu} | {rss} |"
            )
        w("")

    # Memory, split.
    split_rows = []
    for path in PATHS:
        for mode in MODES:
            for r in PROXY_ROLES.get(path, []):
                v = rss_split_mb(path, mode, r)
                if v is not None:
                    split_rows.append(f"| {path} | {mode} | {r.split('-')[0]} | {v[0] + v[1]:.1f} | {v[0]:.1f} | {v[1]:.1f} |")
    if split_rows:
        w("## Memory after each phase")
        w("")
        w("Resident memory of each proxy at the end of the phase, split into private anonymous memory (heap, stacks: what each proxy adds) and file-backed pages (the binary's code and read-only data, shared by every process running the same binary: on a node, every sidecar of one image).")
        w("")
        w("| path | phase | proxy | RSS MB | anonymous MB | file-backed MB |")
        w("|---|---|---|---:|---:|---:|")
        for row in split_rows:
            w(row)
        w("")

    idle = load_idle(out)
    if idle:
        w("## Idle connections")
        w("")
        w("Private (anonymous) memory each proxy holds per idle client connection: after the phases, the script opens that many keep-alive connections to the path, sends one request on each and reads its answer, holds them idle for 2 s, and compares each proxy's `RssAnon` before and after. Between the proxies of a pair they share the peer connections, so the second proxy adds little.")
        w("")
        w("| path | proxy | idle connections | private MB before | private MB after | KiB per idle connection |")
        w("|---|---|---:|---:|---:|---:|")
        for path, role, n, before, after in idle:
            w(f"| {path} | {role} | {n:,} | {before / 1024:.1f} | {after / 1024:.1f} | {(after - before) / n:.1f} |")
        w("")

    # Ratios.
    w("## Vigil / HAProxy")
    w("")
    w("Below 1.0 means Vigil is lower (better for latency, CPU and memory; worse for throughput).")
    w("")
    w("| metric | fixed rate | max rate |")
    w("|---|---:|---:|")

    def ratio(a, b):
        return "–" if a is None or b in (None, 0) else f"{a / b:.2f}"

    def thr(path, mode):
        r = runs.get((path, mode))
        return r["throughput_rps"] if r else None

    def sum_cpu(path, mode):
        vals = [cpu_per_10k(path, mode, r) for r in PROXY_ROLES[path]]
        return None if None in vals else sum(vals)

    def sum_rss(path, mode):
        vals = [rss_mb(path, mode, r) for r in PROXY_ROLES[path]]
        return None if None in vals else sum(vals)

    w(f"| throughput | {ratio(thr('vigil', 'rate'), thr('haproxy', 'rate'))} | {ratio(thr('vigil', 'max'), thr('haproxy', 'max'))} |")
    for q, name in (("p50", "p50 latency"), ("p99", "p99 latency"), ("p99_9", "p99.9 latency")):
        w(f"| {name} | {ratio(lat('vigil', 'rate', q), lat('haproxy', 'rate', q))} | {ratio(lat('vigil', 'max', q), lat('haproxy', 'max', q))} |")
    w(f"| added p99 vs direct | {ratio(added_p99('vigil', 'rate'), added_p99('haproxy', 'rate'))} | {ratio(added_p99('vigil', 'max'), added_p99('haproxy', 'max'))} |")
    w(f"| CPU per request (both proxies) | {ratio(sum_cpu('vigil', 'rate'), sum_cpu('haproxy', 'rate'))} | {ratio(sum_cpu('vigil', 'max'), sum_cpu('haproxy', 'max'))} |")
    w(f"| peak RSS (both proxies) | {ratio(sum_rss('vigil', 'rate'), sum_rss('haproxy', 'rate'))} | {ratio(sum_rss('vigil', 'max'), sum_rss('haproxy', 'max'))} |")
    if paired_thr:
        w(f"| throughput, paired rounds (median of {len(paired_thr)}) | – | {statistics.median(paired_thr):.2f} |")
    if rate_paired:
        w(f"| added p99 vs direct, paired rounds (medians of {len(rate_paired)}) | "
          f"{ratio(statistics.median(rate_added['vigil']), statistics.median(rate_added['haproxy']))} | – |")
    if paired_cpu or rate_cpu:
        cells = [f"{statistics.median(c):.2f}" if c else "–" for c in (rate_cpu, paired_cpu)]
        w(f"| CPU per request (both proxies), paired rounds (median) | {cells[0]} | {cells[1]} |")
    w("")

    def num(v, f):
        return "–" if v is None else format(v, f)

    if rate_paired:
        w(f"### Paired rounds at {env.get('rate')} req/s")
        w("")
        w(
            f"A fixed-rate phase's tail moves between runs more than anything else here, so the three paths also ran {env.get('paired_secs', '?')} s each "
            f"back to back at {env.get('rate')} req/s, in turn orders; each round's added p99 is against that round's direct run. "
            f"The targets against HAProxy at this rate compare the medians of these rounds."
        )
        w("")
        w("| round | order | direct p99 | Vigil p99 | HAProxy p99 | Vigil added p99 | HAProxy added p99 | Vigil CPU s per 10k | HAProxy CPU s per 10k | CPU ratio |")
        w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in sorted(rate_paired):
            d, v, h = (rate_paired[r][p] for p in PATHS)
            order = ", ".join(LABELS[p] for p in rate_paired[r])
            w(
                f"| {r} | {order} | {d[3]:,.0f} µs | {v[3]:,.0f} µs | {h[3]:,.0f} µs | {(v[3] - d[3]) / 1000:+.3f} ms | {(h[3] - d[3]) / 1000:+.3f} ms | "
                f"{num(v[1], '.3f')} | {num(h[1], '.3f')} | {ratio(v[1], h[1])} |"
            )
        w("")
    if paired:
        w("### Paired rounds at maximum rate")
        w("")
        w(
            f"The maximum-rate phases above run one path after the other, so a change in the machine's speed between them lands in their ratios. "
            f"Here the two pairs, both up, ran {env.get('paired_secs', '?')} s each back to back, alternating which went first; each row compares them under the same conditions."
        )
        w("")
        w("| round | first | Vigil req/s | HAProxy req/s | throughput ratio | Vigil CPU s per 10k | HAProxy CPU s per 10k | CPU ratio | idle cores Vigil / HAProxy |")
        w("|---:|---|---:|---:|---:|---:|---:|---:|---|")
        for r in sorted(paired):
            v, h = paired[r]["vigil"], paired[r]["haproxy"]
            w(
                f"| {r} | {LABELS[next(iter(paired[r]))]} | {v[0]:,.0f} | {h[0]:,.0f} | {ratio(v[0], h[0])} | {num(v[1], '.3f')} | {num(h[1], '.3f')} | "
                f"{ratio(v[1], h[1])} | {num(v[2], '.2f')} / {num(h[2], '.2f')} |"
            )
        w("")

    # Targets.
    def verdict(ok):
        return "PASS" if ok else "FAIL"

    w("## Targets")
    w("")
    ap = added_p99("vigil", "rate")
    if ap is not None:
        busy = max(other_cores("direct", "rate") or 0, other_cores("vigil", "rate") or 0)
        if busy > BUSY_CORES_LIMIT:
            said = f"INCONCLUSIVE (other processes used {busy:.2f} cores during these phases)"
        else:
            said = verdict(ap < ADDED_P99_TARGET_US)
        w(f"- Vigil added p99 at {env.get('rate')} req/s under 0.5 ms: **{said}** ({ap / 1000:+.3f} ms)")
    # The RSS target is at the fixed rate; the maximum rate's peak is shown beside it.
    for r in PROXY_ROLES["vigil"]:
        v = rss_mb("vigil", "rate", r)
        if v is None:
            continue
        at_max = rss_mb("vigil", "max", r)
        beside = f"; {at_max:.1f} MB at maximum rate" if at_max is not None else ""
        w(f"- Vigil {r} peak RSS at {env.get('rate')} req/s at most {RSS_TARGET_MB:.0f} MB: **{verdict(v <= RSS_TARGET_MB)}** ({v:.1f} MB{beside})")
    # Against the HAProxy pair: at maximum rate the paired rounds decide when there are any
    # (their runs are seconds apart), the sequential phases otherwise.
    def against(paired_values, sequential):
        if not paired_values:
            return sequential, "sequential phases"
        how = f"median of {len(paired_values)} paired rounds"
        if sequential is not None:
            how += f"; sequential phases {sequential:.2f}"
        return statistics.median(paired_values), how

    def throughput_budget():
        """The CPU per request the two proxies could spend, at most, for the throughput
        target on this machine: every core busy, at the target rate, less what the load
        generator and the upstream spent per request in Vigil's own maximum-rate phase."""
        run, ph, ha = runs.get(("vigil", "max")), phases.get(("vigil", "max")), thr("haproxy", "max")
        if not run or not ph or not ha or not nproc or not run.get("requests"):
            return None
        per_req = nproc / (THROUGHPUT_TARGET * ha)
        driver = (run.get("loadgen_cpu_s", 0) + ph[2] / hz) / run["requests"]
        proxies = per_req - driver
        ours, theirs = sum_cpu("vigil", "max"), sum_cpu("haproxy", "max")
        if proxies <= 0:
            return (f"{THROUGHPUT_TARGET * ha:,.0f} req/s on {nproc} cores is {per_req * 1e6:.1f} µs of CPU per request, "
                    f"less than the load generator and upstream alone spend ({driver * 1e6:.1f} µs)")
        text = (f"{THROUGHPUT_TARGET * ha:,.0f} req/s on {nproc} cores with none idle is {per_req * 1e6:.1f} µs of CPU per request; "
                f"the load generator and upstream took {driver * 1e6:.1f} µs, leaving the two proxies {proxies * 1e6:.1f} µs")
        if ours is not None and theirs:
            text += (f" ({proxies * 1e4 / theirs:.2f}× what HAProxy's pair spent, {theirs:.2f} CPU s per 10k); "
                     f"Vigil's spent {ours * 100:.1f} µs")
        return text

    seq_thr = None if thr("haproxy", "max") in (None, 0) or thr("vigil", "max") is None else thr("vigil", "max") / thr("haproxy", "max")
    v, how = against(paired_thr, seq_thr)
    if v is not None:
        w(f"- Vigil throughput at maximum rate at least {THROUGHPUT_TARGET:.2f}× HAProxy's: **{verdict(v >= THROUGHPUT_TARGET)}** ({v:.2f}×, {how})")
        budget = throughput_budget()
        if budget:
            w(f"  - What that target asks of this machine: {budget}")
    a, b = sum_cpu("vigil", "rate"), sum_cpu("haproxy", "rate")
    v, how = against(rate_cpu, a / b if a is not None and b else None)
    if v is not None:
        w(f"- Vigil CPU per request (both proxies) at {env.get('rate')} req/s at most HAProxy's: **{verdict(v <= 1.0)}** ({v:.2f}×, {how})")
    a, b = sum_cpu("vigil", "max"), sum_cpu("haproxy", "max")
    v, how = against(paired_cpu, a / b if a is not None and b else None)
    if v is not None:
        w(f"- Vigil CPU per request (both proxies) at maximum rate at most HAProxy's: **{verdict(v <= 1.0)}** ({v:.2f}×, {how})")
    a, b = added_p99("vigil", "rate"), added_p99("haproxy", "rate")
    how = "sequential phases"
    if rate_paired:
        seq = f"; sequential phases {a / 1000:+.3f} against {b / 1000:+.3f}" if a is not None and b is not None else ""
        a, b = statistics.median(rate_added["vigil"]), statistics.median(rate_added["haproxy"])
        how = f"medians of {len(rate_paired)} paired rounds{seq}"
    if a is not None and b is not None:
        w(f"- Vigil added p99 at {env.get('rate')} req/s at most HAProxy's: **{verdict(a <= b)}** ({a / 1000:+.3f} ms against {b / 1000:+.3f} ms, {how})")
    default_distinct = [r for r in policy if r[0] == "default" and r[2] == "distinct requests"]
    if default_distinct:
        p99, each = default_distinct[0][4], default_distinct[0][7]
        how = f", median of {len(each)} rounds of 100,000; rounds {min(each):.2f}–{max(each):.2f} µs" if len(each) > 1 else ""
        w(f"- Policy decision p99 of the shipped default policy, requests that all differ, at most {POLICY_P99_TARGET_US:.0f} µs: **{verdict(p99 <= POLICY_P99_TARGET_US)}** ({p99:.2f} µs{how})")
    for r in PROXY_ROLES["vigil"]:
        anon = [rss_split_mb("vigil", mode, r) for mode in MODES]
        anon = [a[0] for a in anon if a is not None]
        if anon:
            v = max(anon)
            w(f"- Vigil {r} private (anonymous) memory at most {RSS_TARGET_MB:.0f} MB: **{verdict(v <= RSS_TARGET_MB)}** ({v:.1f} MB)")
    w("")

    # Where the CPU goes, from the profile step.
    profile = load_profile(out, hz)
    if profile:
        cols = [(p, r) for p in ("vigil", "haproxy") for r in PROXY_ROLES[p] if (p, r) in profile]
        w("## Where the CPU goes at maximum rate")
        w("")
        w("`perf record` sampled each proxy (all its threads, kernel included) while the load generator ran at maximum rate once more; "
          "each cell is the CPU per request that part of the proxy spent, in µs, and its share of the proxy's samples. "
          "A function is counted where its own code is; generic code that the compiler placed in `core` or `std` shows there.")
        w("")
        w("| part | " + " | ".join(f"{p} {r}" for p, r in cols) + " |")
        w("|---|" + "---:|" * len(cols))
        for part in PARTS:
            cells = []
            for c in cols:
                shares, us = profile[c]
                v = shares.get(part, 0.0)
                cells.append("–" if v < 0.0005 else f"{v * us:.1f} ({v * 100:.0f}%)")
            if any(x != "–" for x in cells):
                w(f"| {part} | " + " | ".join(cells) + " |")
        w("| **total** | " + " | ".join(f"**{profile[c][1]:.1f}**" for c in cols) + " |")
        w("")
        sums = {}
        for (p, r), (shares, us) in profile.items():
            kernel = shares.get(PARTS[0], 0.0) * us
            k, u = sums.get(p, (0.0, 0.0))
            sums[p] = (k + kernel, u + us - kernel)
        if "vigil" in sums and "haproxy" in sums:
            (vk, vu), (hk, hu) = sums["vigil"], sums["haproxy"]
            w(f"Both proxies together: Vigil {vu:.1f} µs per request outside the kernel and {vk:.1f} µs in it; "
              f"HAProxy {hu:.1f} µs and {hk:.1f} µs.")
            w("")

    # Conditions and cross-checks.
    w("## Conditions and cross-checks")
    w("")
    w("| path | phase | other processes' CPU (cores) | idle cores | 1-min load avg before → after | requests | service-time p99 | loadgen CPU s | upstream CPU s | control plane CPU s |")
    w("|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for path in PATHS:
        for mode in MODES:
            run = runs.get((path, mode))
            if not run:
                continue
            lb, la = loads.get((path, mode), ("?", "?"))
            st = run.get("service_time_us") or {}
            cp = procs.get((path, mode), {}).get("control-plane")
            cps = f"{cp[0] / hz:.2f}" if cp else "–"
            oc = other_cores(path, mode)
            ph = phases.get((path, mode))
            ups = f"{ph[2] / hz:.2f}" if ph else "–"
            lg = f"{run['loadgen_cpu_s']:.2f}" if "loadgen_cpu_s" in run else "–"
            ocs = "–" if oc is None else f"{oc:.2f}"
            ic = idle_cores(path, mode)
            ics = "–" if ic is None else f"{ic:.2f}"
            w(f"| {path} | {mode} | {ocs} | {ics} | {lb} → {la} | {run['requests']:,} | {fmt_us(st.get('p99'))} | {lg} | {ups} | {cps} |")
    w("")
    wrks = {p: wrk_rps(out, p) for p in PATHS}
    if any(v is not None for v in wrks.values()):
        w(
            "wrk cross-check of maximum throughput (same connection count, 1 thread): "
            + ", ".join(f"{p} {v:,.0f} req/s" for p, v in wrks.items() if v is not None)
            + "."
        )
        w("")
    if policy:
        w("## Policy decisions")
        w("")
        rounds = max((len(row[7]) for row in policy), default=0)
        w("Per decision, input building included, 100,000 decisions each on one core (`cargo bench -p vigil-proxy --bench policy`): the same request again and again (a bundle whose decisions depend on its input alone answers it from the decisions its thread remembers), and requests that all differ (a query parameter counts up), each evaluated in full."
          + (f" Each ran {rounds} rounds; the figures are the medians across rounds, beside the range of the rounds' p99." if rounds > 1 else ""))
        w("")
        w("| policy | evaluator | requests | p50 | p99 | p99.9 | mean | rounds' p99 |")
        w("|---|---|---|---:|---:|---:|---:|---:|")
        for name, evaluator, what, p50, p99, p999, mean, each in policy:
            spread = f"{min(each):.2f}–{max(each):.2f} µs" if each else "–"
            w(f"| {name} | {evaluator} | {what} | {p50:.2f} µs | {p99:.2f} µs | {p999:.2f} µs | {mean:.2f} µs | {spread} |")
        w("")
    handshakes = os.path.join(out, "handshakes.md")
    if os.path.exists(handshakes):
        w("## TLS handshakes: X25519 against the hybrid X25519MLKEM768")
        w("")
        w("Full mTLS 1.3 handshakes over loopback with Vigil's server config and ECDSA P-256 SVIDs, no resumption (`cargo bench -p vigil-identity --bench handshake`):")
        w("")
        previous = ""
        with open(handshakes) as f:
            for line in f.read().rstrip().splitlines():
                # A table needs a blank line before it to render as one.
                if line.startswith("|") and previous and not previous.startswith("|"):
                    w("")
                w(line)
                previous = line
        w("")
    errors = [(k, r["first_error"]) for k, r in runs.items() if r.get("errors")]
    for (path, mode), e in errors:
        w(f"- {path}/{mode}: first error: `{e}`")
    if errors:
        w("")

    with open(dest, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
