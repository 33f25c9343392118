#!/bin/sh
# Backups of the stack's PostgreSQL, run by the `backup` service of compose/prod.yml (profile "ops"), in the
# same PostgreSQL image as the server, so pg_dump and pg_restore match its major version.
#
#   backup                       (default) pg_dump -Fc to /backups/<db>-<UTC timestamp>.dump, check it with
#                                pg_restore -l, then delete dumps older than BACKUP_RETENTION_DAYS
#   list                         the dumps, newest first, with sizes (file names as restore takes them)
#   restore FILE DB              restore FILE into a NEW database DB (created here; refuses an existing one)
#   restore-in-place [--force] FILE
#                                replace the objects of $PGDATABASE with FILE's, in one transaction; refused
#                                while other sessions are connected to it (the api: stop it first,
#                                docs/backups.md) unless --force
#
# Connection: PGHOST, PGPORT, PGUSER, PGDATABASE (libpq), and the password from the file named by
# PGPASSWORD_SECRET (a Compose secret). The password is never printed. Run it as the database's owner: a
# restore in place drops and recreates the owner's objects.
#
# Dumps are written with mode 0600 (they hold every row of the database) and reach the disk (fsync) before
# they get their final name. BACKUP_PATH overrides the folder (/backups, where the service mounts BACKUP_DIR).
set -eu

backups=${BACKUP_PATH:-/backups}
retention_days=${BACKUP_RETENTION_DAYS:-14}

log() {
    printf '%s pg-backup: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2
}
die() {
    log "error: $*"
    exit 1
}

if [ -n "${PGPASSWORD_SECRET:-}" ]; then
    [ -r "$PGPASSWORD_SECRET" ] || die "PGPASSWORD_SECRET=$PGPASSWORD_SECRET is not readable"
    PGPASSWORD=$(cat "$PGPASSWORD_SECRET")
    export PGPASSWORD
fi
: "${PGDATABASE:?PGDATABASE must be set}"

# A dump file given as a bare name is looked up in /backups.
resolve() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$backups/$1" ;;
    esac
}

backup() {
    case $retention_days in
        '' | *[!0-9]*) die "BACKUP_RETENTION_DAYS must be a whole number of days, not '$retention_days'" ;;
    esac
    [ -d "$backups" ] && [ -w "$backups" ] || die "$backups is not a writable directory (mount the host folder)"
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    final="$backups/$PGDATABASE-$stamp.dump"
    partial="$final.partial"
    log "dumping database $PGDATABASE from ${PGHOST:-the local socket} to $final"
    # Custom format: compressed, restorable selectively and in parallel with pg_restore. The file gets its final
    # name only once it is complete, readable and on the disk, so a *.dump file is never a truncated one, even
    # after a crash of the host. Readable by its owner only.
    umask 077
    if ! pg_dump --format=custom --no-password --file="$partial"; then
        rm -f "$partial"
        die "pg_dump failed"
    fi
    if ! toc=$(pg_restore --list "$partial"); then
        rm -f "$partial"
        die "pg_restore --list cannot read the dump: not keeping it"
    fi
    entries=$(printf '%s\n' "$toc" | grep -c -v '^;' || true)
    if ! sync "$partial"; then
        rm -f "$partial"
        die "cannot sync the dump to the disk: not keeping it"
    fi
    mv "$partial" "$final"
    # The rename itself, on the disk.
    sync "$backups" || log "warning: cannot sync $backups after the rename"
    log "ok: $final ($(wc -c <"$final") bytes, $entries table of contents entries)"
    # Retention by age, only after a good new dump, and only our own files.
    find "$backups" -maxdepth 1 -type f -name "$PGDATABASE-*.dump" -mtime +"$retention_days" -print |
        while IFS= read -r old; do
            rm -f "$old"
            log "retention: deleted $old (older than $retention_days days)"
        done
    find "$backups" -maxdepth 1 -type f -name '*.dump.partial' -mmin +1440 -exec rm -f {} +
}

# Newest first, with sizes and times, by the names restore and restore-in-place take (the host's folder is
# not known in here, so no /backups paths).
list() {
    (cd "$backups" && ls -lt -- *.dump 2>/dev/null) || log "no dumps in $backups"
}

restore() {
    [ $# -eq 2 ] || die "usage: restore FILE NEW_DATABASE"
    file=$(resolve "$1")
    target=$2
    [ -r "$file" ] || die "$file is not readable"
    pg_restore --list "$file" >/dev/null || die "$file is not a readable pg_dump custom-format archive"
    log "creating database $target"
    # createdb refuses an existing name, so a restore never mixes into a database that holds data.
    createdb --no-password "$target" || die "cannot create database $target (it may exist: pick a new name, or use restore-in-place)"
    log "restoring $file into $target"
    pg_restore --no-password --no-owner --exit-on-error --jobs=2 --dbname="$target" "$file"
    log "ok: $file restored into $target"
}

# The other client sessions on $PGDATABASE, as "N USER/APPLICATION ..." (the count first); background processes
# (autovacuum) have no user and do not count.
other_sessions() {
    psql --no-password -X -A -t -q -v ON_ERROR_STOP=1 -c "
        SELECT count(*) || coalesce(' (' || string_agg(DISTINCT usename || '/' ||
               coalesce(nullif(application_name, ''), '?'), ', ') || ')', '')
        FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND usename IS NOT NULL"
}

restore_in_place() {
    force=
    if [ "${1:-}" = --force ]; then
        force=1
        shift
    fi
    [ $# -eq 1 ] || die "usage: restore-in-place [--force] FILE"
    file=$(resolve "$1")
    [ -r "$file" ] || die "$file is not readable"
    pg_restore --list "$file" >/dev/null || die "$file is not a readable pg_dump custom-format archive"
    # Anyone still connected would see tables vanish and reappear, and could write between the drop and the
    # end of the restore.
    sessions=$(other_sessions) || die "cannot list the sessions connected to $PGDATABASE"
    count=${sessions%% *}
    who=${sessions#"$count"}
    if [ "$count" != 0 ]; then
        if [ -z "$force" ]; then
            log "refusing to restore in place: $count other session(s) connected to database $PGDATABASE$who"
            log "stop the api first: docker compose -f compose/prod.yml stop api (docs/backups.md, \"Restore in place\"),"
            log "then run this again; restore-in-place --force FILE restores with them connected"
            exit 1
        fi
        log "warning: restoring with $count other session(s) connected to database $PGDATABASE$who (--force)"
    fi
    log "restoring $file into $PGDATABASE in place (drops and recreates its objects, one transaction)"
    pg_restore --no-password --no-owner --clean --if-exists --single-transaction --exit-on-error \
        --dbname="$PGDATABASE" "$file"
    log "ok: $PGDATABASE restored from $file"
}

command=${1:-backup}
[ $# -eq 0 ] || shift
case $command in
    backup) backup ;;
    list) list ;;
    restore) restore "$@" ;;
    restore-in-place) restore_in_place "$@" ;;
    *) die "unknown command '$command' (backup, list, restore FILE DB, restore-in-place [--force] FILE)" ;;
esac
