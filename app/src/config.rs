//! The application's settings: plain data, filled in by the binary from the `[app]` and `[database]` tables of
//! the config file, the environment and flags, and checked once by [`Config::validate`] before any port is
//! bound.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The deployment environment. Production refuses debug settings and localhost CORS origins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AppEnv {
    #[default]
    Dev,
    Prod,
}

impl AppEnv {
    /// The canonical spelling, as accepted by `APP_ENV`.
    pub fn as_str(self) -> &'static str {
        match self {
            AppEnv::Dev => "dev",
            AppEnv::Prod => "prod",
        }
    }
}

impl fmt::Display for AppEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AppEnv {
    type Err = ConfigError;

    /// Accepts `dev`/`development` and `prod`/`production`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dev" | "development" => Ok(AppEnv::Dev),
            "prod" | "production" => Ok(AppEnv::Prod),
            _ => Err(ConfigError::new(keys::ENV, format!("expected `dev` or `prod`, got {s:?}"))),
        }
    }
}

/// A libpq connection string (URL or `key=value` form) that may contain a password.
///
/// `Debug` and `Display` print a reconstruction with the password replaced by `***` (host, port, user and
/// database only), so the value can sit in structs that get logged. [`DatabaseUrl::expose`] is the only way
/// to the real string.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }

    /// The connection string as given, password included. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A printable form without the password, e.g. `postgres://app:***@db:5432/app`.
    pub fn redacted(&self) -> String {
        let Ok(pg) = self.0.parse::<tokio_postgres::Config>() else {
            return "<invalid connection string>".to_owned();
        };
        let mut out = String::from("postgres://");
        if let Some(user) = pg.get_user() {
            out.push_str(user);
            if pg.get_password().is_some() {
                out.push_str(":***");
            }
            out.push('@');
        }
        let ports = pg.get_ports();
        let hosts: Vec<String> = pg
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let mut host = match host {
                    tokio_postgres::config::Host::Tcp(name) if name.contains(':') => {
                        format!("[{name}]")
                    }
                    tokio_postgres::config::Host::Tcp(name) => name.clone(),
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                };
                // libpq applies a single port to every host.
                if let Some(port) = ports.get(i).or(if ports.len() == 1 { ports.first() } else { None }) {
                    host.push_str(&format!(":{port}"));
                }
                host
            })
            .collect();
        out.push_str(&hosts.join(","));
        if let Some(db) = pg.get_dbname() {
            out.push('/');
            out.push_str(db);
        }
        out
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({:?})", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl From<String> for DatabaseUrl {
    fn from(url: String) -> Self {
        DatabaseUrl(url)
    }
}

impl From<&str> for DatabaseUrl {
    fn from(url: &str) -> Self {
        DatabaseUrl(url.to_owned())
    }
}

/// The `[database]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`. Without it the app still serves `/healthz`; `/readyz` and the items answer 503.
    pub url: Option<DatabaseUrl>,
    /// Connections per worker. The server must allow `workers x pool_size` (plus migrations and admin).
    pub pool_size: usize,
    /// TCP connect timeout, used unless the URL sets `connect_timeout` itself.
    pub connect_timeout: Duration,
    /// How long a request waits for a free pooled connection.
    pub wait_timeout: Duration,
    /// How long opening a new connection (TCP, TLS, startup, authentication) may take. This is what catches
    /// a server that accepts TCP but never answers.
    pub create_timeout: Duration,
    /// The whole deadline of one `/readyz` check (get a connection, `SELECT 1`, read the schema version).
    pub readiness_timeout: Duration,
    /// The server's connection budget for this service, if known; `supervisor check` warns when
    /// `workers x pool_size` exceeds it.
    pub max_connections: Option<u32>,
    /// PostgreSQL's `statement_timeout` on every pooled connection: the server cancels a statement running
    /// longer (answered 504). Zero disables it. Below `request_timeout`, so that a slow statement ends with the
    /// server's own error, on a connection that stays in the pool, before the deadline has to cancel it.
    pub statement_timeout: Duration,
    /// PostgreSQL's `lock_timeout` on every pooled connection: a statement waiting this long for a lock (a
    /// migration, a manual `LOCK`, a restore) gives up (answered 504). Zero disables it.
    pub lock_timeout: Duration,
    /// PostgreSQL's `idle_in_transaction_session_timeout` on every pooled connection: a session left idle
    /// inside a transaction this long is ended by the server, releasing its locks. Zero disables it.
    pub idle_in_transaction_session_timeout: Duration,
}

