#!/bin/sh
# The database roles of the stack, created or brought up to date. Idempotent: every run leaves the same state.
#
#   owner   DB_OWNER_USER (default app): owns the database and, through it, the schema `public` (PostgreSQL 15+);
#           the migrations run as this role. Not a superuser, cannot create roles; may create databases (the
#           restore drill of docs/backups.md creates one).
#   app     DB_APP_USER (default app_api): what the api connects as. CONNECT on the database, USAGE on `public`,
#           SELECT, INSERT, UPDATE and DELETE on the owner's tables there (and USAGE on their sequences), now and
#           for every table a later migration creates (default privileges); only SELECT on the migration history
#           (`supervisor migrate` takes the rest back after each run). Nothing else: no superuser, no CREATE
#           anywhere, no membership in any role (pg_execute_server_program, pg_read_server_files, ...).
#
# Passwords come from DB_OWNER_PASSWORD_FILE and DB_APP_PASSWORD_FILE (secrets; a trailing newline is ignored)
# and are set on every run, so re-running it after changing a file rotates the password. The superuser it
# connects as (POSTGRES_USER) loses its password when it is neither role: it can then log in only from inside
# the database's container, over the local socket. PUBLIC loses CONNECT and TEMPORARY on the database.
#
# Run by the postgres image on the first start of an empty volume (from /docker-entrypoint-initdb.d), and by
# hand on a volume that was initialised before (docs/deploy.md, "Upgrading from a single database role"):
#   docker compose -f compose/prod.yml exec -T db sh /docker-entrypoint-initdb.d/10-roles.sh
# It connects with psql as POSTGRES_USER (a superuser) to POSTGRES_DB, over the local socket unless PGHOST and
# PGPORT say otherwise. Passwords never appear on a command line or in its output.
#
# The postgres image sources a non-executable script (and the test stand-in sources every one), so everything
# runs in a subshell: nothing leaks into the image's entrypoint.

pg_roles_main() (
    set -eu
    superuser=${POSTGRES_USER:-postgres}
    db=${POSTGRES_DB:-$superuser}
    owner=${DB_OWNER_USER:-app}
    app=${DB_APP_USER:-app_api}
    say() { printf '%s\n' "roles.sh: $*" >&2; }
    password_of() { # ROLE FILE: the file's content, without the trailing newline
        [ -n "$2" ] && [ -r "$2" ] || { say "the password file for $1 (${2:-unset}) is not readable"; return 1; }
        value=$(cat "$2")
        [ -n "$value" ] || { say "the password file for $1 ($2) is empty"; return 1; }
        printf '%s' "$value"
    }
    [ "$owner" != "$app" ] || { say "DB_OWNER_USER and DB_APP_USER must differ (both are $owner)"; return 1; }
    [ "$app" != "$superuser" ] || { say "DB_APP_USER must not be the superuser $superuser"; return 1; }
    ROLES_OWNER_PASSWORD=$(password_of "$owner" "${DB_OWNER_PASSWORD_FILE:-}")
    ROLES_APP_PASSWORD=$(password_of "$app" "${DB_APP_PASSWORD_FILE:-}")
    export ROLES_OWNER_PASSWORD ROLES_APP_PASSWORD
    if [ "$superuser" = "$owner" ]; then lock_superuser=false; else lock_superuser=true; fi
    say "owner $owner, app role $app, database $db"
    psql -X -q -v ON_ERROR_STOP=1 --username "$superuser" --dbname "$db" \
        -v owner="$owner" -v app="$app" -v db="$db" -v superuser="$superuser" \
        -v lock_superuser="$lock_superuser" <<'SQL'
\getenv owner_password ROLES_OWNER_PASSWORD
\getenv app_password ROLES_APP_PASSWORD
SET client_min_messages = warning;

-- The owner. On a volume initialised with a single role, that role is the owner and the superuser at once
-- (PostgreSQL cannot take superuser from the role that created the cluster): its attributes are left alone.
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEROLE CREATEDB NOREPLICATION NOBYPASSRLS', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner') \gexec
ALTER ROLE :"owner" LOGIN PASSWORD :'owner_password';

-- The app role: a login and nothing more.
SELECT format('CREATE ROLE %I', :'app') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app') \gexec
ALTER ROLE :"app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT
    PASSWORD :'app_password';
SELECT format('REVOKE %I FROM %I', granted.rolname, :'app')
FROM pg_auth_members m
JOIN pg_roles granted ON granted.oid = m.roleid
JOIN pg_roles member ON member.oid = m.member
WHERE member.rolname = :'app' \gexec

\if :lock_superuser
ALTER ROLE :"superuser" PASSWORD NULL;
\endif

-- The database and, from PostgreSQL 15, its schema public (owned by pg_database_owner) belong to the owner.
ALTER DATABASE :"db" OWNER TO :"owner";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"app";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM :"app";
GRANT USAGE ON SCHEMA public TO :"app";

-- Read and write on the owner's tables: those that exist, and those later migrations create.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO :"app";
-- The migration history is read (readiness compares versions), never written.
SELECT format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON %s FROM %I', history, :'app')
FROM to_regclass('refinery_schema_history') AS history
WHERE history IS NOT NULL \gexec
SQL
    say "done"
)

pg_roles_main
