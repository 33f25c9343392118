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
#      items, 429 in the contract shape; the database roles (the api connects as the app role, which cannot
#      create tables or run programs; the superuser has no network login); non-root and compiler-free image; zero
#      failed requests through the edge while the api reloads on SIGHUP (and no zombie left behind by PID 1); ops
#      backup (mode 0600), retention, and a restore into a fresh database with the same rows; restore-in-place
#      refused while the api runs; `stop api` with a slow request in flight (request completes, exit 0 within
#      stop_grace_period; debug-api.override.yml enables the test-only slow route); then restore-in-place with
#      the api stopped, migrate, and the api serving again.
#   5. Cleanup, also on failure or interruption: compose down -v, temporary files, the copied binary, the smoke
#      image, and dockerd if this script started it. Stand-in images stay (cache).
#
# Opt-in (SMOKE_BUILD_STAGES=1, about 10 more minutes): also the Dockerfile's default path, offline: a stand-in for
# the rust image made of the host's toolchain and crate cache, the build stage compiling the prod image, the test
# stage, and `compose/dev.yml run --rm api-test` running the whole suite in it.
#
# Ends with "N passed, N failed"; exit status 0 only if nothing failed.
# Knobs: SMOKE_TIMEOUT (whole run, seconds, default 1200; 2400 with SMOKE_BUILD_STAGES), DEBIAN_MIRROR (default
# http://deb.debian.org/debian), SMOKE_REBUILD_STANDINS=1 (ignore the cached stand-ins), SMOKE_BUILD_STAGES=1.
set -uo pipefail

LOG_TAG=smoke
# shellcheck source=tests/compose/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE=$ROOT/tests/compose
# A hard bound on the whole run (the EXIT trap below still cleans up on expiry).
if [ -n "${SMOKE_BUILD_STAGES:-}" ]; then default_timeout=2400; else default_timeout=1200; fi
run_bounded SMOKE_WATCHDOG "${SMOKE_TIMEOUT:-$default_timeout}" "$@"
TMP=$(mktemp -d /tmp/compose-smoke.XXXXXX)

API_IMAGE=prefork-api:smoke
# SMOKE_BUILD_STAGES only: images built by the Dockerfile's build and test stages.
BUILT_IMAGE=prefork-api:smoke-built
TEST_IMAGE=prefork-api-test:smoke
PROJECT=prefork-smoke
STACK_UP=

# compose ARGS...: the stack's compose files, bounded by CT seconds (default 180).
compose() {
    local files=(-f compose/prod.yml -f "$HERE/standin.override.yml")
    [ -n "${WITH_DEBUG_API:-}" ] && files+=(-f "$HERE/debug-api.override.yml")
    timeout "${CT:-180}" "${COMPOSE[@]}" -p "$PROJECT" "${files[@]}" "$@"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    exec 1>&3 2>&4
    log "cleanup"
    stop_load
    [ -n "${SLOW_PID:-}" ] && kill "$SLOW_PID" 2>/dev/null
    if [ -n "$STACK_UP" ]; then
        unset WITH_DEBUG_API
        if [ "$FAILED" -gt 0 ] || [ "$rc" -ne 0 ]; then
            log "service logs (tail) of the failed run:"
            CT=30 compose logs --no-color --tail=25 2>&1 | cut -c1-400 | sed 's/^/    /'
        fi
        # --remove-orphans also takes the one-off backup containers and the debug api variant.
        CT=120 compose --profile ops down -v --remove-orphans --timeout 10 >"$TMP/down.log" 2>&1 ||
            { log "compose down failed:"; tail -5 "$TMP/down.log"; }
    fi
    if [ -n "${SMOKE_BUILD_STAGES:-}" ] && [ -n "${DOCKER:-}" ]; then
        timeout 60 "${COMPOSE[@]}" -p "$PROJECT-dev" -f compose/dev.yml down -v --remove-orphans >/dev/null 2>&1
        timeout 60 "$DOCKER" image rm -f "$BUILT_IMAGE" "$TEST_IMAGE" >/dev/null 2>&1
    fi
    [ -n "${DOCKER:-}" ] && timeout 60 "$DOCKER" image rm -f "$API_IMAGE" >/dev/null 2>&1
    finish_run "$rc"
}
on_exit cleanup