impl DatabaseConfig {
    /// `statement_timeout` when none is set: 5 s, or half the request deadline when that is shorter.
    pub fn default_statement_timeout(request_timeout: Duration) -> Duration {
        Duration::from_secs(5).min(request_timeout / 2)
    }

    /// `readiness_timeout` when none is set: 1 s, or half the request deadline when that is shorter, so a
    /// failing check is answered 503 by `/readyz` before the request's own deadline turns it into a 504.
    pub fn default_readiness_timeout(request_timeout: Duration) -> Duration {
        Duration::from_secs(1).min(request_timeout / 2)
    }

    /// `lock_timeout` when none is set: 2 s, or a quarter of the request deadline when that is shorter.
    pub fn default_lock_timeout(request_timeout: Duration) -> Duration {
        Duration::from_secs(2).min(request_timeout / 4)
    }

    /// `idle_in_transaction_session_timeout` when none is set: the request deadline, since no request may
    /// leave a transaction open longer than it runs itself.
    pub fn default_idle_in_transaction_session_timeout(request_timeout: Duration) -> Duration {
        request_timeout
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            pool_size: 4,
            connect_timeout: Duration::from_secs(2),
            wait_timeout: Duration::from_secs(1),
            create_timeout: Duration::from_secs(2),
            readiness_timeout: DatabaseConfig::default_readiness_timeout(DEFAULT_REQUEST_TIMEOUT),
            max_connections: None,
            statement_timeout: DatabaseConfig::default_statement_timeout(DEFAULT_REQUEST_TIMEOUT),
            lock_timeout: DatabaseConfig::default_lock_timeout(DEFAULT_REQUEST_TIMEOUT),
            idle_in_transaction_session_timeout: DatabaseConfig::default_idle_in_transaction_session_timeout(
                DEFAULT_REQUEST_TIMEOUT,
            ),
        }
    }
}

/// `request_timeout` of [`Config::default`] (the binary derives it from `timeout`, whose default is the same).
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The `[app]` table plus `[database]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `APP_ENV`.
    pub env: AppEnv,
    /// Mounts `/debug/sleep`, `/debug/block` and `/debug/panic`. Refused in prod.
    pub debug_routes: bool,
    /// When set and the file exists at boot, the worker fails to boot (to test crash loops and aborted
    /// reloads). Refused in prod.
    pub debug_fail_boot_file: Option<PathBuf>,
    /// Every worker sleeps this long before it reports ready (to test reloads with slow boots). Refused in prod.
    pub debug_boot_delay: Duration,
    /// Per-request deadline; a request still running after it is answered 504 `timeout`.
    pub request_timeout: Duration,
    /// Request bodies larger than this are answered 413 `payload_too_large`.
    pub max_body_bytes: usize,
    /// One `access` log line per request.
    pub access_log: bool,
    /// Peers whose `X-Forwarded-For` is trusted when logging the client address (gunicorn's
    /// `forwarded_allow_ips`).
    pub forwarded_allow_ips: TrustedProxies,
    /// `CORS_ORIGINS`: origins (`scheme://host[:port]`) allowed cross-origin access, or `*`. Empty: none.
    pub cors_origins: Vec<String>,
    /// `CORS_ALLOW_CREDENTIALS`.
    pub cors_allow_credentials: bool,
    /// The `[database]` table.
    pub database: DatabaseConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            env: AppEnv::Dev,
            debug_routes: false,
            debug_fail_boot_file: None,
            debug_boot_delay: Duration::ZERO,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_body_bytes: 1024 * 1024,
            access_log: true,
            forwarded_allow_ips: TrustedProxies::default(),
            cors_origins: Vec::new(),
            cors_allow_credentials: false,
            database: DatabaseConfig::default(),
        }
    }
}

/// The peers whose `X-Forwarded-For` is trusted (gunicorn's `forwarded_allow_ips`): addresses, CIDR ranges,
/// or everyone (`*`, for an app reachable only through its proxy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustedProxies {
    /// Every peer.
    Any,
    /// Peers in these networks (an address is a network of one).
    Nets(Vec<ipnet::IpNet>),
}

