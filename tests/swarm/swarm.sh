#!/usr/bin/env bash
# Swarm test: compose/stack.yml on a real single-node Docker Swarm, with the real docker/Dockerfile prod image.
#
#   bash tests/swarm/swarm.sh            (as root; .ci/run runs it after the Compose smoke test)
#
# What it does, each step bounded in time (README.md beside this file has the details):
#   1. Engine, base image stand-ins and the host release build: tests/compose/lib.sh, shared with the Compose smoke
#      test (the stand-ins are cached, so after that test nothing is built twice). Three API images: A and B (the
#      same binary, two releases) and one whose api cannot boot.
#   2. A swarm of its own: `docker swarm init --advertise-addr 127.0.0.1` on an engine in no swarm, after creating
#      docker_gwbridge so that host-mode published ports bind to 127.0.0.1 only; the node labelled for the database
#      and the edge.
#   3. `docker stack deploy` of compose/stack.yml (+ standin.override.yml) from nothing, then the checks: the
#      migration job completes before any api task is healthy; the edge serves; /readyz and /metrics are refused at
#      the edge and answer inside; the api connects to the database as the app role; only the edge publishes a
#      port, on loopback; scaling the api 2 -> 4 -> 2 under load (the edge reaches every new task); a rolling
#      update to B under load (the job runs again, the old tasks drain and stop gracefully); an update to the
#      broken image rolled back automatically under load; a killed api task replaced. Load is a bounded client
#      loop through the edge; every answer must be 200.
#   4. Cleanup, also on failure or interruption: stack rm, the volume, swarm leave, docker_gwbridge if it created it,
#      its images, the temporary directory, and dockerd if it started it. Stand-ins stay (cache).
#
# Ends with "N passed, N failed"; exit status 0 only if nothing failed.
# Knobs: SWARM_TIMEOUT (whole run, seconds, default 900), DEBIAN_MIRROR, SMOKE_REBUILD_STANDINS=1 (as smoke.sh).
set -uo pipefail

LOG_TAG=swarm
# shellcheck source=tests/compose/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../compose/lib.sh"
HERE=$ROOT/tests/swarm
# A hard bound on the whole run (the EXIT trap below still cleans up on expiry).
run_bounded SWARM_WATCHDOG "${SWARM_TIMEOUT:-900}" "$@"
TMP=$(mktemp -d /tmp/swarm-test.XXXXXX)

STACK=prefork-swarm-test
IMAGE_A=prefork-api:swarm-a
IMAGE_B=prefork-api:swarm-b
IMAGE_BROKEN=prefork-api:swarm-broken
SWARM_STARTED=
CREATED_GWBRIDGE=

svc() { echo "${STACK}_$1"; }

