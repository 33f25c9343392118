//! What the app's integration tests share besides the workspace's `test-support` crate: the app's test
//! configuration, migrations on a short-lived runtime, and [`server::TestServer`], which serves the app
//! in-process. (They need the `app` crate, which `test-support` must not depend on.)
#![allow(dead_code)]

pub mod server;

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