impl Default for TrustedProxies {
    /// The loopback addresses: a proxy on the same host.
    fn default() -> Self {
        TrustedProxies::Nets(vec![IpAddr::V4(Ipv4Addr::LOCALHOST).into(), IpAddr::V6(Ipv6Addr::LOCALHOST).into()])
    }
}

impl TrustedProxies {
    /// Parses a list of `*`, addresses (`10.0.0.5`, `::1`) and CIDR ranges (`10.0.0.0/8`, `fd00::/8`).
    pub fn parse(items: &[String]) -> Result<TrustedProxies, String> {
        if items.iter().any(|i| i == "*") {
            return Ok(TrustedProxies::Any);
        }
        let nets = items
            .iter()
            .map(|item| {
                item.parse::<ipnet::IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("{item:?} is not an IP address, a CIDR range or `*`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies::Nets(nets.into_iter().map(|n| n.trunc()).collect()))
    }

    /// Whether `ip` is trusted (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match self {
            TrustedProxies::Any => true,
            TrustedProxies::Nets(nets) => nets.iter().any(|n| n.contains(&ip.to_canonical())),
        }
    }
}

/// The TOML key paths that [`ConfigError::key`] can name.
pub mod keys {
    pub const ENV: &str = "app.env";
    pub const DEBUG_ROUTES: &str = "app.debug_routes";
    pub const DEBUG_FAIL_BOOT_FILE: &str = "app.debug_fail_boot_file";
    pub const DEBUG_BOOT_DELAY: &str = "app.debug_boot_delay";
    pub const REQUEST_TIMEOUT: &str = "app.request_timeout";
    pub const MAX_BODY_BYTES: &str = "app.max_body_bytes";
    pub const CORS_ORIGINS: &str = "app.cors_origins";
    pub const CORS_ALLOW_CREDENTIALS: &str = "app.cors_allow_credentials";
    pub const DATABASE_URL: &str = "database.url";
    pub const POOL_SIZE: &str = "database.pool_size";
    pub const CONNECT_TIMEOUT: &str = "database.connect_timeout";
    pub const WAIT_TIMEOUT: &str = "database.wait_timeout";
    pub const CREATE_TIMEOUT: &str = "database.create_timeout";
    pub const READINESS_TIMEOUT: &str = "database.readiness_timeout";
    pub const MAX_CONNECTIONS: &str = "database.max_connections";
    pub const STATEMENT_TIMEOUT: &str = "database.statement_timeout";
    pub const LOCK_TIMEOUT: &str = "database.lock_timeout";
    pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: &str = "database.idle_in_transaction_session_timeout";

