#!/bin/sh
# Stand-in only: for nginx 1.22, which resolves an upstream server's name once, at start, what nginx >= 1.27.3
# does for a server with the `resolve` parameter. With STANDIN_RERESOLVE="NAME ..." in the environment (set by
# tests/swarm/standin.override.yml) it waits up to 60 s for every NAME to resolve, so that nginx can start, then
# watches their addresses in the background and reloads nginx gracefully (SIGHUP to the master) when they change:
# a task that joins or leaves a service is seen within about a second. Without the variable it does nothing.
set -eu
[ -n "${STANDIN_RERESOLVE:-}" ] || exit 0

addresses() {
    for name in $STANDIN_RERESOLVE; do getent ahostsv4 "$name" | awk '{ print $1 }'; done | sort -u | tr '\n' ' ' | sed 's/ $//'
}

deadline=$(($(date +%s) + 60))
for name in $STANDIN_RERESOLVE; do
    until getent ahostsv4 "$name" >/dev/null || [ "$(date +%s)" -ge "$deadline" ]; do sleep 1; done
done
last=$(addresses)
echo "$0: $STANDIN_RERESOLVE -> $last; watching"
(
    while sleep 1; do
        now=$(addresses)
        [ -n "$now" ] && [ "$now" != "$last" ] || continue
        if [ -s /run/nginx.pid ] && kill -HUP "$(cat /run/nginx.pid)" 2>/dev/null; then
            echo "$0: $STANDIN_RERESOLVE -> $now; nginx reloaded"
            last=$now
        fi
    done
) &
