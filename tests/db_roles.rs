//! The deployments' database roles (`conf/postgres/roles.sh`) and backup script (`compose/backup/pg-backup.sh`)
//! against a real PostgreSQL, with the real binary migrating as the owner and serving as the app role.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use test_support::app_checks::{check_items_crud, check_readyz_ready, create_item};
use test_support::http_client::get;
use test_support::pg::{PgOptions, PgServer};
use test_support::provision::tools;
use test_support::*;

/// A password with what needs quoting in SQL, in libpq's key=value form and in a shell.
const OWNER_PASSWORD: &str = "own'er pw\\1$x";
const APP_PASSWORD: &str = "app pw'2\\";
/// The superuser's password over TCP, until roles.sh removes it.
const SUPERUSER_PASSWORD: &str = "superuser-pw";

/// PATH with the PostgreSQL binaries the throwaway server uses first, for the scripts' psql, pg_dump, ...
fn path_with_pg() -> String {
    format!("{}:{}", tools().pg_bin.display(), std::env::var("PATH").unwrap_or_default())
}

/// A libpq key=value connection string over TCP.
fn url(pg: &PgServer, user: &str, password: &str, db: &str) -> String {
    let quoted = password.replace('\\', "\\\\").replace('\'', "\\'");
    format!("host=127.0.0.1 port={} user={user} dbname={db} password='{quoted}'", pg.port())
}

/// The password files of the two roles, as the deployments mount them (with a trailing newline).
struct Secrets {
    dir: TempDir,
}

impl Secrets {
    fn new(owner: &str, app: &str) -> Secrets {
        let secrets = Secrets { dir: TempDir::new("db-secrets") };
        secrets.set("owner", owner);
        secrets.set("app", app);
        secrets
    }

    fn set(&self, role: &str, password: &str) {
        let path = self.file(role);
        std::fs::write(&path, format!("{password}\n")).unwrap();
        // Read by psql running as this test's user; world-readable like the Compose secret files.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    fn file(&self, role: &str) -> PathBuf {
        self.dir.join(&format!("db_{role}_password"))
    }
}

/// Runs conf/postgres/roles.sh as the deployments do, connecting over the server's socket as `superuser`.
fn roles_sh(pg: &PgServer, secrets: &Secrets, superuser: &str) -> Output {
    let out = Command::new("sh")
        .arg(workspace_root().join("conf/postgres/roles.sh"))
        .env("PATH", path_with_pg())
        .env("PGHOST", pg.dir())
        .env("PGPORT", pg.port().to_string())
        .env("POSTGRES_USER", superuser)
        .env("POSTGRES_DB", "app")
        .env("DB_OWNER_PASSWORD_FILE", secrets.file("owner"))
        .env("DB_APP_PASSWORD_FILE", secrets.file("app"))
        .env_remove("DB_OWNER_USER")
        .env_remove("DB_APP_USER")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "roles.sh failed: {text}");
    for secret in [OWNER_PASSWORD, APP_PASSWORD, "app pw'2"] {
        assert!(!text.contains(secret), "roles.sh printed a password: {text}");
    }
    out
}

/// Runs `sql` with psql over TCP as `user` in the app database; whether it succeeded, and its output (stdout
/// then stderr).
fn psql_as(pg: &PgServer, user: &str, password: &str, sql: &str) -> (bool, String) {
    psql_in(pg, "app", user, password, sql)
}

fn psql_in(pg: &PgServer, db: &str, user: &str, password: &str, sql: &str) -> (bool, String) {
    let out = Command::new("psql")
        .env("PATH", path_with_pg())
        .env("PGPASSWORD", password)
        .args(["-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", user, "-d", db])
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text.trim().to_owned())
}

