# Shell helpers shared by the tests that run the deployment on a real Docker engine: tests/compose/smoke.sh
# (Compose) and tests/swarm/swarm.sh (Swarm). Sourced, never run.
#
# The caller sets LOG_TAG (the word before each log line: "smoke", "swarm") before sourcing, and TMP (a private
# temporary directory, removed by finish_run) after run_bounded. It gets ROOT (the repository root, also the
# working directory from here on), T0 (the run's start), result lines and counters, the engine (started if none
# answers), the base image stand-ins, the host release build fed to the API image, polling with a deadline,
# container helpers, small HTTP helpers and client load through the edge (those two need EDGE, the edge's base URL).
# Cleanup stays with the caller (registered with on_exit), which calls stop_load first and finish_run last.

# shellcheck shell=bash
export DEBIAN_FRONTEND=noninteractive
HERE_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE_LIB/../.." && pwd)
# The calling script, by absolute path (run_bounded runs it again from ROOT).
SCRIPT=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$ROOT" || exit 1
T0=$(date +%s)
TMP=

# Names pinned by docker/Dockerfile, compose/prod.yml and compose/stack.yml (stand-ins are built under these tags).
DEBIAN_IMAGE=debian:12.11-slim
POSTGRES_IMAGE=postgres:16.9-bookworm
NGINX_IMAGE=nginx:1.28.0-bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

PASSED=0
FAILED=0
STARTED_DOCKERD_PID=
CARGO_PID=
LOAD_PIDS=

# The run's own stdout and stderr, for the traps: a signal can arrive while a function runs with its output
# redirected to a file, and bash runs the trap with that redirection still in place.
exec 3>&1 4>&2

# ----------------------------------------------------------------------------------------------------- results
log() { printf '[%s %4ss] %s\n' "$LOG_TAG" "$(($(date +%s) - T0))" "$*"; }
pass() { PASSED=$((PASSED + 1)); log "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); log "FAIL: $*"; }
# check NAME COMMAND...: one pass or fail line.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
# Stops the run: the remaining checks depend on this step.
abort() {
    fail "$*"
    exit 1
}

# on_exit CLEANUP: runs CLEANUP when the run ends, however it ends; INT and TERM (also the watchdog's) end it.
on_exit() {
    trap "$1" EXIT
    trap 'exec 1>&3 2>&4; log "interrupted"; exit 130' INT TERM
}

# wait_for SECONDS WHAT COMMAND...: runs COMMAND until it succeeds, every WAIT_EVERY seconds (default 1); fails,
# saying what it gave up on, once SECONDS have passed.
wait_for() {
    local deadline=$(($(date +%s) + $1)) what=$2
    shift 2
    until "$@"; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "gave up waiting ($what)"
            return 1
        fi
        sleep "${WAIT_EVERY:-1}"
    done
}

# run_bounded VAR SECONDS "$@": re-executes the calling script under timeout(1), once (VAR marks the second run),
# so the whole run is bounded. On expiry timeout sends TERM to the script's process group; the caller's EXIT trap
# still cleans up.
run_bounded() {
    local var=$1 seconds=$2
    shift 2
    [ -n "${!var:-}" ] && return 0
    export "$var"=1
    exec timeout -s TERM -k 90 "$seconds" bash "$SCRIPT" "$@"
}

# finish_run RC: the common end of a run (after the caller's own cleanup): stops the dockerd this run started,
# removes TMP and prints "N passed, N failed". Exits 0 only if nothing failed and the run was not cut short.
finish_run() {
    local rc=$1
    stop_background_build
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

# ------------------------------------------------------------------------------------------------------ engine
# The engine's own CLI when there is one (a newer standalone CLI may expect buildx for `docker build`).
pick_docker() {
    if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=$(command -v docker || true); fi
}
pick_docker

apt_install() {
    log "installing Debian packages: $*"
    timeout 300 apt-get update -qq >"$TMP/apt.log" 2>&1 &&
        timeout 600 apt-get install -y -qq --no-install-recommends "$@" >>"$TMP/apt.log" 2>&1 ||
        { tail -20 "$TMP/apt.log"; return 1; }
}

# ensure_engine [compose]: a Docker engine that answers (dockerd started in the background when none does, and
# stopped again by finish_run), curl and python3; with "compose", also Compose, in COMPOSE.
ensure_engine() {
    local missing=()
    # An engine is needed unless one already answers (possibly without a local dockerd binary).
    if [ -z "${DOCKER:-}" ] || { ! command -v dockerd >/dev/null 2>&1 && ! timeout 20 "$DOCKER" info >/dev/null 2>&1; }; then
        missing+=(docker.io)
    fi
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    if [ "${1:-}" = compose ] && ! command -v docker-compose >/dev/null 2>&1 &&
        ! { [ -n "${DOCKER:-}" ] && "$DOCKER" compose version >/dev/null 2>&1; }; then
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
    # Its own session, so that the watchdog's signal to the script's process group does not stop the engine
    # before cleanup has taken the stack down; finish_run stops it by pid.
    setsid dockerd >"$TMP/dockerd.log" 2>&1 </dev/null &
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

# ------------------------------------------------------------------------------------- base image stand-ins
# A stand-in carries its recipe's hash (the files under tests/compose/standins/NAME) in the label smoke.recipe and
# is rebuilt when the recipe changes. An image under the pinned tag without that label is the real one (pulled or
# loaded): it is used as it is and never overwritten.
recipe_hash() { (cd "$HERE_LIB/standins" && find "$@" -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16); }
cached() { # IMAGE HASH
    local label
    "$DOCKER" image inspect "$1" >/dev/null 2>&1 || return 1
    label=$("$DOCKER" image inspect -f '{{index .Config.Labels "smoke.recipe"}}' "$1" 2>/dev/null)
    case $label in
        "" | "<no value>") log "using $1 as found (not a stand-in)"; return 0 ;;
        "$2") [ -z "${SMOKE_REBUILD_STANDINS:-}" ] && log "cached: $1" ;;
        *) return 1 ;;
    esac
}

