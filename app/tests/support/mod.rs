//! Shared by the app's integration tests: the throwaway PostgreSQL and the HTTP helpers from the workspace's
//! `tests/common/`, and [`server::TestServer`], which serves the app in-process.
#![allow(dead_code)]

#[path = "../../../tests/common/app_checks.rs"]
pub mod app_checks;
#[path = "../../../tests/common/http_client.rs"]
pub mod http_client;
#[path = "../../../tests/common/pg.rs"]
pub mod pg;
pub mod server;

use std::time::{Duration, Instant};

/// A config for a test server: debug routes on, access log on, everything else default.
pub fn config(database_url: Option<String>) -> app::Config {
    let mut config = app::Config { debug_routes: true, ..app::Config::default() };
    config.database.url = database_url.map(app::DatabaseUrl::new);
    config
}

/// Applies the embedded migrations to `url` on a short-lived runtime.
pub fn migrate(url: &str) -> app::MigrationReport {
    let config = config(Some(url.to_owned()));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(app::migrate(&config)).unwrap_or_else(|e| panic!("migrate: {e}"))
}

/// Polls `f` until it returns `Some`, or panics with `what` after `deadline`.
pub fn poll_until<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = f() {
            return value;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