    /// Every key above.
    pub const ALL: &[&str] = &[
        ENV,
        DEBUG_ROUTES,
        DEBUG_FAIL_BOOT_FILE,
        DEBUG_BOOT_DELAY,
        REQUEST_TIMEOUT,
        MAX_BODY_BYTES,
        CORS_ORIGINS,
        CORS_ALLOW_CREDENTIALS,
        DATABASE_URL,
        POOL_SIZE,
        CONNECT_TIMEOUT,
        WAIT_TIMEOUT,
        CREATE_TIMEOUT,
        READINESS_TIMEOUT,
        MAX_CONNECTIONS,
        STATEMENT_TIMEOUT,
        LOCK_TIMEOUT,
        IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
    ];
}

/// A rejected setting: `key` is its TOML key path, so the binary can say where the value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        ConfigError { key, message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks the rules that do not depend on where a value came from. The first violation is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_cors()?;
        if self.env == AppEnv::Prod {
            if self.debug_routes {
                return Err(ConfigError::new(keys::DEBUG_ROUTES, "debug routes are refused when APP_ENV=prod"));
            }
            if self.debug_fail_boot_file.is_some() {
                return Err(ConfigError::new(
                    keys::DEBUG_FAIL_BOOT_FILE,
                    "debug settings are refused when APP_ENV=prod",
                ));
            }
            if !self.debug_boot_delay.is_zero() {
                return Err(ConfigError::new(keys::DEBUG_BOOT_DELAY, "debug settings are refused when APP_ENV=prod"));
            }
        }
        positive(keys::REQUEST_TIMEOUT, self.request_timeout)?;
        if self.max_body_bytes == 0 {
            return Err(ConfigError::new(keys::MAX_BODY_BYTES, "must be at least 1"));
        }
        let db = &self.database;
        if let Some(url) = &db.url {
            // The parser's message names the offending option, never its value.
            if let Err(e) = url.expose().parse::<tokio_postgres::Config>() {
                return Err(ConfigError::new(
                    keys::DATABASE_URL,
                    format!("not a valid PostgreSQL connection string ({})", crate::db::error_text(&e)),
                ));
            }
        }
        if db.pool_size == 0 {
            return Err(ConfigError::new(keys::POOL_SIZE, "must be at least 1"));
        }
        positive(keys::CONNECT_TIMEOUT, db.connect_timeout)?;
        positive(keys::WAIT_TIMEOUT, db.wait_timeout)?;
        positive(keys::CREATE_TIMEOUT, db.create_timeout)?;
        positive(keys::READINESS_TIMEOUT, db.readiness_timeout)?;
        if db.max_connections == Some(0) {
            return Err(ConfigError::new(keys::MAX_CONNECTIONS, "must be at least 1"));
        }
        for (key, value) in [
            (keys::STATEMENT_TIMEOUT, db.statement_timeout),
            (keys::LOCK_TIMEOUT, db.lock_timeout),
            (keys::IDLE_IN_TRANSACTION_SESSION_TIMEOUT, db.idle_in_transaction_session_timeout),
        ] {
            // PostgreSQL counts in milliseconds: a shorter value would be sent as 0, which disables it.
            if !value.is_zero() && value < Duration::from_millis(1) {
                return Err(ConfigError::new(key, "must be 0 (disabled) or at least 0.001 seconds"));
            }
        }
        // A server-side timeout at or past the deadline never fires first: the deadline cancels the statement
        // and discards the connection instead of the server answering on a connection that stays usable.
        for (key, value) in [(keys::STATEMENT_TIMEOUT, db.statement_timeout), (keys::LOCK_TIMEOUT, db.lock_timeout)] {
            if !value.is_zero() && value >= self.request_timeout {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "{} s must be below {} ({} s), or 0 to disable it",
                        value.as_secs_f64(),
                        keys::REQUEST_TIMEOUT,
                        self.request_timeout.as_secs_f64()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_cors(&self) -> Result<(), ConfigError> {
        for origin in &self.cors_origins {
            if origin == "*" {
                if self.cors_allow_credentials {
                    return Err(ConfigError::new(
                        keys::CORS_ORIGINS,
                        "`*` cannot be combined with cors_allow_credentials = true; list the origins explicitly",
                    ));
                }
                continue;
            }
            let host = origin_host(origin)
                .map_err(|why| ConfigError::new(keys::CORS_ORIGINS, format!("{origin:?}: {why}")))?;
            if self.env == AppEnv::Prod && is_local_host(host) {
                return Err(ConfigError::new(
                    keys::CORS_ORIGINS,
                    format!("{origin:?}: localhost origins are refused when APP_ENV=prod"),
                ));
            }
        }
        Ok(())
    }
}

fn positive(key: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() { Err(ConfigError::new(key, "must be greater than zero")) } else { Ok(()) }
}

/// The host of a `scheme://host[:port]` origin, as a browser serialises it (no path, no trailing slash).
fn origin_host(origin: &str) -> Result<&str, &'static str> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or("an origin must start with http:// or https://")?;
    if rest.is_empty() {
        return Err("the origin has no host");
    }
    if rest.contains(['/', '?', '#', '@']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("an origin is scheme://host[:port], without path, query or trailing slash");
    }
    let host = if let Some(v6) = rest.strip_prefix('[') {
        let end = v6.find(']').ok_or("unterminated IPv6 address")?;
        &rest[..end + 2]
    } else {
        rest.split(':').next().unwrap_or(rest)
    };
    if host.is_empty() {
        return Err("the origin has no host");
    }
    Ok(host)
}

/// Whether an origin's host names this machine: `localhost`, `*.localhost`, loopback or unspecified addresses.
fn is_local_host(host: &str) -> bool {
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return true;
    }
    let literal = lower.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&lower);
    match literal.parse::<IpAddr>() {
        Ok(ip) => {
            let ip = ip.to_canonical();
            ip.is_loopback() || ip.is_unspecified()
        }
        Err(_) => false,
    }
}

