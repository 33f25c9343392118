#!/usr/bin/env bash
# Compose smoke test: the real docker/Dockerfile prod stage and the real compose/prod.yml on a real Docker engine.
#
#   bash tests/compose/smoke.sh            (as root; .ci/run runs it after cargo test)
#
# What it does, each step bounded in time:
#   1. Engine: uses the running Docker engine, or installs Debian's docker.io (+ docker-compose, debootstrap,
#      curl) when missing and starts dockerd in the background (log in a temporary file), stopped again at exit.
#   2. Base images: the pinned images cannot be pulled here, so it builds local stand-ins under the pinned names
#      (README.md): debootstrap bookworm minbase + `docker import` for debian, Debian's PostgreSQL and nginx on
#      top of it for postgres and nginx. Cached: skipped while the tag exists with the same recipe.
#   3. API image: `cargo build --release` on the host (Debian 12, the runtime's glibc), fed to the prod stage with
#      --build-arg SUPERVISOR_BINARY=prebuilt (crates cannot be fetched inside the engine here).
#   4. The stack from compose/prod.yml (+ standin.override.yml, which only drops nginx 1.27's `resolve`), then
#      the acceptance checks of the deployment: startup within 2 minutes; edge routes, /readyz internal only,
#      items, 429 in the contract shape; non-root and compiler-free image; zero failed requests through the
#      edge while the api reloads on SIGHUP (and no zombie left behind by PID 1); ops backup, retention, and a
#      restore into a fresh database with the same rows; `stop api` with a slow request in flight (request
#      completes, exit 0 within stop_grace_period; debug-api.override.yml enables the test-only slow route).
#   5. Cleanup, also on failure or interruption: compose down -v, temporary files, the copied binary, the smoke
#      image, and dockerd if this script started it. Stand-in images stay (cache).
#
# Ends with "N passed, N failed"; exit status 0 only if nothing failed.
# Knobs: SMOKE_TIMEOUT (whole run, seconds, default 1200), DEBIAN_MIRROR (default http://deb.debian.org/debian),
# SMOKE_REBUILD_STANDINS=1 (ignore the cached stand-ins).
set -uo pipefail

if [ -z "${SMOKE_WATCHDOG:-}" ]; then
    # A hard bound on the whole run. On expiry timeout(1) sends TERM to this script's process group; the EXIT
    # trap below still cleans up.
    export SMOKE_WATCHDOG=1
    exec timeout -s TERM -k 90 "${SMOKE_TIMEOUT:-1200}" bash "$0" "$@"
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/compose
cd "$ROOT"
export DEBIAN_FRONTEND=noninteractive

# Names pinned by docker/Dockerfile and compose/prod.yml (stand-ins are built under these tags).
DEBIAN_IMAGE=debian:12.11-slim
POSTGRES_IMAGE=postgres:16.9-bookworm
NGINX_IMAGE=nginx:1.28.0-bookworm
API_IMAGE=prefork-api:smoke
PROJECT=prefork-smoke
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

PASSED=0
FAILED=0
STARTED_DOCKERD_PID=
STACK_UP=
TMP=$(mktemp -d /tmp/compose-smoke.XXXXXX)
T0=$(date +%s)