build_debian_base() {
    local label
    if "$DOCKER" image inspect "$DEBIAN_IMAGE" >/dev/null 2>&1; then
        label=$("$DOCKER" image inspect -f '{{index .Config.Labels "smoke.recipe"}}' "$DEBIAN_IMAGE" 2>/dev/null)
        case $label in
            "" | "<no value>") log "using $DEBIAN_IMAGE as found (not a stand-in)"; return 0 ;;
            *) [ -z "${SMOKE_REBUILD_STANDINS:-}" ] && { log "cached: $DEBIAN_IMAGE"; return 0; } ;;
        esac
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
        -c 'LABEL smoke.recipe=debootstrap-minbase-bookworm' \
        -m "stand-in for $DEBIAN_IMAGE: debootstrap minbase bookworm" - "$DEBIAN_IMAGE" >/dev/null || return 1
    rm -rf "$rootfs"
}

build_standin() { # IMAGE DIR
    local image=$1 dir=$2 hash
    hash=$(recipe_hash "$dir")
    cached "$image" "$hash" && return 0
    log "building the stand-in $image from tests/compose/standins/$dir"
    DOCKER_BUILDKIT=1 timeout 600 "$DOCKER" build --build-arg BASE="$DEBIAN_IMAGE" --label smoke.recipe="$hash" \
        -t "$image" "$HERE_LIB/standins/$dir" >"$TMP/build-$dir.log" 2>&1 || { tail -20 "$TMP/build-$dir.log"; return 1; }
}

# The three base images under their pinned tags (aborts the run on failure).
ensure_base_images() {
    local t
    t=$(date +%s)
    build_debian_base || abort "stand-in $DEBIAN_IMAGE"
    build_standin "$POSTGRES_IMAGE" postgres || abort "stand-in $POSTGRES_IMAGE"
    build_standin "$NGINX_IMAGE" nginx || abort "stand-in $NGINX_IMAGE"
    log "base images ready in $(($(date +%s) - t)) s"
}

# ------------------------------------------------------------------------------------------------- API image
# Crates cannot be fetched inside the engine here, so the release binary is built on the host (Debian 12, the
# runtime image's glibc) and fed to the prod stage. The build (CPU) runs while the base images are made (mostly
# network and disk).
start_host_build() {
    log "cargo build --release --locked --bin supervisor (host, in the background; log $TMP/cargo.log)"
    T_CARGO=$(date +%s)
    timeout 1200 cargo build --release --locked --bin supervisor >"$TMP/cargo.log" 2>&1 &
    CARGO_PID=$!
}

stop_background_build() {
    if [ -n "$CARGO_PID" ]; then
        kill "$CARGO_PID" 2>/dev/null
        wait "$CARGO_PID" 2>/dev/null
        CARGO_PID=
    fi
    rm -f "$ROOT/docker/prebuilt/supervisor"
}

# build_api_image TAG [DOCKER BUILD ARGS...]: docker/Dockerfile's prod stage with the host binary (waits for the
# host build first). Aborts the run on failure.
build_api_image() {
    local tag=$1 t
    shift
    if [ -n "$CARGO_PID" ]; then
        wait "$CARGO_PID" || { tail -20 "$TMP/cargo.log"; abort "host release build (cargo build --release)"; }
        CARGO_PID=
        install -m 0755 target/release/supervisor docker/prebuilt/supervisor
        log "release binary ready, $(($(date +%s) - T_CARGO)) s after the build started"
    fi
    t=$(date +%s)
    DOCKER_BUILDKIT=1 timeout 300 "$DOCKER" build -f docker/Dockerfile --target prod \
        --build-arg SUPERVISOR_BINARY=prebuilt "$@" -t "$tag" . >"$TMP/build-api.log" 2>&1 ||
        { tail -30 "$TMP/build-api.log"; abort "docker build --target prod (prebuilt binary) as $tag"; }
    log "built $tag from docker/Dockerfile's prod stage in $(($(date +%s) - t)) s"
}

