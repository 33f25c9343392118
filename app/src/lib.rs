//! The HTTP application served by every worker: routes, the error contract, request ids, access logs, the
//! PostgreSQL pool, readiness and migrations.
//!
//! It knows nothing of fork, pids or signals: the binary runs it under the supervisor crate's
//! [`supervisor::Server`], which resolves its settings ([`Config`], declared in `config` like the
//! supervisor's own), boots it in every worker after fork ([`App::boot`]) and hands it every request
//! (`App` makes a service, [`Connection`], for each connection, which labels each request with its request
//! id). The binary's `migrate` command runs [`migrate`].
//!
//! Code map (no module imports one that imports it back):
//! - `config`: settings, their declarations and validation, the redacting [`DatabaseUrl`].
//! - `pipeline`: [`App`] (boot, and the tower service) and the per-request pipeline (request id, span,
//!   deadline, panics, CORS, access log); `state`: what the handlers of one worker share.
//! - `routes`: the route table (matching, labels, `Allow`, CORS methods, dispatch) and the small handlers;
//!   `handler`: what a handler is (its parameters and reply); `items`: the items resource.
//! - `http`: the request and response types and response helpers; `body`: reading JSON request bodies.
//! - `error`: [`ApiError`], the only way an error reaches a client.
//! - `metrics`: counters in memory shared by all workers, and the `/metrics` text;
//! - `openapi`: `/openapi.json`, the API's description (`app/openapi.json`), and the tests that pin it to the
//!   code;
//! - `db`: the lazy per-worker pool; `readiness`: the single-flight `/readyz` check;
//!   `migrations`: embedded migrations under an advisory lock.
#![forbid(unsafe_code)]

mod body;
mod config;
mod cors;
mod db;
mod error;
mod handler;
mod http;
mod items;
mod metrics;
mod migrations;
mod openapi;
mod pipeline;
mod readiness;
mod request_id;
mod routes;
mod state;

pub use config::{AppEnv, Config, DatabaseConfig, DatabaseUrl, TrustedProxies};
pub use error::{ApiError, ErrorCode, FieldError};
pub use metrics::Metrics;
pub use migrations::{
    ADVISORY_LOCK_KEY, AppliedMigration, MigrateError, MigrationReport, embedded_versions, latest_embedded_version,
    migrate,
};
pub use pipeline::{App, Connection};
pub use request_id::{RequestId, is_valid as is_valid_request_id};

#[cfg(fuzzing)]
pub mod fuzzing;