log() { printf '[smoke %4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
pass() { PASSED=$((PASSED + 1)); log "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); log "FAIL: $*"; }
# check NAME COMMAND...: one pass or fail line.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}

# The engine's own CLI when there is one (a newer standalone CLI may expect buildx for `docker build`).
pick_docker() {
    if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=$(command -v docker || true); fi
}
pick_docker

compose() {
    local files=(-f compose/prod.yml -f "$HERE/standin.override.yml")
    [ -n "${WITH_DEBUG_API:-}" ] && files+=(-f "$HERE/debug-api.override.yml")
    "${COMPOSE[@]}" -p "$PROJECT" "${files[@]}" "$@"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    log "cleanup"
    [ -n "${LOAD_PIDS:-}" ] && kill $LOAD_PIDS 2>/dev/null
    [ -n "${SLOW_PID:-}" ] && kill "$SLOW_PID" 2>/dev/null
    if [ -n "$STACK_UP" ]; then
        if [ "$FAILED" -gt 0 ]; then
            log "service logs (tail) of the failed run:"
            timeout 30 "${COMPOSE[@]}" -p "$PROJECT" -f compose/prod.yml -f "$HERE/standin.override.yml" \
                logs --no-color --tail=25 2>&1 | cut -c1-400 | sed 's/^/    /'
        fi
        WITH_DEBUG_API=1 SMOKE_API_PORT=${SMOKE_API_PORT:-1} timeout 120 \
            bash -c "$(declare -f compose); $(declare -p COMPOSE HERE PROJECT); compose --profile ops down -v --remove-orphans --timeout 10" \
            >"$TMP/down.log" 2>&1 || { log "compose down failed:"; tail -5 "$TMP/down.log"; }
    fi
    [ -n "${DOCKER:-}" ] && timeout 60 "$DOCKER" image rm -f "$API_IMAGE" >/dev/null 2>&1
    rm -f "$ROOT/docker/prebuilt/supervisor"
    if [ -n "$STARTED_DOCKERD_PID" ]; then
        log "stopping the dockerd this run started (pid $STARTED_DOCKERD_PID)"
        kill -TERM "$STARTED_DOCKERD_PID" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$STARTED_DOCKERD_PID" 2>/dev/null
    fi
    rm -rf "$TMP"
    if [ "$rc" -ne 0 ] && [ "$FAILED" -eq 0 ]; then
        FAILED=1
        log "FAIL: the run stopped early (exit status $rc)"
    fi
    log "total $(($(date +%s) - T0)) s"
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ] && exit 0
    exit 1
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# Stops the run: the remaining checks depend on this step.
abort() {
    fail "$*"
    exit 1
}

# ------------------------------------------------------------------------------------------------ 1. engine
apt_install() {
    log "installing Debian packages: $*"
    timeout 300 apt-get update -qq >"$TMP/apt.log" 2>&1 &&
        timeout 600 apt-get install -y -qq --no-install-recommends "$@" >>"$TMP/apt.log" 2>&1 ||
        { tail -20 "$TMP/apt.log"; return 1; }
}

ensure_engine() {
    local missing=()
    [ -n "${DOCKER:-}" ] && command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    if ! command -v docker-compose >/dev/null 2>&1 && ! { [ -n "${DOCKER:-}" ] && "$DOCKER" compose version >/dev/null 2>&1; }; then
        missing+=(docker-compose)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        apt_install "${missing[@]}" || return 1
        pick_docker
    fi
    if [ -n "${DOCKER:-}" ] && "$DOCKER" compose version >/dev/null 2>&1; then
        COMPOSE=("$DOCKER" compose)
    else
        COMPOSE=(docker-compose)
    fi
    if timeout 20 "$DOCKER" info >/dev/null 2>&1; then
        log "using the running Docker engine"
        return 0
    fi
    log "starting dockerd (log: $TMP/dockerd.log)"
    dockerd >"$TMP/dockerd.log" 2>&1 &
    STARTED_DOCKERD_PID=$!
    local deadline=$(($(date +%s) + 60))
    until timeout 10 "$DOCKER" info >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ] || ! kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null; then
            tail -20 "$TMP/dockerd.log"
            return 1
        fi
        sleep 1
    done
    log "dockerd is up"
}

ensure_engine || abort "a Docker engine is running"
log "docker: $("$DOCKER" version --format '{{.Server.Version}}' 2>/dev/null), compose: ${COMPOSE[*]} $("${COMPOSE[@]}" version --short 2>/dev/null)"

# ----------------------------------------------------------------------------------- 2. base image stand-ins
# A stand-in is rebuilt when its recipe (the files under standins/NAME) changes: the recipe's hash is a label.
recipe_hash() { (cd "$HERE/standins" && find "$@" -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16); }
cached() { # IMAGE HASH
    [ -z "${SMOKE_REBUILD_STANDINS:-}" ] &&
        [ "$("$DOCKER" image inspect -f '{{index .Config.Labels "smoke.recipe"}}' "$1" 2>/dev/null)" = "$2" ]
}

build_debian_base() {
    if [ -z "${SMOKE_REBUILD_STANDINS:-}" ] && "$DOCKER" image inspect "$DEBIAN_IMAGE" >/dev/null 2>&1; then
        log "cached: $DEBIAN_IMAGE"
        return 0
    fi
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap || return 1
    log "building $DEBIAN_IMAGE: debootstrap --variant=minbase bookworm ($DEBIAN_MIRROR)"
    local rootfs=$TMP/rootfs
    timeout 600 debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >"$TMP/debootstrap.log" 2>&1 ||
        { tail -20 "$TMP/debootstrap.log"; return 1; }
    # What the official slim image adds: security and point-release updates in the sources, no package caches.
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb ${DEBIAN_MIRROR%/debian}/debian-security bookworm-security main
EOF
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    timeout 300 tar -C "$rootfs" -c . | timeout 300 "$DOCKER" import \
        -c 'CMD ["bash"]' -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -m "stand-in for $DEBIAN_IMAGE: debootstrap minbase bookworm" - "$DEBIAN_IMAGE" >/dev/null || return 1
    rm -rf "$rootfs"
}

build_standin() { # IMAGE DIR
    local image=$1 dir=$2 hash
    hash=$(recipe_hash "$dir")
    if cached "$image" "$hash"; then
        log "cached: $image"
        return 0
    fi
    log "building the stand-in $image from tests/compose/standins/$dir"
    DOCKER_BUILDKIT=1 timeout 600 "$DOCKER" build --build-arg BASE="$DEBIAN_IMAGE" --label smoke.recipe="$hash" \
        -t "$image" "$HERE/standins/$dir" >"$TMP/build-$dir.log" 2>&1 || { tail -20 "$TMP/build-$dir.log"; return 1; }
}

t=$(date +%s)
build_debian_base || abort "stand-in $DEBIAN_IMAGE"
build_standin "$POSTGRES_IMAGE" postgres || abort "stand-in $POSTGRES_IMAGE"
build_standin "$NGINX_IMAGE" nginx || abort "stand-in $NGINX_IMAGE"
log "base images ready in $(($(date +%s) - t)) s"

# ---------------------------------------------------------------------------------------------- 3. API image
t=$(date +%s)
log "cargo build --release --locked --bin supervisor (host)"
timeout 1200 cargo build --release --locked --bin supervisor >"$TMP/cargo.log" 2>&1 ||
    { tail -20 "$TMP/cargo.log"; abort "host release build"; }
install -m 0755 target/release/supervisor docker/prebuilt/supervisor
log "release binary ready in $(($(date +%s) - t)) s"
t=$(date +%s)
DOCKER_BUILDKIT=1 timeout 300 "$DOCKER" build -f docker/Dockerfile --target prod \
    --build-arg SUPERVISOR_BINARY=prebuilt -t "$API_IMAGE" . >"$TMP/build-api.log" 2>&1 ||
    { tail -30 "$TMP/build-api.log"; abort "docker build --target prod (prebuilt binary)"; }
pass "docker/Dockerfile prod stage builds with the host binary ($(($(date +%s) - t)) s)"

# ------------------------------------------------------------------------------------------------- 4. stack
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
EDGE_PORT=$(free_port)
SMOKE_API_PORT=$(free_port)
EDGE=http://127.0.0.1:$EDGE_PORT
mkdir -p "$TMP/backups"
# A password with characters that need quoting in a libpq connection string.
printf "smoke'pw\\\\%s \$x@y\n" "$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" >"$TMP/db_password"
chmod 0644 "$TMP/db_password"
export COMPOSE_PROJECT_NAME=$PROJECT API_IMAGE DB_PASSWORD_FILE=$TMP/db_password BACKUP_DIR=$TMP/backups \
    EDGE_HTTP_BIND=127.0.0.1 EDGE_HTTP_PORT=$EDGE_PORT SMOKE_API_PORT

# Leftovers of an interrupted earlier run.
WITH_DEBUG_API=1 timeout 120 bash -c "$(declare -f compose); $(declare -p COMPOSE HERE PROJECT); compose --profile ops down -v --remove-orphans --timeout 5" >/dev/null 2>&1

container() { compose ps -q "$1" 2>/dev/null | head -1; }
health() { "$DOCKER" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1" 2>/dev/null; }
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }

log "compose up (edge on $EDGE)"
t=$(date +%s)
STACK_UP=1
timeout 180 compose up -d --no-build >"$TMP/up.log" 2>&1 || { cat "$TMP/up.log"; }
deadline=$((t + 120))
ok=
while [ "$(date +%s)" -lt "$deadline" ]; do
    DB=$(container db) API=$(container api) MIGRATE=$(container migrate)
    if [ -n "$DB" ] && [ -n "$API" ] && [ -n "$MIGRATE" ] &&
        [ "$(health "$DB")" = healthy ] && [ "$(health "$API")" = healthy ] &&
        [ "$("$DOCKER" inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$MIGRATE")" = "exited 0" ] &&
        [ "$(http_code "$EDGE/healthz")" = 200 ]; then
        ok=1
        break
    fi
    sleep 1
done
if [ -n "$ok" ]; then
    pass "1. up: db healthy, migrate exited 0, api healthy, edge serving, in $(($(date +%s) - t)) s (limit 120 s)"
else
    cat "$TMP/up.log"
    compose ps
    abort "1. up: db healthy, migrate exited 0, api healthy, edge serving within 120 s"
fi

# ------------------------------------------------------------------------------------- 2. through the edge
check "2. GET /healthz through the edge: 200 {\"status\":\"ok\"}" \
    test "$(curl -s --max-time 5 -w ' %{http_code}' "$EDGE/healthz")" = '{"status":"ok"} 200'
check "2. /readyz is not reachable through the edge (403)" test "$(http_code "$EDGE/readyz")" = 403
check "2. /metrics is not reachable through the edge (403)" test "$(http_code "$EDGE/metrics")" = 403
check "2. /readyz answers 200 inside the network (supervisor healthcheck in the api container)" \
    timeout 20 compose exec -T api supervisor healthcheck http://127.0.0.1:8000/readyz

# json FILE EXPR: evaluate a Python expression over the parsed JSON document `j`.
json() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if eval(sys.argv[2]) else 1)' "$@" 2>/dev/null; }

