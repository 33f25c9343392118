//! Schema migrations: the SQL files of the top-level `migrations/` folder (`V<n>__name.sql`), embedded at
//! compile time by refinery and applied by `supervisor migrate`, never by the workers.
//!
//! refinery takes no lock of its own, so [`migrate`] holds a PostgreSQL advisory lock on its dedicated
//! connection for the whole run: a second migrator started at the same moment waits, then finds everything
//! applied and applies nothing. See `docs/migrations.md` for the deploy sequence and the rollback policy.
//!
//! The history table is written by `migrate` alone. Where the application connects with a role of its own,
//! that role may read the history (readiness compares versions) but must not rewrite it; default privileges
//! that grant the role read and write on every new table also reach the history when refinery creates it, so
//! each run takes write privileges on it back from every role but its owner.

use std::fmt;

use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::config::Config;
use crate::db::pg_config;
use crate::error::error_text;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// The advisory lock key that serialises migrators (`pg_advisory_lock(bigint)`); any other user of advisory
/// locks on the same database must avoid it.
pub const ADVISORY_LOCK_KEY: i64 = 0x6170_705f_6d69_6772; // "app_migr"

/// refinery's history table.
const HISTORY_TABLE: &str = "refinery_schema_history";

/// `application_name` of the migration connection.
const APPLICATION_NAME: &str = "app-migrate";

/// The versions of the embedded migrations, ascending.
pub fn embedded_versions() -> Vec<i32> {
    let mut versions: Vec<i32> = embedded::migrations::runner().get_migrations().iter().map(|m| m.version()).collect();
    versions.sort_unstable();
    versions
}

/// The newest embedded migration: the schema version this build expects.
pub fn latest_embedded_version() -> Option<i32> {
    embedded_versions().last().copied()
}

/// The newest migration recorded in the database, `None` if none was ever applied.
pub(crate) async fn applied_version(client: &tokio_postgres::Client) -> Result<Option<i32>, tokio_postgres::Error> {
    match client.query_one("SELECT max(version) FROM refinery_schema_history", &[]).await {
        Ok(row) => row.try_get(0),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The migration run proper, on the connection that holds the lock.
///
/// A schema newer than this build is accepted when every embedded migration is applied unchanged: that is
/// the previous release being redeployed (rollback by redeploy, docs/migrations.md), which must not fail its
/// migrate step. refinery alone would refuse it ("missing" migrations); any other mismatch is still refused.
async fn run_locked(client: &mut tokio_postgres::Client) -> Result<refinery::Report, refinery::Error> {
    let mut runner = embedded::migrations::runner();
    runner.set_migration_table_name(HISTORY_TABLE);
    let latest = latest_embedded_version();
    if let (Ok(Some(applied)), Some(latest)) = (applied_version(client).await, latest)
        && applied > latest
    {
        let history = runner.get_applied_migrations_async(client).await?;
        if runner.get_migrations().iter().all(|m| history.contains(m)) {
            tracing::warn!(
                schema_version = applied,
                build_version = latest,
                "database schema is newer than this build; nothing to apply"
            );
            return Ok(refinery::Report::new(Vec::new()));
        }
    }
    runner.run_async(client).await
}

/// Takes INSERT, UPDATE, DELETE and TRUNCATE on the history table back from every role but its owner (and
/// from PUBLIC), leaving what they may read.
async fn protect_history(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(
            "DO $$
            DECLARE
                history regclass := to_regclass('refinery_schema_history');
                grantee text;
            BEGIN
                IF history IS NULL THEN
                    RETURN;
                END IF;
                FOR grantee IN
                    SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                    FROM pg_class c, aclexplode(c.relacl) a
                    WHERE c.oid = history AND a.grantee <> c.relowner
                      AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
                LOOP
                    EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON %s FROM %s', history, grantee);
                END LOOP;
            END $$",
        )
        .await
}

/// One migration applied by a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i32,
    pub name: String,
}

/// What a [`migrate`] run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationReport {
    /// Migrations this run applied, in order; empty when the schema was already current.
    pub applied: Vec<AppliedMigration>,
    /// The schema version after the run.
    pub schema_version: Option<i32>,
}

impl fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let version = self.schema_version.map_or_else(|| "none".to_owned(), |v| v.to_string());
        if let (Some(schema), Some(build)) = (self.schema_version, latest_embedded_version())
            && schema > build
        {
            return write!(f, "schema at version {schema}, newer than this build's {build}; nothing to apply");
        }
        if self.applied.is_empty() {
            write!(f, "schema already at version {version}; nothing to apply")
        } else {
            let names: Vec<String> = self.applied.iter().map(|m| format!("V{}__{}", m.version, m.name)).collect();
            write!(f, "applied {}; schema now at version {version}", names.join(", "))
        }
    }
}

