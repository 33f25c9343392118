//! The per-worker PostgreSQL pool (deadpool-postgres), built lazily: creating it opens no connection, so a
//! worker boots while the database is down and connects on first use.
//!
//! Every pooled connection carries the `[database]` time limits as session settings (`statement_timeout`,
//! `lock_timeout`, `idle_in_transaction_session_timeout`), sent in the startup packet's `options`, so they hold
//! from its first statement at no extra round trip. The migration connection does not: a migration may take
//! long, and waiting for the advisory lock is its purpose.
//!
//! Handlers use a connection through [`Conn`], which knows whether a statement is in flight. A request whose
//! future is dropped mid-statement (its deadline passed, its client went away, it panicked) would otherwise
//! leave the statement running on the server and hand the busy connection to the next request: instead the
//! statement is cancelled on the server (a cancel request, like psql's Ctrl-C) and the connection leaves the
//! pool for good.
//!
//! Passwords: `tokio_postgres::Config`'s `Debug` redacts the password, and its errors (connect, auth, query)
//! never contain it. Nothing here formats the connection string itself.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{
    ClientWrapper, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};
use tracing::Instrument;

use crate::config::{DatabaseConfig, DatabaseUrl};
use crate::error::{ApiError, error_text};

/// `application_name` of pooled connections, unless the URL sets one (visible in `pg_stat_activity`).
const APPLICATION_NAME: &str = "app";

/// `Retry-After` of a 503 for want of a connection, in seconds: a pooled connection is usually free again
/// within a request's time, and a database that restarts is back within seconds.
const RETRY_AFTER_SECS: u64 = 1;

/// Parses the URL and applies the `[database]` settings the URL does not set itself.
pub(crate) fn pg_config(
    url: &DatabaseUrl,
    db: &DatabaseConfig,
    application_name: &str,
) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let mut pg: tokio_postgres::Config = url.expose().parse()?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(db.connect_timeout);
    }
    if pg.get_application_name().is_none() {
        pg.application_name(application_name);
    }
    Ok(pg)
}

/// The session settings of a pooled connection, as `options` of the startup packet. Options the URL sets
/// itself come after these, so that a URL's own `-c statement_timeout=...` wins.
fn session_options(db: &DatabaseConfig, url_options: Option<&str>) -> String {
    let millis = |d: Duration| d.as_millis();
    let mut options = format!(
        "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
        millis(db.statement_timeout),
        millis(db.lock_timeout),
        millis(db.idle_in_transaction_session_timeout)
    );
    if let Some(more) = url_options.filter(|o| !o.trim().is_empty()) {
        options.push(' ');
        options.push_str(more);
    }
    options
}

/// The pool of one worker, or nothing when no database is configured.
#[derive(Clone)]
pub(crate) struct Db {
    pool: Option<Pool>,
    /// How long a cancel request may take (it opens a connection of its own).
    cancel_timeout: Duration,
}

/// Why no connection could be had, or what went wrong on one.
#[derive(Debug)]
pub(crate) enum DbError {
    NotConfigured,
    /// The pool could not hand out a connection (every one busy for `wait_timeout`, or a connect or
    /// authentication failure).
    Unavailable(PoolError),
    /// A statement failed on a live connection.
    Query(tokio_postgres::Error),
}

impl DbError {
    /// Whether the connection is gone (the server closed it or could not be reached).
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self, DbError::Query(e) if e.is_closed())
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::NotConfigured => f.write_str("no database is configured (database.url / DATABASE_URL)"),
            DbError::Unavailable(e) => f.write_str(&error_text(e)),
            DbError::Query(e) => f.write_str(&error_text(e)),
        }
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::Query(e)
    }
}

