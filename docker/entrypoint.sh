#!/bin/sh
# Entrypoint of the API image. It only prepares the environment, then execs the command, so the supervisor
# master is PID 1 (it reaps every child and turns SIGTERM into a graceful stop).
#
# Database password from a file (Docker/Compose secrets, Kubernetes secret volumes):
#   DATABASE_URL           libpq key=value form WITHOUT the password, e.g. "host=db port=5432 user=app dbname=app"
#   DATABASE_PASSWORD_FILE path of a file holding only the password (a trailing newline is ignored)
# The password is appended to DATABASE_URL as password='...' (quoted and escaped for libpq), so it never
# appears in the image, in compose files or on a command line. It is never printed.
set -eu

die() {
    echo "docker-entrypoint: $*" >&2
    exit 2
}

if [ -n "${DATABASE_PASSWORD_FILE:-}" ]; then
    [ -r "$DATABASE_PASSWORD_FILE" ] || die "DATABASE_PASSWORD_FILE=$DATABASE_PASSWORD_FILE is not a readable file"
    case "${DATABASE_URL:-}" in
        "") die "DATABASE_PASSWORD_FILE is set but DATABASE_URL is not (give host, port, user and dbname in key=value form)" ;;
        *://*) die "DATABASE_PASSWORD_FILE needs DATABASE_URL in key=value form (host=db port=5432 user=app dbname=app), not a URL" ;;
        *password=*) die "DATABASE_URL already has a password; unset DATABASE_PASSWORD_FILE or remove it from the URL" ;;
    esac
    # $(...) strips trailing newlines. Inside libpq's single quotes, backslash and quote are backslash-escaped.
    password=$(cat "$DATABASE_PASSWORD_FILE")
    [ -n "$password" ] || die "DATABASE_PASSWORD_FILE=$DATABASE_PASSWORD_FILE is empty"
    escaped=$(printf '%s' "$password" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g")
    DATABASE_URL="$DATABASE_URL password='$escaped'"
    export DATABASE_URL
    unset password escaped DATABASE_PASSWORD_FILE
fi

# `docker run IMAGE migrate` and friends: a first argument that is a subcommand or a flag goes to supervisor.
case "${1:-}" in
    serve | check | migrate | healthcheck | -*) set -- supervisor "$@" ;;
esac

exec "$@"