/// Why a migration run failed. The texts name the step and the server's reason, never the password.
#[derive(Debug)]
pub enum MigrateError {
    /// No `database.url` / `DATABASE_URL`.
    NotConfigured,
    /// The connection string does not parse.
    InvalidUrl(String),
    /// The server could not be reached or refused the login.
    Connect(String),
    /// The server accepted the connection but did not complete the login in time.
    ConnectTimeout(std::time::Duration),
    /// Taking or holding the advisory lock failed.
    Lock(String),
    /// A migration failed (it was rolled back) or the history does not match the embedded migrations.
    Migration(String),
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrateError::NotConfigured => f.write_str("no database configured: set DATABASE_URL or database.url"),
            MigrateError::InvalidUrl(why) => {
                write!(f, "DATABASE_URL is not a valid PostgreSQL connection string: {why}")
            }
            MigrateError::Connect(why) => write!(f, "cannot connect to the database: {why}"),
            MigrateError::ConnectTimeout(after) => {
                write!(f, "cannot connect to the database: no answer within {} ms", after.as_millis())
            }
            MigrateError::Lock(why) => write!(f, "cannot take the migration lock: {why}"),
            MigrateError::Migration(why) => write!(f, "migration failed: {why}"),
        }
    }
}

impl std::error::Error for MigrateError {}

/// Applies the embedded migrations that the database lacks, under the advisory lock. Idempotent.
///
/// Connecting (TCP plus login) is bounded by `database.connect_timeout + database.create_timeout`; waiting
/// for the lock is not bounded, since the holder is another migrator that will finish.
pub async fn migrate(config: &Config) -> Result<MigrationReport, MigrateError> {
    let db = &config.database;
    let url = db.url.as_ref().ok_or(MigrateError::NotConfigured)?;
    let pg = pg_config(url, db, APPLICATION_NAME).map_err(|e| MigrateError::InvalidUrl(error_text(&e)))?;
    let connect_deadline = db.connect_timeout + db.create_timeout;
    let (mut client, connection) = match tokio::time::timeout(connect_deadline, pg.connect(NoTls)).await {
        Err(_) => return Err(MigrateError::ConnectTimeout(connect_deadline)),
        Ok(Err(e)) => return Err(MigrateError::Connect(error_text(&e))),
        Ok(Ok(pair)) => pair,
    };
    let connection = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %error_text(&e), "migration connection failed");
        }
    });

    tracing::info!(lock_key = ADVISORY_LOCK_KEY, "waiting for the migration lock");
    client
        .execute("SELECT pg_advisory_lock($1)", &[&ADVISORY_LOCK_KEY])
        .await
        .map_err(|e| MigrateError::Lock(error_text(&e)))?;
    tracing::info!("migration lock acquired");

    let run = run_locked(&mut client).await;
    let protected = match &run {
        Ok(_) => protect_history(&client).await,
        Err(_) => Ok(()),
    };
    let version = applied_version(&client).await;
    // Closing the session would release the lock too; unlocking first keeps the intent explicit.
    if let Err(e) = client.execute("SELECT pg_advisory_unlock($1)", &[&ADVISORY_LOCK_KEY]).await {
        tracing::warn!(error = %error_text(&e), "cannot release the migration lock; closing the session releases it");
    }
    drop(client);
    let _ = connection.await;

    let report = run.map_err(|e| MigrateError::Migration(error_text(&e)))?;
    protected.map_err(|e| MigrateError::Migration(format!("cannot make the history read-only: {}", error_text(&e))))?;
    let applied: Vec<AppliedMigration> = report
        .applied_migrations()
        .iter()
        .map(|m| AppliedMigration { version: m.version(), name: m.name().to_owned() })
        .collect();
    for m in &applied {
        tracing::info!(version = m.version, name = %m.name, "migration applied");
    }
    let schema_version = version.map_err(|e| MigrateError::Migration(error_text(&e)))?;
    Ok(MigrationReport { applied, schema_version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_items_migration_is_embedded() {
        let versions = embedded_versions();
        assert_eq!(versions.first(), Some(&1));
        assert_eq!(latest_embedded_version(), versions.last().copied());
        let mut sorted = versions.clone();
        sorted.dedup();
        assert_eq!(sorted, versions, "migration versions must be unique");
    }

    #[test]
    fn report_texts() {
        let none = MigrationReport { applied: vec![], schema_version: Some(1) };
        assert_eq!(none.to_string(), "schema already at version 1; nothing to apply");
        let one = MigrationReport {
            applied: vec![AppliedMigration { version: 1, name: "items".into() }],
            schema_version: Some(1),
        };
        assert_eq!(one.to_string(), "applied V1__items; schema now at version 1");
    }

    #[tokio::test]
    async fn errors_name_the_step_without_the_password() {
        let mut config = Config::default();
        assert!(matches!(migrate(&config).await, Err(MigrateError::NotConfigured)));
        // A port nobody listens on: connection refused, immediately.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        config.database.url = Some(format!("postgres://app:hunter2@127.0.0.1:{port}/app").into());
        let err = migrate(&config).await.unwrap_err();
        assert!(matches!(err, MigrateError::Connect(_)), "{err:?}");
        let text = format!("{err} {err:?}");
        assert!(text.starts_with("cannot connect to the database"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