# ------------------------------------------------------------------------------------------------- containers
# healthy CONTAINER: its healthcheck reports healthy.
healthy() { [ "$("$DOCKER" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$1" 2>/dev/null)" = healthy ]; }
# logs_have CONTAINER PATTERN [SINCE]: grep a container's log. (Via a file: with pipefail, grep -q closing the
# pipe early would make the pipeline fail.)
logs_have() {
    "$DOCKER" logs ${3:+--since "$3"} "$1" >"$TMP/logs.txt" 2>&1
    grep -q -- "$2" "$TMP/logs.txt"
}

# ----------------------------------------------------------------------------------------------------- HTTP
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }
# json FILE EXPR: evaluate a Python expression over the parsed JSON document `j`.
json() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if eval(sys.argv[2]) else 1)' "$@" 2>/dev/null; }
# post_item NAME QUANTITY: creates an item through the edge and prints its id; fails unless the answer is 201
# with an id.
post_item() {
    local code
    code=$(curl -s --max-time 5 -o "$TMP/created.json" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
        -d "{\"name\":\"$1\",\"quantity\":$2}" "$EDGE/api/items") && [ "$code" = 201 ] &&
        python3 -c 'import json,sys; i=json.load(open(sys.argv[1]))["id"]; print(i); sys.exit(0 if i else 1)' \
            "$TMP/created.json" 2>/dev/null
}
# The two database roles' password files in DIR (db_owner_password, db_app_password), each random with
# characters that need quoting in a libpq connection string; exported as DB_OWNER_PASSWORD_FILE and
# DB_APP_PASSWORD_FILE for the stack files.
write_db_passwords() {
    local role
    for role in owner app; do
        printf "test'pw\\\\%s \$x@y\n" "$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" >"$1/db_${role}_password"
        chmod 0644 "$1/db_${role}_password"
    done
    export DB_OWNER_PASSWORD_FILE=$1/db_owner_password DB_APP_PASSWORD_FILE=$1/db_app_password
}

# Client load through the edge, every answer's status appended to a file, until a stop file appears.
# load_loop OUTFILE STOPFILE URL PAUSE: batches of 25 requests on one keep-alive connection, PAUSE s apart.
load_loop() {
    local args=() i
    for i in $(seq 1 25); do args+=(-o /dev/null "$3"); done
    while [ ! -e "$2" ]; do
        curl -s --max-time 10 -w '%{http_code}\n' "${args[@]}" >>"$1"
        [ "$4" = 0 ] || sleep "$4"
    done
}
# load_single OUTFILE STOPFILE URL PAUSE: one request per connection, PAUSE s apart (for rate-limited routes).
load_single() {
    while [ ! -e "$2" ]; do
        curl -s --max-time 10 -o /dev/null -w '%{http_code}\n' "$3" >>"$1"
        sleep "$4"
    done
}
# load_summary FILES...: "BAD TOTAL", the answers that were not 200 and all answers.
load_summary() {
    local total bad
    total=$(cat "$@" 2>/dev/null | wc -l)
    bad=$(cat "$@" 2>/dev/null | grep -vc '^200$')
    echo "$bad $total"
}
# start_load NAME [LOOPS [PAUSE]]: load through the edge until stop_load: LOOPS keep-alive loops on /healthz
# (default 3; PAUSE s between batches, default 0.1) and one on the item ITEM_ID under the /api/ rate limit. The
# answers go to $TMP/load-NAME-*.txt (LOAD_FILES).
start_load() {
    local i
    LOAD_STOP=$TMP/load-$1.stop
    LOAD_FILES="$TMP/load-$1-*.txt"
    for i in $(seq 1 "${2:-3}"); do
        load_loop "$TMP/load-$1-$i.txt" "$LOAD_STOP" "$EDGE/healthz" "${3:-0.1}" &
        LOAD_PIDS="$LOAD_PIDS $!"
    done
    load_single "$TMP/load-$1-api.txt" "$LOAD_STOP" "$EDGE/api/items/$ITEM_ID" 0.25 &
    LOAD_PIDS="$LOAD_PIDS $!"
}
# stop_load: stops the load (the stop file lets each loop finish the requests it has in flight, so nothing is
# left running) and sets LOAD_BAD, LOAD_TOTAL and LOAD_CODES from its answers. Does nothing when no load runs.
stop_load() {
    [ -n "$LOAD_PIDS" ] || return 0
    touch "$LOAD_STOP"
    # shellcheck disable=SC2086
    wait $LOAD_PIDS 2>/dev/null
    LOAD_PIDS=
    # shellcheck disable=SC2086
    read -r LOAD_BAD LOAD_TOTAL < <(load_summary $LOAD_FILES)
    # What the failed answers were, for the check's line: "502 x1, 000 x2" (000: no answer).
    # shellcheck disable=SC2086
    LOAD_CODES=$(cat $LOAD_FILES 2>/dev/null | grep -v '^200$' | sort | uniq -c |
        awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')
}
# load_ok MIN: the last load sent at least MIN requests and every answer was 200.
load_ok() { [ "$LOAD_TOTAL" -ge "$1" ] && [ "$LOAD_BAD" -eq 0 ]; }
