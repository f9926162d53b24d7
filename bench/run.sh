#!/usr/bin/env bash
# Vigil side-by-side benchmark: direct vs Vigil (mTLS sidecar pair) vs HAProxy (mTLS pair),
# same upstream, same load generator, one after another. See bench/README.md.
#
#   bash bench/run.sh
#
# Environment (all optional):
#   BENCH_DURATION=20      seconds per measured phase
#   BENCH_WARMUP=3         seconds of unrecorded load before each measured phase
#   BENCH_RATE=1000        requests/s of the fixed-rate phase
#   BENCH_CONNECTIONS=32   keep-alive connections of the load generator (both phases)
#   BENCH_SIZE=1024        response body bytes
#   BENCH_PATHS="direct vigil haproxy"   which paths to measure, in order
#   BENCH_MODES="rate max" which phases to run per path
#   BENCH_WRK=5            seconds of a wrk cross-check of maximum throughput per path (0 = skip)
#   BENCH_PAIRED_ROUNDS=4  rounds of back-to-back maximum-rate runs, Vigil then HAProxy and the
#                          other way round, compared pair by pair (0 = skip)
#   BENCH_PAIRED_SECS=10   seconds of each of those runs
#   BENCH_RATE_ROUNDS=4    rounds of back-to-back fixed-rate runs of direct, Vigil and HAProxy
#                          (BENCH_PAIRED_SECS each, the order turned round every other round),
#                          compared round by round (0 = skip)
#   BENCH_PROFILE=10       seconds of a perf profile of each pair's proxies at maximum rate, for
#                          the report's "where the CPU goes" table (0 = skip; needs perf)
#   BENCH_POLICY=1         time policy decisions of the shipped policies (0 = skip)
#   BENCH_HANDSHAKES=1     time TLS handshakes, X25519 against X25519MLKEM768 (0 = skip)
#   BENCH_IDLE_CONNECTIONS=500  idle client connections held open to price one (0 = skip)
#   BENCH_LOADGEN_THREADS=1  BENCH_UPSTREAM_THREADS=1   runtime threads of loadgen/upstream
#   BENCH_HAPROXY_ALPN=h2  protocol between the two HAProxies (h2 like Vigil, or http/1.1)
#   BENCH_SKIP_BUILD=1     use the binaries already in target/release
#   BENCH_SKIP_INSTALL=1   do not apt-get install missing tools
#   BENCH_VIGIL_REV=...    revision label for RESULTS.md (default: git HEAD of this tree)
#   BENCH_NOTE=...         one line of free text copied into RESULTS.md
#   BENCH_WAIT_QUIET=0     before each phase, wait up to this many seconds for the machine to be
#                          quiet (other processes < 0.2 cores over 2 s); 0 = don't wait
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
BIN="$ROOT/target/release"

DURATION=${BENCH_DURATION:-20}
WARMUP=${BENCH_WARMUP:-3}
RATE=${BENCH_RATE:-1000}
CONNS=${BENCH_CONNECTIONS:-32}
SIZE=${BENCH_SIZE:-1024}
PATHS=${BENCH_PATHS:-"direct vigil haproxy"}
MODES=${BENCH_MODES:-"rate max"}
WRK_SECS=${BENCH_WRK:-5}
LOADGEN_THREADS=${BENCH_LOADGEN_THREADS:-1}
UPSTREAM_THREADS=${BENCH_UPSTREAM_THREADS:-1}
HAPROXY_ALPN=${BENCH_HAPROXY_ALPN:-h2}
IDLE_CONNS=${BENCH_IDLE_CONNECTIONS:-500}
PAIRED_ROUNDS=${BENCH_PAIRED_ROUNDS:-4}
PAIRED_SECS=${BENCH_PAIRED_SECS:-10}
RATE_ROUNDS=${BENCH_RATE_ROUNDS:-4}
PROFILE_SECS=${BENCH_PROFILE:-10}

# Ports (all on 127.0.0.1).
P_UPSTREAM=28082
P_CP_DISCOVERY=25010 P_CP_IDENTITY=25012 P_CP_DASHBOARD=25080
P_C_ADMIN=25100 P_C_OUT=25101 P_C_IN=25106 P_C_METRICS=25190
P_S_ADMIN=25200 P_S_OUT=25201 P_S_IN=25206 P_S_METRICS=25290
P_HA_FRONT=25301 P_HA_BACK=25306

STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT="$BENCH/out/run-$STAMP"
LOGS="$OUT/logs"
mkdir -p "$LOGS"
PROCS="$OUT/procs.tsv"   # path mode role pid cpu_ticks_delta vmhwm_kb load1_before load1_after rss_anon_kb rss_file_kb
printf 'path\tmode\trole\tpid\tcpu_ticks\tvmhwm_kb\tload1_before\tload1_after\trss_anon_kb\trss_file_kb\n' >"$PROCS"
PHASES="$OUT/phases.tsv" # path mode wall_s system_busy_ticks upstream_ticks
printf 'path\tmode\twall_s\tsystem_busy_ticks\tupstream_ticks\n' >"$PHASES"
PAIRED="$OUT/paired.tsv" # round path wall_s system_busy_ticks upstream_ticks proxy_ticks (both proxies)
printf 'round\tpath\twall_s\tsystem_busy_ticks\tupstream_ticks\tproxy_ticks\n' >"$PAIRED"
RATE_PAIRED="$OUT/rate-paired.tsv" # the same for the fixed-rate rounds
cp "$PAIRED" "$RATE_PAIRED"