code=$(curl -s --max-time 5 -o "$TMP/created.json" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    -d '{"name":"smoke item","quantity":3}' "$EDGE/api/items")
ITEM_ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$TMP/created.json" 2>/dev/null)
check "2. POST /api/items through the edge: 201 with an id" test "$code" = 201 -a -n "$ITEM_ID"
code=$(curl -s --max-time 5 -o "$TMP/got.json" -w '%{http_code}' "$EDGE/api/items/$ITEM_ID")
check "2. GET /api/items/{id} through the edge: 200, same item" \
    eval 'test "$code" = 200 && json "$TMP/got.json" "j[\"id\"] == \"$ITEM_ID\" and j[\"name\"] == \"smoke item\" and j[\"quantity\"] == 3"'

# A burst above the /api/ zone's burst (20 by default), on one keep-alive connection; each answer is kept.
burst_args=()
for i in $(seq 1 60); do burst_args+=(-o "$TMP/burst-$i.json" "$EDGE/api/items/$ITEM_ID?n=$i"); done
curl -s --max-time 20 -H 'X-Request-ID: smoke-burst-1' -w '%{http_code} %{content_type}\n' "${burst_args[@]}" \
    >"$TMP/burst.txt"
n429=$(grep -c '^429 ' "$TMP/burst.txt")
first429=$(grep -n '^429 ' "$TMP/burst.txt" | head -1 | cut -d: -f1)
burst_ok() {
    [ "$n429" -gt 0 ] && [ "$(grep -c '^200 ' "$TMP/burst.txt")" -gt 0 ] &&
        grep -q '^429 application/json' "$TMP/burst.txt" &&
        json "$TMP/burst-$first429.json" 'j == {"code": "rate_limited", "message": j["message"], "request_id": "smoke-burst-1", "details": None} and isinstance(j["message"], str) and j["message"]'
}
check "2. a burst of 60 gets 429 in the error contract ($n429 x 429, request id echoed, application/json)" burst_ok

