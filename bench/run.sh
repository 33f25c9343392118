#!/usr/bin/env bash
# The project's benchmark: throughput, latency, memory, reload and recovery, in one run.
#
#   bench/run.sh [--wait-idle[=SECONDS]] [--extra] [--no-build] [--duration S] [--warmup S]
#                [--connections N] [--wrk-threads N] [--compare BIN] [--out FILE] [--latency-only]
#                [--prefork WxT] [--open-duration S] [--open-rates LIST] [--open-peak RPS]
#                [--open-search N] [--no-open-loop] [--shapes LIST]
#
# Builds the release binary, installs wrk (and jq, curl, ss) from Debian and oha from crates.io if missing,
# starts a throwaway PostgreSQL (own temporary directory, free port, as the `postgres` user when run as
# root), migrates it, and measures on 127.0.0.1 only:
#   1. GET /healthz, GET /readyz, POST /api/items: prefork (master + 2 workers, 1 thread each) against the
#      single-process baseline (--workers 0, one multi-thread runtime with 2 threads): req/s, p50, p99,
#      errors and the ratio prefork/baseline; GET /healthz also against bare hyper (bench/bare-hyper: the
#      same answer from a minimal tokio + hyper server, 2 threads); then GET /healthz with access logs on.
#      Closed loop (wrk: each connection sends its next request when the answer arrives), at saturation.
#      For each run also the servers' scheduling: time their threads waited for a CPU while runnable
#      (/proc/PID/task/TID/schedstat) and context switches, per request; and how the client's connections
#      and the requests sent on them were spread over the server's processes and over the connections.
#   2. Open loop: GET /healthz at fixed offered rates (--open-rates, percent of the highest closed-loop
#      /healthz rate of the three servers in this run) with oha, which measures each request from the time
#      it was due to be sent (coordinated omission corrected): p50, p99, p99.9 of the three servers side by
#      side, alternating, and the highest rate each sustains with p99 under 1 ms (bisection).
#   3. RSS and PSS of each server's process tree, idle (just started) and loaded (peak during the runs).
#   4. A HUP reload under load: failed requests, throughput during the reload window against steady state.
#   5. Worker replacement: kill -9 a worker, time until the master reports its replacement ready.
#   6. Heartbeat timeout: SIGSTOP a worker with timeout = 2 s, time until it is killed.
# Prints one table and writes it, with the machine and the details, to bench/results.md (or --out).
# Every process it starts is stopped by pid on exit; every run is bounded in time. docs/performance.md
# explains the numbers and the goals.
#
# Options:
#   --wait-idle[=S]   first wait (at most S seconds, default 600) for the 1-minute load average to drop
#                     below 0.8; runs anyway after that and says so in the results.
#   --extra           also measure configuration variants (threads, workers, keep-alive, connections, pool
#                     size, log level); adds about a minute and a half (1 s warm-up, 5 s measured each).
#   --no-build        use target/release/supervisor as it is.
#   --compare BIN     also measure GET /healthz with access logs on against another build of the server (for
#                     example one built from an earlier commit), prefork, in COMPARE_ROUNDS (3) alternating
#                     pairs, and report the ratio of the two: a before/after measured in the same run. Adds
#                     about a minute. COMPARE_ACCESS_LOG=false compares with access logs off instead.
#   --latency-only    only GET /healthz: the closed-loop rows of the three servers, the open loop, and
#                     --compare, --shapes, --extra when given (no /readyz, POST, scrapes, reload,
#                     replacement, heartbeat, access logs).
#   --prefork WxT     the prefork server's workers and threads per worker (default 2x1).
#   --open-duration S seconds per open-loop point (default 5); --no-open-loop skips the phase.
#   --open-rates LIST offered rates in percent of the peak, comma-separated (default 25,50,75,90).
#   --open-peak RPS   the rate the percentages refer to, instead of the closed-loop peak of this run (to
#                     compare runs at the same absolute rates).
#   --open-search N   bisection steps for the highest rate with p99 under OPEN_SLO_MS (1) ms (default 3;
#                     0: only the points of --open-rates).
#   --shapes LIST     also compare prefork servers of other shapes or builds on GET /healthz, each item
#                     WxT or WxT@BIN (workers x threads, optionally another build), e.g. 2x1,4x1,2x2 or
#                     2x1,2x1@/tmp/old/supervisor: all of them and bare hyper in SHAPE_ROUNDS (3)
#                     alternating rounds, closed loop at saturation and (unless --no-open-loop) open loop
#                     at SHAPE_PCT (50)% of the peak; medians, and of the ratios to bare hyper's figure
#                     of the same round.
# Environment: BENCH_BIN=PATH measures that binary instead (no build), e.g. one built with other profile
# settings; BARE_BIN=PATH the bare hyper server (default target/release/bare-hyper, built with the rest);
# PG_BIN=DIR takes the PostgreSQL server binaries from DIR; OHA=PATH the oha binary; OHA_THREADS its
# runtime threads (default: oha's, one per core).
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BENCH_BIN:-"$ROOT/target/release/supervisor"}  # BENCH_BIN: measure another build (implies --no-build)
BARE_BIN=${BARE_BIN:-"$ROOT/target/release/bare-hyper"}  # the yardstick: bench/bare-hyper
LUA="$ROOT/bench/wrk.lua"
OUT="$ROOT/bench/results.md"
DURATION=8          # seconds per measured wrk run
WARMUP=2            # seconds of unmeasured load before each measured run
EXTRA_DURATION=${EXTRA_DURATION:-5}    # the same, for the configuration variants (--extra)
EXTRA_WARMUP=${EXTRA_WARMUP:-1}
CONNS=64            # wrk connections
WRK_THREADS=2       # wrk threads
RELOAD_DURATION=10  # seconds of load in the reload run; HUP at RELOAD_AT
RELOAD_AT=5
REPLACEMENTS=5      # kill -9 samples
TIMEOUT_SAMPLES=4   # SIGSTOP samples
HB_TIMEOUT=2        # timeout (s) of the server used for the heartbeat samples
WAIT_IDLE=0
WAITED=0
EXTRA=0
BUILD=1
COMPARE_BIN=""
COMPARE_ROUNDS=${COMPARE_ROUNDS:-3}
COMPARE_ACCESS_LOG=${COMPARE_ACCESS_LOG:-true}
LATENCY_ONLY=0
PREFORK_WORKERS=2   # --prefork WxT
PREFORK_THREADS=1
OPEN_LOOP=1
OPEN_DURATION=5     # seconds per open-loop point
OPEN_RATES=25,50,75,90  # percent of OPEN_PEAK
OPEN_PEAK=""        # req/s; default: the highest closed-loop /healthz rate of this run
OPEN_SEARCH=3       # bisection steps for the highest rate with p99 <= OPEN_SLO_MS
OPEN_SLO_MS=${OPEN_SLO_MS:-1}
OHA_VERSION=1.16.0  # installed with cargo when no suitable oha is found
SHAPES=""           # --shapes
SHAPE_ROUNDS=${SHAPE_ROUNDS:-3}
SHAPE_PCT=${SHAPE_PCT:-50}

while [ $# -gt 0 ]; do
    case "$1" in
        --wait-idle) WAIT_IDLE=600 ;;
        --wait-idle=*) WAIT_IDLE=${1#*=} ;;
        --extra) EXTRA=1 ;;
        --no-build) BUILD=0 ;;
        --compare) COMPARE_BIN=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --connections) CONNS=$2; shift ;;
        --wrk-threads) WRK_THREADS=$2; shift ;;
        --out) OUT=$2; shift ;;
        --latency-only) LATENCY_ONLY=1 ;;
        --prefork) [[ "$2" =~ ^([1-9][0-9]*)x([1-9][0-9]*)$ ]] || { echo "run.sh: --prefork WORKERSxTHREADS, e.g. 2x1" >&2; exit 2; }
                   PREFORK_WORKERS=${BASH_REMATCH[1]}; PREFORK_THREADS=${BASH_REMATCH[2]}; shift ;;
        --open-duration) OPEN_DURATION=$2; shift ;;
        --open-rates) OPEN_RATES=$2; shift ;;
        --open-peak) OPEN_PEAK=$2; shift ;;
        --open-search) OPEN_SEARCH=$2; shift ;;
        --no-open-loop) OPEN_LOOP=0 ;;
        --shapes) SHAPES=$2; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