# ------------------------------------------------------------------------------------------------ 1. engine
ensure_engine compose || abort "a Docker engine is running"
log "docker: $("$DOCKER" version --format '{{.Server.Version}}' 2>/dev/null), compose: ${COMPOSE[*]} $("${COMPOSE[@]}" version --short 2>/dev/null)"

# ----------------------------------------------------------------------------------- 2. base image stand-ins
start_host_build
ensure_base_images

# ---------------------------------------------------------------------------------------------- 3. API image
t=$(date +%s)
build_api_image "$API_IMAGE"
pass "docker/Dockerfile prod stage builds with the host binary ($(($(date +%s) - t)) s)"

# ------------------------------------------------------------------------------------------------- 4. stack
EDGE_PORT=$(free_port)
SMOKE_API_PORT=$(free_port)
EDGE=http://127.0.0.1:$EDGE_PORT
mkdir -p "$TMP/backups"
write_db_passwords "$TMP"
export COMPOSE_PROJECT_NAME=$PROJECT API_IMAGE BACKUP_DIR=$TMP/backups \
    EDGE_HTTP_BIND=127.0.0.1 EDGE_HTTP_PORT=$EDGE_PORT SMOKE_API_PORT

# Leftovers of an interrupted earlier run.
CT=120 compose --profile ops down -v --remove-orphans --timeout 5 >/dev/null 2>&1

container() { compose ps -q "$1" 2>/dev/null | head -1; }

log "compose up (edge on $EDGE)"
t=$(date +%s)
STACK_UP=1
CT=180 compose up -d --no-build >"$TMP/up.log" 2>&1 || cat "$TMP/up.log"
stack_ready() {
    DB=$(container db) API=$(container api) MIGRATE=$(container migrate) EDGE_C=$(container edge)
    [ -n "$DB" ] && [ -n "$API" ] && [ -n "$MIGRATE" ] && [ -n "$EDGE_C" ] &&
        healthy "$DB" && healthy "$API" && healthy "$EDGE_C" &&
        [ "$("$DOCKER" inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$MIGRATE")" = "exited 0" ] &&
        [ "$(http_code "$EDGE/healthz")" = 200 ]
}
# 120 s from `compose up`.
if wait_for $((t + 120 - $(date +%s))) "the stack to start" stack_ready; then
    pass "1. up: db healthy, migrate exited 0, api healthy, edge healthy and serving, in $(($(date +%s) - t)) s (limit 120 s)"
else
    cat "$TMP/up.log"
    compose ps
    abort "1. up: db healthy, migrate exited 0, api healthy, edge healthy and serving within 120 s"
fi

# ------------------------------------------------------------------------------------- 2. through the edge
check "2. GET /healthz through the edge: 200 {\"status\":\"ok\"}" \
    test "$(curl -s --max-time 5 -w ' %{http_code}' "$EDGE/healthz")" = '{"status":"ok"} 200'
check "2. /readyz is not reachable through the edge (403)" test "$(http_code "$EDGE/readyz")" = 403
check "2. /metrics is not reachable through the edge (403)" test "$(http_code "$EDGE/metrics")" = 403
check "2. GET /_edge/healthz: 200 from nginx itself (the edge's healthcheck)" \
    test "$(curl -s --max-time 5 -w ' %{http_code}' "$EDGE/_edge/healthz")" = '{"status":"ok"} 200'