# ------------------------------------------------------------------------------------------ 6. the image
API=$(container api)
uid_line=$("$DOCKER" exec "$API" sh -c 'grep "^Uid:" /proc/1/status' 2>/dev/null | tr -s '\t ' ' ')
check "6. the api container runs as a non-root user (PID 1 $uid_line; image USER $("$DOCKER" image inspect -f '{{.Config.User}}' "$API_IMAGE"))" \
    test "$uid_line" = "Uid: 10001 10001 10001 10001"
no_compiler() {
    timeout 60 "$DOCKER" run --rm --entrypoint /bin/sh "$API_IMAGE" -c '
        for c in cc gcc g++ c++ clang rustc cargo ld as make cpp; do
            if command -v "$c" >/dev/null 2>&1; then echo "found $c"; exit 1; fi
        done
        found=$(find / -xdev \( -name cc1 -o -name "rustc*" -o -name "libLLVM*" -o -name "collect2" \) -print -quit 2>/dev/null)
        [ -z "$found" ] || { echo "found $found"; exit 1; }'
}
check "6. the image has no compiler (cc, gcc, clang, rustc, cargo, ld, cc1)" no_compiler

# ---------------------------------------------------------------------- 4. SIGHUP reload under load
# Load through the edge: four keep-alive loops on /healthz (not rate limited) and one on an item under the
# /api/ rate. Every answer must be 200.
load_loop() { # OUTFILE STOPFILE URL PAUSE
    local args=() i
    for i in $(seq 1 25); do args+=(-o /dev/null "$3"); done
    while [ ! -e "$2" ]; do
        curl -s --max-time 10 -w '%{http_code}\n' "${args[@]}" >>"$1"
        [ "$4" = 0 ] || sleep "$4"
    done
}
zombies() { "$DOCKER" exec "$API" sh -c 'cat /proc/[0-9]*/stat 2>/dev/null' | sed 's/.*) //' | awk '$1 == "Z"' | wc -l; }
workers() { "$DOCKER" exec "$API" sh -c 'cat /proc/[0-9]*/stat 2>/dev/null' | sed 's/.*) //' | awk '$2 == 1' | wc -l; }
sleep 2 # let the burst's bucket refill
STOP=$TMP/load.stop
LOAD_PIDS=
for i in 1 2 3 4; do
    load_loop "$TMP/load-$i.txt" "$STOP" "$EDGE/healthz" 0 &
    LOAD_PIDS="$LOAD_PIDS $!"
