//! `migrate` against a real PostgreSQL: concurrent runs serialise on the advisory lock, the schema is applied
//! once, and later runs apply nothing.

mod support;

use support::config;
use test_support::pg::{Blackhole, PgServer};

#[test]
fn concurrent_migrators_both_succeed_and_apply_once() {
    let pg = PgServer::new();
    let config = config(Some(pg.url()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    let (a, b) = rt.block_on(async {
        let a = tokio::spawn({
            let config = config.clone();
            async move { app::migrate(&config).await }
        });
        let b = tokio::spawn({
            let config = config.clone();
            async move { app::migrate(&config).await }
        });
        (a.await.unwrap(), b.await.unwrap())
    });
    let (a, b) = (a.expect("first migrator"), b.expect("second migrator"));
    let latest = app::latest_embedded_version();
    assert_eq!(a.schema_version, latest);
    assert_eq!(b.schema_version, latest);
    let applied = a.applied.len() + b.applied.len();
    assert_eq!(applied, app::embedded_versions().len(), "{a:?} {b:?}");
    assert!(a.applied.is_empty() || b.applied.is_empty(), "both applied something: {a:?} {b:?}");

    let rows = pg.psql("SELECT count(*) FROM refinery_schema_history");
    assert_eq!(rows, app::embedded_versions().len().to_string());
    assert_eq!(pg.psql("SELECT count(*) FROM items"), "0");

    // Idempotent.
    let again = rt.block_on(app::migrate(&config)).expect("third run");
    assert!(again.applied.is_empty());
    assert_eq!(again.to_string(), format!("schema already at version {}; nothing to apply", latest.unwrap()));

    // A newer release migrated further; this build is redeployed (rollback). Its migrate step succeeds
    // without touching anything, and it reports ready on the newer schema.
    pg.psql("INSERT INTO refinery_schema_history VALUES (9999, 'from_a_newer_release', '2026-01-01T00:00:00Z', '0')");
    let rollback = rt.block_on(app::migrate(&config)).expect("migrate of an older build");
    assert!(rollback.applied.is_empty());
    assert_eq!(rollback.schema_version, Some(9999));
    assert!(rollback.to_string().contains("newer than this build"), "{rollback}");
    let server = support::server::TestServer::start(config.clone());
    test_support::app_checks::check_readyz_ready(&server.base);
    drop(server);

    // A gap or an edited migration is still refused.
    pg.psql("UPDATE refinery_schema_history SET checksum = '1' WHERE version = 1");
    let err = rt.block_on(app::migrate(&config)).expect_err("an edited migration is refused");
    assert!(err.to_string().starts_with("migration failed"), "{err}");
}

#[test]
fn migrate_reports_an_unresponsive_database_in_time() {
    let blackhole = Blackhole::new();
    let mut config = config(Some(blackhole.url()));
    config.database.connect_timeout = std::time::Duration::from_millis(200);
    config.database.create_timeout = std::time::Duration::from_millis(300);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let started = std::time::Instant::now();
    let err = rt.block_on(app::migrate(&config)).expect_err("nothing answers");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert!(matches!(err, app::MigrateError::ConnectTimeout(_)), "{err:?}");
    assert!(err.to_string().starts_with("cannot connect to the database"), "{err}");
    assert!(!err.to_string().contains("secret"));
}

#[test]
fn only_migrate_writes_the_history_whatever_default_privileges_grant() {
    let pg = PgServer::new();
    // A role that default privileges give everything on new tables, as a deployment's app role gets read and
    // write: refinery's history table is a new table too.
    pg.psql("CREATE ROLE reader");
    pg.psql("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO reader, PUBLIC");
    let writes = |role: &str, table: &str| -> Vec<&'static str> {
        ["INSERT", "UPDATE", "DELETE", "TRUNCATE"]
            .into_iter()
            .filter(|p| pg.psql(&format!("SELECT has_table_privilege('{role}', '{table}', '{p}')")) == "t")
            .collect()
    };
    support::migrate(&pg.url());
    for role in ["reader", "public"] {
        assert_eq!(writes(role, "refinery_schema_history"), Vec::<&str>::new(), "{role} may not write the history");
        assert_eq!(pg.psql(&format!("SELECT has_table_privilege('{role}', 'refinery_schema_history', 'SELECT')")), "t");
        assert_eq!(writes(role, "items").len(), 4, "{role} keeps what it was granted on the app's tables");
    }
    // Granted again by hand, taken back by the next run.
    pg.psql("GRANT INSERT, DELETE ON refinery_schema_history TO reader");
    support::migrate(&pg.url());
    assert_eq!(writes("reader", "refinery_schema_history"), Vec::<&str>::new());
}