impl From<DbError> for ApiError {
    /// Logs the cause (inside the request span, so with the request id) and answers without it: 503 with
    /// `Retry-After` when no connection could be had, 504 when the server cancelled the statement for one
    /// of its time limits, 500 for anything else.
    fn from(e: DbError) -> Self {
        let code = match &e {
            DbError::Query(q) if !q.is_closed() => q.code(),
            _ => None,
        };
        match &e {
            DbError::NotConfigured => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::not_ready("the database is unavailable")
            }
            DbError::Unavailable(PoolError::Timeout(TimeoutType::Wait)) => {
                tracing::warn!(error = %e, "no free database connection");
                ApiError::not_ready("no database connection is free; retry shortly").with_retry_after(RETRY_AFTER_SECS)
            }
            DbError::Unavailable(_) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::not_ready("the database is unavailable").with_retry_after(RETRY_AFTER_SECS)
            }
            DbError::Query(q) if q.is_closed() => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::not_ready("the database is unavailable").with_retry_after(RETRY_AFTER_SECS)
            }
            DbError::Query(_) if code == Some(&SqlState::QUERY_CANCELED) => {
                tracing::warn!(error = %e, "statement cancelled by the database (statement_timeout)");
                ApiError::timeout()
            }
            DbError::Query(_) if code == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                tracing::warn!(error = %e, "statement gave up waiting for a lock (lock_timeout)");
                ApiError::timeout()
            }
            DbError::Query(_) => {
                tracing::error!(error = %e, "database query failed");
                ApiError::internal()
            }
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::Query(e).into()
    }
}

impl Db {
    /// Builds the pool without connecting. Must run inside the worker's tokio runtime.
    pub(crate) fn new(db: &DatabaseConfig) -> Result<Db, String> {
        let cancel_timeout = db.connect_timeout + db.create_timeout;
        let Some(url) = &db.url else {
            return Ok(Db { pool: None, cancel_timeout });
        };
        let mut pg =
            pg_config(url, db, APPLICATION_NAME).map_err(|e| format!("invalid database.url: {}", error_text(&e)))?;
        let options = session_options(db, pg.get_options());
        pg.options(options);
        let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(db.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(db.wait_timeout))
            .create_timeout(Some(db.create_timeout))
            .recycle_timeout(Some(db.create_timeout))
            .build()
            .map_err(|e| format!("cannot build the database pool: {e}"))?;
        Ok(Db { pool: Some(pool), cancel_timeout })
    }

    /// A pooled connection, within the pool's wait and create timeouts.
    pub(crate) async fn get(&self) -> Result<Conn, DbError> {
        let pool = self.pool.as_ref().ok_or(DbError::NotConfigured)?;
        let client = pool.get().await.map_err(DbError::Unavailable)?;
        Ok(Conn { client: Some(client), busy: AtomicBool::new(false), cancel_timeout: self.cancel_timeout })
    }

    /// The pool's size and waiters, if a pool exists.
    pub(crate) fn status(&self) -> Option<deadpool_postgres::Status> {
        self.pool.as_ref().map(|p| p.status())
    }

    /// Whether a pool exists at all.
    pub(crate) fn configured(&self) -> bool {
        self.pool.is_some()
    }
}

/// A pooled connection lent to one request. Statements run through [`Conn::run`] (or the helpers built on
/// it); if the future running one is dropped before it finished, dropping the `Conn` cancels the statement on
/// the server and removes the connection from the pool. Otherwise the connection goes back to the pool.
pub(crate) struct Conn {
    /// Always `Some` until drop.
    client: Option<Object>,
    /// Set while a statement is in flight. Still set at drop: its future was dropped before it finished.
    busy: AtomicBool,
    cancel_timeout: Duration,
}

impl Conn {
    fn client(&self) -> &ClientWrapper {
        self.client.as_ref().expect("the client is only taken on drop")
    }

    /// Runs `work`, one or more statements, as one unit: the connection counts as busy from the start of
    /// `work` until it completes (successfully or not).
    pub(crate) async fn run<'c, T, F>(&'c self, work: impl FnOnce(&'c ClientWrapper) -> F) -> Result<T, DbError>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        self.busy.store(true, Ordering::Release);
        let result = work(self.client()).await;
        self.busy.store(false, Ordering::Release);
        result.map_err(DbError::Query)
    }

    /// Prepares `sql` once per connection, then runs it and returns every row.
    pub(crate) async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, DbError> {
        self.run(|c| async move {
            let statement = c.prepare_cached(sql).await?;
            c.query(&statement, params).await
        })
        .await
    }