/// The warning `supervisor check` prints when the pools of all workers together may open more connections
/// than the database allows for this service.
pub fn pool_budget_warning(config: &Config, workers: usize) -> Option<String> {
    let budget = config.database.max_connections?;
    let pool_size = config.database.pool_size;
    let total = workers.saturating_mul(pool_size);
    if total as u64 > u64::from(budget) {
        Some(format!(
            "{workers} workers x database.pool_size {pool_size} = {total} connections exceeds \
             database.max_connections = {budget}; lower the pool size or the worker count, or raise the budget"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prod() -> Config {
        Config { env: AppEnv::Prod, ..Config::default() }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
        assert_eq!(prod().validate(), Ok(()));
    }

    #[test]
    fn star_with_credentials_is_refused() {
        let config = Config { cors_origins: vec!["*".into()], cors_allow_credentials: true, ..Config::default() };
        assert_eq!(config.validate().unwrap_err().key, keys::CORS_ORIGINS);
        let config = Config { cors_origins: vec!["*".into()], ..Config::default() };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn localhost_origins_are_refused_in_prod_only() {
        for origin in [
            "http://localhost:3000",
            "http://127.0.0.1",
            "https://127.0.0.2:8443",
            "http://[::1]:5173",
            "http://app.localhost",
            "http://0.0.0.0:80",
        ] {
            let config = Config { cors_origins: vec![origin.into()], ..prod() };
            let err = config.validate().unwrap_err();
            assert_eq!(err.key, keys::CORS_ORIGINS, "{origin}");
            assert!(err.message.contains("localhost"), "{err}");
            let dev = Config { env: AppEnv::Dev, ..config };
            assert_eq!(dev.validate(), Ok(()), "{origin}");
        }
        let config = Config { cors_origins: vec!["https://app.example.com".into()], ..prod() };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn malformed_origins_are_refused() {
        for origin in ["app.example.com", "https://app.example.com/", "https://", "ftp://x", "https://a b"] {
            let config = Config { cors_origins: vec![origin.into()], ..Config::default() };
            assert_eq!(config.validate().unwrap_err().key, keys::CORS_ORIGINS, "{origin}");
        }
    }

    #[test]
    fn debug_settings_are_refused_in_prod() {
        let cases = [
            (Config { debug_routes: true, ..prod() }, keys::DEBUG_ROUTES),
            (Config { debug_fail_boot_file: Some("/tmp/x".into()), ..prod() }, keys::DEBUG_FAIL_BOOT_FILE),
            (Config { debug_boot_delay: Duration::from_secs(1), ..prod() }, keys::DEBUG_BOOT_DELAY),
        ];
        for (config, key) in cases {
            assert_eq!(config.validate().unwrap_err().key, key);
            assert_eq!(Config { env: AppEnv::Dev, ..config }.validate(), Ok(()));
        }
    }

    #[test]
    fn sizes_and_timeouts_must_be_positive() {
        let db = |f: fn(&mut DatabaseConfig)| {
            let mut config = Config::default();
            f(&mut config.database);
            config.validate().unwrap_err().key
        };
        assert_eq!(db(|d| d.pool_size = 0), keys::POOL_SIZE);
        assert_eq!(db(|d| d.connect_timeout = Duration::ZERO), keys::CONNECT_TIMEOUT);
        assert_eq!(db(|d| d.wait_timeout = Duration::ZERO), keys::WAIT_TIMEOUT);
        assert_eq!(db(|d| d.create_timeout = Duration::ZERO), keys::CREATE_TIMEOUT);
        assert_eq!(db(|d| d.readiness_timeout = Duration::ZERO), keys::READINESS_TIMEOUT);
        assert_eq!(db(|d| d.max_connections = Some(0)), keys::MAX_CONNECTIONS);
        let config = Config { request_timeout: Duration::ZERO, ..Config::default() };
        assert_eq!(config.validate().unwrap_err().key, keys::REQUEST_TIMEOUT);
        let config = Config { max_body_bytes: 0, ..Config::default() };
        assert_eq!(config.validate().unwrap_err().key, keys::MAX_BODY_BYTES);
    }

    #[test]
    fn database_time_limits_stay_below_the_request_deadline() {
        let defaults = DatabaseConfig::default();
        assert_eq!(
            (defaults.statement_timeout, defaults.lock_timeout),
            (Duration::from_secs(5), Duration::from_secs(2))
        );
        let short = Duration::from_secs(2);
        assert_eq!(DatabaseConfig::default_statement_timeout(short), Duration::from_secs(1));
        assert_eq!(DatabaseConfig::default_lock_timeout(short), Duration::from_millis(500));
        let mut config = Config { request_timeout: short, ..Config::default() };
        assert_eq!(config.validate().unwrap_err().key, keys::STATEMENT_TIMEOUT, "the 5 s default is not below 2 s");
        config.database.statement_timeout = Duration::ZERO;
        assert_eq!(config.validate().unwrap_err().key, keys::LOCK_TIMEOUT, "2 s is not below 2 s");
        config.database.lock_timeout = Duration::from_millis(1999);
        assert_eq!(config.validate(), Ok(()));
        config.database.idle_in_transaction_session_timeout = Duration::from_micros(500);
        assert_eq!(config.validate().unwrap_err().key, keys::IDLE_IN_TRANSACTION_SESSION_TIMEOUT);
    }

    #[test]
    fn invalid_database_url_is_refused_without_echoing_it() {
        let mut config = Config::default();
        config.database.url = Some("postgres://u:hunter2@h/db?bogus_option=1".into());
        let err = config.validate().unwrap_err();
        assert_eq!(err.key, keys::DATABASE_URL);
        assert!(!err.message.contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_password() {
        for url in [
            "postgres://app:hunter2@db.internal:5433/appdb",
            "postgresql://app:hunter2@db.internal/appdb?sslmode=disable",
            "host=db.internal port=5433 user=app password=hunter2 dbname=appdb",
            "host=db.internal user=app password='hunter2' dbname=appdb",
            "not a url hunter2",
        ] {
            let mut config = Config::default();
            config.database.url = Some(url.into());
            let printed = format!("{config:?} {}", config.database.url.as_ref().unwrap());
            assert!(!printed.contains("hunter2"), "{printed}");
        }
        let url = DatabaseUrl::new("postgres://app:hunter2@db.internal:5433/appdb");
        assert_eq!(url.redacted(), "postgres://app:***@db.internal:5433/appdb");
        assert_eq!(url.expose(), "postgres://app:hunter2@db.internal:5433/appdb");
    }

    #[test]
    fn trusted_proxies_take_addresses_ranges_and_star() {
        let parse = |items: &[&str]| TrustedProxies::parse(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let nets = parse(&["10.0.0.0/8", "192.168.1.7", "fd00::/8"]).unwrap();
        assert!(nets.contains(ip("10.1.2.3")));
        assert!(!nets.contains(ip("11.0.0.1")));
        assert!(nets.contains(ip("192.168.1.7")) && !nets.contains(ip("192.168.1.8")));
        assert!(nets.contains(ip("fd12::1")) && !nets.contains(ip("fe80::1")));
        assert!(nets.contains(ip("::ffff:10.9.9.9")), "IPv4-mapped addresses count as IPv4");
        assert!(parse(&["*"]).unwrap().contains(ip("203.0.113.1")));
        for bad in ["10.0.0.0/33", "10.0.0", "localhost", "fd00::/129"] {
            assert!(parse(&[bad]).is_err(), "{bad}");
        }
        assert!(
            TrustedProxies::default().contains(ip("127.0.0.1")) && !TrustedProxies::default().contains(ip("10.0.0.1"))
        );
    }

    #[test]
    fn app_env_parses() {
        assert_eq!("prod".parse::<AppEnv>(), Ok(AppEnv::Prod));
        assert_eq!("Production".parse::<AppEnv>(), Ok(AppEnv::Prod));
        assert_eq!("dev".parse::<AppEnv>(), Ok(AppEnv::Dev));
        assert_eq!("staging".parse::<AppEnv>().unwrap_err().key, keys::ENV);
    }

    #[test]
    fn pool_budget() {
        let mut config = Config::default();
        assert_eq!(pool_budget_warning(&config, 100), None);
        config.database.max_connections = Some(16);
        assert_eq!(pool_budget_warning(&config, 4), None);
        let warning = pool_budget_warning(&config, 5).unwrap();
        assert!(warning.contains("5 workers") && warning.contains("20") && warning.contains("16"), "{warning}");
    }
}
