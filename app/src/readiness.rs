//! `/readyz`: can this worker serve requests that need the database?
//!
//! One check = get a pooled connection, `SELECT 1`, read the schema version; all within
//! `database.readiness_timeout`, so the probe answers in time even when the database host accepts TCP and
//! never replies. Probes are single-flight: they queue on one async mutex, the first runs the check, and
//! every probe that was waiting meanwhile (or arrives within [`REUSE_FOR`] of the result) gets the same
//! result. A storm of probes therefore costs one check per worker, and a recovered database is seen at the
//! next check, at most [`REUSE_FOR`] later.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::{Instant, timeout_at};

use crate::db::Db;
use crate::migrations::{applied_version, latest_embedded_version};

/// How long a finished check answers later probes.
pub(crate) const REUSE_FOR: Duration = Duration::from_millis(500);

/// The outcome of one check. Statuses are short stable words; `ok` means passing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Report {
    /// `ok`, `timeout`, `unavailable`, `error` or `not_configured`.
    pub database: &'static str,
    /// `ok`, `pending` (schema older than this build), or `unknown` when the database check failed.
    pub migrations: &'static str,
    pub schema_version: Option<i32>,
    pub expected_version: Option<i32>,
}

impl Report {
    pub(crate) fn ready(&self) -> bool {
        self.database == "ok" && self.migrations == "ok"
    }

    /// `{"database": .., "migrations": ..}`.
    pub(crate) fn checks(&self) -> Value {
        json!({ "database": self.database, "migrations": self.migrations })
    }

    /// The `details` of a 503: every check with its status, the names of the failing ones, and the versions.
    pub(crate) fn details(&self) -> Value {
        let failing: Vec<&str> = [("database", self.database), ("migrations", self.migrations)]
            .into_iter()
            .filter(|(_, status)| *status != "ok")
            .map(|(name, _)| name)
            .collect();
        json!({
            "checks": self.checks(),
            "failing": failing,
            "schema_version": self.schema_version,
            "expected_version": self.expected_version,
        })
    }
}

struct Finished {
    at: Instant,
    report: Arc<Report>,
}

pub(crate) struct Readiness {
    db: Db,
    deadline: Duration,
    expected_version: Option<i32>,
    last: Mutex<Option<Finished>>,
}

impl Readiness {
    pub(crate) fn new(db: Db, deadline: Duration) -> Readiness {
        Readiness { db, deadline, expected_version: latest_embedded_version(), last: Mutex::new(None) }
    }

    /// The current readiness, sharing a check with concurrent probes.
    pub(crate) async fn check(&self) -> Arc<Report> {
        let arrived = Instant::now();
        let mut last = self.last.lock().await;
        if let Some(done) = last.as_ref()
            && (done.at >= arrived || done.at.elapsed() < REUSE_FOR)
        {
            return done.report.clone();
        }
        let report = Arc::new(self.run().await);
        supervisor::stats::set_gauge(crate::metrics::GAUGE_READY, u64::from(report.ready()));
        *last = Some(Finished { at: Instant::now(), report: report.clone() });
        report
    }

    async fn run(&self) -> Report {
        let mut report = Report {
            database: "ok",
            migrations: "unknown",
            schema_version: None,
            expected_version: self.expected_version,
        };
        if !self.db.configured() {
            report.database = "not_configured";
            return report;
        }
        let deadline = Instant::now() + self.deadline;
        let conn = match timeout_at(deadline, self.db.get()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                report.database = "unavailable";
                tracing::warn!(check = "database", error = %e, "readiness check failed");
                return report;
            }
            Err(_) => {
                report.database = "timeout";
                tracing::warn!(
                    check = "database",
                    timeout_ms = self.deadline.as_millis() as u64,
                    "readiness check failed"
                );
                return report;
            }
        };
        // Past the deadline the check's future is dropped mid-statement: `conn` then cancels the statement on
        // the server and leaves the pool.
        let queries = conn.run(|client| async move {
            client.query_one("SELECT 1", &[]).await?;
            applied_version(client).await
        });
        match timeout_at(deadline, queries).await {
            Ok(Ok(version)) => {
                report.schema_version = version;
                report.migrations = match (version, self.expected_version) {
                    (_, None) => "ok",
                    // A newer schema is fine: during a deploy the previous release keeps serving after
                    // `migrate` ran for the next one (forward-compatible migrations, docs/migrations.md).
                    (Some(applied), Some(expected)) if applied >= expected => "ok",
                    _ => "pending",
                };
                if report.migrations != "ok" {
                    tracing::warn!(
                        check = "migrations",
                        schema_version = version,
                        expected_version = self.expected_version,
                        "readiness check failed"
                    );
                }
            }
            Ok(Err(e)) => {
                report.database = if e.is_closed() { "unavailable" } else { "error" };
                tracing::warn!(check = "database", error = %e, "readiness check failed");
            }
            Err(_) => {
                report.database = "timeout";
                tracing::warn!(
                    check = "database",
                    timeout_ms = self.deadline.as_millis() as u64,
                    "readiness check failed"
                );
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_name_the_failing_checks() {
        let report = Report { database: "ok", migrations: "pending", schema_version: None, expected_version: Some(1) };
        assert!(!report.ready());
        assert_eq!(
            report.details(),
            json!({
                "checks": {"database": "ok", "migrations": "pending"},
                "failing": ["migrations"],
                "schema_version": null,
                "expected_version": 1,
            })
        );
    }

    #[tokio::test]
    async fn without_a_database_the_worker_is_not_ready() {
        let readiness = Readiness::new(Db::new(&Default::default()).unwrap(), Duration::from_secs(1));
        let report = readiness.check().await;
        assert_eq!(report.database, "not_configured");
        assert!(!report.ready());
    }
}