done
item_url=$EDGE/api/items/$ITEM_ID
(
    while [ ! -e "$STOP" ]; do
        curl -s --max-time 10 -o /dev/null -w '%{http_code}\n' "$item_url" >>"$TMP/load-api.txt"
        sleep 0.25
    done
) &
LOAD_PIDS="$LOAD_PIDS $!"
sleep 3
hup_since=$(date -u +%Y-%m-%dT%H:%M:%S)
timeout 20 compose kill -s HUP api >/dev/null 2>&1
reloaded=
for _ in $(seq 60); do
    if "$DOCKER" logs --since "$hup_since" "$API" 2>&1 | grep -q '"reload complete'; then reloaded=1; break; fi
    sleep 0.5
done
sleep 4
touch "$STOP"
wait $LOAD_PIDS 2>/dev/null
LOAD_PIDS=
total=$(cat "$TMP"/load-*.txt | wc -l)
bad=$(cat "$TMP"/load-*.txt | grep -vc '^200$')
check "4. SIGHUP to the api under load: reload completed" test -n "$reloaded"
check "4. SIGHUP to the api under load: 0 failed requests through the edge ($bad of $total not 200)" \
    test "$total" -gt 100 -a "$bad" -eq 0
# The old generation drains and exits; the master (PID 1) must reap it.
settled=
for _ in $(seq 40); do
    if [ "$(workers)" -eq 2 ] && [ "$(zombies)" -eq 0 ]; then settled=1; break; fi
    sleep 0.5
done
check "4. after the reload: 2 workers, no zombie process in the container (PID 1 reaps)" test -n "$settled"

