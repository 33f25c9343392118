#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: user-space work of the process that serves,
# the same from run to run whatever else the machine does (unlike CPU time), so a change of a few percent
# shows. System calls are counted as the instructions that make them, not the kernel's work behind them.
#
#   bench/instructions.sh [--bare] [--access-log] BIN [PATH] [REQUESTS]
#
# BIN is a `supervisor` binary (served with 1 worker, 1 thread, access logs off unless --access-log, prod
# env; DATABASE_URL, when set, becomes [database] url), or with --bare a bench/bare-hyper binary (1
# thread). PATH defaults to /healthz, REQUESTS to 5000. The server is started twice under callgrind; both
# runs take 500 warm-up requests, the second REQUESTS more (keep-alive, one request at a time on one
# connection, or on each of CONNECTIONS); the difference of the two totals divided by REQUESTS is the cost
# of a request, free of start-up and exit. With one connection the count is the same from run to run
# (within 0.2%); with several it depends on how many requests each wake-up finds ready, hence on timing. Prints that, then where the instructions go, grouped by the crate (or libc part)
# whose source they come from, inlined code included. Needs valgrind and python3; takes about a minute.
set -euo pipefail
export LC_ALL=C

BARE=0 ACCESS=false
while [ $# -gt 0 ]; do
    case "$1" in
        --bare) BARE=1 ;;
        --access-log) ACCESS=true ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) break ;;
    esac
    shift
done
BIN=${1:?usage: bench/instructions.sh [--bare] [--access-log] BIN [PATH] [REQUESTS]}
URLPATH=${2:-/healthz}
REQUESTS=${3:-5000}
CONNECTIONS=${CONNECTIONS:-1}
command -v valgrind >/dev/null || { echo "instructions.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/instructions.XXXXXX)
SERVER=""
cleanup() { [ -n "$SERVER" ] && kill -KILL "$SERVER" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# N keep-alive requests over C connections, one in flight on each; exits non-zero on any non-2xx.
cat >"$WORK/client.py" <<'PY'
import socket, sys
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: instructions\r\n\r\n".encode()
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(int(sys.argv[4]))]
done = 0
while done < n:
    batch = socks[: min(len(socks), n - done)]
    for s in batch:
        s.sendall(req)
    for s in batch:
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit("connection closed")
            buf += chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            if sep:
                length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0]
                if len(body) >= length:
                    break
        if not head.startswith(b"HTTP/1.1 2"):
            sys.exit(f"not a 2xx: {head[:40]!r}")
    done += len(batch)
PY

# run N: serve under callgrind, 500 + N requests, stop; sets CG_FILE to the callgrind file of the serving
# process. Not run in a command substitution, so that a failed request stops the script (set -e) and the
# cleanup trap sees SERVER.
run() {
    local n=$1 port=$((30000 + RANDOM % 2000)) out="$WORK/cg.$1"
    mkdir -p "$out"
    if [ "$BARE" = 1 ]; then
        valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" "$BIN" "127.0.0.1:$port" 1 >"$out/log" 2>&1 &
    else
        {
            printf 'bind = ["127.0.0.1:%s"]\nworkers = 1\nthreads = 1\ntimeout = 120\nboot_timeout = 60\n' "$port"
            printf '[app]\nenv = "prod"\naccess_log = %s\n' "$ACCESS"
            [ -n "${DATABASE_URL:-}" ] && printf '[database]\nurl = "%s"\n' "$DATABASE_URL"
        } >"$out/config.toml"
        valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" "$BIN" --config "$out/config.toml" >"$out/log" 2>&1 &
    fi
    SERVER=$!
    local i
    for i in $(seq 200); do
        python3 "$WORK/client.py" "$port" /healthz 1 1 2>/dev/null && break
        kill -0 "$SERVER" 2>/dev/null || { echo "instructions.sh: the server exited: $(tail -3 "$out/log")" >&2; exit 1; }
        sleep 0.2
    done
    python3 "$WORK/client.py" "$port" "$URLPATH" 500 "$CONNECTIONS"
    [ "$n" = 0 ] || python3 "$WORK/client.py" "$port" "$URLPATH" "$n" "$CONNECTIONS"
    kill -TERM "$SERVER"
    wait "$SERVER" || true
    SERVER=""
    # The serving process: the bare server, or the worker, forked after the master (the higher pid).
    CG_FILE=$(ls "$out"/cg.* | awk -F'cg.' '{ print $NF, $0 }' | sort -n | tail -1 | cut -d' ' -f2)
}

run 0
A=$CG_FILE
run "$REQUESTS"
B=$CG_FILE
python3 - "$A" "$B" "$REQUESTS" <<'PY'
import collections, re, subprocess, sys
def load(path):
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", path],
                         capture_output=True, text=True, check=True).stdout
    costs = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)", line)
        if m and not m.group(2).startswith(("PROGRAM TOTALS", "events annotated")):
            costs[m.group(2).strip()] += int(m.group(1).replace(",", ""))
    return costs
def group(key):
    m = re.search(r"index\.crates\.io-[^/]+/([A-Za-z0-9_\-]+?)-\d[^/]*/", key)
    if m:
        return m.group(1)
    m = re.search(r"(?:^|/)(app|supervisor|src|bench)/src/([a-z_]+)", key)
    if m:
        return {"src": "supervisor (binary)"}.get(m.group(1), m.group(1)) + "::" + m.group(2)
    if "/rustc/" in key:
        m = re.search(r"library/([a-z_]+)/src/([a-z_]+)", key)
        return "std: " + (m.group(1) + "::" + m.group(2) if m else "other")
    if "malloc" in key:
        return "libc: malloc/free"
    if "memmove" in key or "memcpy" in key or "memset" in key:
        return "libc: memcpy/memset"
    return "other: " + key.split(":")[0][-60:]
a, b, n = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
groups = collections.Counter()
for key in set(a) | set(b):
    groups[group(key)] += b.get(key, 0) - a.get(key, 0)
total = sum(groups.values())
print(f"{total / n:.0f} instructions per request ({n} requests)")
for name, cost in groups.most_common():
    if cost / n >= 25:
        print(f"{cost / n:8.0f}  {100 * cost / total:5.1f}%  {name}")
PY