    /// Like [`Conn::query`], for at most one row.
    pub(crate) async fn query_opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, DbError> {
        self.run(|c| async move {
            let statement = c.prepare_cached(sql).await?;
            c.query_opt(&statement, params).await
        })
        .await
    }

    /// Like [`Conn::query`], for exactly one row.
    pub(crate) async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, DbError> {
        self.run(|c| async move {
            let statement = c.prepare_cached(sql).await?;
            c.query_one(&statement, params).await
        })
        .await
    }

    /// Like [`Conn::query`], returning the number of rows affected.
    pub(crate) async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError> {
        self.run(|c| async move {
            let statement = c.prepare_cached(sql).await?;
            c.execute(&statement, params).await
        })
        .await
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !*self.busy.get_mut() {
            return; // Idle: back to the pool.
        }
        let Some(client) = self.client.take() else { return };
        // Out of the pool for good: the pool may open another connection in its place at once.
        let client = Object::take(client);
        tracing::warn!("statement abandoned in flight: cancelling it on the server, connection discarded");
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // No runtime to send the cancel from: closing the connection is all that is left.
        };
        // Made here, not at checkout: only an abandoned statement needs one.
        let cancel = client.cancel_token();
        let deadline = self.cancel_timeout;
        let cancelling = async move {
            match tokio::time::timeout(deadline, cancel.cancel_query(NoTls)).await {
                Ok(Ok(())) => tracing::debug!("statement cancelled"),
                Ok(Err(e)) => tracing::warn!(error = %error_text(&e), "cannot cancel the abandoned statement"),
                Err(_) => tracing::warn!(
                    timeout_ms = deadline.as_millis() as u64,
                    "cannot cancel the abandoned statement: no answer in time"
                ),
            }
            // The server has received the cancel (or cannot be reached): closing the session now ends it.
            drop(client);
        };
        runtime.spawn(cancelling.instrument(tracing::Span::current()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_support::pg;

    /// Every pooled connection runs with the configured limits, and the server holds them to them.
    #[tokio::test]
    async fn pooled_connections_carry_the_time_limits() {
        let server = pg::PgServer::new();
        let db = Db::new(&DatabaseConfig {
            url: Some(server.url().into()),
            statement_timeout: Duration::from_millis(1500),
            lock_timeout: Duration::from_millis(250),
            idle_in_transaction_session_timeout: Duration::from_millis(200),
            ..DatabaseConfig::default()
        })
        .unwrap();
        let conn = db.get().await.unwrap();
        let show = |name: &'static str| {
            let conn = &conn;
            async move { conn.query_one(&format!("SHOW {name}"), &[]).await.unwrap().get::<_, String>(0) }
        };
        assert_eq!(show("statement_timeout").await, "1500ms");
        assert_eq!(show("lock_timeout").await, "250ms");
        assert_eq!(show("idle_in_transaction_session_timeout").await, "200ms");
        assert_eq!(show("application_name").await, APPLICATION_NAME);

        // A session left idle inside a transaction is ended by the server.
        conn.run(|c| c.batch_execute("BEGIN")).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !conn.client().is_closed() {
            assert!(tokio::time::Instant::now() < deadline, "the server never ended the idle transaction");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let err = conn.query_one("SELECT 1", &[]).await.unwrap_err();
        assert!(err.is_closed(), "{err:?}");
    }

    #[test]
    fn session_options_carry_the_timeouts_and_let_the_url_win() {
        let db = DatabaseConfig {
            statement_timeout: Duration::from_millis(1500),
            lock_timeout: Duration::ZERO,
            idle_in_transaction_session_timeout: Duration::from_secs(60),
            ..DatabaseConfig::default()
        };
        assert_eq!(
            session_options(&db, None),
            "-c statement_timeout=1500 -c lock_timeout=0 -c idle_in_transaction_session_timeout=60000"
        );
        let url: DatabaseUrl = "postgres://u@h/db?options=-c%20statement_timeout%3D9000".into();
        let pg = pg_config(&url, &db, "x").unwrap();
        let options = session_options(&db, pg.get_options());
        assert!(options.ends_with(" -c statement_timeout=9000"), "{options}");
    }
}