/// A server with the `app` database and its owner and app role made by roles.sh, migrated by the owner.
fn two_roles() -> (PgServer, Secrets) {
    let pg = PgServer::with_options(PgOptions { password: Some(SUPERUSER_PASSWORD.into()), ..PgOptions::default() });
    pg.psql("CREATE DATABASE app");
    let secrets = Secrets::new(OWNER_PASSWORD, APP_PASSWORD);
    roles_sh(&pg, &secrets, "postgres");
    let out = migrate(binary!(), &url(&pg, "app", OWNER_PASSWORD, "app"));
    assert!(out.status.success(), "migrate as the owner: {}", String::from_utf8_lossy(&out.stdout));
    (pg, secrets)
}

/// The api on `pg` as the app role.
fn serve_as_app(pg: &PgServer) -> Server {
    let port = free_port();
    let url = url(pg, "app_api", APP_PASSWORD, "app");
    let server =
        Server::start_with(binary!(), port, &config_with(port, "workers = 1", ""), &[("DATABASE_URL", &url)], &[]);
    server.wait_workers_ready(1);
    server
}

/// What the api's role may do: read and write the app's tables, read the migration history; nothing else.
fn assert_the_app_role_is_least_privileged(pg: &PgServer) {
    let app = |sql: &str| psql_as(pg, "app_api", APP_PASSWORD, sql);
    let (ok, attributes) = app("SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, \
         (SELECT count(*) FROM pg_auth_members m WHERE m.member = r.oid) \
         FROM pg_roles r WHERE rolname = current_user");
    assert!(ok && attributes == "f|f|f|f|f|0", "attributes and memberships: {attributes}");
    let refused = [
        ("CREATE TABLE t (x int)", "permission denied for schema public"),
        ("CREATE TEMP TABLE t (x int)", "permission denied to create temporary tables"),
        ("CREATE SCHEMA s", "permission denied for database"),
        ("COPY (SELECT 1) TO PROGRAM 'id'", "pg_execute_server_program"),
        ("SELECT pg_read_file('PG_VERSION')", "permission denied"),
        ("DROP TABLE items", "must be owner"),
        ("TRUNCATE items", "permission denied"),
        ("ALTER TABLE items ADD COLUMN x int", "must be owner"),
        ("INSERT INTO refinery_schema_history VALUES (99, 'x', 'y', 'z')", "permission denied"),
        ("DELETE FROM refinery_schema_history", "permission denied"),
    ];
    for (sql, why) in refused {
        let (ok, text) = app(sql);
        assert!(!ok && text.contains(why), "{sql}: expected {why:?}, got {text:?}");
    }
    let (ok, text) =
        app("INSERT INTO items (id, name, quantity) VALUES ('00000000-0000-7000-8000-000000000001', 'probe', 1); \
         UPDATE items SET quantity = 2 WHERE name = 'probe'; DELETE FROM items WHERE name = 'probe'; \
         SELECT max(version) FROM refinery_schema_history");
    assert!(ok && text == schema_version(), "read and write on items, read the history: {text}");
}