# deploy IMAGE: the operator's command, with the stand-in override and no registry lookups (local images only).
deploy() {
    API_IMAGE=$1 timeout 120 "$STACK_DOCKER" stack deploy --resolve-image never \
        -c compose/stack.yml -c "$HERE/standin.override.yml" "$STACK" >"$TMP/deploy.log" 2>&1 ||
        { cat "$TMP/deploy.log"; return 1; }
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    exec 1>&3 2>&4
    log "cleanup"
    stop_load
    if [ -n "$SWARM_STARTED" ]; then
        if [ "$FAILED" -gt 0 ] || [ "$rc" -ne 0 ]; then
            log "tasks and logs (tail) of the failed run:"
            for s in db migrate api edge; do
                "$DOCKER" service ps --no-trunc "$(svc "$s")" 2>&1 \
                    --format '    {{.Name}} {{.Image}} {{.DesiredState}} {{.CurrentState}} {{.Error}}' | head -12
                timeout 20 "$DOCKER" service logs --tail 200 "$(svc "$s")" >"$TMP/service.log" 2>&1
                grep -v '"target":"\(access\|edge_access\)"' "$TMP/service.log" | tail -8 | cut -c1-300 | sed 's/^/    /'
            done
        fi
        timeout 60 "$DOCKER" stack rm "$STACK" >/dev/null 2>&1
        # Running tasks stop within their stop_grace_period; the finished job's containers stay behind (20.10).
        wait_for 90 "the stack's tasks have stopped" \
            eval '[ -z "$("$DOCKER" ps -q --filter "label=com.docker.stack.namespace=$STACK")" ]' || true
        "$DOCKER" ps -aq --filter "label=com.docker.stack.namespace=$STACK" | xargs -r "$DOCKER" rm -f >/dev/null 2>&1
        volume_gone() {
            "$DOCKER" volume rm "${STACK}_db-data" >/dev/null 2>&1 ||
                ! "$DOCKER" volume inspect "${STACK}_db-data" >/dev/null 2>&1
        }
        wait_for 30 "the database volume is removed" volume_gone || true
        timeout 60 "$DOCKER" swarm leave --force >/dev/null 2>&1 || log "swarm leave failed"
    fi
    if [ -n "$CREATED_GWBRIDGE" ]; then
        gwbridge_gone() {
            "$DOCKER" network rm docker_gwbridge >/dev/null 2>&1 || ! "$DOCKER" network inspect docker_gwbridge >/dev/null 2>&1
        }
        wait_for 30 "docker_gwbridge is removed" gwbridge_gone || true
    fi
    [ -n "${DOCKER:-}" ] && timeout 60 "$DOCKER" image rm -f "$IMAGE_A" "$IMAGE_B" "$IMAGE_BROKEN" >/dev/null 2>&1
    finish_run "$rc"
}
on_exit cleanup

# ------------------------------------------------------------------------------------------- task inspection
# Tasks of a service that Swarm wants running and that run (with a healthcheck, "Running" means healthy).
running_tasks() {
    "$DOCKER" service ps --filter desired-state=running --format '{{.ID}} {{.CurrentState}}' "$(svc "$1")" 2>/dev/null |
        awk '$2 == "Running" { print $1 }'
}
task_field() { "$DOCKER" inspect -f "$2" "$1" 2>/dev/null; } # TASK GO-TEMPLATE
container_of() { task_field "$1" '{{.Status.ContainerStatus.ContainerID}}'; }
image_of() { task_field "$1" '{{.Spec.ContainerSpec.Image}}'; }
update_state() { "$DOCKER" service inspect -f '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "$(svc "$1")" 2>/dev/null; }
# The address of a task on the stack's "front" network (where the edge reaches it).
front_address() {
    "$DOCKER" inspect -f "{{range .NetworksAttachments}}{{if eq .Network.Spec.Name \"${STACK}_front\"}}{{index .Addresses 0}}{{end}}{{end}}" "$1" |
        cut -d/ -f1
}

# api_settled N IMAGE: exactly N running api tasks, all healthy, all with IMAGE, and no update in progress.
api_settled() {
    local tasks t n=0
    tasks=$(running_tasks api)
    for t in $tasks; do
        [ "$(image_of "$t")" = "$2" ] && healthy "$(container_of "$t")" || return 1
        n=$((n + 1))
    done
    [ "$n" -eq "$1" ] && case $(update_state api) in updating | rollback_started) return 1 ;; esac
}
job_completed_with() { # IMAGE: a migrate task with IMAGE that completed
    local t
    for t in $("$DOCKER" service ps -q "$(svc migrate)" 2>/dev/null); do
        [ "$(image_of "$t")" = "$1" ] && [ "$(task_field "$t" '{{.Status.State}}')" = complete ] && return 0
    done
    return 1
}
edge_serving() {
    local t
    t=$(running_tasks edge | head -1)
    [ -n "$t" ] && healthy "$(container_of "$t")" && [ "$(http_code "$EDGE/healthz")" = 200 ]
}

