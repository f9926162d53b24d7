#!/usr/bin/env bash
# Regenerates proxy/link/hot.ld, the list of functions a serving vigil-proxy runs, which the
# release link places together at the start of the code (see proxy/build.rs).
#
#   bash bench/hot-functions.sh          # add what a serving pair runs to the list
#   bash bench/hot-functions.sh --fresh  # start the list over
#
# It builds the release proxy, runs a client and a server proxy with the control plane and
# the benchmark's upstream, and drives them at 1,000 req/s, at full rate and with a burst of
# new connections, scraping metrics and probes between. Two recordings name the functions:
#   - `perf record` samples of both proxies: what runs often;
#   - page faults on the proxies' code once they have released their start-up pages
#     (src/residency.rs): what runs at all. Each fault names one function; the kernel maps the
#     64 KiB around it, which hides its neighbours, so a second run after a rebuild finds more.
# The list is a layout hint: a stale or missing name costs resident memory, never behaviour.
# Needs perf (Debian: linux-perf) and root or perf_event_paranoid <= 1.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/target/release"
LIST="$ROOT/proxy/link/hot.ld"
WORK=$(mktemp -d /tmp/vigil-hot.XXXXXX)
log() { printf '\033[1m[hot-functions]\033[0m %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

FRESH=0
[ "${1:-}" = --fresh ] && FRESH=1
command -v perf >/dev/null || die "perf is missing: apt-get install linux-perf"
unset RUST_BACKTRACE # a captured backtrace per error would run symbolisation code

log "building the release proxy, control plane and load generator (a few minutes)"
(cd "$ROOT" && cargo build --release -p vigil-proxy -p vigil -p vigil-loadgen --bins) \
    || die "the release build failed"

mkdir -p "$WORK/data"
cat >"$WORK/mesh.yaml" <<'YAML'
trust_domain: vigil.local
certificate_lifetime: 24h
control_plane: { identity: "127.0.0.1:25412", discovery: "127.0.0.1:25410", dashboard: "127.0.0.1:25480" }
workloads:
  - name: client
    namespace: hot
    join_token: "0d5c7e2f61b84a9c93a1f0e5b2c4d6a8"
    app_port: 28481
    proxy: { inbound: "127.0.0.1:25506", outbound: "127.0.0.1:25501", admin: "127.0.0.1:25500", metrics: "127.0.0.1:25590" }
  - name: server
    namespace: hot
    join_token: "7a1e3b9d2c5f48e0a6b4c8d0f2e1a3b5"
    app_port: 28482
    proxy: { inbound: "127.0.0.1:25606", outbound: "127.0.0.1:25601", admin: "127.0.0.1:25600", metrics: "127.0.0.1:25690" }
services:
  - name: server
    namespace: hot
    endpoints: [server]
YAML
"$BIN/vigil-loadgen" upstream --listen 127.0.0.1:28482 --size 1024 --threads 1 >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
"$BIN/vigil" control-plane --mesh "$WORK/mesh.yaml" --data-dir "$WORK/data" >"$WORK/cp.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/data/trust-bundle.pem" ] && break; sleep 0.1; done
[ -s "$WORK/data/trust-bundle.pem" ] || die "the control plane did not start (see $WORK/cp.log)"
common=(--trust-domain vigil.local --trust-bundle "$WORK/data/trust-bundle.pem"
    --identity-addr 127.0.0.1:25412 --discovery-addr 127.0.0.1:25410)
"$BIN/vigil-proxy" "${common[@]}" --token 7a1e3b9d2c5f48e0a6b4c8d0f2e1a3b5 --inbound 127.0.0.1:25606 \
    --outbound 127.0.0.1:25601 --admin 127.0.0.1:25600 --metrics 127.0.0.1:25690 \
    --decision-log "$WORK/server-decisions.log" >"$WORK/server.log" 2>&1 &
SERVER=$!
PIDS+=($SERVER)
"$BIN/vigil-proxy" "${common[@]}" --token 0d5c7e2f61b84a9c93a1f0e5b2c4d6a8 --inbound 127.0.0.1:25506 \
    --outbound 127.0.0.1:25501 --admin 127.0.0.1:25500 --metrics 127.0.0.1:25590 \
    --decision-log "$WORK/client-decisions.log" >"$WORK/client.log" 2>&1 &
