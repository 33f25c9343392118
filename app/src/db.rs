//! The per-worker PostgreSQL pool (deadpool-postgres), built lazily: creating it opens no connection, so a
//! worker boots while the database is down and connects on first use.
//!
//! Passwords: `tokio_postgres::Config`'s `Debug` redacts the password, and its errors (connect, auth, query)
//! never contain it. Nothing here formats the connection string itself.

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::{DatabaseConfig, DatabaseUrl};
use crate::error::ApiError;

/// `application_name` of pooled connections, unless the URL sets one (visible in `pg_stat_activity`).
const APPLICATION_NAME: &str = "app";

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

/// An error's text including its causes: tokio-postgres puts the useful part ("connection refused",
/// "password authentication failed for user ...") in the source chain.
pub(crate) fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// The pool of one worker, or nothing when no database is configured.
#[derive(Clone)]
pub(crate) struct Db {
    pool: Option<Pool>,
}

/// Why no connection could be had.
#[derive(Debug)]
pub(crate) enum DbError {
    NotConfigured,
    /// The pool could not hand out a connection (timeout, connect or authentication failure).
    Unavailable(PoolError),
    /// A statement failed on a live connection.
    Query(tokio_postgres::Error),
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
    /// Logs the cause (inside the request span, so with the request id) and answers without it: 503 when the
    /// database cannot be reached, 500 for anything else.
    fn from(e: DbError) -> Self {
        match &e {
            DbError::Query(q) if !q.is_closed() => {
                tracing::error!(error = %e, "database query failed");
                ApiError::internal()
            }
            _ => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::not_ready("the database is unavailable")
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
        let Some(url) = &db.url else {
            return Ok(Db { pool: None });
        };
        let pg =
            pg_config(url, db, APPLICATION_NAME).map_err(|e| format!("invalid database.url: {}", error_text(&e)))?;
        let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(db.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(db.wait_timeout))
            .create_timeout(Some(db.create_timeout))
            .recycle_timeout(Some(db.create_timeout))
            .build()
            .map_err(|e| format!("cannot build the database pool: {e}"))?;
        Ok(Db { pool: Some(pool) })
    }

    /// A pooled connection, within the pool's wait and create timeouts.
    pub(crate) async fn get(&self) -> Result<Object, DbError> {
        let pool = self.pool.as_ref().ok_or(DbError::NotConfigured)?;
        pool.get().await.map_err(DbError::Unavailable)
    }

    /// The pool's size and waiters, if a pool exists.
    pub(crate) fn status(&self) -> Option<deadpool_postgres::Status> {
        self.pool.as_ref().map(|p| p.status())
    }

    /// Whether a pool exists at all.
    pub(crate) fn configured(&self) -> bool {
        self.pool.is_some()
    }

    /// Removes a connection from the pool for good, e.g. after a statement on it was abandoned at a deadline
    /// and its state is unknown.
    pub(crate) fn discard(client: Object) {
        drop(Object::take(client));
    }
}