# ----------------------------------------------------------------------------------------------- 1. images
ensure_engine || abort "a Docker engine is running"
# `mode: replicated-job` in a stack file needs a CLI >= 23.0 (the engine runs jobs since 20.10): the engine's own
# 20.10 CLI still builds the images (it has BuildKit built in), a newer one deploys.
STACK_DOCKER=
for c in $(type -ap docker) /usr/bin/docker; do
    v=$("$c" version -f '{{.Client.Version}}' 2>/dev/null) || continue
    if [ "${v%%.*}" -ge 23 ] 2>/dev/null; then STACK_DOCKER=$c; break; fi
done
[ -n "$STACK_DOCKER" ] || abort "a Docker CLI >= 23.0 for docker stack deploy (replicated-job); found none"
log "engine $("$DOCKER" version -f '{{.Server.Version}}');" \
    "stack deploy with $STACK_DOCKER $("$STACK_DOCKER" version -f '{{.Client.Version}}')"

start_host_build
ensure_base_images
build_api_image "$IMAGE_A" --label org.opencontainers.image.version=swarm-a
build_api_image "$IMAGE_B" --label org.opencontainers.image.version=swarm-b
# A release whose api cannot boot: its serve command has an invalid setting (exit 2, "bad configuration").
# The migration job sets its own command, so it still runs.
printf 'FROM %s\nCMD ["supervisor", "--config", "/app/conf/supervisor.toml", "--workers", "none"]\n' "$IMAGE_B" |
    timeout 120 "$DOCKER" build -q -t "$IMAGE_BROKEN" - >"$TMP/build-broken.log" 2>&1 ||
    { cat "$TMP/build-broken.log"; abort "build $IMAGE_BROKEN"; }
if timeout 30 "$DOCKER" run --rm "$IMAGE_BROKEN" >"$TMP/broken-run.log" 2>&1; then
    abort "$IMAGE_BROKEN should not boot"
fi

# ------------------------------------------------------------------------------------------------ 2. swarm
state=$("$DOCKER" info -f '{{.Swarm.LocalNodeState}}')
[ "$state" = inactive ] ||
    abort "the engine is already in a swarm ($state); this test starts and leaves its own: use an engine in none"
# Host-mode published ports bind to docker_gwbridge's host_binding_ipv4: created before the swarm, with 127.0.0.1,
# the edge's port is published on loopback only. (Without a swarm the network is unused and can be replaced.)
binding=$("$DOCKER" network inspect -f '{{index .Options "com.docker.network.bridge.host_binding_ipv4"}}' \
    docker_gwbridge 2>/dev/null)
if [ "$binding" != 127.0.0.1 ]; then
    "$DOCKER" network rm docker_gwbridge >/dev/null 2>&1
    "$DOCKER" network create --driver bridge \
        -o com.docker.network.bridge.name=docker_gwbridge \
        -o com.docker.network.bridge.enable_icc=false \
        -o com.docker.network.bridge.enable_ip_masquerade=true \
        -o com.docker.network.bridge.host_binding_ipv4=127.0.0.1 docker_gwbridge >/dev/null ||
        abort "create docker_gwbridge bound to 127.0.0.1"
    CREATED_GWBRIDGE=1
fi
SWARM_STARTED=1
timeout 60 "$DOCKER" swarm init --advertise-addr 127.0.0.1 >"$TMP/swarm-init.log" 2>&1 ||
    { cat "$TMP/swarm-init.log"; abort "docker swarm init --advertise-addr 127.0.0.1"; }
NODE=$("$DOCKER" info -f '{{.Swarm.NodeID}}')
"$DOCKER" node update --label-add prefork.db=true --label-add prefork.edge=true "$NODE" >/dev/null ||
    abort "label the node for the database and the edge"
log "single-node swarm up (node $NODE)"

