//! The HTTP application served by every worker: routes, the error contract, request ids, access logs, the
//! PostgreSQL pool, readiness and migrations.
//!
//! It knows nothing of fork, pids or signals: the supervisor crate calls [`App`] through its
//! [`supervisor::WorkerApp`] / [`supervisor::Service`] seam, once per worker after fork and then once per
//! request. The binary builds a [`Config`], checks it with [`Config::validate`], and either serves
//! [`App::new`] or runs [`migrate`].
//!
//! Code map:
//! - `config`: settings, their validation, the redacting [`DatabaseUrl`].
//! - `service`: [`App`] (boot) and the per-request pipeline (request id, span, deadline, panics, CORS,
//!   access log); `state`: what the handlers of one worker share.
//! - `routes`: the route table (matching, labels, `Allow`, CORS methods, dispatch) and the small handlers;
//!   `items`: the items resource.
//! - `error`: [`ApiError`], the only way an error reaches a client.
//! - `metrics`: counters in memory shared by all workers, and the `/metrics` text;
//! - `openapi`: `/openapi.json`, the API's description (`app/openapi.json`), and the tests that pin it to the
//!   code;
//! - `db`: the lazy per-worker pool; `readiness`: the single-flight `/readyz` check;
//!   `migrations`: embedded migrations under an advisory lock.
#![forbid(unsafe_code)]

mod config;
mod cors;
mod db;
mod error;
mod http;
mod items;
mod metrics;
mod migrations;
mod openapi;
mod readiness;
mod request_id;
mod routes;
mod service;
mod state;

pub use config::{AppEnv, Config, ConfigError, DatabaseConfig, DatabaseUrl, TrustedProxies, keys, pool_budget_warning};
pub use error::{ApiError, ErrorCode, FieldError};
pub use metrics::Metrics;
pub use migrations::{
    ADVISORY_LOCK_KEY, AppliedMigration, MigrateError, MigrationReport, embedded_versions, latest_embedded_version,
    migrate,
};
pub use request_id::{RequestId, is_valid as is_valid_request_id};
pub use service::App;

#[cfg(fuzzing)]
pub mod fuzzing;