/// The schema version of this build: the number of the newest file in migrations/.
fn schema_version() -> String {
    let newest = std::fs::read_dir(workspace_root().join("migrations"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix('V')?.split("__").next()?.parse::<u32>().ok())
        .max()
        .unwrap();
    newest.to_string()
}

/// Role attributes, memberships and every privilege in the app database: what a second run must not change.
fn privileges(pg: &PgServer) -> String {
    pg.psql(
        "SELECT string_agg(line, E'\\n' ORDER BY line) FROM ( \
           SELECT format('role %s %s %s %s', rolname, rolsuper, rolcreatedb, rolcanlogin) AS line FROM pg_roles \
             WHERE rolname IN ('postgres', 'app', 'app_api') \
           UNION ALL SELECT format('db %s', datacl) FROM pg_database WHERE datname = 'app' \
           UNION ALL SELECT format('member %s %s', roleid::regrole, member::regrole) FROM pg_auth_members \
           UNION ALL SELECT format('default %s', defaclacl) FROM pg_default_acl \
         ) lines",
    ) + "\n"
        + &Command::new("psql")
            .env("PATH", path_with_pg())
            .arg("-h")
            .arg(pg.dir())
            .args(["-p", &pg.port().to_string(), "-U", "postgres", "-d", "app", "-XAtc"])
            .arg("SELECT relname, relacl FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY 1")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap()
}

// A fresh database: roles.sh makes the owner and the app role; the owner migrates; the superuser can no longer
// log in over the network; the app role can read and write the app's tables and nothing else; the api serves
// as it; a second run changes nothing, and a changed password file rotates the password.
#[test]
fn a_fresh_database_gets_an_owner_and_a_least_privileged_app_role() {
    let (pg, secrets) = two_roles();

    let out = migrate(binary!(), &pg.url());
    assert!(!out.status.success(), "the superuser logs in over TCP no more");
    assert!(String::from_utf8_lossy(&out.stdout).contains("password authentication failed"));
    let (ok, owner) = psql_as(
        &pg,
        "app",
        OWNER_PASSWORD,
        "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user",
    );
    assert!(ok && owner == "f|f|t", "the owner is no superuser: {owner}");
    assert_the_app_role_is_least_privileged(&pg);

    let server = serve_as_app(&pg);
    let base = server.base();
    check_readyz_ready(&base);
    check_items_crud(&base);
    let connected =
        pg.psql("SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity WHERE application_name = 'app'");
    assert_eq!(connected, "app_api", "the api connects as the app role");
    drop(server);

    let before = privileges(&pg);
    roles_sh(&pg, &secrets, "postgres");
    assert_eq!(privileges(&pg), before, "a second run changes nothing");

    secrets.set("app", "rotated-pw");
    roles_sh(&pg, &secrets, "postgres");
    assert!(psql_as(&pg, "app_api", "rotated-pw", "SELECT 1").0, "the new password works");
    assert!(!psql_as(&pg, "app_api", APP_PASSWORD, "SELECT 1").0, "the old one no more");
}

// A database of the single-role layout (one superuser that owns everything, which the api used): roles.sh,
// run as that role, adds the app role beside it; the owner keeps its password and its rights, the api then
// serves as the app role, with the data it had.
#[test]
fn a_single_role_database_is_upgraded_in_place() {
    let pg = PgServer::with_options(PgOptions { password: Some(SUPERUSER_PASSWORD.into()), ..PgOptions::default() });
    let owner = url(&pg, "app", OWNER_PASSWORD, "app");
    pg.psql(&format!("CREATE ROLE app SUPERUSER LOGIN PASSWORD '{}'", OWNER_PASSWORD.replace('\'', "''")));
    pg.psql("CREATE DATABASE app OWNER app");
    assert!(migrate(binary!(), &owner).status.success());
    let (ok, _) = psql_as(
        &pg,
        "app",
        OWNER_PASSWORD,
        "INSERT INTO items (id, name, quantity) VALUES ('00000000-0000-7000-8000-0000000000aa', 'kept', 7)",
    );
    assert!(ok);

    let secrets = Secrets::new(OWNER_PASSWORD, APP_PASSWORD);
    roles_sh(&pg, &secrets, "app");
    assert!(migrate(binary!(), &owner).status.success(), "the owner still migrates with its password");
    assert_the_app_role_is_least_privileged(&pg);

    let server = serve_as_app(&pg);
    let base = server.base();
    check_readyz_ready(&base);
    let kept = get(&base, "/api/items/00000000-0000-7000-8000-0000000000aa");
    assert_eq!(kept.status, 200, "{}", kept.text());
    check_items_crud(&base);
}

/// Runs compose/backup/pg-backup.sh as the backup service does (as the owner), with dumps in `dir`.
fn pg_backup(pg: &PgServer, secrets: &Secrets, dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("sh")
        .arg(workspace_root().join("compose/backup/pg-backup.sh"))
        .args(args)
        .env("PATH", path_with_pg())
        .env("BACKUP_PATH", dir)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", pg.port().to_string())
        .env("PGUSER", "app")
        .env("PGDATABASE", "app")
        .env("PGPASSWORD_SECRET", secrets.file("owner"))
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains(OWNER_PASSWORD), "pg-backup printed the password: {text}");
    (out.status.success(), text)
}