# ------------------------------------------------------------------------------------ 5. backup and restore
for i in 1 2 3 4 5; do
    curl -s --max-time 5 -o /dev/null -X POST -H 'Content-Type: application/json' \
        -d "{\"name\":\"backup item $i\",\"quantity\":$i}" "$EDGE/api/items"
    sleep 0.2
done
# An expired dump (older than BACKUP_RETENTION_DAYS, 14) that the job must delete, and a foreign file it must keep.
touch -d '30 days ago' "$TMP/backups/app-20000101T000000Z.dump" "$TMP/backups/keep-me.txt"
timeout 120 compose --profile ops run --rm backup >"$TMP/backup.log" 2>&1
rc=$?
dumps=$(cd "$TMP/backups" && ls -1 app-*.dump 2>/dev/null | grep -v '^app-20000101T000000Z.dump$')
check "5. ops backup exits 0 and writes one timestamped dump ($dumps)" \
    test "$rc" -eq 0 -a "$(printf '%s\n' "$dumps" | grep -c '^app-[0-9]\{8\}T[0-9]\{6\}Z\.dump$')" -eq 1
check "5. the dump was verified with pg_restore -l" grep -q 'table of contents entries' "$TMP/backup.log"
check "5. retention deleted the expired dump and kept the foreign file" \
    test ! -e "$TMP/backups/app-20000101T000000Z.dump" -a -e "$TMP/backups/keep-me.txt"
timeout 120 compose --profile ops run --rm backup restore "$dumps" app_restore >"$TMP/restore.log" 2>&1
rc=$?
rows() { timeout 20 compose exec -T db psql -U app -d "$1" -XAtc \
    "SELECT count(*) || ' ' || md5(coalesce(string_agg(id || '|' || name || '|' || quantity || '|' || created_at, ',' ORDER BY id), '')) FROM items"; }
orig=$(rows app)
copy=$(rows app_restore)
check "5. restore into a fresh database: same rows (${orig%% *} items)" \
    test "$rc" -eq 0 -a -n "$orig" -a "$orig" = "$copy" -a "${orig%% *}" -ge 6
[ "$rc" -eq 0 ] || cat "$TMP/restore.log"

# ---------------------------------------------------------------- 3. stop api with a slow request in flight
# The api again, with the test-only slow route and a loopback port (debug-api.override.yml).
export WITH_DEBUG_API=1
timeout 120 compose up -d --no-build --no-deps api >"$TMP/up-debug.log" 2>&1 || cat "$TMP/up-debug.log"
API=$(container api)
for _ in $(seq 60); do [ "$(health "$API")" = healthy ] && break; sleep 1; done
grace=$("$DOCKER" inspect -f '{{.Config.StopTimeout}}' "$API")
curl -s --max-time 60 -o "$TMP/slow.json" -w '%{http_code}' "http://127.0.0.1:$SMOKE_API_PORT/debug/sleep?ms=6000" \
    >"$TMP/slow.code" 2>/dev/null &
SLOW_PID=$!
for _ in $(seq 20); do "$DOCKER" logs "$API" 2>&1 | grep -q '"debug sleep"' && break; sleep 0.25; done
t=$(date +%s.%N)
timeout 90 compose stop api >/dev/null 2>&1
stop_s=$(python3 -c "import sys; print(round($(date +%s.%N) - $t, 1))")
wait "$SLOW_PID"
SLOW_PID=
state=$("$DOCKER" inspect -f '{{.State.Status}} {{.State.ExitCode}} {{.State.OOMKilled}}' "$API")
check "3. stop api with a slow request in flight: the request completes with 200" test "$(cat "$TMP/slow.code")" = 200
check "3. the api exits 0 ($state) within its stop_grace_period (${stop_s} s of ${grace} s)" \
    python3 -c "import sys; sys.exit(0 if '$state' == 'exited 0 false' and $stop_s < ${grace:-0} else 1)"
check "3. the stop waited for the request (${stop_s} s >= 3 s) and the master logged a graceful stop" \
    eval 'python3 -c "import sys; sys.exit(0 if $stop_s >= 3 else 1)" && "$DOCKER" logs "$API" 2>&1 | grep -q "\"graceful stop\""'