readyz_inside() { CT=20 compose exec -T api supervisor healthcheck http://127.0.0.1:8000/readyz; }
check "2. /readyz answers 200 inside the network (supervisor healthcheck in the api container)" readyz_inside
# The master's control socket, on the container's /tmp tmpfs, found by `ctl` through the container's settings.
ctl_status() {
    CT=20 compose exec -T api supervisor ctl status --json >"$TMP/ctl.json" &&
        json "$TMP/ctl.json" "j['phase'] == 'running' and j['pid'] == 1 and len(j['workers']) == 2"
}
check "2. supervisor ctl status in the api container: the master (PID 1) running 2 workers" ctl_status

ITEM_ID=$(post_item "smoke item" 3)
check "2. POST /api/items through the edge: 201 with an id" test -n "$ITEM_ID"
get_item() {
    [ "$(curl -s --max-time 5 -o "$TMP/got.json" -w '%{http_code}' "$EDGE/api/items/$ITEM_ID")" = 200 ] &&
        json "$TMP/got.json" "j['id'] == '$ITEM_ID' and j['name'] == 'smoke item' and j['quantity'] == 3"
}
check "2. GET /api/items/{id} through the edge: 200, same item" get_item

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

# ---------------------------------------------------------------------------------- 8. the database roles
# As the api connects: over the network, as the app role, with its password from the secret.
as_app() {
    CT=20 compose exec -T db sh -c 'PGPASSWORD=$(cat /run/secrets/db_app_password) exec psql -h db \
        -U "$DB_APP_USER" -d "$POSTGRES_DB" -XAtq -v ON_ERROR_STOP=1 -c "$1"' sh "$1" 2>&1
}
# as_app_refused SQL WHY: the statement fails, for that reason.
as_app_refused() {
    local out
    out=$(as_app "$1") && return 1
    printf '%s\n' "$out" | grep -q -- "$2" || { printf '    %s\n' "$out"; return 1; }
}
api_users=$(CT=20 compose exec -T db psql -U postgres -d app -XAtc \
    "SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity WHERE application_name = 'app'")
check "8. the api connects as the app role (pg_stat_activity: $api_users)" test "$api_users" = app_api
app_role=$(as_app "SELECT concat_ws(' ', rolsuper::text, rolcreaterole::text, rolcreatedb::text,
    (SELECT count(*) FROM pg_auth_members WHERE member = r.oid)) FROM pg_roles r WHERE rolname = current_user")
check "8. the app role: rolsuper false, no role or database creation, member of no role ($app_role)" \
    test "$app_role" = "false false false 0"
check "8. the app role: CREATE TABLE fails" as_app_refused "CREATE TABLE smoke_t (x int)" "permission denied for schema public"
check "8. the app role: COPY ... TO PROGRAM fails" as_app_refused "COPY (SELECT 1) TO PROGRAM 'id'" pg_execute_server_program
check "8. the app role: the migration history is read-only" \
    as_app_refused "DELETE FROM refinery_schema_history" "permission denied for table refinery_schema_history"
# The superuser was given the owner's password to initialise the volume; roles.sh removed it.
superuser_refused() {
    CT=20 compose exec -T db sh -c 'PGPASSWORD=$(cat /run/secrets/db_owner_password) exec psql -h db \
        -U "$POSTGRES_USER" -d "$POSTGRES_DB" -XAtc "SELECT 1"' >"$TMP/superuser.log" 2>&1 && return 1
    grep -q 'password authentication failed' "$TMP/superuser.log"
}
check "8. the superuser cannot log in over the network" superuser_refused
check "8. migrate, as the owner, applied the migrations" logs_have "$(container migrate)" 'applied V1__items'
delete_item() {
    local id
    id=$(post_item "to delete" 1) &&
        [ "$(http_code -X DELETE "$EDGE/api/items/$id")" = 204 ] && [ "$(http_code "$EDGE/api/items/$id")" = 404 ] &&
        [ "$(http_code "$EDGE/api/items?limit=5")" = 200 ]
}
check "8. items CRUD as the app role: create, delete, list through the edge" delete_item

# ---------------------------------------------------------------------- 4. SIGHUP reload under load
# Load through the edge: four keep-alive loops on /healthz (not rate limited) and one on an item under the
# /api/ rate. Every answer must be 200.
zombies() { "$DOCKER" exec "$API" sh -c 'cat /proc/[0-9]*/stat 2>/dev/null' | sed 's/.*) //' | awk '$1 == "Z"' | wc -l; }
workers() { "$DOCKER" exec "$API" sh -c 'cat /proc/[0-9]*/stat 2>/dev/null' | sed 's/.*) //' | awk '$2 == 1' | wc -l; }
sleep 2 # let the burst's bucket refill
start_load hup 4 0
sleep 3
hup_since=$(date +%s)
CT=20 compose kill -s HUP api >/dev/null 2>&1
reloaded=
WAIT_EVERY=0.5 wait_for 30 "the reload to complete" logs_have "$API" '"reload complete' "$hup_since" && reloaded=1
sleep 4
stop_load
check "4. SIGHUP to the api under load: reload completed" test -n "$reloaded"
check "4. SIGHUP to the api under load: 0 failed requests through the edge ($LOAD_BAD of $LOAD_TOTAL not 200${LOAD_CODES:+: $LOAD_CODES})" \
    load_ok 101
# The old generation drains and exits; the master (PID 1) must reap it.
settled() { [ "$(workers)" -eq 2 ] && [ "$(zombies)" -eq 0 ]; }
WAIT_EVERY=0.5 check "4. after the reload: 2 workers, no zombie process in the container (PID 1 reaps)" \
    wait_for 30 "2 workers and no zombie" settled
ctl_reload() { CT=60 compose exec -T api supervisor ctl reload --wait --timeout 40 | grep -q '^reload complete: generation 3 '; }
check "4. supervisor ctl reload --wait in the api container: exit 0 once generation 3 serves" ctl_reload

# ------------------------------------------------------------------------------------ 5. backup and restore
for i in 1 2 3 4 5; do
    curl -s --max-time 5 -o /dev/null -X POST -H 'Content-Type: application/json' \
        -d "{\"name\":\"backup item $i\",\"quantity\":$i}" "$EDGE/api/items"
    sleep 0.2
done
# An expired dump (older than BACKUP_RETENTION_DAYS, 14) that the job must delete, and a foreign file it must keep.
touch -d '30 days ago' "$TMP/backups/app-20000101T000000Z.dump" "$TMP/backups/keep-me.txt"
CT=120 compose --profile ops run --rm backup >"$TMP/backup.log" 2>&1
rc=$?
dumps=$(cd "$TMP/backups" && ls -1 app-*.dump 2>/dev/null | grep -v '^app-20000101T000000Z.dump$')
check "5. ops backup exits 0 and writes one timestamped dump ($dumps)" \
    test "$rc" -eq 0 -a "$(printf '%s\n' "$dumps" | grep -c '^app-[0-9]\{8\}T[0-9]\{6\}Z\.dump$')" -eq 1
check "5. the dump is readable by its owner only (mode $(stat -c %a "$TMP/backups/$dumps" 2>/dev/null))" \
    test "$(stat -c %a "$TMP/backups/$dumps" 2>/dev/null)" = 600
check "5. the dump was verified with pg_restore -l" grep -q 'table of contents entries' "$TMP/backup.log"
check "5. retention deleted the expired dump and kept the foreign file" \
    test ! -e "$TMP/backups/app-20000101T000000Z.dump" -a -e "$TMP/backups/keep-me.txt"
CT=120 compose --profile ops run --rm backup restore "$dumps" app_restore >"$TMP/restore.log" 2>&1
rc=$?
rows() { CT=20 compose exec -T db psql -U app -d "$1" -XAtc \
    "SELECT count(*) || ' ' || md5(coalesce(string_agg(id || '|' || name || '|' || quantity || '|' || created_at, ',' ORDER BY id), '')) FROM items"; }
orig=$(rows app)
copy=$(rows app_restore)
check "5. restore into a fresh database: same rows (${orig%% *} items)" \
    test "$rc" -eq 0 -a -n "$orig" -a "$orig" = "$copy" -a "${orig%% *}" -ge 6
[ "$rc" -eq 0 ] || cat "$TMP/restore.log"
CT=120 compose --profile ops run --rm backup restore-in-place "$dumps" >"$TMP/restore-live.log" 2>&1
rc=$?
refused() {
    [ "$rc" -ne 0 ] && grep -q 'refusing to restore in place: [1-9][0-9]* other session(s) connected' "$TMP/restore-live.log" &&
        grep -q 'stop the api first: docker compose -f compose/prod.yml stop api' "$TMP/restore-live.log"
}
check "9. restore-in-place with the api running: refused, with how to stop the api (exit $rc)" refused
refused || cat "$TMP/restore-live.log"
check "9. ... and the database is untouched" test "$(rows app)" = "$orig"

# ---------------------------------------------------------------- 3. stop api with a slow request in flight
# The api again, with the test-only slow route and a loopback port (debug-api.override.yml).
export WITH_DEBUG_API=1
CT=120 compose up -d --no-build --no-deps api >"$TMP/up-debug.log" 2>&1 || cat "$TMP/up-debug.log"
API=$(container api)
wait_for 60 "the debug api to be healthy" healthy "$API" || true
# stop_grace_period of the api service in compose/prod.yml, in seconds (written as "40s").
grace=$(awk '/^  [a-z-]+:$/ { api = ($1 == "api:") } api && $1 == "stop_grace_period:" { sub(/s$/, "", $2); print $2; exit }' \
    compose/prod.yml)
curl -s --max-time 60 -o "$TMP/slow.json" -w '%{http_code}' "http://127.0.0.1:$SMOKE_API_PORT/debug/sleep?ms=6000" \
    >"$TMP/slow.code" 2>/dev/null &
SLOW_PID=$!
WAIT_EVERY=0.25 wait_for 10 "the slow request to reach the api" logs_have "$API" '"debug sleep"' || true
t=$(date +%s.%N)
CT=90 compose stop api >/dev/null 2>&1
stop_s=$(python3 -c "import sys; print(round($(date +%s.%N) - $t, 1))")
wait "$SLOW_PID"
SLOW_PID=
state=$("$DOCKER" inspect -f '{{.State.Status}} {{.State.ExitCode}} {{.State.OOMKilled}}' "$API")
check "3. stop api with a slow request in flight: the request completes with 200" test "$(cat "$TMP/slow.code")" = 200
check "3. the api exits 0 ($state) within its stop_grace_period (${stop_s} s of ${grace} s)" \
    python3 -c "import sys; sys.exit(0 if '$state' == 'exited 0 false' and $stop_s < ${grace:-0} else 1)"
check "3. the stop waited for the request (${stop_s} s >= 3 s) and the master logged a graceful stop" \
    eval 'python3 -c "import sys; sys.exit(0 if $stop_s >= 3 else 1)" && logs_have "$API" "\"graceful stop\""'

# -------------------------------------------------------------------- 9. restore in place, the api stopped
# The api is stopped (above). A row the dump does not have, then the documented sequence: restore-in-place,
# migrate, start the api.
CT=20 compose exec -T db psql -U app -d app -XAtqc \
    "INSERT INTO items (id, name, quantity) VALUES ('00000000-0000-7000-8000-00000000beef', 'not in the dump', 1)"
CT=120 compose --profile ops run --rm backup restore-in-place "$dumps" >"$TMP/restore-in-place.log" 2>&1
rc=$?
check "9. restore-in-place with the api stopped: exit $rc, the rows of the dump (${copy%% *} items)" \
    test "$rc" -eq 0 -a "$(rows app)" = "$copy"
[ "$rc" -eq 0 ] || cat "$TMP/restore-in-place.log"
unset WITH_DEBUG_API
CT=120 compose run --rm migrate >"$TMP/migrate-again.log" 2>&1
rc=$?
CT=120 compose up -d --no-build --no-deps api >"$TMP/up-again.log" 2>&1 || cat "$TMP/up-again.log"
API=$(container api)
wait_for 60 "the api to be healthy again" healthy "$API" || true
serves_again() {
    readyz_inside && CT=20 compose exec -T api supervisor healthcheck "http://127.0.0.1:8000/api/items/$ITEM_ID"
}
check "9. then migrate (exit $rc) and up: the api is ready and serves the restored items" serves_again
check "9. ... as the app role, the migration history read-only again" \
    as_app_refused "DELETE FROM refinery_schema_history" "permission denied for table refinery_schema_history"

# ------------------------------------------------------ 7. opt-in: the build and test stages, without network
build_stages() {
    local want have hash ctx sysroot registry part
    want=$(sed -n 's/^FROM rust:\([0-9.]*\)-bookworm AS build$/\1/p' docker/Dockerfile)
    have=$(rustc --version | cut -d' ' -f2)
    if [ "$want" != "$have" ]; then
        fail "7. build stages: the host's rustc $have is not the pinned rust:$want (rustup toolchain install $want)"
        return
    fi
    # The stand-in holds the crates of Cargo.lock, so a new lock file means a new stand-in.
    hash=$({ recipe_hash rust; sha256sum <Cargo.lock; echo "$have"; } | sha256sum | cut -c1-16)
    if ! cached "rust:$want-bookworm" "$hash"; then
        log "building the stand-in rust:$want-bookworm from the host's toolchain and crate cache"
        timeout 600 cargo fetch --locked >"$TMP/fetch.log" 2>&1 || { tail -5 "$TMP/fetch.log"; fail "7. cargo fetch"; return; }
        ctx=$TMP/rust-context
        sysroot=$(rustc --print sysroot)
        registry=${CARGO_HOME:-$HOME/.cargo}/registry
        mkdir -p "$ctx/rust" "$ctx/cargo/registry"
        for part in bin lib libexec etc; do
            [ -e "$sysroot/$part" ] || continue
            cp -al "$sysroot/$part" "$ctx/rust/" 2>/dev/null || cp -a "$sysroot/$part" "$ctx/rust/"
        done
        cp -a "$registry/cache" "$registry/index" "$ctx/cargo/registry/"
        cp "$HERE/standins/rust/Dockerfile" "$ctx/"
        DOCKER_BUILDKIT=1 timeout 600 "$DOCKER" build --build-arg BASE="$DEBIAN_IMAGE" --label smoke.recipe="$hash" \
            -t "rust:$want-bookworm" "$ctx" >"$TMP/build-rust.log" 2>&1 ||
            { tail -20 "$TMP/build-rust.log"; rm -rf "$ctx"; fail "7. stand-in rust:$want-bookworm"; return; }
        rm -rf "$ctx"
    fi
    t=$(date +%s)
    DOCKER_BUILDKIT=1 timeout 1200 "$DOCKER" build -f docker/Dockerfile --target prod -t "$BUILT_IMAGE" . \
        >"$TMP/build-built.log" 2>&1 || tail -30 "$TMP/build-built.log"
    check "7. docker build --target prod compiles in the build stage ($(($(date +%s) - t)) s) and the binary runs" \
        timeout 60 "$DOCKER" run --rm "$BUILT_IMAGE" supervisor --version
    t=$(date +%s)
    DOCKER_BUILDKIT=1 timeout 1200 "$DOCKER" build -f docker/Dockerfile --target test -t "$TEST_IMAGE" . \
        >"$TMP/build-test.log" 2>&1 || tail -30 "$TMP/build-test.log"
    log "test stage built in $(($(date +%s) - t)) s"
    API_TEST_IMAGE=$TEST_IMAGE timeout 1200 "${COMPOSE[@]}" -p "$PROJECT-dev" -f compose/dev.yml run --rm api-test \
        >"$TMP/api-test.log" 2>&1
    local rc=$?
    grep -E '^test result:' "$TMP/api-test.log" | awk '{ p += $4; f += $6 } END { printf "[smoke] api-test ran %d tests, %d of them failing\n", p + f, f }'
    [ "$rc" -eq 0 ] || grep -E 'FAILED|panicked' "$TMP/api-test.log" | head -20
    check "7. compose/dev.yml run --rm api-test: the whole suite passes in the test stage" test "$rc" -eq 0
}
if [ -n "${SMOKE_BUILD_STAGES:-}" ]; then
    build_stages
fi