# ------------------------------------------------------------------------------------------------ 3. deploy
EDGE_PORT=$(free_port)
EDGE=http://127.0.0.1:$EDGE_PORT
write_db_passwords "$TMP"
export EDGE_HTTP_PORT=$EDGE_PORT
t=$(date +%s)
deploy "$IMAGE_A" || abort "docker stack deploy -c compose/stack.yml"
if wait_for 240 "deploy" eval 'job_completed_with "$IMAGE_A" && api_settled 2 "$IMAGE_A" && edge_serving'; then
    pass "1. deploy from nothing: migrate job completed, 2 api tasks healthy, edge healthy and serving" \
        "in $(($(date +%s) - t)) s (limit 240 s)"
else
    abort "1. deploy from nothing: migrate job completed, 2 api tasks healthy, edge serving within 240 s"
fi

# The api's healthcheck passes only once /readyz did, which needs the schema at the image's version: the first
# successful probe of every api task must come after the job's completion.
gated() {
    local job t finished probes
    for job in $("$DOCKER" service ps -q "$(svc migrate)"); do
        [ "$(task_field "$job" '{{.Status.State}}')" = complete ] &&
            finished=$(task_field "$job" '{{json .Status.Timestamp}}')
    done
    for t in $(running_tasks api); do
        probes=$("$DOCKER" inspect -f '{{json .State.Health.Log}}' "$(container_of "$t")")
        python3 - "$finished" "$probes" <<'EOF' || return 1
import datetime, json, re, sys
def parse(s):
    s = re.sub(r"(\.\d{6})\d*", r"\1", s.strip('"')).replace("Z", "+00:00")
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%f%z" if "." in s else "%Y-%m-%dT%H:%M:%S%z")
finished = parse(sys.argv[1])
first_ok = min(parse(p["Start"]) for p in json.loads(sys.argv[2]) if p["ExitCode"] == 0)
print(f"    job completed {finished.time()}, first healthy probe {first_ok.time()}")
sys.exit(0 if first_ok > finished else 1)
EOF
    done
}
check "1. every api task became healthy only after the migration job completed" gated

check "1. GET /healthz through the edge: 200 {\"status\":\"ok\"}" \
    test "$(curl -s --max-time 5 -w ' %{http_code}' "$EDGE/healthz")" = '{"status":"ok"} 200'
check "1. GET /_edge/healthz: 200 from nginx itself" test "$(http_code "$EDGE/_edge/healthz")" = 200
ITEM_ID=$(post_item "swarm item" 2)
check "1. POST /api/items through the edge: 201 with an id" test -n "$ITEM_ID"
check "1. GET /api/items/{id} through the edge: 200" test "$(http_code "$EDGE/api/items/$ITEM_ID")" = 200
check "1. /readyz is not reachable through the edge (403)" test "$(http_code "$EDGE/readyz")" = 403
check "1. /metrics is not reachable through the edge (403)" test "$(http_code "$EDGE/metrics")" = 403
API_C=$(container_of "$(running_tasks api | head -1)")
inside() { timeout 20 "$DOCKER" exec "$API_C" supervisor healthcheck "http://127.0.0.1:8000$1" >/dev/null 2>&1; }
check "1. /readyz and /metrics answer 200 inside an api task" eval 'inside /readyz && inside /metrics'
# The roles of compose/prod.yml (conf/postgres/roles.sh, a Swarm config here): the api as the app role.
DB_C=$(container_of "$(running_tasks db | head -1)")
api_users=$(timeout 20 "$DOCKER" exec "$DB_C" psql -U postgres -d app -XAtc \
    "SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity WHERE application_name = 'app'" 2>&1)
api_super=$(timeout 20 "$DOCKER" exec "$DB_C" psql -U postgres -d app -XAtc \
    "SELECT rolsuper FROM pg_roles WHERE rolname = 'app_api'" 2>&1)
check "1. the api connects as the app role, no superuser (pg_stat_activity: $api_users; rolsuper $api_super)" \
    test "$api_users" = app_api -a "$api_super" = f