CLIENT=$!
PIDS+=($CLIENT)
for _ in $(seq 100); do
    curl -sf 127.0.0.1:25500/ready >/dev/null && curl -sf 127.0.0.1:25600/ready >/dev/null && break
    sleep 0.1
done
curl -sf 127.0.0.1:25500/ready >/dev/null || die "the proxies did not become ready (see $WORK/*.log)"

drive() {
    "$BIN/vigil-loadgen" load --target 127.0.0.1:25501 --host server --rate 1000 --duration 8s \
        --connections 32 --progress 0s >/dev/null
    for _ in 1 2 3; do
        for port in 25590 25690; do curl -sf "127.0.0.1:$port/metrics" >/dev/null; done
        for port in 25500 25600; do curl -sf "127.0.0.1:$port/ready" >/dev/null; done
        sleep 1
    done
    "$BIN/vigil-loadgen" load --target 127.0.0.1:25501 --host server --rate 0 --duration 8s \
        --connections 32 --progress 0s >/dev/null
    "$BIN/vigil-loadgen" load --target 127.0.0.1:25501 --host server --rate 0 --duration 3s \
        --connections 200 --progress 0s >/dev/null
}

log "waiting for the proxies to release their start-up pages"
sleep 5
log "recording page faults on the proxies' code while they serve (25 s)"
perf record -q -e page-faults -c 1 -d -o "$WORK/faults.data" -p "$SERVER,$CLIENT" 2>"$WORK/perf.log" &
PERF=$!
sleep 1
drive
kill -INT "$PERF"; wait "$PERF" || true
log "sampling where the proxies spend their time (25 s)"
perf record -q -F 20000 -o "$WORK/samples.data" -p "$SERVER,$CLIENT" 2>>"$WORK/perf.log" &
PERF=$!
sleep 1
drive
kill -INT "$PERF"; wait "$PERF" || true

for data in faults samples; do
    perf script -i "$WORK/$data.data" -F ip,sym,dso --no-demangle 2>/dev/null \
        | awk '$NF ~ /vigil-proxy\)$/ && $2 != "[unknown]" {print $2}' >"$WORK/$data.txt"
done
python3 - "$LIST" "$FRESH" "$WORK/samples.txt" "$WORK/faults.txt" <<'PY'
import collections, re, sys
out, fresh, samples, faults = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4]
# Rust's legacy mangling ends a name with a hash of the build; match any hash, so the list
# survives rebuilds. Other names (C, Rust v0 from std) are kept exact.
def pattern(name):
    return re.sub(r"17h[0-9a-f]{16}E$", "17h*", name)
counts = collections.Counter(pattern(l.strip()) for l in open(samples) if l.strip())
for l in open(faults):
    counts.setdefault(pattern(l.strip()), 0)
old = []
if not fresh:
    try:
        old = re.findall(r"^\s+\*\(\.text\.(\S+) ", open(out).read(), re.M)
    except FileNotFoundError:
        pass
# Most sampled first (they share cache lines and pages best), then the rest in a stable order.
names = [n for n, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
seen, ordered = set(), []
for n in names + old:
    if n and n not in seen and " " not in n:
        seen.add(n)
        ordered.append(n)
with open(out, "w") as f:
    f.write("/* Functions a serving vigil-proxy runs, placed together at the start of the code so\n")
    f.write("   that few pages of it stay resident. Generated by bench/hot-functions.sh; used by\n")
    f.write("   proxy/build.rs for release builds. A stale name costs memory, never behaviour. */\n")
    f.write("SECTIONS {\n  .text.serving : {\n")
    for n in ordered:
        f.write(f"    *(.text.{n} .text.*.{n})\n")
    f.write("  }\n} INSERT BEFORE .text;\n")
print(f"{len(ordered)} functions ({len(counts)} seen in this run, {len(ordered) - len(counts)} kept from the list)")
PY
log "wrote $LIST; rebuild (cargo build --release) to use it, and run this again to find more"