T0=$(date +%s)
log() { printf '\033[1m[bench %4ss]\033[0m %s\n' "$(( $(date +%s) - T0 ))" "$*" >&2; }
die() {
    printf '\n\033[1;31m[bench] FAILED:\033[0m %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------
# processes we start, and their cleanup

declare -a PIDS=()
declare -A PNAME=()

start_bg() { # name cmd... ; sets STARTED_PID
    local name=$1
    shift
    "$@" >"$LOGS/$name.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    PNAME[$STARTED_PID]=$name
    log "started $name (pid $STARTED_PID): $*"
}

stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    PIDS=()
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then
        log "cleaning up ${#PIDS[@]} process(es)"
        stop_all
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

tail_log() { # name
    echo "----- last 30 lines of $LOGS/$1.log -----" >&2
    tail -n 30 "$LOGS/$1.log" >&2 || true
    echo "-----" >&2
}

assert_alive() { # pid
    if ! kill -0 "$1" 2>/dev/null; then
        tail_log "${PNAME[$1]}"
        die "${PNAME[$1]} (pid $1) exited unexpectedly"
    fi
}

port_free_or_die() {
    local p holder
    for p in "$@"; do
        if [ -n "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]; then
            holder=$(ss -Hltnp "sport = :$p" 2>/dev/null | sed -n 's/.*users:(\(.*\))/\1/p' | head -1)
            die "port 127.0.0.1:$p is busy (held by ${holder:-an unknown process}); stop it or change the port in bench/run.sh"
        fi
    done
}

wait_port() { # port pid [seconds]
    local port=$1 pid=$2 secs=${3:-15} i
    for i in $(seq 1 $((secs * 10))); do
        assert_alive "$pid"
        if [ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]; then return 0; fi
        sleep 0.1
    done
    tail_log "${PNAME[$pid]}"
    die "${PNAME[$pid]} never listened on port $port within ${secs}s"
}

wait_ready() { # admin_port pid [seconds]
    local port=$1 pid=$2 secs=${3:-30} i code
    for i in $(seq 1 $((secs * 5))); do
        assert_alive "$pid"
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ready" || true)
        if [ "$code" = 200 ]; then return 0; fi
        sleep 0.2
    done
    echo "last /ready answer: $(curl -s "http://127.0.0.1:$port/ready" || true)" >&2
    tail_log "${PNAME[$pid]}"
    die "${PNAME[$pid]} never became ready (GET 127.0.0.1:$port/ready) within ${secs}s"
}

smoke() { # path port
    local path=$1 port=$2 got
    got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 5 -H 'Host: server' "http://127.0.0.1:$port/" || true)
    if [ "$got" != "200 $SIZE" ]; then
        echo "curl -H 'Host: server' http://127.0.0.1:$port/ answered: '${got}', body: $(curl -s --max-time 5 -H 'Host: server' "http://127.0.0.1:$port/" | head -c 300)" >&2
        local pid
        for pid in "${PIDS[@]}"; do tail_log "${PNAME[$pid]}"; done
        die "smoke request through the $path path did not return 200 with $SIZE bytes"
    fi
    log "smoke request through $path: 200, $SIZE bytes"
}

cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
# seconds_since T0 [T1]: seconds from T0 to T1 (default now), both from `date +%s.%N`.
seconds_since() { awk -v a="$1" -v b="${2:-$(date +%s.%N)}" 'BEGIN {printf "%.3f", b - a}'; }
# load PORT RATE SECS LABEL PROGRESS: the load generator against a path (RATE 0: maximum
# rate, closed loop), its JSON summary in $OUT/LABEL.json.
load() {
    "$BIN/vigil-loadgen" load --target "127.0.0.1:$1" --host server --rate "$2" \
        --duration "$3s" --connections "$CONNS" --threads "$LOADGEN_THREADS" \
        --progress "$5" --label "$4" --out "$OUT/$4.json"
}
vmhwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
# The resident set now, split: private anonymous memory (heap, stacks) and file-backed
# pages (the binary's code and read-only data, which every process running the same
# binary shares: on a node, every sidecar of one image).
rss_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
load1() { cut -d' ' -f1 /proc/loadavg; }
# CPU ticks used by every process and kernel thread (utime stime cutime cstime; the fields
# after the command, which may itself hold spaces), to see how much CPU processes other than
# ours took during a phase and how much nobody used. /proc/stat's machine-wide counters are
# no use here: they are sampled on timer ticks, and the short bursts of a fixed-rate phase
# mostly fall between ticks (one phase there counted fewer busy ticks than the upstream
# process alone), while each process's own times add up its exact run time.
sys_busy() {
    cat /proc/[0-9]*/stat 2>/dev/null | awk '{ sub(/^.*\) /, ""); s += $12 + $13 + $14 + $15 } END { print s }'
}
threads_of() { awk '/^Threads:/ {print $2}' "/proc/$1/status"; }
THREADS_NOTE=""
established_to() { ss -Htn state established "dport = :$1" 2>/dev/null | wc -l; }

# ---------------------------------------------------------------------------------------
# one measured phase

# wait_quiet: on a shared machine, give others' builds a chance to finish before a phase.
wait_quiet() {
    local limit=${BENCH_WAIT_QUIET:-0} waited=0 a b cores
    [ "$limit" = 0 ] && return 0
    while :; do
        a=$(sys_busy)
        sleep 2
        b=$(sys_busy)
        cores=$(awk -v d=$((b - a)) -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", d / hz / 2}')
        if awk -v c="$cores" 'BEGIN {exit !(c < 0.2)}'; then
            [ "$waited" -gt 0 ] && log "machine quiet after ${waited}s (${cores} cores busy)"
            return 0
        fi
        waited=$((waited + 2))
        if [ "$waited" -ge "$limit" ]; then
            log "machine still busy (${cores} cores) after ${waited}s; measuring anyway"
            return 0
        fi
        [ $((waited % 20)) = 0 ] && log "waiting for a quiet machine (${cores} cores busy)"
    done
}

# measure PATH MODE PORT role=pid...
measure() {
    local path=$1 mode=$2 port=$3
    shift 3
    local rate=$RATE
    [ "$mode" = max ] && rate=0
    local spec role pid
    for spec in "$@"; do assert_alive "${spec#*=}"; done

    wait_quiet
    log "$path / $mode: ${WARMUP}s warm-up"
    load "$port" "$rate" "$WARMUP" "$path-$mode-warmup" 0s 2>>"$LOGS/loadgen.log" \
        || die "load generator failed during warm-up of $path/$mode (see $LOGS/loadgen.log)"

    declare -A before=()
    for spec in "$@"; do
        role=${spec%%=*} pid=${spec#*=}
        before[$role]=$(cpu_ticks "$pid")
        # Peak RSS of this phase, not of start-up: reset the high-water mark to the current
        # RSS (proc(5), clear_refs "5").
        echo 5 >"/proc/$pid/clear_refs" || die "cannot reset the peak RSS of $role (pid $pid)"
    done
    local l_before sb_before ub_before t_before
    l_before=$(load1)
    sb_before=$(sys_busy)
    ub_before=$(cpu_ticks "$UPSTREAM_PID")
    t_before=$(date +%s.%N)
    log "$path / $mode: measuring ${DURATION}s ($([ "$rate" = 0 ] && echo "closed loop, max rate" || echo "open loop, $rate req/s"), $CONNS connections)"
    load "$port" "$rate" "$DURATION" "$path-$mode" 5s \
        || die "load generator failed on $path/$mode"
    local l_after
    l_after=$(load1)
    printf '%s\t%s\t%s\t%s\t%s\n' "$path" "$mode" "$(seconds_since "$t_before")" \
        "$(( $(sys_busy) - sb_before ))" "$(( $(cpu_ticks "$UPSTREAM_PID") - ub_before ))" >>"$PHASES"
    for spec in "$@"; do
        role=${spec%%=*} pid=${spec#*=}
        assert_alive "$pid"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$path" "$mode" "$role" "$pid" \
            "$(( $(cpu_ticks "$pid") - ${before[$role]} ))" "$(vmhwm_kb "$pid")" "$l_before" "$l_after" \
            "$(rss_kb "$pid" RssAnon)" "$(rss_kb "$pid" RssFile)" >>"$PROCS"
    done
    if [ $# -eq 0 ]; then
        printf '%s\t%s\t-\t-\t0\t0\t%s\t%s\t0\t0\n' "$path" "$mode" "$l_before" "$l_after" >>"$PROCS"
    fi
    local errs
    errs=$(jq -r .errors "$OUT/$path-$mode.json")
    if [ "$errs" != 0 ]; then
        log "WARNING: $errs errors on $path/$mode; first: $(jq -r .first_error "$OUT/$path-$mode.json")"
    fi
}

wrk_check() { # path port
    [ "$WRK_SECS" = 0 ] && return 0
    log "$1: wrk cross-check, ${WRK_SECS}s max rate"
    wrk -t1 -c"$CONNS" -d"${WRK_SECS}s" -H 'Host: server' "http://127.0.0.1:$2/" >"$OUT/$1-wrk.txt" 2>&1 || true
    log "$1: wrk says $(grep -E 'Requests/sec' "$OUT/$1-wrk.txt" || echo 'nothing (see out file)')"
}

run_modes() { # path port role=pid...
    local path=$1 port=$2 mode
    shift 2
    smoke "$path" "$port"
    for mode in $MODES; do
        measure "$path" "$mode" "$port" "$@"
    done
    wrk_check "$path" "$port"
}

# ---------------------------------------------------------------------------------------
# setup

log "output: $OUT"
if [ "${BENCH_SKIP_INSTALL:-0}" != 1 ]; then
    missing=()
    for tool in haproxy wrk openssl jq curl; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if [ "$PROFILE_SECS" != 0 ] && ! command -v perf >/dev/null; then missing+=(linux-perf); fi
    if ((${#missing[@]})); then
        log "installing ${missing[*]} (apt-get)"
        apt-get update -qq >"$LOGS/apt.log" 2>&1 || { tail -20 "$LOGS/apt.log"; die "apt-get update failed"; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >>"$LOGS/apt.log" 2>&1 \
            || { tail -20 "$LOGS/apt.log"; die "apt-get install ${missing[*]} failed"; }
    fi
fi
for tool in haproxy wrk openssl jq curl python3 ss; do
    command -v "$tool" >/dev/null || die "$tool is required but not installed"
done
if [ "$PROFILE_SECS" != 0 ]; then
    command -v perf >/dev/null || die "perf is required for the profile (apt-get install linux-perf), or set BENCH_PROFILE=0"
fi

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    log "building release binaries (cargo build --release -p vigil -p vigil-proxy -p vigil-loadgen)"
    (cd "$ROOT" && cargo build --release -p vigil -p vigil-proxy -p vigil-loadgen) \
        || die "cargo build failed"
fi
for b in vigil vigil-proxy vigil-loadgen; do
    [ -x "$BIN/$b" ] || die "$BIN/$b is missing (build it, or unset BENCH_SKIP_BUILD)"
done

port_free_or_die $P_UPSTREAM $P_CP_DISCOVERY $P_CP_IDENTITY $P_CP_DASHBOARD \
    $P_C_ADMIN $P_C_OUT $P_C_IN $P_C_METRICS $P_S_ADMIN $P_S_OUT $P_S_IN $P_S_METRICS \
    $P_HA_FRONT $P_HA_BACK

# Context for RESULTS.md.
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc=$(nproc)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "mem=$(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
    echo "kernel=$(uname -r)"
    if [ -n "${BENCH_VIGIL_REV:-}" ]; then
        rev=$BENCH_VIGIL_REV
    else
        rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
        if [ -n "$(GIT_OPTIONAL_LOCKS=0 git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then rev="$rev (with uncommitted changes)"; fi
    fi
    echo "vigil=$rev"
    echo "haproxy=$(haproxy -v 2>&1 | head -1)"
    echo "openssl=$(openssl version)"
    echo "rustc=$(rustc --version 2>/dev/null || echo unknown)"
    echo "vigil_proxy_built=$(date -u -r "$BIN/vigil-proxy" '+%Y-%m-%d %H:%M UTC')"
    echo "duration=$DURATION"
    echo "warmup=$WARMUP"
    echo "rate=$RATE"
    echo "connections=$CONNS"
    echo "size=$SIZE"
    echo "loadgen_threads=$LOADGEN_THREADS"
    echo "upstream_threads=$UPSTREAM_THREADS"
    echo "haproxy_alpn=$HAPROXY_ALPN"
    echo "paired_rounds=$PAIRED_ROUNDS"
    echo "paired_secs=$PAIRED_SECS"
    echo "rate_rounds=$RATE_ROUNDS"
    echo "load1_start=$(load1)"
    echo "note=${BENCH_NOTE:-}"
} >"$OUT/env.txt"

log "starting the upstream (${SIZE}-byte responses) on 127.0.0.1:$P_UPSTREAM"
start_bg upstream "$BIN/vigil-loadgen" upstream --listen "127.0.0.1:$P_UPSTREAM" --size "$SIZE" --threads "$UPSTREAM_THREADS"
UPSTREAM_PID=$STARTED_PID
wait_port $P_UPSTREAM "$UPSTREAM_PID"

# ---------------------------------------------------------------------------------------
# paths

run_direct() {
    log "=== path: direct (loadgen → upstream)"
    run_modes direct $P_UPSTREAM
    RUNNING[direct]="$P_UPSTREAM"
}

# idle_cost PATH PORT ROLE=PID...: the private memory each proxy holds per idle client
# connection. Opens IDLE_CONNS keep-alive connections to PORT, sends one request on each
# and reads its answer (so every per-connection structure exists), holds them idle, and
# compares each proxy's RssAnon before and after.
idle_cost() {
    local path=$1 port=$2
    shift 2
    [ "$IDLE_CONNS" -gt 0 ] || return 0
    local spec before=() ready="$OUT/$path-idle.ready"
    for spec in "$@"; do before+=("$(rss_kb "${spec#*=}" RssAnon)"); done
    log "$path: holding $IDLE_CONNS idle connections to price one"
    python3 - "$port" "$IDLE_CONNS" "$ready" <<'PY' 2>>"$LOGS/idle-$path.log" &
import asyncio, pathlib, sys

port, n, ready = int(sys.argv[1]), int(sys.argv[2]), pathlib.Path(sys.argv[3])

async def one():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET / HTTP/1.1\r\nHost: server\r\n\r\n")
    await w.drain()
    head = (await r.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    if not head.startswith("http/1.1 200"):
        raise SystemExit(f"not 200 on an idle-cost connection: {head.splitlines()[0]}")
    length = next(int(l.split(":", 1)[1]) for l in head.split("\r\n") if l.startswith("content-length:"))
    await r.readexactly(length)
    return r, w

async def main():
    held = []
    while len(held) < n:
        held += await asyncio.gather(*(one() for _ in range(min(50, n - len(held)))))
    ready.write_text(str(len(held)))
    await asyncio.sleep(3600)  # held idle until the script is stopped

asyncio.run(main())
PY
    local holder=$! i
    for i in $(seq 600); do [ -s "$ready" ] && break; kill -0 "$holder" 2>/dev/null || break; sleep 0.1; done
    [ -s "$ready" ] || { kill "$holder" 2>/dev/null; die "could not open $IDLE_CONNS idle connections to $path (see $LOGS/idle-$path.log)"; }
    sleep 2
    i=0
    for spec in "$@"; do
        printf '%s\t%s\t%s\t%s\t%s\n' "$path" "${spec%%=*}" "$IDLE_CONNS" "${before[$i]}" \
            "$(rss_kb "${spec#*=}" RssAnon)" >>"$OUT/idle.tsv"
        i=$((i + 1))
    done
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
}

run_vigil() {
    log "=== path: vigil (loadgen → client proxy → mTLS/h2 → server proxy → upstream)"
    local dir="$OUT/vigil"
    mkdir -p "$dir/data"
    cat >"$dir/mesh.yaml" <<EOF
trust_domain: vigil.local
certificate_lifetime: 24h
control_plane: { identity: "127.0.0.1:$P_CP_IDENTITY", discovery: "127.0.0.1:$P_CP_DISCOVERY", dashboard: "127.0.0.1:$P_CP_DASHBOARD" }
workloads:
  - name: client
    namespace: bench
    join_token: "2485dd1c51cc9967974bb342af6eb3e0"
    app_port: 28081
    proxy: { inbound: "127.0.0.1:$P_C_IN", outbound: "127.0.0.1:$P_C_OUT", admin: "127.0.0.1:$P_C_ADMIN", metrics: "127.0.0.1:$P_C_METRICS" }
  - name: server
    namespace: bench
    join_token: "e65ec9ae443090c9f12ec221bdc8f8a2"
    app_port: $P_UPSTREAM
    proxy: { inbound: "127.0.0.1:$P_S_IN", outbound: "127.0.0.1:$P_S_OUT", admin: "127.0.0.1:$P_S_ADMIN", metrics: "127.0.0.1:$P_S_METRICS" }
services:
  - name: server
    namespace: bench
    endpoints: [server]
EOF
    start_bg control-plane "$BIN/vigil" control-plane --mesh "$dir/mesh.yaml" --data-dir "$dir/data" --reload-interval 1s
    local cp=$STARTED_PID i
    for i in $(seq 1 150); do
        assert_alive "$cp"
        [ -s "$dir/data/trust-bundle.pem" ] && [ -n "$(ss -Hltn "sport = :$P_CP_DISCOVERY")" ] && break
        sleep 0.1
    done
    [ -s "$dir/data/trust-bundle.pem" ] || { tail_log control-plane; die "control plane wrote no trust bundle within 15s"; }
    wait_port $P_CP_IDENTITY "$cp"

    local common=(--trust-domain vigil.local --trust-bundle "$dir/data/trust-bundle.pem"
        --identity-addr "127.0.0.1:$P_CP_IDENTITY" --discovery-addr "127.0.0.1:$P_CP_DISCOVERY")
    # Newer proxies also serve Prometheus metrics (default 0.0.0.0:15090): give each its own port.
    local s_metrics=() c_metrics=()
    if "$BIN/vigil-proxy" --help 2>/dev/null | grep -q -- '--metrics'; then
        s_metrics=(--metrics "127.0.0.1:$P_S_METRICS")
        c_metrics=(--metrics "127.0.0.1:$P_C_METRICS")
    fi
    start_bg vigil-server-proxy "$BIN/vigil-proxy" "${common[@]}" --token e65ec9ae443090c9f12ec221bdc8f8a2 \
        --inbound "127.0.0.1:$P_S_IN" --outbound "127.0.0.1:$P_S_OUT" --admin "127.0.0.1:$P_S_ADMIN" "${s_metrics[@]}" \
        --decision-log "$LOGS/vigil-server-decisions.log"
    local sp=$STARTED_PID
    start_bg vigil-client-proxy "$BIN/vigil-proxy" "${common[@]}" --token 2485dd1c51cc9967974bb342af6eb3e0 \
        --inbound "127.0.0.1:$P_C_IN" --outbound "127.0.0.1:$P_C_OUT" --admin "127.0.0.1:$P_C_ADMIN" "${c_metrics[@]}" \
        --decision-log "$LOGS/vigil-client-decisions.log"
    local clp=$STARTED_PID
    wait_ready $P_S_ADMIN "$sp"
    wait_ready $P_C_ADMIN "$clp"
    log "both Vigil proxies ready (threads: client $(threads_of "$clp"), server $(threads_of "$sp"))"
    THREADS_NOTE+="Vigil client proxy $(threads_of "$clp"), server proxy $(threads_of "$sp"); "
    run_modes vigil $P_C_OUT "client-proxy=$clp" "server-proxy=$sp" "control-plane=$cp"
    echo "vigil_peer_connections=$(established_to $P_S_IN)" >>"$OUT/env.txt"
    log "Vigil: $(established_to $P_S_IN) mTLS connection(s) open from client proxy to server proxy"
    RUNNING[vigil]="$P_C_OUT client-proxy=$clp server-proxy=$sp"
    FINISH+=("finish_vigil $clp $sp $cp")
}

# finish_vigil CLIENT SERVER CONTROL-PLANE: the idle-connection price, the metrics, the end.
finish_vigil() {
    local clp=$1 sp=$2 cp=$3
    # After the peer-connection count: 500 requests at once open more peer connections.
    idle_cost vigil $P_C_OUT "client-proxy=$clp" "server-proxy=$sp"
    # Proxies too old to serve metrics leave these files empty.
    curl -s "http://127.0.0.1:$P_C_METRICS/metrics" >"$OUT/vigil-client-metrics.txt" 2>/dev/null || true
    curl -s "http://127.0.0.1:$P_S_METRICS/metrics" >"$OUT/vigil-server-metrics.txt" 2>/dev/null || true
    stop_pid "$clp"
    stop_pid "$sp"
    stop_pid "$cp"
}

run_haproxy() {
    log "=== path: haproxy (loadgen → front haproxy → mTLS/$HAPROXY_ALPN → back haproxy → upstream)"
    local dir="$OUT/haproxy"
    mkdir -p "$dir"
    log "generating an ECDSA P-256 CA and certificates with openssl"
    (
        set -e
        cd "$dir"
        openssl ecparam -name prime256v1 -genkey -noout -out ca.key
        openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=bench-ca" -out ca.pem \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        for who in server client; do
            openssl ecparam -name prime256v1 -genkey -noout -out "$who.key"
            openssl req -new -key "$who.key" -subj "/CN=$who.bench" -out "$who.csr"
            if [ "$who" = server ]; then eku=serverAuth; else eku=clientAuth; fi
            printf 'subjectAltName=DNS:%s.bench,URI:spiffe://vigil.local/ns/bench/sa/%s\nextendedKeyUsage=%s\nkeyUsage=critical,digitalSignature\n' \
                "$who" "$who" "$eku" >"$who.ext"
            openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 \
                -extfile "$who.ext" -out "$who.crt"
            cat "$who.crt" "$who.key" >"$who.pem"
        done
    ) >"$LOGS/openssl.log" 2>&1 || { tail -20 "$LOGS/openssl.log"; die "certificate generation failed"; }

    local alpn_server="" alpn_bind=""
    if [ "$HAPROXY_ALPN" = h2 ]; then
        alpn_server="alpn h2"
        alpn_bind="alpn h2,http/1.1"
    fi
    cat >"$dir/back.cfg" <<EOF
global
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3
defaults
    mode http
    option http-keep-alive
    timeout connect 3s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
frontend mtls_in
    bind 127.0.0.1:$P_HA_BACK ssl crt $dir/server.pem ca-file $dir/ca.pem verify required ssl-min-ver TLSv1.3 $alpn_bind
    default_backend app
backend app
    http-reuse always
    server upstream 127.0.0.1:$P_UPSTREAM
EOF
    cat >"$dir/front.cfg" <<EOF
global
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3
defaults
    mode http
    option http-keep-alive
    timeout connect 3s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
frontend plain_in
    bind 127.0.0.1:$P_HA_FRONT
    default_backend mtls_out
backend mtls_out
    http-reuse always
    server back 127.0.0.1:$P_HA_BACK ssl verify required ca-file $dir/ca.pem crt $dir/client.pem sni str(server.bench) verifyhost server.bench ssl-min-ver TLSv1.3 $alpn_server
EOF
    local cfg
    for cfg in back front; do
        haproxy -c -f "$dir/$cfg.cfg" >"$LOGS/haproxy-$cfg-check.log" 2>&1 \
            || { cat "$LOGS/haproxy-$cfg-check.log" >&2; die "haproxy rejected $dir/$cfg.cfg"; }
    done
    # -db: foreground, no master-worker, so the pid we hold is the process doing the work.
    start_bg haproxy-back haproxy -db -f "$dir/back.cfg"
    local bp=$STARTED_PID
    start_bg haproxy-front haproxy -db -f "$dir/front.cfg"
    local fp=$STARTED_PID
    wait_port $P_HA_BACK "$bp"
    wait_port $P_HA_FRONT "$fp"
    log "HAProxy threads: front $(threads_of "$fp"), back $(threads_of "$bp")"
    THREADS_NOTE+="HAProxy front $(threads_of "$fp"), back $(threads_of "$bp") (OS threads per process); "
    run_modes haproxy $P_HA_FRONT "front-haproxy=$fp" "back-haproxy=$bp"
    echo "haproxy_peer_connections=$(established_to $P_HA_BACK)" >>"$OUT/env.txt"
    log "HAProxy: $(established_to $P_HA_BACK) mTLS connection(s) open from front to back"
    RUNNING[haproxy]="$P_HA_FRONT front-haproxy=$fp back-haproxy=$bp"
    FINISH+=("finish_haproxy $fp $bp")
}

# finish_haproxy FRONT BACK
finish_haproxy() {
    local fp=$1 bp=$2
    idle_cost haproxy $P_HA_FRONT "front-haproxy=$fp" "back-haproxy=$bp"
    stop_pid "$fp"
    stop_pid "$bp"
}

# paired_slice ROUND PATH RATE: one run of PAIRED_SECS at RATE (0: maximum rate) on a path
# that is up, recorded in paired.tsv (maximum rate) or rate-paired.tsv.
paired_slice() {
    local round=$1 path=$2 rate=$3 port specs spec pid before=0 after=0 sb ub t
    local label="paired-$round-$path" tsv=$PAIRED
    read -r port specs <<<"${RUNNING[$path]}"
    # A fixed-rate round's p99 is the 100th-worst of 10,000 requests: a path that has sat idle
    # since its own phases (peer connections to open again, caches gone cold) would spend its
    # first second on that. One second of unrecorded load first, as the phases have.
    if [ "$rate" != 0 ]; then
        label="rate-$label"
        tsv=$RATE_PAIRED
        load "$port" "$rate" 1 "$label-warmup" 0s 2>>"$LOGS/loadgen.log" \
            || die "load generator failed warming up $label (see $LOGS/loadgen.log)"
    fi
    for spec in $specs; do
        pid=${spec#*=}
        assert_alive "$pid"
        before=$((before + $(cpu_ticks "$pid")))
    done
    sb=$(sys_busy)
    ub=$(cpu_ticks "$UPSTREAM_PID")
    t=$(date +%s.%N)
    load "$port" "$rate" "$PAIRED_SECS" "$label" 0s 2>>"$LOGS/loadgen.log" \
        || die "load generator failed in $label (see $LOGS/loadgen.log)"
    for spec in $specs; do after=$((after + $(cpu_ticks "${spec#*=}"))); done
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$path" \
        "$(seconds_since "$t")" \
        "$(( $(sys_busy) - sb ))" "$(( $(cpu_ticks "$UPSTREAM_PID") - ub ))" "$((after - before))" >>"$tsv"
    log "$label: $(jq -r '"\(.throughput_rps | floor) req/s, p99 \(.latency_us.p99 | floor) µs"' "$OUT/$label.json")"
}

# alternating_rounds ROUNDS RATE PATH...: ROUNDS rounds of paired_slice at RATE over the paths,
# in the order given in odd rounds and the reverse in even ones (ABBA), so neither path is
# always the one that runs first.
alternating_rounds() {
    local rounds=$1 rate=$2 round k n
    shift 2
    local paths=("$@")
    n=${#paths[@]}
    for round in $(seq 1 "$rounds"); do
        for ((k = 0; k < n; k++)); do
            paired_slice "$round" "${paths[round % 2 ? k : n - 1 - k]}" "$rate"
        done
    done
}

# The maximum-rate phases above run one path after the other, and the machine's speed drifts
# between them. Paired rounds put Vigil's and HAProxy's runs back to back, alternating which
# goes first, so each round's ratio compares the two under the same conditions.
paired_rounds() {
    [ "$PAIRED_ROUNDS" -gt 0 ] && [ -n "${RUNNING[vigil]:-}" ] && [ -n "${RUNNING[haproxy]:-}" ] || return 0
    log "=== paired rounds: $PAIRED_ROUNDS × (Vigil, HAProxy) at maximum rate, ${PAIRED_SECS}s each"
    alternating_rounds "$PAIRED_ROUNDS" 0 vigil haproxy
}

# The fixed-rate phases drift the same way, and their tail latency more than anything: an
# HAProxy pair's added p99 at 1,000 req/s ran from 0.18 to 0.70 ms over three runs of the
# same script. These rounds run the three paths back to back at the fixed rate (the direct
# path gives each round its own baseline), turning the order round every other round.
rate_rounds() {
    [ "$RATE_ROUNDS" -gt 0 ] && [ -n "${RUNNING[direct]:-}" ] && [ -n "${RUNNING[vigil]:-}" ] \
        && [ -n "${RUNNING[haproxy]:-}" ] || return 0
    log "=== paired rounds: $RATE_ROUNDS × (direct, Vigil, HAProxy) at $RATE req/s, ${PAIRED_SECS}s each"
    alternating_rounds "$RATE_ROUNDS" "$RATE" vigil haproxy direct
}

# profile_pairs: where each proxy's CPU goes at maximum rate. For each pair still up, the load
# generator runs PROFILE_SECS at maximum rate while `perf record` samples each proxy (all its
# threads, kernel included) for the middle of that time; `perf report` then lists the share of
# samples per binary and function, which report.py sorts into parts (kernel, TLS, HTTP/2, ...).
profile_pairs() {
    [ "$PROFILE_SECS" != 0 ] || return 0
    local path port specs spec pids=() secs=$((PROFILE_SECS > 4 ? PROFILE_SECS - 2 : PROFILE_SECS))
    for path in vigil haproxy; do
        [ -n "${RUNNING[$path]:-}" ] || continue
        read -r port specs <<<"${RUNNING[$path]}"
        log "=== profile: $path at maximum rate, perf on each proxy for ${secs}s"
        load "$port" 0 "$PROFILE_SECS" "profile-$path" 0s 2>>"$LOGS/loadgen.log" &
        local lg=$! before=()
        sleep 1
        pids=()
        for spec in $specs; do before+=("$(cpu_ticks "${spec#*=}")"); done
        local t0 t1
        t0=$(date +%s.%N)
        for spec in $specs; do
            perf record -q -F 999 -o "$OUT/perf-$path-${spec%%=*}.data" -p "${spec#*=}" -- sleep "$secs" \
                >>"$LOGS/perf.log" 2>&1 &
            pids+=($!)
        done
        wait "${pids[@]}" || log "perf record failed on $path (see $LOGS/perf.log); its profile is left out"
        local i=0
        t1=$(date +%s.%N)
        for spec in $specs; do
            printf '%s\t%s\t%s\t%s\n' "$path" "${spec%%=*}" "$(( $(cpu_ticks "${spec#*=}") - before[i] ))" \
                "$(seconds_since "$t0" "$t1")" >>"$OUT/profile.tsv"
            i=$((i + 1))
        done
        wait "$lg" || die "load generator failed while profiling $path (see $LOGS/loadgen.log)"
        for spec in $specs; do
            [ -s "$OUT/perf-$path-${spec%%=*}.data" ] || continue
            perf report -i "$OUT/perf-$path-${spec%%=*}.data" --no-children --sort dso,sym -g none -q --stdio \
                >"$OUT/profile-$path-${spec%%=*}.txt" 2>>"$LOGS/perf.log" || true
            rm -f "$OUT/perf-$path-${spec%%=*}.data"
        done
    done
}

# Every path stays up until the paired rounds are done (an idle pair costs the others no CPU
# worth counting; the conditions table shows what other processes used).
declare -A RUNNING=()
FINISH=()
for path in $PATHS; do
    case "$path" in
        direct) run_direct ;;
        vigil) run_vigil ;;
        haproxy) run_haproxy ;;
        *) die "unknown path '$path' in BENCH_PATHS (use direct, vigil, haproxy)" ;;
    esac
done
rate_rounds
paired_rounds
profile_pairs
for step in "${FINISH[@]}"; do
    $step
done

# Policy decision latency, input building included, of the shipped policies
# (proxy/benches/policy.rs): its percentile pass only (the filter matches none of its
# criterion benchmarks). BENCH_POLICY=0 skips it.
if [ "${BENCH_POLICY:-1}" != 0 ]; then
    log "timing policy decisions (cargo bench -p vigil-proxy --bench policy)"
    (cd "$ROOT" && cargo bench -q -p vigil-proxy --bench policy -- percentiles-only) >/dev/null 2>"$OUT/logs/policy.log" \
        || log "the policy bench failed; see $OUT/logs/policy.log"
    grep -E ' p50 .* p99 ' "$OUT/logs/policy.log" >"$OUT/policy.txt" || true
fi

# Handshake cost of the hybrid post-quantum key exchange, on the same machine after the
# traffic runs (identity/benches/handshake.rs); BENCH_HANDSHAKES=0 skips it.
if [ "${BENCH_HANDSHAKES:-1}" != 0 ]; then
    log "measuring TLS handshakes (cargo bench -p vigil-identity --bench handshake)"
    (cd "$ROOT" && cargo bench -q -p vigil-identity --bench handshake) >"$OUT/handshakes.md" 2>"$OUT/logs/handshakes.log" \
        || log "the handshake bench failed; see $OUT/logs/handshakes.log"
fi

log "writing bench/RESULTS.md"
echo "threads=${THREADS_NOTE%; }" >>"$OUT/env.txt"
python3 "$BENCH/report.py" "$OUT" "$BENCH/RESULTS.md" || die "report generation failed"
ln -sfn "run-$STAMP" "$BENCH/out/latest"
log "done in $(( $(date +%s) - T0 ))s; raw data in $OUT"