published() { "$DOCKER" service inspect -f '{{range .Endpoint.Ports}}{{.PublishMode}}:{{.PublishedPort}} {{end}}' "$(svc "$1")"; }
only_edge_published() {
    [ "$(published edge)" = "host:$EDGE_PORT " ] && [ -z "$(published api)$(published db)$(published migrate)" ]
}
check "1. only the edge publishes a port (edge: $(published edge); api, db, migrate: none)" only_edge_published
listeners=$(ss -ltnH "sport = :$EDGE_PORT" | awk '{ print $4 }' | sort -u | tr '\n' ' ')
other_ip=$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -v '^127\.' | grep -m1 '\.')
loopback_only() {
    [ "$listeners" = "127.0.0.1:$EDGE_PORT " ] &&
        { [ -z "$other_ip" ] || [ "$(http_code "http://$other_ip:$EDGE_PORT/healthz")" = 000 ]; }
}
check "1. the edge's port listens on loopback only ($listeners; not on ${other_ip:-no other address})" loopback_only

# ----------------------------------------------------------------------------------------- 3. scale 2-4-2
# Load through the edge (lib.sh's start_load): three keep-alive loops on /healthz and one on the item.
start_load scale
t_scale=$(date +%s)
timeout 60 "$DOCKER" service scale --detach "$(svc api)=4" >/dev/null 2>&1
if wait_for 120 "4 api tasks" api_settled 4 "$IMAGE_A"; then
    pass "3. scaled to 4: 4 api tasks healthy in $(($(date +%s) - t_scale)) s"
else
    fail "3. scaled to 4: 4 api tasks healthy within 120 s"
fi
# The edge finds the new tasks through the service name: the access log names every task's address as upstream.
EDGE_C=$(container_of "$(running_tasks edge | head -1)")
# all_tasks_reached N: N api tasks run, and the edge has sent requests to each of them.
all_tasks_reached() {
    local t addr n=0
    "$DOCKER" logs --since "$t_scale" "$EDGE_C" >"$TMP/edge-scale.log" 2>/dev/null
    for t in $(running_tasks api); do
        addr=$(front_address "$t")
        [ -n "$addr" ] && grep -q "\"upstream\":\"$addr:8000\"" "$TMP/edge-scale.log" || return 1
        n=$((n + 1))
    done
    [ "$n" -eq "$1" ]
}
check "3. the edge sends requests to all 4 api tasks (found through the service name)" \
    wait_for 60 "requests to every task" all_tasks_reached 4
t=$(date +%s)
before=$(for t in $(running_tasks api); do echo "$t $(container_of "$t")"; done)
timeout 60 "$DOCKER" service scale --detach "$(svc api)=2" >/dev/null 2>&1
if wait_for 120 "2 api tasks" api_settled 2 "$IMAGE_A"; then
    pass "3. scaled back to 2: the 2 tasks kept are healthy"
else
    fail "3. scaled back to 2 within 120 s"
fi
# Swarm deletes the removed tasks' containers soon after they stop; the engine's events keep their exit codes.
running_tasks api >"$TMP/kept.txt"
removed=$(echo "$before" | while read -r t c; do grep -qx "$t" "$TMP/kept.txt" || echo "$c"; done)
exits() {
    local c
    timeout 10 "$DOCKER" events --since "$t" --until "$(date +%s)" --filter type=container --filter event=die \
        --format '{{.Actor.ID}} {{index .Actor.Attributes "exitCode"}}' >"$TMP/events.txt" 2>/dev/null
    for c in $removed; do grep -q "^$c 0$" "$TMP/events.txt" || return 1; done
}
check "3. the 2 removed tasks stopped and exited 0 (a graceful stop)" \
    eval '[ "$(echo $removed | wc -w)" -eq 2 ] && wait_for 60 "the removed tasks to exit" exits'
# Some more traffic once the two removed tasks are gone.
answers() { cat $LOAD_FILES 2>/dev/null | wc -l; }
more=$(($(answers) + 200))
wait_for 60 "200 more answers" eval '[ "$(answers)" -ge "$more" ]' || true
stop_load
check "3. scaling 2 -> 4 -> 2 under load: 0 failed requests through the edge ($LOAD_BAD of $LOAD_TOTAL not 200${LOAD_CODES:+: $LOAD_CODES})" load_ok 200

# ------------------------------------------------------------------------------------ 2. rolling update
# rollout_under_load NAME IMAGE STATE RUNNING SECONDS: `docker stack deploy` with API_IMAGE=IMAGE under load, then
# waits until the api's update state is STATE with 2 healthy tasks of RUNNING. Sets ROLLOUT_S and the load results.
rollout_under_load() {
    local name=$1 image=$2 state=$3 running=$4 seconds=$5 t rc=0
    start_load "$name"
    t=$(date +%s)
    deploy "$image" || fail "docker stack deploy with API_IMAGE=$image"
    wait_for "$seconds" "$name" eval '[ "$(update_state api)" = "$state" ] && api_settled 2 "$running"' || rc=1
    ROLLOUT_S=$(($(date +%s) - t))
    stop_load
    return $rc
}
if rollout_under_load update "$IMAGE_B" completed "$IMAGE_B" 240; then
    pass "2. rolling update to a new image: completed, 2 healthy tasks of $IMAGE_B, in $ROLLOUT_S s"
else
    fail "2. rolling update to a new image completed within 240 s (state: $(update_state api))"
fi
check "2. rolling update under load: 0 failed requests through the edge ($LOAD_BAD of $LOAD_TOTAL not 200${LOAD_CODES:+: $LOAD_CODES})" load_ok 200
check "2. the migration job ran again, with the new image" job_completed_with "$IMAGE_B"
# Every api task of the first release that was stopped (2 by the scale-down, 2 by the update) drained: the master
# logged a graceful stop and the container exited 0.
drained() {
    local t c n=0 bad=0
    for t in $("$DOCKER" service ps -q --filter desired-state=shutdown "$(svc api)"); do
        [ "$(image_of "$t")" = "$IMAGE_A" ] || continue
        c=$(container_of "$t")
        n=$((n + 1))
        if [ "$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$c" 2>/dev/null)" = 0 ] && logs_have "$c" '"graceful stop"'; then
            :
        else
            bad=$((bad + 1))
            log "    task $t (container ${c:0:12}) did not stop gracefully"
        fi
    done
    log "    $n stopped tasks of $IMAGE_A, $bad without a graceful stop"
    [ "$n" -ge 2 ] && [ "$bad" -eq 0 ]
}
check "2. the old tasks drained: each exited 0 after logging a graceful stop" drained

# ------------------------------------------------------------------------------- 4. automatic rollback
if rollout_under_load rollback "$IMAGE_BROKEN" rollback_completed "$IMAGE_B" 300; then
    pass "4. an image whose api cannot boot: the update was rolled back automatically to $IMAGE_B in $ROLLOUT_S s"
else
    fail "4. the update to a broken image was rolled back within 300 s (state: $(update_state api))"
fi
check "4. service continued during the failed update: 0 failed requests ($LOAD_BAD of $LOAD_TOTAL not 200${LOAD_CODES:+: $LOAD_CODES})" load_ok 100

# ---------------------------------------------------------------------------------- 5. a killed api task
start_load kill
victim=$(running_tasks api | head -1)
"$DOCKER" kill "$(container_of "$victim")" >/dev/null 2>&1
t=$(date +%s)
replaced() { api_settled 2 "$IMAGE_B" && ! running_tasks api | grep -qx "$victim"; }
if wait_for 120 "a replacement task" replaced; then
    pass "5. a killed api task (SIGKILL) was replaced by a new healthy task in $(($(date +%s) - t)) s"
else
    fail "5. a killed api task was replaced within 120 s"
fi
stop_load
check "5. while a task was killed and replaced: 0 failed requests through the edge ($LOAD_BAD of $LOAD_TOTAL not 200${LOAD_CODES:+: $LOAD_CODES})" \
    load_ok 100