num() { [[ "$1" =~ ^[0-9]+([.][0-9]+)?$ ]]; }
for v in "$DURATION" "$WARMUP" "$OPEN_DURATION" "$OPEN_SEARCH" "$OPEN_SLO_MS" ${OPEN_PEAK:+"$OPEN_PEAK"} ${OPEN_RATES//,/ }; do
    num "$v" || { echo "run.sh: not a number: $v (see --help)" >&2; exit 2; }
done
[[ "$OPEN_DURATION" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --open-duration takes whole seconds" >&2; exit 2; }
[[ "$OPEN_SEARCH" =~ ^[0-9]+$ ]] || { echo "run.sh: --open-search takes a whole number" >&2; exit 2; }
if ! [[ "$SHAPE_ROUNDS" =~ ^[1-9][0-9]*$ ]] || ! num "$SHAPE_PCT"; then echo "run.sh: SHAPE_ROUNDS, SHAPE_PCT: numbers" >&2; exit 2; fi
for v in ${SHAPES//,/ }; do
    [[ "$v" =~ ^[0-9]+x[1-9][0-9]*(@.+)?$ ]] || { echo "run.sh: --shapes takes WxT or WxT@BIN items, e.g. 2x1,4x1 (not $v)" >&2; exit 2; }
done

START_US=${EPOCHREALTIME//[.,]/}

# ---------------------------------------------------------------------------------------------------------
# Functions

log() { printf '[%6.1fs] %s\n' "$(awk -v a="$START_US" -v b="${EPOCHREALTIME//[.,]/}" 'BEGIN{print (b-a)/1e6}')" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now_us() { echo "${EPOCHREALTIME//[.,]/}"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

LOADS=()  # "phase: load averages", for the results file
phase() {
    local l
    l=$(loadavg)
    LOADS+=("$1: $l")
    log "== $1 (load average $l)"
}

# Keep the servers' environment clean: only what this script sets reaches them.
for v in $(compgen -e); do
    case "$v" in
        SUPERVISOR_* | GUNICORN_* | APP_* | DATABASE_* | CORS_* | LISTEN_* | NOTIFY_* | WATCHDOG_* | WEB_CONCURRENCY | FORWARDED_ALLOW_IPS) unset "$v" ;;
    esac
done

WORK=$(mktemp -d /tmp/bench.XXXXXX)
PGDIR=""
PG_PID=""
declare -A SRV_PID=() SRV_PORT=() SRV_LOG=() SRV_CFG=()
BG_PIDS=()  # wrk runs and samplers in the background, while they run
REPL=() HB=() SIL=()  # samples of the replacement and heartbeat phases
forget_bg() { local p keep=(); for p in "${BG_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; BG_PIDS=("${keep[@]}"); }

# Pids of the live (not zombie) children of $1.
children() {
    local d line rest st pp out=()
    for d in /proc/[0-9]*; do
        read -r line 2>/dev/null <"$d/stat" || continue
        rest=${line##*) }
        read -r st pp _ <<<"$rest"
        if [ "$pp" = "$1" ] && [ "$st" != Z ]; then out+=("${d#/proc/}"); fi
    done
    echo "${out[@]}"
}

alive() { local line rest st; read -r line 2>/dev/null <"/proc/$1/stat" || return 1; rest=${line##*) }; st=${rest%% *}; [ "$st" != Z ]; }

# Whether pid $1 is still a process of server $2 (its command line names the server's config file), so that
# a pid reused by an unrelated process after a worker exited is never signalled.
ours() { alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "${SRV_CFG[$2]}"; }

stop_server() {
    local name=$1 pid=${SRV_PID[$1]:-} kids i
    [ -n "$pid" ] || return 0
    kids=$(children "$pid")
    kill -INT "$pid" 2>/dev/null || true
    for i in $(seq 100); do alive "$pid" || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for i in $kids; do if ours "$i" "$name"; then kill -KILL "$i" 2>/dev/null || true; fi; done
    unset "SRV_PID[$name]"
}

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${BG_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${!SRV_PID[@]}"; do stop_server "$p"; done
    if [ -n "$PG_PID" ]; then
        kill -INT "$PG_PID" 2>/dev/null || true
        for p in $(seq 100); do alive "$PG_PID" || break; sleep 0.1; done
        kill -KILL "$PG_PID" 2>/dev/null || true
        wait "$PG_PID" 2>/dev/null || true
    fi
    for p in "${BG_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -n "$PGDIR" ] && rm -rf "$PGDIR"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A TCP port nothing listens on, below the ephemeral range (so no client socket holds it either).
free_port() {
    local used=" " f sl local_addr rem st rest p
    for f in /proc/net/tcp /proc/net/tcp6; do
        [ -r "$f" ] || continue
        while read -r sl local_addr rem st rest; do
            [ "$st" = 0A ] && used+="$((16#${local_addr##*:})) "
        done < <(tail -n +2 "$f")
    done
    while :; do
        p=$((20000 + RANDOM % 12000))
        [[ "$used" == *" $p "* ]] || { echo "$p"; return; }
    done
}

# "rss_kb pss_kb" of a process and its children.
tree_mem() {
    local p rss pss trss=0 tpss=0
    for p in "$1" $(children "$1"); do
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        pss=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || true)
        trss=$((trss + ${rss:-0})); tpss=$((tpss + ${pss:-0}))
    done
    echo "$trss $tpss"
}

# "role: RSS x, PSS y, private z MB; ..." for each process of a server's tree.
mem_detail() {
    local p role out=()
    for p in "$1" $(children "$1"); do
        role=worker; [ "$p" = "$1" ] && role=master; [ -z "$(children "$1")" ] && role=process
        out+=("$role: $(awk '/^Rss:/ {r=$2} /^Pss:/ {p=$2} /^Private_(Clean|Dirty):/ {u+=$2} END {printf "RSS %.1f, PSS %.1f, private %.1f MB", r/1024, p/1024, u/1024}' "/proc/$p/smaps_rollup" 2>/dev/null)")
    done
    local IFS=';'
    echo "${out[*]}" | sed 's/;/; /g'
}

# CPU time (utime + stime, clock ticks) of a process and its live children.
CLK_TCK=$(getconf CLK_TCK)
tree_cpu() {
    local p line rest f total=0
    for p in "$1" $(children "$1"); do
        read -r line 2>/dev/null <"/proc/$p/stat" || continue
        rest=${line##*) }
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# Busy CPU ticks of the whole machine (/proc/stat), and CPU ticks of the children this shell has waited for
# (wrk runs in the foreground, so the difference across a run is wrk's CPU time).
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
waited_ticks() { local line rest f; read -r line <"/proc/$$/stat"; rest=${line##*) }; read -r -a f <<<"$rest"; echo $((f[13] + f[14])); }

# Scheduling of every thread of a process and its live children, summed: "run_ns wait_ns slices voluntary
# involuntary". schedstat: time on a CPU, time runnable but waiting for one (the run queue), and times
# scheduled in; status: context switches when the thread blocked (voluntary: it waits for I/O, a timer, a
# lock) and when it was preempted while it still had work (involuntary).
sched_counters() {
    local p t run=0 wait=0 slices=0 vol=0 invol=0 a b c k v
    for p in "$1" $(children "$1"); do
        for t in /proc/"$p"/task/[0-9]*; do
            read -r a b c 2>/dev/null <"$t/schedstat" || continue
            run=$((run + a)); wait=$((wait + b)); slices=$((slices + c))
            while read -r k v; do
                case $k in
                    voluntary_ctxt_switches:) vol=$((vol + v)) ;;
                    nonvoluntary_ctxt_switches:) invol=$((invol + v)) ;;
                esac
            done 2>/dev/null <"$t/status" || true
        done
    done
    echo "$run $wait $slices $vol $invol"
}

# sched_summary BEFORE AFTER REQUESTS SECONDS: the difference of two sched_counters, per request.
# "wait_us_per_req mean_wait_us_per_slice wait_ms_per_s voluntary_per_req involuntary_per_req"
sched_summary() {
    awk -v a="$1" -v b="$2" -v n="$3" -v d="$4" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        w = y[2] - x[2]; s = y[3] - x[3]; if (n < 1) n = 1; if (s < 1) s = 1
        printf "%.2f %.1f %.0f %.3f %.3f\n", w / 1e3 / n, w / 1e3 / s, w / 1e6 / d, (y[4] - x[4]) / n, (y[5] - x[5]) / n
    }'
}

# How a server's established connections on its port are spread over its processes now:
# "connections per process / requests per process in percent / fewest-most requests on one connection and
# their coefficient of variation", e.g. "32/32 / 50/50 / 9000-12000 cv 8%". A connection's requests are the
# data segments it received (each request here is one write of the client, so one segment), counted from
# the connection's start. In a closed loop each connection sends as fast as it is answered, so how evenly
# the connections are served shows in how evenly their counts grow.
conn_spread() {
    ss -Htinp state established "( sport = :$1 )" 2>/dev/null | awk '
        /^[^ \t]/ { pid = ""; if (match($0, /pid=[0-9]+/)) pid = substr($0, RSTART + 4, RLENGTH - 4); next }
        pid != "" && match($0, /data_segs_in:[0-9]+/) {
            r = substr($0, RSTART + 13, RLENGTH - 13) + 0
            c[pid]++; q[pid] += r; total += r; sq += r * r
            if (n++ == 0 || r < lo) lo = r
            if (r > hi) hi = r
            pid = ""
        }
        END {
            if (n == 0) exit
            m = 0; for (p in c) { k[++m] = p }
            # busiest process first
            for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (c[k[j]] > c[k[i]] || (c[k[j]] == c[k[i]] && q[k[j]] > q[k[i]])) { t = k[i]; k[i] = k[j]; k[j] = t }
            for (i = 1; i <= m; i++) { cs = cs (i > 1 ? "/" : "") c[k[i]]; qs = qs (i > 1 ? "/" : "") sprintf("%.0f", total ? 100 * q[k[i]] / total : 0) }
            mean = total / n; var = sq / n - mean * mean; cv = 0
            if (mean > 0 && var > 0) cv = 100 * sqrt(var) / mean
            printf "%s / %s / %d-%d cv %.0f%%\n", cs, qs, lo, hi, cv
        }' || true
}

# Samples tree_mem of server $1 every 0.5 s into $2 until killed.
start_sampler() {
    local pid=${SRV_PID[$1]} file=$2
    ( while :; do tree_mem "$pid" >>"$file"; sleep 0.5; done ) &
    SAMPLER=$!
    BG_PIDS+=("$SAMPLER")
}
stop_sampler() { kill -TERM "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; forget_bg "$SAMPLER"; }

# Master-log queries (the server's stdout is a file of JSON lines). `ms` turns `ts` into epoch milliseconds.
JQ_MS='def ms: (.ts | capture("^(?<s>[^.]+)\\.(?<f>[0-9]+)Z$")) as $c | ((($c.s + "Z") | fromdateiso8601) * 1000 + ($c.f | tonumber));'
master_log() { jq -rc "$JQ_MS"' select(.role == "master") | '"$2" "${SRV_LOG[$1]}" 2>/dev/null || true; }

# start_server NAME WORKERS THREADS ACCESS_LOG [TIMEOUT] [KEEPALIVE] [POOL_SIZE] [LOG_LEVEL]
start_server() {
    local name=$1 workers=$2 threads=$3 access=$4 timeout=${5:-30} keepalive=${6:-5} pool=${7:-4} level=${8:-info} port cfg logf pid i
    port=$(free_port)
    cfg="$WORK/$name.toml"
    logf="$WORK/$name.log"
    cat >"$cfg" <<EOF
bind = ["127.0.0.1:$port"]
workers = $workers
threads = $threads
timeout = $timeout
graceful_timeout = 5
keepalive = $keepalive
boot_timeout = 10
log_level = "$level"

[app]
env = "prod"
access_log = $access

[database]
url = "$DB_URL"
pool_size = $pool
EOF
    # START_BIN: start this server from another build (--compare).
    "${START_BIN:-$BIN}" --config "$cfg" >"$logf" 2>"$WORK/$name.err" </dev/null &
    pid=$!
    SRV_PID[$name]=$pid; SRV_PORT[$name]=$port; SRV_LOG[$name]=$logf; SRV_CFG[$name]=$cfg
    for i in $(seq 300); do
        alive "$pid" || die "server $name exited at start: $(cat "$WORK/$name.err") $(tail -5 "$logf")"
        if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz" 2>/dev/null; then
            # The master logs "server ready" at info; below that level, count the workers instead.
            if [ "$workers" = 0 ] || [ -n "$(master_log "$name" 'select(.msg == "server ready") | .ts')" ] ||
                { [ "$level" != info ] && [ "$level" != debug ] && [ "$(children "$pid" | wc -w)" = "$workers" ]; }; then
                log "server $name: pid $pid, port $port, workers $workers, threads $threads, access_log $access"
                return 0
            fi
        fi
        sleep 0.1
    done
    die "server $name not ready within 30 s: $(tail -5 "$logf")"
}

# start_bare NAME THREADS: the bare hyper server (one process, no master, no app), measured like the others.
start_bare() {
    local name=$1 threads=$2 port pid i
    port=$(free_port)
    "$BARE_BIN" "127.0.0.1:$port" "$threads" >"$WORK/$name.log" 2>&1 </dev/null &
    pid=$!
    # `ours` recognises the server's processes by this string in their command line.
    SRV_PID[$name]=$pid; SRV_PORT[$name]=$port; SRV_LOG[$name]="$WORK/$name.log"; SRV_CFG[$name]="127.0.0.1:$port"
    for i in $(seq 100); do
        alive "$pid" || die "server $name exited at start: $(cat "$WORK/$name.log")"
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz" 2>/dev/null && { log "server $name: pid $pid, port $port, threads $threads"; return 0; }
        sleep 0.1
    done
    die "server $name not answering within 10 s"
}

url_of() { echo "http://127.0.0.1:${SRV_PORT[$1]}$2"; }

# run_wrk OUTFILE SECONDS URL [VAR=VALUE ...]: wrk with bench/wrk.lua; the environment configures the script.
run_wrk() {
    local out=$1 secs=$2 url=$3
    shift 3
    env "$@" wrk -t"$WRK_THREADS" -c"$CONNS" -d"${secs}s" --timeout 2s -s "$LUA" "$url" >"$out" 2>&1 || true
}

# Lines the servers could not write (to a file on this machine's disk, the output is expected to keep up).
log_dropped() {
    curl -fsS --max-time 2 "$(url_of "$1" /metrics)" 2>/dev/null |
        awk '/^log_lines_dropped_total/ { n += $2; found = 1 } END { if (found) print n; else print "-" }'
}

# Field of the BENCH line of a wrk output.
bench_field() { sed -n 's/^BENCH //p' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

declare -A R=()  # results

# measure NAME PATHKEY URLPATH [VAR=VALUE ...]: warm-up, then a measured run with memory sampling.
measure() {
    local name=$1 key=$2 path=$3 out="$WORK/wrk-$1-$2.txt" mem="$WORK/mem-$1.txt"
    shift 3
    run_wrk /dev/null "$WARMUP" "$(url_of "$name" "$path")" "$@"
    start_sampler "$name" "$mem"
    # Near the end of the run, how the client's connections, and the requests sent on them so far, are spread
    # over the server's processes and over the connections.
    local conns_file="$WORK/conns-$name-$key.txt" spid
    if command -v ss >/dev/null; then
        ( sleep "$(awk -v d="$DURATION" 'BEGIN{print d * 0.9}')"
          conn_spread "${SRV_PORT[$name]}" >"$conns_file" ) &
        spid=$!
        BG_PIDS+=("$spid")
    fi
    local cpu0 pg0 cpu1 pg1 all0 all1 cl0 cl1 sc0 sc1
    sc0=$(sched_counters "${SRV_PID[$name]}")
    cpu0=$(tree_cpu "${SRV_PID[$name]}"); pg0=$(tree_cpu "$PG_PID"); all0=$(busy_ticks); cl0=$(waited_ticks)
    run_wrk "$out" "$DURATION" "$(url_of "$name" "$path")" "$@"
    cpu1=$(tree_cpu "${SRV_PID[$name]}"); pg1=$(tree_cpu "$PG_PID"); all1=$(busy_ticks); cl1=$(waited_ticks)
    sc1=$(sched_counters "${SRV_PID[$name]}")
    stop_sampler
    if [ -n "${spid:-}" ]; then
        wait "$spid" 2>/dev/null || true; forget_bg "$spid"
        IFS='|' read -r "R[$name.$key.conns]" "R[$name.$key.reqshare]" "R[$name.$key.connreq]" <<<"$(sed 's# / #|#g' "$conns_file" 2>/dev/null)"
    fi
    grep -q '^BENCH ' "$out" || die "wrk failed against $name $path: $(cat "$out")"
    R[$name.$key.rps]=$(bench_field "$out" rps)
    R[$name.$key.p50]=$(bench_field "$out" p50_us)
    R[$name.$key.p99]=$(bench_field "$out" p99_us)
    R[$name.$key.p999]=$(bench_field "$out" p999_us)
    local e=0 f
    for f in connect read write status timeout; do e=$((e + $(bench_field "$out" $f))); done
    R[$name.$key.err]=$e
    R[$name.$key.n]=$(bench_field "$out" requests)
    R[$name.$key.cpu]=$(awk -v t=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v n="${R[$name.$key.n]}" 'BEGIN{ if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print 0 }')
    R[$name.$key.pgcpu]=$(awk -v t=$((pg1 - pg0)) -v hz="$CLK_TCK" -v n="${R[$name.$key.n]}" 'BEGIN{ if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print 0 }')
    R[$name.$key.srvcores]=$(awk -v t=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v d="$DURATION" 'BEGIN{ printf "%.2f", t / hz / d }')
    # Where the machine's CPU went during the run, in cores: server, PostgreSQL, wrk, everything else.
    R[$name.$key.split]=$(awk -v s=$((cpu1 - cpu0)) -v p=$((pg1 - pg0)) -v c=$((cl1 - cl0)) -v a=$((all1 - all0)) -v hz="$CLK_TCK" -v d="$DURATION" \
        'BEGIN{ o = a - s - p - c; if (o < 0) o = 0; printf "%.2f/%.2f/%.2f/%.2f", s/hz/d, p/hz/d, c/hz/d, o/hz/d }')
    read -r "R[$name.$key.waitreq]" "R[$name.$key.waitslice]" "R[$name.$key.waitms]" "R[$name.$key.vcs]" "R[$name.$key.ivcs]" \
        <<<"$(sched_summary "$sc0" "$sc1" "${R[$name.$key.n]}" "$DURATION")"
    log "$name $path: $(awk -v r="${R[$name.$key.rps]}" 'BEGIN{printf "%.0f", r}') req/s, p50 $(ms "${R[$name.$key.p50]}") ms, p99 $(ms "${R[$name.$key.p99]}") ms, errors $e, server CPU ${R[$name.$key.cpu]} us/req (${R[$name.$key.srvcores]} cores), postgres ${R[$name.$key.pgcpu]} us/req, CPU cores server/postgres/wrk/other ${R[$name.$key.split]}${R[$name.$key.conns]:+, connections per process ${R[$name.$key.conns]}, requests per process ${R[$name.$key.reqshare]}%, per connection ${R[$name.$key.connreq]}}"
    log "  $name $path scheduling: waited for a CPU $(sched_text "$name.$key")"
}

# "W us per request (M us per time scheduled in, T ms per second), context switches per request V voluntary,
# I involuntary" of result KEY.
sched_text() {
    echo "${R[$1.waitreq]} us per request (${R[$1.waitslice]} us per time scheduled in, ${R[$1.waitms]} ms per second), context switches per request ${R[$1.vcs]} voluntary, ${R[$1.ivcs]} involuntary"
}

ms() { awk -v u="$1" 'BEGIN{printf "%.2f", u/1000}'; }
mb() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "-" }'; }
int() { awk -v a="$1" 'BEGIN{printf "%.0f", a}'; }
one() { awk -v a="$1" 'BEGIN{printf "%.1f", a}'; }
# max of column $2 in file $1
colmax() { awk -v c="$2" 'BEGIN{m=0} $c > m {m=$c} END{print m}' "$1"; }

POST_BODY='{"name":"bench","quantity":1}'

# ---------------------------------------------------------------------------------------------------------
# Setup

phase "setup"
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v jq >/dev/null || missing+=(jq)
command -v curl >/dev/null || missing+=(curl)
command -v ss >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from Debian"
    [ "$(id -u)" = 0 ] || die "need ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root"
    apt-get install -y -o DPkg::Lock::Timeout=120 "${missing[@]}" >"$WORK/apt.log" 2>&1 ||
        { apt-get update >>"$WORK/apt.log" 2>&1 && apt-get install -y -o DPkg::Lock::Timeout=120 "${missing[@]}" >>"$WORK/apt.log" 2>&1; } ||
        die "apt-get install ${missing[*]} failed: $(tail -3 "$WORK/apt.log")"
fi

# oha, the open-loop client: one with a fixed rate and latency correction (1.16 has both), else install that
# version from crates.io under target/ (about 6 minutes of compiling, once).
oha_fits() { [ -x "$1" ] && "$1" --help 2>/dev/null | grep -q -- '--latency-correction' && "$1" --help 2>/dev/null | grep -q -- '--output-format'; }
if [ "$OPEN_LOOP" = 1 ]; then
    OHA_LOCAL="$ROOT/target/bench-tools/bin/oha"
    if [ -n "${OHA:-}" ]; then
        oha_fits "$OHA" || die "OHA=$OHA is not an oha with --latency-correction and --output-format (oha >= $OHA_VERSION)"
    elif oha_fits "$(command -v oha || true)"; then
        OHA=$(command -v oha)
    elif oha_fits "$OHA_LOCAL"; then
        OHA=$OHA_LOCAL
    else
        command -v cargo >/dev/null || die "oha >= $OHA_VERSION is needed for the open loop (cargo install oha), or --no-open-loop"
        log "installing oha $OHA_VERSION from crates.io into target/bench-tools (once; about 6 minutes)"
        cargo install --quiet --locked --version "$OHA_VERSION" --root "$ROOT/target/bench-tools" oha >"$WORK/oha-install.log" 2>&1 ||
            die "cargo install oha failed: $(tail -3 "$WORK/oha-install.log")"
        OHA=$OHA_LOCAL
    fi
    log "open-loop client: $OHA ($("$OHA" --version 2>/dev/null))"
fi

if [ "$BUILD" = 1 ] && [ -z "${BENCH_BIN:-}" ]; then
    log "cargo build --release --bin supervisor --bin bare-hyper"
    (cd "$ROOT" && cargo build --release --quiet --bin supervisor --bin bare-hyper) || die "cargo build --release failed"
fi
[ -x "$BIN" ] || die "$BIN not found (build it, or drop --no-build)"
[ -x "$BARE_BIN" ] || die "$BARE_BIN not found (cargo build --release -p bare-hyper, or set BARE_BIN)"

if [ "$WAIT_IDLE" -gt 0 ]; then
    waited=0
    while :; do
        l1=$(cut -d' ' -f1 /proc/loadavg)
        if awk -v l="$l1" 'BEGIN{exit !(l < 0.8)}'; then
            IDLE_NOTE="waited ${waited} s for the 1-minute load average to drop below 0.8 (it was $l1)"
            break
        fi
        if [ "$waited" -ge "$WAIT_IDLE" ]; then
            IDLE_NOTE="the 1-minute load average stayed at or above 0.8 for ${WAIT_IDLE} s (last $l1): ran anyway, on a busy machine"
            break
        fi
        [ $((waited % 30)) = 0 ] && log "waiting for the load average to drop below 0.8 (now $l1, waited ${waited} s)"
        sleep 5; waited=$((waited + 5))
    done
    log "$IDLE_NOTE"
    WAITED=$waited
else
    IDLE_NOTE="did not wait for an idle machine (no --wait-idle)"
fi

# Throwaway PostgreSQL, like the tests (test-support/src/pg.rs): PG_BIN or /usr/lib/postgresql/15/bin.
PG_BIN=${PG_BIN:-}
if [ -z "$PG_BIN" ]; then
    for d in /usr/lib/postgresql/15/bin $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
        [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && [ -x "$d/pg_isready" ] && { PG_BIN=$d; break; }
    done
fi
[ -n "$PG_BIN" ] || die "PostgreSQL server binaries not found: apt-get install postgresql-15, or set PG_BIN"
PGDIR=$(mktemp -d /tmp/bench-pg.XXXXXX)
chmod 700 "$PGDIR"
as_pg=()
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no postgres user (PostgreSQL refuses root)"
    chown postgres:postgres "$PGDIR"
    as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi
PG_PORT=$(free_port)
(cd "$PGDIR" && "${as_pg[@]}" "$PG_BIN/initdb" -D "$PGDIR/data" -U postgres -N -E UTF8 --locale=C --auth=trust >"$PGDIR/initdb.log" 2>&1) ||
    die "initdb failed: $(tail -5 "$PGDIR/initdb.log")"
(cd "$PGDIR" && exec "${as_pg[@]}" "$PG_BIN/postgres" -D "$PGDIR/data" -k "$PGDIR" -h 127.0.0.1 -p "$PG_PORT" \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100 \
    >"$PGDIR/postgres.log" 2>&1 </dev/null) &
PG_PID=$!
for i in $(seq 300); do
    "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -U postgres -t 1 -q && break
    alive "$PG_PID" || die "postgres exited: $(tail -5 "$PGDIR/postgres.log")"
    sleep 0.1
done
"$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -U postgres -t 1 -q || die "postgres not ready in 30 s"
DB_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
DATABASE_URL=$DB_URL "$BIN" migrate >"$WORK/migrate.log" 2>&1 || die "migrate failed: $(cat "$WORK/migrate.log")"
log "postgres pid $PG_PID on port $PG_PORT, migrated"

# ---------------------------------------------------------------------------------------------------------
# 1-2. Throughput, latency, memory

phase "start servers"
start_server prefork "$PREFORK_WORKERS" "$PREFORK_THREADS" false
start_server baseline 0 2 false
start_bare bare 2
sleep 1
read -r "R[prefork.idle.rss]" "R[prefork.idle.pss]" <<<"$(tree_mem "${SRV_PID[prefork]}")"
read -r "R[baseline.idle.rss]" "R[baseline.idle.pss]" <<<"$(tree_mem "${SRV_PID[baseline]}")"
log "idle: prefork RSS $(mb "${R[prefork.idle.rss]}") MB PSS $(mb "${R[prefork.idle.pss]}") MB; baseline RSS $(mb "${R[baseline.idle.rss]}") MB PSS $(mb "${R[baseline.idle.pss]}") MB"
PREFORK_PROCS=$(( $(children "${SRV_PID[prefork]}" | wc -w) + 1 ))
R[prefork.idle.detail]=$(mem_detail "${SRV_PID[prefork]}")
R[baseline.idle.detail]=$(mem_detail "${SRV_PID[baseline]}")

TARGETS=("healthz /healthz" "readyz /readyz" "items /api/items")
[ "$LATENCY_ONLY" = 1 ] && TARGETS=("healthz /healthz")
for target in "${TARGETS[@]}"; do
    read -r key path <<<"$target"
    phase "load $path"
    extra=()
    [ "$key" = items ] && extra=(BENCH_METHOD=POST "BENCH_BODY=$POST_BODY")
    measure prefork "$key" "$path" "${extra[@]}"
    measure baseline "$key" "$path" "${extra[@]}"
    [ "$key" = healthz ] && measure bare healthz /healthz
done

# ---------------------------------------------------------------------------------------------------------
# Open loop: GET /healthz at fixed offered rates, the three servers in turn at each rate.

# run_oha OUTFILE RATE URL: oha at RATE req/s for OPEN_DURATION s over CONNS keep-alive connections, in the
# foreground (so that its CPU time is counted in this shell's waited-for children, like wrk's). Each request
# is timed from when it was due to be sent (--latency-correction): one that waited for a free connection,
# because the server was slow to answer the one before, counts that wait.
run_oha() {
    # shellcheck disable=SC2086 # OHA_ARGS: optional extra words
    timeout -k 5 $((OPEN_DURATION + 30)) "$OHA" -z "${OPEN_DURATION}s" -q "$2" -c "$CONNS" -w -t 2s \
        --latency-correction --no-tui --output-format json -o "$1" $OHA_ARGS "$3" >/dev/null 2>"$1.err" || true
}
OHA_ARGS=${OHA_THREADS:+--worker-threads $OHA_THREADS}

# open_point NAME KEY RATE: one open-loop run against server NAME at RATE req/s; results in R[NAME.KEY.*].
open_point() {
    local name=$1 key=$2 rate=$3 json="$WORK/oha-$1-$2.json" cpu0 cpu1 all0 all1 cl0 cl1 sc0 sc1 ok total
    sc0=$(sched_counters "${SRV_PID[$name]}")
    cpu0=$(tree_cpu "${SRV_PID[$name]}"); all0=$(busy_ticks); cl0=$(waited_ticks)
    run_oha "$json" "$rate" "$(url_of "$name" /healthz)"
    cpu1=$(tree_cpu "${SRV_PID[$name]}"); all1=$(busy_ticks); cl1=$(waited_ticks)
    sc1=$(sched_counters "${SRV_PID[$name]}")
    [ -s "$json" ] || die "oha failed against $name at $rate req/s: $(tail -3 "$json.err" 2>/dev/null)"
    # 2xx answers, the run's length, latency percentiles in us, and failures: other statuses and errors
    # (timeouts, resets), not counting requests cut off by the end of the run.
    read -r ok total "R[$name.$key.p50]" "R[$name.$key.p99]" "R[$name.$key.p999]" "R[$name.$key.err]" <<<"$(jq -r '
        def n: . // 0;
        [ ([.statusCodeDistribution // {} | to_entries[] | select(.key | startswith("2")) | .value] | add | n),
          (.summary.total | n),
          (.latencyPercentiles.p50 | n) * 1e6, (.latencyPercentiles.p99 | n) * 1e6, (.latencyPercentiles["p99.9"] | n) * 1e6,
          ([.statusCodeDistribution // {} | to_entries[] | select(.key | startswith("2") | not) | .value] | add | n)
            + ([.errorDistribution // {} | to_entries[] | select(.key | test("deadline") | not) | .value] | add | n) ]
        | map(floor) | @tsv' "$json")"
    R[$name.$key.rate]=$rate
    R[$name.$key.n]=$ok
    R[$name.$key.rps]=$(awk -v n="$ok" -v t="$total" -v d="$OPEN_DURATION" 'BEGIN{ printf "%.0f", n / (t > 0 ? t : d) }')
    R[$name.$key.cpu]=$(awk -v t=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v n="$ok" 'BEGIN{ if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print 0 }')
    # Where the machine's CPU went, in cores: server, oha, everything else (PostgreSQL included; idle here).
    R[$name.$key.split]=$(awk -v s=$((cpu1 - cpu0)) -v c=$((cl1 - cl0)) -v a=$((all1 - all0)) -v hz="$CLK_TCK" -v d="$OPEN_DURATION" \
        'BEGIN{ o = a - s - c; if (o < 0) o = 0; printf "%.2f/%.2f/%.2f", s/hz/d, c/hz/d, o/hz/d }')
    read -r "R[$name.$key.waitreq]" "R[$name.$key.waitslice]" "R[$name.$key.waitms]" "R[$name.$key.vcs]" "R[$name.$key.ivcs]" \
        <<<"$(sched_summary "$sc0" "$sc1" "$ok" "$OPEN_DURATION")"
    log "$name open loop at $rate req/s: $(int "${R[$name.$key.rps]}") req/s answered, p50 $(ms "${R[$name.$key.p50]}") ms, p99 $(ms "${R[$name.$key.p99]}") ms, p99.9 $(ms "${R[$name.$key.p999]}") ms, errors ${R[$name.$key.err]}, server CPU ${R[$name.$key.cpu]} us/req, CPU cores server/oha/other ${R[$name.$key.split]}; waited for a CPU $(sched_text "$name.$key")"
}

# Whether an open-loop point met the latency objective: p99 within OPEN_SLO_MS, no failure, and at least 95% of
# the offered rate answered (a server that falls behind is not sustaining the rate, whatever its latency).
open_ok() {
    awk -v p="${R[$1.p99]}" -v e="${R[$1.err]}" -v r="${R[$1.rps]}" -v q="${R[$1.rate]}" -v slo="$OPEN_SLO_MS" \
        'BEGIN{ exit !(p <= slo * 1000 && e == 0 && r >= 0.95 * q) }'
}

OPEN_SERVERS=(prefork baseline bare)
OPEN_POINTS=()  # "key|percent|rate", in the order measured
if [ "$OPEN_LOOP" = 1 ]; then
    phase "open loop"
    if [ -n "$OPEN_PEAK" ]; then
        OPEN_PEAK_NOTE="--open-peak"
    else
        OPEN_PEAK=0
        for s in "${OPEN_SERVERS[@]}"; do
            if awk -v a="${R[$s.healthz.rps]}" -v b="$OPEN_PEAK" 'BEGIN{ exit !(a > b) }'; then OPEN_PEAK=${R[$s.healthz.rps]}; OPEN_PEAK_NOTE="$s, closed loop"; fi
        done
    fi
    OPEN_PEAK=$(int "$OPEN_PEAK")
    log "open loop: 100% = $OPEN_PEAK req/s ($OPEN_PEAK_NOTE); $OPEN_DURATION s per point, $CONNS connections"
    i=0
    for pct in ${OPEN_RATES//,/ }; do
        rate=$(awk -v p="$OPEN_PEAK" -v f="$pct" 'BEGIN{ r = p * f / 100; printf "%.0f", r < 1 ? 1 : r }')
        # The order rotates from one rate to the next, so that no server always runs right after another.
        for j in 0 1 2; do
            open_point "${OPEN_SERVERS[$(((i + j) % 3))]}" "open$pct" "$rate"
        done
        OPEN_POINTS+=("open$pct|$pct|$rate")
        i=$((i + 1))
    done
    # The highest rate with p99 under the objective: bracket it between the measured points, then bisect,
    # the three servers in turn at each step.
    declare -A LO=() HI=()
    for s in "${OPEN_SERVERS[@]}"; do
        LO[$s]=0; HI[$s]=""
        for pt in "${OPEN_POINTS[@]}"; do
            IFS='|' read -r key _ rate <<<"$pt"
            if open_ok "$s.$key"; then
                [ "$rate" -gt "${LO[$s]}" ] && LO[$s]=$rate
            elif [ -z "${HI[$s]}" ] || [ "$rate" -lt "${HI[$s]}" ]; then
                HI[$s]=$rate
            fi
        done
        # A failed point below a passing one (noise): search above the highest pass.
        if [ -n "${HI[$s]}" ] && [ "${HI[$s]}" -le "${LO[$s]}" ]; then
            HI[$s]=""
            for pt in "${OPEN_POINTS[@]}"; do
                IFS='|' read -r key _ rate <<<"$pt"
                if ! open_ok "$s.$key" && [ "$rate" -gt "${LO[$s]}" ] && { [ -z "${HI[$s]}" ] || [ "$rate" -lt "${HI[$s]}" ]; }; then HI[$s]=$rate; fi
            done
        fi
    done
    for step in $(seq "$OPEN_SEARCH"); do
        for s in "${OPEN_SERVERS[@]}"; do
            [ -n "${HI[$s]}" ] || continue
            mid=$(((LO[$s] + HI[$s]) / 2))
            [ "$mid" -gt "${LO[$s]}" ] || continue
            open_point "$s" "search$step" "$mid"
            if open_ok "$s.search$step"; then LO[$s]=$mid; else HI[$s]=$mid; fi
        done
    done
    for s in "${OPEN_SERVERS[@]}"; do
        R[$s.slo.lo]=${LO[$s]}; R[$s.slo.hi]=${HI[$s]}
        log "$s: p99 <= $OPEN_SLO_MS ms up to ${LO[$s]} req/s${HI[$s]:+ (not at ${HI[$s]})}"
    done
fi

stop_server bare
for s in prefork baseline; do
    R[$s.load.rss]=$(colmax "$WORK/mem-$s.txt" 1)
    R[$s.load.pss]=$(colmax "$WORK/mem-$s.txt" 2)
done
ITEMS=$("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -XAtqc 'SELECT count(*) FROM items' 2>/dev/null || echo "?")
log "rows inserted: $ITEMS"
stop_server baseline

# ---------------------------------------------------------------------------------------------------------
# With --latency-only the measurement ends here, but for --compare and --extra (up to the matching `fi`).
if [ "$LATENCY_ONLY" = 0 ]; then

# ---------------------------------------------------------------------------------------------------------
# /metrics under load: /healthz again while one client scrapes /metrics back to back (the worst case; Prometheus
# scrapes every few seconds). Rendering reads shared counters without a lock, so the requests served beside it
# should lose only the CPU the scrapes take, and nothing should wait.

phase "metrics scrapes under load"
scrape_out="$WORK/wrk-scrape.txt"
wrk -t1 -c1 -d"$((WARMUP + DURATION))s" --timeout 2s --latency "$(url_of prefork /metrics)" >"$scrape_out" 2>&1 &
SCRAPER=$!
BG_PIDS+=("$SCRAPER")
measure prefork scraped /healthz
wait "$SCRAPER" 2>/dev/null || true
forget_bg "$SCRAPER"
R[scrape.rps]=$(awk '/^Requests\/sec:/ {print $2}' "$scrape_out")
R[scrape.p99]=$(awk '$1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
    print (u == "us" ? v / 1000 : u == "s" ? v * 1000 : v); exit }' "$scrape_out")
R[scrape.n]=$(awk '/requests in/ {print $1; exit}' "$scrape_out")
R[scrape.err]=$(awk '/Socket errors|Non-2xx/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i } END { print n + 0 }' "$scrape_out")
log "scrapes beside the load: ${R[scrape.rps]:-?} /s, p99 ${R[scrape.p99]:-?} ms, errors ${R[scrape.err]}"

# ---------------------------------------------------------------------------------------------------------
# 3. Reload under load: HUP while wrk runs; per-100-ms response counts from the wrk script's timeline.

phase "reload under load"
reload_out="$WORK/wrk-reload.txt"
old_workers=$(children "${SRV_PID[prefork]}")
env BENCH_TIMELINE=1 wrk -t"$WRK_THREADS" -c"$CONNS" -d"${RELOAD_DURATION}s" --timeout 2s -s "$LUA" \
    "$(url_of prefork /healthz)" >"$reload_out" 2>&1 &
WRK_PID=$!
BG_PIDS+=("$WRK_PID")
# Which worker holds how many of wrk's connections, 1 s before the HUP and 3 s after it.
conns_snapshot() {
    { ss -Htnp state established "( sport = :${SRV_PORT[prefork]} )" 2>/dev/null | grep -o 'pid=[0-9]*' | sort | uniq -c |
        awk '{print $1}' | sort -rn | tr '\n' '/' | sed 's#/$##'; } || true
}
sleep $((RELOAD_AT - 1))
R[reload.conns_before]=$(conns_snapshot)
sleep 1
HUP_MS=$(($(now_us) / 1000))
kill -HUP "${SRV_PID[prefork]}"
sleep 3
R[reload.conns_after]=$(conns_snapshot)
wait "$WRK_PID" || true
forget_bg "$WRK_PID"
grep -q '^BENCH ' "$reload_out" || die "wrk failed in the reload run: $(cat "$reload_out")"
# The window: from the HUP to the exit of the last worker of the old generation.
exits=$(master_log prefork "select(.msg == \"worker exited after draining\" or .msg == \"worker killed by the supervisor\") | select(.reason == \"reload\" or .reason == \"drain_deadline\") | \"\\(.worker_pid) \\(ms)\"")
END_MS=0; n_exited=0
for w in $old_workers; do
    t=$(awk -v w="$w" '$1 == w {print $2}' <<<"$exits" | tail -1)
    [ -n "$t" ] && { n_exited=$((n_exited + 1)); [ "$t" -gt "$END_MS" ] && END_MS=$t; }
done
READY_MS=$(master_log prefork 'select(.msg | startswith("reload complete")) | ms' | tail -1)
[ "$n_exited" = "$(wc -w <<<"$old_workers")" ] || die "the old generation did not exit during the reload run ($n_exited exited): $(tail -5 "${SRV_LOG[prefork]}")"
[ -n "$READY_MS" ] || die "no 'reload complete' in the master log"
read -r "R[reload.steady]" "R[reload.window]" "R[reload.worst]" "R[reload.after]" "R[reload.bad]" <<<"$(awk -v hup="$HUP_MS" -v end="$END_MS" '
    # Keys are strings: mawk formats integral numbers above 2^31 wrongly as array subscripts.
    function k(t) { return sprintf("%.0f", t) }
    $1 == "BUCKET" { b[$2] = $3; bad += $4; if (first == "" || $2 + 0 < first) first = $2 + 0; if ($2 + 0 > last) last = $2 + 0 }
    END {
        # steady: whole buckets from 1 s after the start to the bucket before the HUP
        for (t = first + 1000; t + 100 <= hup - hup % 100; t += 100) { s += b[k(t)]; ns++ }
        # window: every bucket that overlaps [hup, end]
        worst = -1
        for (t = hup - hup % 100; t <= end; t += 100) { w += b[k(t)]; nw++; if (worst < 0 || b[k(t)] + 0 < worst) worst = b[k(t)] + 0 }
        # after: from 0.5 s after the window to the last whole bucket
        for (t = end - end % 100 + 600; t < last; t += 100) { a += b[k(t)]; na++ }
        printf "%.1f %.1f %.1f %.1f %d\n", s / ns * 10, w / nw * 10, worst * 10, (na ? a / na * 10 : 0), bad
    }' "$reload_out")"
# req/s per 100 ms bucket from 0.3 s before the HUP to 0.3 s after the window, for the results file.
R[reload.timeline]=$(awk -v hup="$HUP_MS" -v end="$END_MS" '
    function k(t) { return sprintf("%.0f", t) }
    $1 == "BUCKET" { b[$2] = $3 }
    END { for (t = hup - hup % 100 - 300; t <= end + 300; t += 100) printf "%s%.1f", (n++ ? " " : ""), b[k(t)] * 10 / 1000 }' "$reload_out")
R[reload.sockerr]=$(( $(bench_field "$reload_out" connect) + $(bench_field "$reload_out" read) + $(bench_field "$reload_out" write) + $(bench_field "$reload_out" timeout) ))
R[reload.failed]=$((${R[reload.bad]} + ${R[reload.sockerr]}))
R[reload.window_ms]=$((END_MS - HUP_MS))
R[reload.boot_ms]=$((READY_MS - HUP_MS))
R[reload.requests]=$(bench_field "$reload_out" requests)
log "reload: new generation ready after ${R[reload.boot_ms]} ms, old one gone after ${R[reload.window_ms]} ms; steady $(int "${R[reload.steady]}") req/s, window $(int "${R[reload.window]}") req/s, worst 100 ms $(int "${R[reload.worst]}") req/s; failed ${R[reload.failed]} (non-2xx ${R[reload.bad]}, socket errors ${R[reload.sockerr]})"

# ---------------------------------------------------------------------------------------------------------
# 4. Worker replacement: kill -9 the worker that has been ready longest (at least 5.5 s, so that the kill
#    is not an early death and no crash-loop backoff applies); latency = kill -> master's "worker ready".

phase "worker replacement"
REPL=()
for i in $(seq "$REPLACEMENTS"); do
    kids=" $(children "${SRV_PID[prefork]}") "
    # Ready lines of live workers: "ms pid"
    victim_line=$(master_log prefork 'select(.msg == "worker ready") | "\(ms) \(.worker_pid)"' |
        while read -r t p; do if [[ "$kids" == *" $p "* ]]; then echo "$t $p"; fi; done | sort -n | sed -n 1p)
    [ -n "$victim_line" ] || die "no ready worker to kill"
    read -r ready_ms victim <<<"$victim_line"
    age=$(($(now_us) / 1000 - ready_ms))
    [ "$age" -lt 5500 ] && sleep "$(awk -v a="$age" 'BEGIN{print (5500 - a) / 1000}')"
    kill_us=$(now_us)
    kill -KILL "$victim"
    # The latency comes from the master's log timestamps; polling the log only has to notice the line.
    new_ms=""
    sleep 0.1
    for j in $(seq 100); do
        new_ms=$(master_log prefork "select(.msg == \"worker ready\") | select(ms >= $((kill_us / 1000))) | select([.worker_pid] | inside([$(tr ' ' ',' <<<"$(echo $kids)")]) | not) | ms" | sed -n 1p)
        [ -n "$new_ms" ] && break
        sleep 0.05
    done
    [ -n "$new_ms" ] || die "no replacement for worker $victim within 5 s"
    REPL+=($((new_ms - kill_us / 1000)))
    log "killed worker $victim: replacement ready after ${REPL[-1]} ms"
done
read -r "R[repl.median]" "R[repl.max]" "R[repl.min]" <<<"$(printf '%s\n' "${REPL[@]}" | sort -n | awk '{a[NR]=$1} END{m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; print m, a[NR], a[1]}')"
stop_server prefork

# ---------------------------------------------------------------------------------------------------------
# 5. Heartbeat timeout: SIGSTOP a ready worker of a server with timeout = HB_TIMEOUT; time until the master
#    has killed it (the process is gone or a zombie), and the silence the master logged.

phase "heartbeat timeout"
start_server hb 2 1 false "$HB_TIMEOUT"
HB=(); SIL=()
for i in $(seq "$TIMEOUT_SAMPLES"); do
    # wait for two ready workers, then stop the first
    for j in $(seq 500); do [ "$(children "${SRV_PID[hb]}" | wc -w)" = 2 ] && break; sleep 0.01; done
    victim=""
    for j in $(seq 500); do
        kids=" $(children "${SRV_PID[hb]}") "
        victim=$(master_log hb 'select(.msg == "worker ready") | .worker_pid' |
            while read -r p; do if [[ "$kids" == *" $p "* ]]; then echo "$p"; fi; done | sed -n 1p)
        [ -n "$victim" ] && break
        sleep 0.01
    done
    [ -n "$victim" ] || die "no ready worker to stop"
    # A random phase against the worker's heartbeat ticks (every timeout/4), so the samples spread over it.
    sleep "$(awk -v r="$RANDOM" 'BEGIN{printf "%.3f", 0.2 + (r % 600) / 1000}')"
    stop_us=$(now_us)
    kill -STOP "$victim"
    dead_us=""
    for j in $(seq 1000); do
        alive "$victim" || { dead_us=$(now_us); break; }
        sleep 0.005
    done
    [ -n "$dead_us" ] || die "worker $victim was not killed within $((HB_TIMEOUT + 5)) s"
    silence=""
    for j in $(seq 200); do
        silence=$(master_log hb "select(.reason == \"timeout\" and .worker_pid == $victim and .silence_ms != null) | .silence_ms" | sed -n 1p)
        [ -n "$silence" ] && break
        sleep 0.01
    done
    HB+=($(((dead_us - stop_us) / 1000)))
    SIL+=("${silence:-?}")
    log "stopped worker $victim: killed after ${HB[-1]} ms (master logged silence_ms ${SIL[-1]})"
done
stop_server hb
read -r "R[hb.min]" "R[hb.max]" <<<"$(printf '%s\n' "${HB[@]}" | sort -n | awk 'NR==1{a=$1} {b=$1} END{print a, b}')"
read -r "R[sil.min]" "R[sil.max]" <<<"$(printf '%s\n' "${SIL[@]}" | grep -v '?' | sort -n | awk 'NR==1{a=$1} {b=$1} END{print a, b}')"

# ---------------------------------------------------------------------------------------------------------
# Access logs on: the cost of one JSON line per request (stdout to a file, as in production behind a pipe).

phase "access logs on"
start_server prefork_log "$PREFORK_WORKERS" "$PREFORK_THREADS" true
start_server baseline_log 0 2 true
measure prefork_log healthz /healthz
measure baseline_log healthz /healthz
R[prefork_log.dropped]=$(log_dropped prefork_log)
R[baseline_log.dropped]=$(log_dropped baseline_log)
stop_server prefork_log
stop_server baseline_log

else
    stop_server prefork
fi  # LATENCY_ONLY

# ---------------------------------------------------------------------------------------------------------
# Optional: this build against another one (--compare), access logs on, alternating pairs of runs.

CMP_THIS=(); CMP_OTHER=(); CMP_THIS_CPU=(); CMP_OTHER_CPU=()
CMP_LOG=$([ "$COMPARE_ACCESS_LOG" = true ] && echo on || echo off)
if [ -n "$COMPARE_BIN" ]; then
    phase "access logs $CMP_LOG, against $COMPARE_BIN"
    [ -x "$COMPARE_BIN" ] || die "--compare: $COMPARE_BIN is not an executable"
    start_server cmp_this "$PREFORK_WORKERS" "$PREFORK_THREADS" "$COMPARE_ACCESS_LOG"
    START_BIN=$COMPARE_BIN start_server cmp_other "$PREFORK_WORKERS" "$PREFORK_THREADS" "$COMPARE_ACCESS_LOG"
    for i in $(seq "$COMPARE_ROUNDS"); do
        measure cmp_this "healthz$i" /healthz
        measure cmp_other "healthz$i" /healthz
        CMP_THIS+=("${R[cmp_this.healthz$i.rps]}"); CMP_OTHER+=("${R[cmp_other.healthz$i.rps]}")
        CMP_THIS_CPU+=("${R[cmp_this.healthz$i.cpu]}"); CMP_OTHER_CPU+=("${R[cmp_other.healthz$i.cpu]}")
    done
    R[cmp_this.dropped]=$(log_dropped cmp_this)
    stop_server cmp_this
    stop_server cmp_other
    R[cmp.this]=$(printf '%s\n' "${CMP_THIS[@]}" | awk '{ s += $1 } END { print s / NR }')
    R[cmp.other]=$(printf '%s\n' "${CMP_OTHER[@]}" | awk '{ s += $1 } END { print s / NR }')
    R[cmp.this_cpu]=$(printf '%s\n' "${CMP_THIS_CPU[@]}" | awk '{ s += $1 } END { printf "%.1f", s / NR }')
    R[cmp.other_cpu]=$(printf '%s\n' "${CMP_OTHER_CPU[@]}" | awk '{ s += $1 } END { printf "%.1f", s / NR }')
    log "access logs $CMP_LOG: this build $(int "${R[cmp.this]}") req/s, $COMPARE_BIN $(int "${R[cmp.other]}") req/s (means of $COMPARE_ROUNDS), ratio $(ratio "${R[cmp.this]}" "${R[cmp.other]}"); server CPU ${R[cmp.this_cpu]} / ${R[cmp.other_cpu]} us/request"
fi

# ---------------------------------------------------------------------------------------------------------
# Optional: prefork shapes (and builds) against each other and bare hyper, alternating rounds (--shapes).

SHAPE_NAMES=()
declare -A SHAPE_LABEL=()
if [ -n "$SHAPES" ]; then
    phase "prefork shapes"
    i=0
    for spec in ${SHAPES//,/ }; do
        i=$((i + 1))
        shape=${spec%%@*} bin=""
        [ "$shape" = "$spec" ] || bin=${spec#*@}
        [ -z "$bin" ] || [ -x "$bin" ] || die "--shapes: $bin is not an executable"
        # Idle servers cost nothing measurable, so all of them run throughout and take turns.
        START_BIN=$bin start_server "shape$i" "${shape%x*}" "${shape#*x}" false
        SHAPE_LABEL[shape$i]="prefork ${shape%x*} x ${shape#*x}${bin:+ ($bin)}"
        SHAPE_NAMES+=("shape$i")
    done
    start_bare shape_bare 2
    SHAPE_LABEL[shape_bare]="bare hyper, 2 threads"
    SHAPE_NAMES+=(shape_bare)
    # The open-loop rate: SHAPE_PCT of the open loop's 100% (else of the highest closed-loop rate above).
    peak=${OPEN_PEAK:-0}
    if [ "$peak" = 0 ]; then
        for s in prefork baseline bare; do
            if awk -v a="${R[$s.healthz.rps]:-0}" -v b="$peak" 'BEGIN{ exit !(a > b) }'; then peak=${R[$s.healthz.rps]}; fi
        done
    fi
    SHAPE_RATE=$(awk -v p="$peak" -v f="$SHAPE_PCT" 'BEGIN{ printf "%.0f", p * f / 100 }')
    n=${#SHAPE_NAMES[@]}
    for round in $(seq "$SHAPE_ROUNDS"); do
        log "shapes: round $round of $SHAPE_ROUNDS"
        for j in $(seq 0 $((n - 1))); do
            name=${SHAPE_NAMES[$(((round - 1 + j) % n))]}
            measure "$name" "r$round" /healthz
            [ "$OPEN_LOOP" = 0 ] || open_point "$name" "o$round" "$SHAPE_RATE"
        done
    done
    for name in "${SHAPE_NAMES[@]}"; do stop_server "$name"; done
fi

# ---------------------------------------------------------------------------------------------------------
# Optional: configuration variants (--extra).

VARIANTS=()
if [ "$EXTRA" = 1 ]; then
    phase "configuration variants"
    main_conns=$CONNS main_duration=$DURATION main_warmup=$WARMUP
    DURATION=$EXTRA_DURATION WARMUP=$EXTRA_WARMUP
    # name workers threads keepalive connections pool_size log_level paths label
    while read -r name workers threads keepalive conns pool level paths label; do
        [ -n "$name" ] || continue
        CONNS=$conns
        start_server "$name" "$workers" "$threads" false 30 "$keepalive" "$pool" "$level"
        for path in ${paths//,/ }; do
            key=${path#/}; args=()
            [ "$path" = /api/items ] && { key=items; args=(BENCH_METHOD=POST "BENCH_BODY=$POST_BODY"); }
            measure "$name" "$key" "$path" "${args[@]}"
            VARIANTS+=("$name|$label|$path|$conns")
        done
        stop_server "$name"
    done <<EOF
pf2x2 2 2 5 64 4 info /healthz,/readyz prefork, 2 workers x 2 threads
pf4x1 4 1 5 64 4 info /healthz,/readyz prefork, 4 workers x 1 thread
bl1 0 1 5 64 4 info /healthz,/readyz single process, 1 thread
pf_c16 2 1 5 16 4 info /healthz prefork, 2 workers x 1 thread
bl_c16 0 2 5 16 4 info /healthz single process, 2 threads
pf_noka 2 1 0 64 4 info /healthz prefork, 2 workers x 1 thread, keepalive 0
bl_noka 0 2 0 64 4 info /healthz single process, 2 threads, keepalive 0
bl_pool8 0 2 5 64 8 info /api/items single process, 2 threads, pool_size 8 (as many DB connections as prefork)
pf_warn 2 1 5 64 4 warning /api/items prefork, 2 workers x 1 thread, log_level warning
EOF
    CONNS=$main_conns DURATION=$main_duration WARMUP=$main_warmup
fi

# ---------------------------------------------------------------------------------------------------------
# Report

phase "report"
verdict() { if awk "BEGIN{exit !($1)}"; then echo "met"; else echo "**not met**"; fi; }
row() { local c out="|"; for c in "$@"; do out+=" $c |"; done; echo "$out"; }
GUNICORN_READYZ=2400

table() {
    row "measure" "prefork (master + $PREFORK_WORKERS workers x $PREFORK_THREADS thread$([ "$PREFORK_THREADS" = 1 ] || echo s))" "baseline (1 process, 2 threads)" "prefork / baseline" "goal" "result"
    row "---" "---:" "---:" "---:" "---" "---"
    local key path rp rb p50p p50b p99p p99b
    for target in "healthz GET /healthz" "readyz GET /readyz" "items POST /api/items"; do
        read -r key path <<<"$target"
        [ "$LATENCY_ONLY" = 1 ] && [ "$key" != healthz ] && continue
        rp=${R[prefork.$key.rps]}; rb=${R[baseline.$key.rps]}
        p50p=${R[prefork.$key.p50]}; p50b=${R[baseline.$key.p50]}
        p99p=${R[prefork.$key.p99]}; p99b=${R[baseline.$key.p99]}
        case $key in
            healthz) row "$path req/s" "$(int "$rp")" "$(int "$rb")" "$(ratio "$rp" "$rb")" "ratio >= 1.00" "$(verdict "$rp >= $rb")" ;;
            readyz) row "$path req/s" "$(int "$rp")" "$(int "$rb")" "$(ratio "$rp" "$rb")" ">= 10 x $GUNICORN_READYZ = $((10 * GUNICORN_READYZ)) (gunicorn+uvicorn)" "$(verdict "$rp >= 10 * $GUNICORN_READYZ") ($(ratio "$rp" "$GUNICORN_READYZ") x)" ;;
            *) row "$path req/s" "$(int "$rp")" "$(int "$rb")" "$(ratio "$rp" "$rb")" "" "" ;;
        esac
        row "$path p50 ms" "$(ms "$p50p")" "$(ms "$p50b")" "$(ratio "$p50p" "$p50b")" "" ""
        if [ "$key" = healthz ]; then
            row "$path p99 ms" "$(ms "$p99p")" "$(ms "$p99b")" "$(ratio "$p99p" "$p99b")" "ratio <= 1.20" "$(verdict "$p99p <= 1.2 * $p99b")"
        else
            row "$path p99 ms" "$(ms "$p99p")" "$(ms "$p99b")" "$(ratio "$p99p" "$p99b")" "" ""
        fi
        row "$path server CPU us/request" "${R[prefork.$key.cpu]}" "${R[baseline.$key.cpu]}" "$(ratio "${R[prefork.$key.cpu]}" "${R[baseline.$key.cpu]}")" "" ""
        row "$path errors" "${R[prefork.$key.err]} / ${R[prefork.$key.n]}" "${R[baseline.$key.err]} / ${R[baseline.$key.n]}" "" "0" "$(verdict "${R[prefork.$key.err]} == 0 && ${R[baseline.$key.err]} == 0")"
    done
    # The same answer from bare hyper: what the process model and the app's per-request work cost together.
    rp=${R[prefork.healthz.rps]}; rb=${R[bare.healthz.rps]}
    row "GET /healthz req/s, prefork / bare hyper (1 process, 2 threads)" "$(int "$rp")" "$(int "$rb") (bare)" "$(ratio "$rp" "$rb")" "ratio >= 0.90" "$(verdict "$rp >= 0.9 * $rb")"
    row "GET /healthz p99 ms, prefork / bare hyper" "$(ms "${R[prefork.healthz.p99]}")" "$(ms "${R[bare.healthz.p99]}") (bare)" "$(ratio "${R[prefork.healthz.p99]}" "${R[bare.healthz.p99]}")" "ratio <= 1.20" "$(verdict "${R[prefork.healthz.p99]} <= 1.2 * ${R[bare.healthz.p99]}")"
    row "GET /healthz p99.9 ms, prefork / bare hyper" "$(ms "${R[prefork.healthz.p999]}")" "$(ms "${R[bare.healthz.p999]}") (bare)" "$(ratio "${R[prefork.healthz.p999]}" "${R[bare.healthz.p999]}")" "" ""
    row "GET /healthz server CPU us/request, prefork / bare hyper" "${R[prefork.healthz.cpu]}" "${R[bare.healthz.cpu]} (bare)" "$(ratio "${R[prefork.healthz.cpu]}" "${R[bare.healthz.cpu]}")" "ratio <= 1.15" "$(verdict "${R[prefork.healthz.cpu]} <= 1.15 * ${R[bare.healthz.cpu]}")"
    row "GET /healthz errors, bare hyper" "" "${R[bare.healthz.err]} / ${R[bare.healthz.n]}" "" "0" "$(verdict "${R[bare.healthz.err]} == 0")"
    if [ "$LATENCY_ONLY" = 0 ]; then
    rp=${R[prefork_log.healthz.rps]}; rb=${R[baseline_log.healthz.rps]}
    row "GET /healthz req/s, access log on" "$(int "$rp") ($(ratio "$rp" "${R[prefork.healthz.rps]}") x off)" "$(int "$rb") ($(ratio "$rb" "${R[baseline.healthz.rps]}") x off)" "$(ratio "$rp" "$rb")" "" ""
    row "GET /healthz p99 ms, access log on" "$(ms "${R[prefork_log.healthz.p99]}")" "$(ms "${R[baseline_log.healthz.p99]}")" "$(ratio "${R[prefork_log.healthz.p99]}" "${R[baseline_log.healthz.p99]}")" "" ""
    row "log lines dropped in the access-log runs" "${R[prefork_log.dropped]}" "${R[baseline_log.dropped]}" "" "0" "$(verdict "\"${R[prefork_log.dropped]}\" == \"0\" && \"${R[baseline_log.dropped]}\" == \"0\"")"
    fi
    if [ -n "$COMPARE_BIN" ]; then
        row "GET /healthz req/s, access log $CMP_LOG, prefork: this build / --compare build (means of $COMPARE_ROUNDS alternating runs)" "$(int "${R[cmp.this]}") ($(printf '%.0f ' "${CMP_THIS[@]}"| sed 's/ $//'))" "$(int "${R[cmp.other]}") ($(printf '%.0f ' "${CMP_OTHER[@]}" | sed 's/ $//'))" "$(ratio "${R[cmp.this]}" "${R[cmp.other]}")" "ratio >= 1.00" "$(verdict "${R[cmp.this]} >= ${R[cmp.other]}")"
        row "GET /healthz server CPU us/request, access log $CMP_LOG, prefork: this build / --compare build" "${R[cmp.this_cpu]} (${CMP_THIS_CPU[*]})" "${R[cmp.other_cpu]} (${CMP_OTHER_CPU[*]})" "$(ratio "${R[cmp.this_cpu]}" "${R[cmp.other_cpu]}")" "" ""
    fi
    if [ "$LATENCY_ONLY" = 0 ]; then
    rp=${R[prefork.scraped.rps]}
    row "GET /healthz with /metrics scraped back to back: req/s" "$(int "$rp") ($(ratio "$rp" "${R[prefork.healthz.rps]}") x unscraped)" "" "" "" ""
    row "GET /healthz with /metrics scraped back to back: p99 ms, errors" "$(ms "${R[prefork.scraped.p99]}") ($(ratio "${R[prefork.scraped.p99]}" "${R[prefork.healthz.p99]}") x unscraped), ${R[prefork.scraped.err]} / ${R[prefork.scraped.n]}" "" "" "0 errors" "$(verdict "${R[prefork.scraped.err]} == 0")"
    row "GET /metrics scrapes meanwhile: per second, p99 ms, errors" "$(int "${R[scrape.rps]:-0}"), ${R[scrape.p99]:-?}, ${R[scrape.err]} / ${R[scrape.n]:-?}" "" "" "" ""
    fi
    row "idle PSS MB (process tree)" "$(mb "${R[prefork.idle.pss]}")" "$(mb "${R[baseline.idle.pss]}")" "$(ratio "${R[prefork.idle.pss]}" "${R[baseline.idle.pss]}")" "<= 10 MB (master + 2 workers)" "$(verdict "${R[prefork.idle.pss]} <= 10240")"
    row "idle RSS MB (sum over the tree)" "$(mb "${R[prefork.idle.rss]}")" "$(mb "${R[baseline.idle.rss]}")" "$(ratio "${R[prefork.idle.rss]}" "${R[baseline.idle.rss]}")" "(RSS counts shared pages once per process)" "$(if [ "${R[prefork.idle.rss]}" -le 10240 ]; then echo "met"; else echo "over 10 MB"; fi)"
    row "loaded PSS MB (peak)" "$(mb "${R[prefork.load.pss]}")" "$(mb "${R[baseline.load.pss]}")" "$(ratio "${R[prefork.load.pss]}" "${R[baseline.load.pss]}")" "" ""
    row "loaded RSS MB (peak)" "$(mb "${R[prefork.load.rss]}")" "$(mb "${R[baseline.load.rss]}")" "$(ratio "${R[prefork.load.rss]}" "${R[baseline.load.rss]}")" "" ""
    [ "$LATENCY_ONLY" = 0 ] || return 0
    row "HUP reload under load: failed requests" "${R[reload.failed]} / ${R[reload.requests]}" "" "" "0" "$(verdict "${R[reload.failed]} == 0")"
    row "HUP reload: req/s in the window / steady" "$(int "${R[reload.window]}") / $(int "${R[reload.steady]}") = $(awk -v a="${R[reload.window]}" -v b="${R[reload.steady]}" 'BEGIN{printf "%.0f%%", 100*a/b}')" "" "" ">= 80%" "$(verdict "${R[reload.window]} >= 0.8 * ${R[reload.steady]}")"
    row "HUP reload: worst 100 ms / steady" "$(awk -v a="${R[reload.worst]}" -v b="${R[reload.steady]}" 'BEGIN{printf "%.0f%%", 100*a/b}')" "" "" "" ""
    row "HUP reload: new generation ready; window" "${R[reload.boot_ms]} ms; ${R[reload.window_ms]} ms" "" "" "" ""
    row "worker replacement after kill -9, median / max (n=$REPLACEMENTS)" "${R[repl.median]} / ${R[repl.max]} ms" "" "" "< 100 ms" "$(verdict "${R[repl.max]} < 100")"
    row "heartbeat timeout=${HB_TIMEOUT}s: SIGSTOP -> killed, min-max (n=$TIMEOUT_SAMPLES)" "${R[hb.min]} - ${R[hb.max]} ms" "" "" "[$((HB_TIMEOUT * 1000)), $((HB_TIMEOUT * 1000 + 1000))] ms" "$(verdict "${R[hb.min]} >= $HB_TIMEOUT * 1000 && ${R[hb.max]} <= $HB_TIMEOUT * 1000 + 1000")"
    row "heartbeat timeout: silence logged by the master, min-max" "${R[sil.min]} - ${R[sil.max]} ms" "" "" "(kills past timeout + timeout/4 = $((HB_TIMEOUT * 1250)) ms of silence)" ""
}

variants_table() {
    [ ${#VARIANTS[@]} -gt 0 ] || return 0
    echo
    echo "Configuration variants (--extra; ${EXTRA_WARMUP} s warm-up, ${EXTRA_DURATION} s measured):"
    echo
    row "configuration" "path" "wrk connections" "req/s" "p50 ms" "p99 ms" "errors" "server CPU us/request" "connections per process"
    row "---" "---" "---:" "---:" "---:" "---:" "---:" "---:" "---"
    local v name label path key conns m
    for v in "${VARIANTS[@]}"; do
        IFS='|' read -r name label path conns <<<"$v"
        key=${path#/}
        case $path in /api/items) key=items; m=POST ;; *) m=GET ;; esac
        row "$label" "$m $path" "$conns" "$(int "${R[$name.$key.rps]}")" "$(ms "${R[$name.$key.p50]}")" "$(ms "${R[$name.$key.p99]}")" "${R[$name.$key.err]}" "${R[$name.$key.cpu]}" "${R[$name.$key.conns]:-}"
    done
}

# The open-loop curve, the three servers side by side at each offered rate, then what it says.
open_table() {
    [ ${#OPEN_POINTS[@]} -gt 0 ] || return 0
    echo
    echo "Open loop, GET /healthz (oha, $CONNS connections, ${OPEN_DURATION} s per point, each request timed from when it was due; 100% = $OPEN_PEAK req/s, $OPEN_PEAK_NOTE):"
    echo
    row "offered req/s" "answered req/s: prefork / baseline / bare" "p50 ms: prefork / baseline / bare" "p99 ms: prefork / baseline / bare" "p99.9 ms: prefork / baseline / bare" "p99 prefork / bare" "server CPU us/request: prefork / baseline / bare" "errors"
    row "---:" "---:" "---:" "---:" "---:" "---:" "---:" "---:"
    local pt key pct rate s
    # "a / b / c": field $1 of the three servers at point $key, each through $2 (a formatting function).
    three() { local conv=$2 v=() s j; for s in "${OPEN_SERVERS[@]}"; do v+=("$($conv "${R[$s.$key.$1]}")"); done; j="${v[*]}"; echo "${j// / / }"; }
    for pt in "${OPEN_POINTS[@]}"; do
        IFS='|' read -r key pct rate <<<"$pt"
        row "$rate ($pct%)" "$(three rps int)" "$(three p50 ms)" "$(three p99 ms)" "$(three p999 ms)" "$(ratio "${R[prefork.$key.p99]}" "${R[bare.$key.p99]}")" "$(three cpu echo)" "$(three err echo)"
    done
    # The point at 50% of the peak (else the first one) stands for "a fixed rate" below.
    local ref="${OPEN_POINTS[0]}"
    for pt in "${OPEN_POINTS[@]}"; do [ "${pt#*|}" = "50|${pt##*|}" ] && ref=$pt; done
    IFS='|' read -r key pct rate <<<"$ref"
    echo
    row "measure" "prefork" "baseline" "bare hyper" "prefork / bare" "goal" "result"
    row "---" "---:" "---:" "---:" "---:" "---" "---"
    local cells=()
    for s in "${OPEN_SERVERS[@]}"; do cells+=("${R[$s.slo.lo]}${R[$s.slo.hi]:+ (not ${R[$s.slo.hi]})}"); done
    row "highest offered req/s with p99 <= $OPEN_SLO_MS ms, no errors, >= 95% answered" "${cells[@]}" "$(ratio "${R[prefork.slo.lo]}" "${R[bare.slo.lo]}")" "" ""
    local goal="" result=""
    if [ "$pct" = 50 ]; then goal="<= bare + 10%"; result=$(verdict "${R[prefork.$key.p99]} <= 1.1 * ${R[bare.$key.p99]}"); fi
    row "p99 ms at $rate req/s ($pct%)" "$(ms "${R[prefork.$key.p99]}")" "$(ms "${R[baseline.$key.p99]}")" "$(ms "${R[bare.$key.p99]}")" "$(ratio "${R[prefork.$key.p99]}" "${R[bare.$key.p99]}")" "$goal" "$result"
    row "server CPU us/request at $rate req/s ($pct%)" "${R[prefork.$key.cpu]}" "${R[baseline.$key.cpu]}" "${R[bare.$key.cpu]}" "$(ratio "${R[prefork.$key.cpu]}" "${R[bare.$key.cpu]}")" "" ""
    row "waited for a CPU, us/request at $rate req/s ($pct%)" "${R[prefork.$key.waitreq]}" "${R[baseline.$key.waitreq]}" "${R[bare.$key.waitreq]}" "$(ratio "${R[prefork.$key.waitreq]}" "${R[bare.$key.waitreq]}")" "" ""
}

# --shapes: per shape, the median over the rounds of each figure and of its ratio to bare hyper's in the same
# round, with the rounds' values.
shapes_table() {
    [ ${#SHAPE_NAMES[@]} -gt 0 ] || return 0
    echo
    echo "Prefork shapes, GET /healthz, $SHAPE_ROUNDS alternating rounds (closed loop: wrk -t$WRK_THREADS -c$CONNS, ${WARMUP} s warm-up, ${DURATION} s measured$([ "$OPEN_LOOP" = 0 ] || echo "; open loop: $SHAPE_RATE req/s, $SHAPE_PCT% of the peak, ${OPEN_DURATION} s")); median (x bare hyper: median of the rounds' ratios) and each round's value:"
    echo
    local cols=("shape" "req/s" "p99 ms" "p99.9 ms" "server CPU us/request")
    [ "$OPEN_LOOP" = 0 ] || cols+=("open loop p99 ms" "open loop p99.9 ms" "open loop server CPU us/request")
    cols+=("connections / requests (%) per process / requests per connection, last round")
    row "${cols[@]}"
    local seps=("---") c
    for c in "${cols[@]:1}"; do seps+=("---:"); done
    seps[-1]="---"
    row "${seps[@]}"
    local name
    for name in "${SHAPE_NAMES[@]}"; do
        local cells=("${SHAPE_LABEL[$name]}")
        cells+=("$(shape_cell "$name" r rps int)" "$(shape_cell "$name" r p99 ms)" "$(shape_cell "$name" r p999 ms)" "$(shape_cell "$name" r cpu one)")
        [ "$OPEN_LOOP" = 0 ] || cells+=("$(shape_cell "$name" o p99 ms)" "$(shape_cell "$name" o p999 ms)" "$(shape_cell "$name" o cpu one)")
        cells+=("${R[$name.r$SHAPE_ROUNDS.conns]:+${R[$name.r$SHAPE_ROUNDS.conns]} / ${R[$name.r$SHAPE_ROUNDS.reqshare]} / ${R[$name.r$SHAPE_ROUNDS.connreq]}}")
        row "${cells[@]}"
    done
}
# shape_cell NAME PREFIX FIELD FORMAT: "median (x ratio) [v1 v2 ...]" over the rounds, the ratio being the
# median of the rounds' ratios to bare hyper's figure of the same round (medians: one disturbed round on a
# shared machine moves a mean by a factor, a median not).
shape_cell() {
    local name=$1 pre=$2 f=$3 conv=$4 i vals=() raw=() ratios=()
    for i in $(seq "$SHAPE_ROUNDS"); do
        raw+=("${R[$name.$pre$i.$f]:-0}")
        vals+=("$($conv "${R[$name.$pre$i.$f]:-0}")")
        ratios+=("$(awk -v v="${R[$name.$pre$i.$f]:-0}" -v b="${R[shape_bare.$pre$i.$f]:-0}" 'BEGIN{ print (b > 0 ? v / b : 0) }')")
    done
    echo "$($conv "$(median "${raw[@]}")") (x $(printf '%.2f' "$(median "${ratios[@]}")")) [${vals[*]}]"
}
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

TABLE=$(table; variants_table; open_table; shapes_table)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ] && COMMIT="$COMMIT (with uncommitted changes)"
CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
TOTAL_S=$(awk -v a="$START_US" -v b="$(now_us)" 'BEGIN{printf "%.0f", (b-a)/1e6}')

{
    echo "# Benchmark results"
    echo
    echo "Written by \`bench/run.sh\`; see [docs/performance.md](../docs/performance.md) for what each number means."
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs ($CPU), $(awk '/^MemTotal/ {printf "%.0f GB RAM", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
    echo "- commit: $COMMIT${BENCH_BIN:+; binary: $BENCH_BIN}${COMPARE_BIN:+; compared with: $COMPARE_BIN}"
    echo "- load: client (wrk, oha), servers and PostgreSQL share the machine; $IDLE_NOTE"
    echo "- wrk: $WRK_THREADS threads, $CONNS connections, ${WARMUP} s warm-up then ${DURATION} s measured per row, keep-alive; PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') (fsync off)"
    echo "- servers: access_log off except where noted; prod env; pool_size 4 per worker; log to a file; bare hyper: bench/bare-hyper, 2 threads"
    echo "- run time: ${TOTAL_S} s, of which ${WAITED} s waiting for an idle machine"
    echo
    echo "$TABLE"
    echo
    echo "Details:"
    echo
    echo "- errors = non-2xx responses (wrk counts status >= 400) + socket errors (connect, read, write, timeout) / requests"
    echo "- memory: idle = 1 s after start, before any request; loaded = peak of 0.5 s samples during the measured runs; prefork tree = $PREFORK_PROCS processes"
    echo "- idle memory per process: prefork ${R[prefork.idle.detail]}; baseline ${R[baseline.idle.detail]} (private = pages no other process maps)"
    echo "- server CPU us/request = CPU time of the server's processes during the measured run / requests$([ "$LATENCY_ONLY" = 1 ] || echo "; PostgreSQL CPU per POST /api/items: prefork ${R[prefork.items.pgcpu]} us, baseline ${R[baseline.items.pgcpu]} us")"
    echo "- CPU cores used during each measured run, server / PostgreSQL / wrk / everything else on the machine (2 = all):"
    local_split() { local n; for n in "$@"; do echo "  - $n"; done; }
    split_lines=()
    for target in "${TARGETS[@]}"; do
        k=${target%% *}
        for m in prefork baseline; do split_lines+=("$m $k: ${R[$m.$k.split]}"); done
    done
    split_lines+=("bare hyper healthz: ${R[bare.healthz.split]}")
    if [ "$LATENCY_ONLY" = 0 ]; then
        split_lines+=("prefork healthz with /metrics scraped (the scraping client counts as other): ${R[prefork.scraped.split]}")
        for m in prefork_log baseline_log; do split_lines+=("$m healthz: ${R[$m.healthz.split]}"); done
    fi
    for i in $(seq ${#CMP_THIS[@]}); do
        for m in cmp_this cmp_other; do split_lines+=("$m healthz (round $i): ${R[$m.healthz$i.split]}"); done
    done
    for v in "${VARIANTS[@]}"; do
        IFS='|' read -r n _ p _ <<<"$v"; k=${p#/}; [ "$p" = /api/items ] && k=items
        split_lines+=("$n $k: ${R[$n.$k.split]}")
    done
    for n in "${SHAPE_NAMES[@]}"; do
        for r in $(seq "$SHAPE_ROUNDS"); do
            split_lines+=("${SHAPE_LABEL[$n]}, round $r: ${R[$n.r$r.split]}; waited for a CPU $(sched_text "$n.r$r")${R[$n.r$r.conns]:+; connections / requests (%) / requests per connection ${R[$n.r$r.conns]} / ${R[$n.r$r.reqshare]} / ${R[$n.r$r.connreq]}}")
            [ "$OPEN_LOOP" = 0 ] || split_lines+=("${SHAPE_LABEL[$n]}, round $r, open loop (server/oha/other): ${R[$n.o$r.split]}; waited for a CPU $(sched_text "$n.o$r")")
        done
    done
    local_split "${split_lines[@]}"
    echo "- prefork workers near the end (90%) of each run: the client's connections per worker / requests per worker in % / fewest-most requests on one connection: /healthz ${R[prefork.healthz.conns]:-?} / ${R[prefork.healthz.reqshare]:-?} / ${R[prefork.healthz.connreq]:-?}$([ "$LATENCY_ONLY" = 1 ] || echo ", /readyz ${R[prefork.readyz.conns]:-?} / ${R[prefork.readyz.reqshare]:-?} / ${R[prefork.readyz.connreq]:-?}, POST /api/items ${R[prefork.items.conns]:-?} / ${R[prefork.items.reqshare]:-?} / ${R[prefork.items.connreq]:-?}")"
    echo "- GET /healthz, requests per client connection near the end of the run (fewest-most, coefficient of variation): prefork ${R[prefork.healthz.connreq]:-?}, baseline ${R[baseline.healthz.connreq]:-?}, bare hyper ${R[bare.healthz.connreq]:-?}"
    echo "- scheduling of the servers' threads during the GET /healthz runs (schedstat: time runnable but waiting for a CPU; context switches, voluntary = it blocked, involuntary = it was preempted):"
    for m in prefork baseline bare; do echo "  - $m: $(sched_text "$m.healthz")"; done
    if [ ${#OPEN_POINTS[@]} -gt 0 ]; then
        echo "- open loop: oha ${OHA_ARGS:+($OHA_ARGS) }with -q RATE --latency-correction -c $CONNS -w -t 2s; errors = non-2xx + failed requests; a point is within the objective when p99 <= $OPEN_SLO_MS ms, no error and >= 95% of the offered rate answered; highest rate: the points above, then $OPEN_SEARCH bisection steps between the highest point within it and the lowest above it that is not"
        echo "- open loop, each point: CPU cores server / oha / everything else, and the server's scheduling:"
        for pt in "${OPEN_POINTS[@]}"; do
            IFS='|' read -r k _ rate <<<"$pt"
            for m in "${OPEN_SERVERS[@]}"; do echo "  - $m at $rate req/s: ${R[$m.$k.split]}; waited for a CPU $(sched_text "$m.$k")"; done
        done
        for i in $(seq "$OPEN_SEARCH"); do
            for m in "${OPEN_SERVERS[@]}"; do
                [ -n "${R[$m.search$i.rate]:-}" ] || continue
                echo "  - $m, bisection step $i, at ${R[$m.search$i.rate]} req/s: $(int "${R[$m.search$i.rps]}") answered, p99 $(ms "${R[$m.search$i.p99]}") ms, errors ${R[$m.search$i.err]}; ${R[$m.search$i.split]}"
            done
        done
    fi
    if [ "$LATENCY_ONLY" = 0 ]; then
    echo "- rows inserted by POST /api/items: $ITEMS"
    echo "- reload: HUP ${RELOAD_AT} s into a ${RELOAD_DURATION} s run on GET /healthz; window = HUP to the exit of the last old worker; steady = from 1 s after the start to the HUP; after the reload: $(int "${R[reload.after]}") req/s"
    echo "- reload timeline, thousand req/s per 100 ms from 0.3 s before the HUP to 0.3 s after the window: ${R[reload.timeline]}"
    echo "- reload: wrk connections per worker 1 s before the HUP: ${R[reload.conns_before]:-?}; 3 s after it: ${R[reload.conns_after]:-?}"
    echo "- replacement samples (ms): ${REPL[*]}"
    echo "- heartbeat samples, SIGSTOP -> killed (ms): ${HB[*]}; silence logged (ms): ${SIL[*]}"
    fi
    echo "- load average (1, 5, 15 min) before each phase:"
    for l in "${LOADS[@]}"; do echo "  - $l"; done
} >"$OUT"

echo
echo "$TABLE"
echo
log "results written to $OUT (${TOTAL_S} s)"