fn count_items(pg: &PgServer) -> String {
    psql_as(pg, "app", OWNER_PASSWORD, "SELECT count(*) FROM items").1
}

// Backups as the owner in the two-role layout: the dump is private (0600) and restorable into a new database;
// a restore in place is refused while the api is connected (saying how to stop it), done with --force, and
// done once the api is stopped; after the documented migrate step the api serves again with its privileges.
#[test]
fn backups_are_private_and_restore_in_place_waits_for_the_api() {
    let (pg, secrets) = two_roles();
    let server = serve_as_app(&pg);
    let base = server.base();
    for i in 0..3 {
        create_item(&base, &format!("backup {i}"), i);
    }
    let dumps = TempDir::new("dumps");
    let (ok, text) = pg_backup(&pg, &secrets, dumps.path(), &["backup"]);
    assert!(ok, "{text}");
    let dump: Vec<PathBuf> = std::fs::read_dir(dumps.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dump.len(), 1, "{dump:?}");
    let mode = std::fs::metadata(&dump[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the dump is readable by its owner only");
    let name = dump[0].file_name().unwrap().to_str().unwrap().to_owned();
    assert!(name.starts_with("app-") && name.ends_with(".dump"), "{name}");

    let (ok, text) = pg_backup(&pg, &secrets, dumps.path(), &["restore", &name, "app_restore"]);
    assert!(ok, "restore into a new database, as the owner: {text}");
    let restored = psql_in(&pg, "app_restore", "app", OWNER_PASSWORD, "SELECT count(*) FROM items");
    assert_eq!(restored, (true, count_items(&pg)), "the new database has the rows of the dump");
    create_item(&base, "after the dump", 9);
    let before = count_items(&pg);

    // The api holds its pooled connections: refused, and the database is untouched.
    let (ok, text) = pg_backup(&pg, &secrets, dumps.path(), &["restore-in-place", &name]);
    assert!(!ok, "restore-in-place with the api connected must be refused: {text}");
    assert!(text.contains("refusing to restore in place") && text.contains("app_api/app"), "{text}");
    assert!(text.contains("stop the api first: docker compose -f compose/prod.yml stop api"), "{text}");
    assert_eq!(count_items(&pg), before);

    let (ok, text) = pg_backup(&pg, &secrets, dumps.path(), &["restore-in-place", "--force", &name]);
    assert!(ok && text.contains("warning: restoring with"), "--force restores anyway: {text}");
    let dumped = (before.parse::<u32>().unwrap() - 1).to_string();
    assert_eq!(count_items(&pg), dumped, "the rows of the dump");

    // Stop the api, then the plain command restores.
    drop(server);
    wait_for(Duration::from_secs(5), "the api's sessions to end", || {
        (pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_api'") == "0").then_some(())
    });
    create_item_as_owner(&pg);
    let (ok, text) = pg_backup(&pg, &secrets, dumps.path(), &["restore-in-place", &name]);
    assert!(ok, "with the api stopped: {text}");
    assert_eq!(count_items(&pg), dumped);

    // docs/backups.md: migrate, then start the api.
    assert!(migrate(binary!(), &url(&pg, "app", OWNER_PASSWORD, "app")).status.success());
    assert_the_app_role_is_least_privileged(&pg);
    let server = serve_as_app(&pg);
    check_items_crud(&server.base());
    let names: BTreeSet<String> =
        psql_as(&pg, "app", OWNER_PASSWORD, "SELECT name FROM items").1.lines().map(String::from).collect();
    assert!(names.contains("backup 0") && !names.contains("after the dump"), "{names:?}");
}

fn create_item_as_owner(pg: &PgServer) {
    let (ok, text) = psql_as(
        pg,
        "app",
        OWNER_PASSWORD,
        "INSERT INTO items (id, name, quantity) VALUES ('00000000-0000-7000-8000-0000000000bb', 'lost', 1)",
    );
    assert!(ok, "{text}");
}
