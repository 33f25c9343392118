//! The application's settings: the `[app]` and `[database]` tables of the server's config file, each setting
//! declared once next to the field it fills (key, environment variable, bounds, default, doc), resolved
//! with the supervisor's through [`supervisor::AppSettings`], and checked once by
//! [`Config::validate`] before any port is bound.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use supervisor::AppSettings;
use supervisor::config::{ConfigError, Invalid, Resolver, Setting, Spec};

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
    type Err = String;

    /// Accepts `dev`/`development` and `prod`/`production`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dev" | "development" => Ok(AppEnv::Dev),
            "prod" | "production" => Ok(AppEnv::Prod),
            _ => Err(format!("expected `dev` or `prod`, got {s:?}")),
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

impl AppSettings for Config {
    const SECTIONS: &'static [&'static str] = &["app", "database"];
    const SETTINGS: &'static [&'static Spec] = &[
        ENV.spec(),
        REQUEST_TIMEOUT.spec(),
        MAX_BODY_BYTES.spec(),
        ACCESS_LOG.spec(),
        FORWARDED_ALLOW_IPS.spec(),
        CORS_ORIGINS.spec(),
        CORS_ALLOW_CREDENTIALS.spec(),
        DEBUG_ROUTES.spec(),
        DEBUG_FAIL_BOOT_FILE.spec(),
        DEBUG_BOOT_DELAY.spec(),
        DATABASE_URL.spec(),
        POOL_SIZE.spec(),
        CONNECT_TIMEOUT.spec(),
        WAIT_TIMEOUT.spec(),
        CREATE_TIMEOUT.spec(),
        READINESS_TIMEOUT.spec(),
        MAX_CONNECTIONS.spec(),
        STATEMENT_TIMEOUT.spec(),
        LOCK_TIMEOUT.spec(),
        IDLE_IN_TRANSACTION_SESSION_TIMEOUT.spec(),
    ];

    fn resolve(r: &mut Resolver<'_>, server: &supervisor::Settings) -> Result<Config, ConfigError> {
        // Unset, the request deadline is the supervisor's timeout, and each database time limit follows it.
        let request_timeout = r.or(&REQUEST_TIMEOUT, server.timeout)?;
        let config = Config {
            env: r.parse(&ENV, |s| s.parse::<AppEnv>())?,
            request_timeout,
            max_body_bytes: r.get(&MAX_BODY_BYTES)? as usize,
            access_log: r.get(&ACCESS_LOG)?,
            forwarded_allow_ips: r.parse(&FORWARDED_ALLOW_IPS, |ips| TrustedProxies::parse(&ips))?,
            cors_origins: r.get(&CORS_ORIGINS)?,
            cors_allow_credentials: r.get(&CORS_ALLOW_CREDENTIALS)?,
            debug_routes: r.get(&DEBUG_ROUTES)?,
            debug_fail_boot_file: r.opt(&DEBUG_FAIL_BOOT_FILE)?.map(PathBuf::from),
            debug_boot_delay: r.get(&DEBUG_BOOT_DELAY)?,
            database: DatabaseConfig {
                url: r.opt(&DATABASE_URL)?.map(DatabaseUrl::new),
                pool_size: r.get(&POOL_SIZE)? as usize,
                connect_timeout: r.get(&CONNECT_TIMEOUT)?,
                wait_timeout: r.get(&WAIT_TIMEOUT)?,
                create_timeout: r.get(&CREATE_TIMEOUT)?,
                readiness_timeout: r
                    .or(&READINESS_TIMEOUT, DatabaseConfig::default_readiness_timeout(request_timeout))?,
                max_connections: r.opt(&MAX_CONNECTIONS)?.map(|n| n as u32),
                statement_timeout: r
                    .or(&STATEMENT_TIMEOUT, DatabaseConfig::default_statement_timeout(request_timeout))?,
                lock_timeout: r.or(&LOCK_TIMEOUT, DatabaseConfig::default_lock_timeout(request_timeout))?,
                idle_in_transaction_session_timeout: r.or(
                    &IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                    DatabaseConfig::default_idle_in_transaction_session_timeout(request_timeout),
                )?,
            },
        };
        config.validate().map_err(|e| r.refuse(e))?;
        Ok(config)
    }

    fn warnings(&self, server: &supervisor::Settings) -> Vec<String> {
        pool_budget_warning(self, server.workers).into_iter().collect()
    }
}

const DAY: f64 = 86_400.0;

const ENV: Setting<String> = Setting::text("app.env")
    .env(&["APP_ENV"])
    .default(r#""dev""#)
    .doc("dev or prod. prod refuses the debug settings and localhost CORS origins.");

const REQUEST_TIMEOUT: Setting<Duration> = Setting::seconds("app.request_timeout", 0.01, DAY)
    .env(&["APP_REQUEST_TIMEOUT"])
    .computed("the value of timeout", "60")
    .doc("Per-request deadline, answered 504 in the error contract.");

const MAX_BODY_BYTES: Setting<u64> = Setting::count("app.max_body_bytes", 1, 1 << 30)
    .env(&["APP_MAX_BODY_BYTES"])
    .default("1048576")
    .doc("Largest accepted request body, in bytes (413 beyond). Keep the edge's client_max_body_size <= this.");

const ACCESS_LOG: Setting<bool> = Setting::boolean("app.access_log")
    .env(&["APP_ACCESS_LOG"])
    .default("true")
    .doc("One JSON access log line per request.");

const FORWARDED_ALLOW_IPS: Setting<Vec<String>> =
    Setting::list("app.forwarded_allow_ips").env(&["FORWARDED_ALLOW_IPS"]).default(r#"["127.0.0.1", "::1"]"#).doc(
        "Peers whose X-Forwarded-For is trusted for the client address in the access log: addresses, CIDR \
         ranges (10.0.0.0/8) or \"*\" (everyone: only when the port is reachable through the proxy alone).",
    );

const CORS_ORIGINS: Setting<Vec<String>> = Setting::list("app.cors_origins").env(&["CORS_ORIGINS"]).default("[]").doc(
    "Origins (scheme://host[:port]) allowed cross-origin access; none by default. \"*\" cannot be combined with \
     credentials.",
);

const CORS_ALLOW_CREDENTIALS: Setting<bool> = Setting::boolean("app.cors_allow_credentials")
    .env(&["CORS_ALLOW_CREDENTIALS"])
    .default("false")
    .doc("Allow credentials (cookies, Authorization) on cross-origin requests from the listed origins.");

const DEBUG_ROUTES: Setting<bool> = Setting::boolean("app.debug_routes")
    .default("false")
    .doc("Test switch, refused in prod: mounts /debug/sleep, /debug/block, /debug/panic and /debug/hog.");

const DEBUG_FAIL_BOOT_FILE: Setting<String> = Setting::text("app.debug_fail_boot_file")
    .unset(r#""/tmp/fail-boot""#)
    .doc("Test switch, refused in prod: every worker fails to boot while this file exists.");

const DEBUG_BOOT_DELAY: Setting<Duration> = Setting::seconds("app.debug_boot_delay", 0.0, 3600.0)
    .default("0")
    .doc("Test switch, refused in prod: every worker sleeps this long before it reports ready.");

const DATABASE_URL: Setting<String> = Setting::text("database.url")
    .env(&["DATABASE_URL"])
    .unset(r#""postgres://app:secret@db:5432/app""#)
    .secret(redact_url)
    .doc("libpq URL or key=value string. Without it /healthz works and /readyz answers 503.");

/// A connection string as `check` and the startup log show it: without its password.
fn redact_url(url: &str) -> String {
    DatabaseUrl::new(url).redacted()
}

const POOL_SIZE: Setting<u64> = Setting::count("database.pool_size", 1, 10_000)
    .env(&["DATABASE_POOL_SIZE"])
    .default("4")
    .doc("Connections per worker: workers x pool_size must fit the server's max_connections.");

const CONNECT_TIMEOUT: Setting<Duration> = Setting::seconds("database.connect_timeout", 0.01, 3600.0)
    .env(&["DATABASE_CONNECT_TIMEOUT"])
    .default("2")
    .doc("Seconds for a TCP connect (unless the URL sets connect_timeout).");

const WAIT_TIMEOUT: Setting<Duration> = Setting::seconds("database.wait_timeout", 0.01, 3600.0)
    .env(&["DATABASE_WAIT_TIMEOUT"])
    .default("1")
    .doc("Seconds a request waits for a free pooled connection (503 beyond).");

const CREATE_TIMEOUT: Setting<Duration> = Setting::seconds("database.create_timeout", 0.01, 3600.0)
    .env(&["DATABASE_CREATE_TIMEOUT"])
    .default("2")
    .doc("Seconds for a whole new connection: catches a server that accepts TCP but never answers.");

const READINESS_TIMEOUT: Setting<Duration> = Setting::seconds("database.readiness_timeout", 0.01, 3600.0)
    .env(&["DATABASE_READINESS_TIMEOUT"])
    .computed("1, or half of app.request_timeout when that is less", "1")
    .doc(
        "Seconds for one /readyz check (connection, SELECT 1, schema version); below the request deadline, so a \
         failing check is a 503, not a 504.",
    );

const MAX_CONNECTIONS: Setting<u64> =
    Setting::count("database.max_connections", 1, u32::MAX as u64).env(&["DATABASE_MAX_CONNECTIONS"]).unset("100").doc(
        "This service's connection budget on the server; `supervisor check` warns when workers x pool_size exceeds it.",
    );

const STATEMENT_TIMEOUT: Setting<Duration> = Setting::seconds("database.statement_timeout", 0.0, DAY)
    .env(&["DATABASE_STATEMENT_TIMEOUT"])
    .computed("5, or half of app.request_timeout when that is less", "5")
    .doc(
        "Seconds a statement may run before PostgreSQL cancels it (answered 504), set on every pooled connection; \
         0 disables it. Must be below app.request_timeout: past the deadline the app cancels the statement itself \
         and discards the connection.",
    );

const LOCK_TIMEOUT: Setting<Duration> = Setting::seconds("database.lock_timeout", 0.0, DAY)
    .env(&["DATABASE_LOCK_TIMEOUT"])
    .computed("2, or a quarter of app.request_timeout when that is less", "2")
    .doc(
        "Seconds a statement may wait for a lock (a migration, a manual LOCK, a restore) before PostgreSQL gives \
         up (answered 504), set on every pooled connection; 0 disables it. Must be below app.request_timeout.",
    );

const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: Setting<Duration> =
    Setting::seconds("database.idle_in_transaction_session_timeout", 0.0, DAY)
        .env(&["DATABASE_IDLE_IN_TRANSACTION_SESSION_TIMEOUT"])
        .computed("the value of app.request_timeout", "60")
        .doc(
            "Seconds a pooled connection may sit idle inside a transaction before PostgreSQL ends the session and \
             releases its locks; 0 disables it.",
        );

impl Config {
    /// Checks the rules that do not depend on where a value came from. The first violation is returned.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.validate_cors()?;
        if self.env == AppEnv::Prod {
            if self.debug_routes {
                return Err(invalid(DEBUG_ROUTES.key(), "debug routes are refused when APP_ENV=prod"));
            }
            if self.debug_fail_boot_file.is_some() {
                return Err(invalid(DEBUG_FAIL_BOOT_FILE.key(), "debug settings are refused when APP_ENV=prod"));
            }
            if !self.debug_boot_delay.is_zero() {
                return Err(invalid(DEBUG_BOOT_DELAY.key(), "debug settings are refused when APP_ENV=prod"));
            }
        }
        positive(REQUEST_TIMEOUT.key(), self.request_timeout)?;
        if self.max_body_bytes == 0 {
            return Err(invalid(MAX_BODY_BYTES.key(), "must be at least 1"));
        }
        let db = &self.database;
        if let Some(url) = &db.url {
            // The parser's message names the offending option, never its value.
            if let Err(e) = url.expose().parse::<tokio_postgres::Config>() {
                return Err(invalid(
                    DATABASE_URL.key(),
                    format!("not a valid PostgreSQL connection string ({})", crate::error::error_text(&e)),
                ));
            }
        }
        if db.pool_size == 0 {
            return Err(invalid(POOL_SIZE.key(), "must be at least 1"));
        }
        positive(CONNECT_TIMEOUT.key(), db.connect_timeout)?;
        positive(WAIT_TIMEOUT.key(), db.wait_timeout)?;
        positive(CREATE_TIMEOUT.key(), db.create_timeout)?;
        positive(READINESS_TIMEOUT.key(), db.readiness_timeout)?;
        if db.max_connections == Some(0) {
            return Err(invalid(MAX_CONNECTIONS.key(), "must be at least 1"));
        }
        for (key, value) in [
            (STATEMENT_TIMEOUT.key(), db.statement_timeout),
            (LOCK_TIMEOUT.key(), db.lock_timeout),
            (IDLE_IN_TRANSACTION_SESSION_TIMEOUT.key(), db.idle_in_transaction_session_timeout),
        ] {
            // PostgreSQL counts in milliseconds: a shorter value would be sent as 0, which disables it.
            if !value.is_zero() && value < Duration::from_millis(1) {
                return Err(invalid(key, "must be 0 (disabled) or at least 0.001 seconds"));
            }
        }
        // A server-side timeout at or past the deadline never fires first: the deadline cancels the statement
        // and discards the connection instead of the server answering on a connection that stays usable.
        for (key, value) in [(STATEMENT_TIMEOUT.key(), db.statement_timeout), (LOCK_TIMEOUT.key(), db.lock_timeout)] {
            if !value.is_zero() && value >= self.request_timeout {
                return Err(invalid(
                    key,
                    format!(
                        "{} s must be below {} ({} s), or 0 to disable it",
                        value.as_secs_f64(),
                        REQUEST_TIMEOUT.key(),
                        self.request_timeout.as_secs_f64()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_cors(&self) -> Result<(), Invalid> {
        for origin in &self.cors_origins {
            if origin == "*" {
                if self.cors_allow_credentials {
                    return Err(invalid(
                        CORS_ORIGINS.key(),
                        "`*` cannot be combined with cors_allow_credentials = true; list the origins explicitly",
                    ));
                }
                continue;
            }
            let host = origin_host(origin).map_err(|why| invalid(CORS_ORIGINS.key(), format!("{origin:?}: {why}")))?;
            if self.env == AppEnv::Prod && is_local_host(host) {
                return Err(invalid(
                    CORS_ORIGINS.key(),
                    format!("{origin:?}: localhost origins are refused when APP_ENV=prod"),
                ));
            }
        }
        Ok(())
    }
}

fn positive(key: &'static str, value: Duration) -> Result<(), Invalid> {
    if value.is_zero() { Err(invalid(key, "must be greater than zero")) } else { Ok(()) }
}

fn invalid(key: &'static str, message: impl Into<String>) -> Invalid {
    Invalid { key, message: message.into() }
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
fn pool_budget_warning(config: &Config, workers: usize) -> Option<String> {
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

    /// The app's settings as the server resolves them: `toml` as the config file, `env` as the environment.
    fn load(toml: &str, env: &[(&str, &str)]) -> Result<supervisor::Resolved<Config>, ConfigError> {
        use supervisor::config::Layers;
        use supervisor::server_settings::{Resolved, sections, specs};
        let dir = test_support::TempDir::new("app-config");
        let path = dir.join("server.toml");
        std::fs::write(&path, toml).unwrap();
        let env: std::collections::BTreeMap<String, String> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let layers = Layers::new(
            Some(&path),
            &specs::<Config>(),
            &sections::<Config>(),
            |k| env.get(k).cloned(),
            Default::default(),
        )?;
        Resolved::from_layers(&layers, (2, supervisor::cpus::CpuSource::Affinity))
    }

    fn source_of(c: &supervisor::Resolved<Config>, key: &str) -> supervisor::config::Source {
        c.report.iter().find(|r| r.key == key).unwrap().source.clone()
    }

    #[test]
    fn declared_defaults_are_the_typed_defaults() {
        assert_eq!(load("", &[]).unwrap().app, Config::default());
        assert_eq!(supervisor::server_settings::lint::<Config>(), Ok(()));
    }

    #[test]
    fn out_of_range_values_name_the_key_and_the_variable() {
        use supervisor::config::Source;
        for (var, value, key) in [
            ("APP_REQUEST_TIMEOUT", "0", "app.request_timeout"),
            ("DATABASE_POOL_SIZE", "0", "database.pool_size"),
            ("DATABASE_WAIT_TIMEOUT", "1e-9", "database.wait_timeout"),
            ("APP_MAX_BODY_BYTES", "0", "app.max_body_bytes"),
            ("APP_ENV", "staging", "app.env"),
        ] {
            let e = load("", &[(var, value)]).unwrap_err();
            assert_eq!((e.key.as_str(), &e.source), (key, &Source::Env(var)), "{var}={value}");
        }
    }

    #[test]
    fn forwarded_allow_ips_takes_ranges_and_refuses_bad_ones_by_name() {
        use supervisor::config::Source;
        let c = load("[app]\nforwarded_allow_ips = [\"10.0.0.0/8\"]\n", &[]).unwrap();
        assert!(c.app.forwarded_allow_ips.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.app.forwarded_allow_ips.contains("11.0.0.1".parse().unwrap()));
        let c = load("", &[("FORWARDED_ALLOW_IPS", "*")]).unwrap();
        assert_eq!(c.app.forwarded_allow_ips, TrustedProxies::Any);
        let e = load("", &[("FORWARDED_ALLOW_IPS", "10.0.0.0/33")]).unwrap_err();
        assert_eq!((e.key.as_str(), e.source), ("app.forwarded_allow_ips", Source::Env("FORWARDED_ALLOW_IPS")));
    }

    #[test]
    fn validation_errors_carry_the_source() {
        use supervisor::config::Source;
        let e = load("", &[("APP_ENV", "prod"), ("CORS_ORIGINS", "http://localhost:3000")]).unwrap_err();
        assert_eq!((e.key.as_str(), e.source), ("app.cors_origins", Source::Env("CORS_ORIGINS")));
        let e = load("[app]\ncors_origins = [\"*\"]\ncors_allow_credentials = true\n", &[]).unwrap_err();
        assert_eq!(e.key, "app.cors_origins");
        assert!(matches!(e.source, Source::File(_)));
    }

    #[test]
    fn the_database_password_never_reaches_the_report() {
        let c = load("", &[("DATABASE_URL", "postgres://app:hunter2@db:5432/app")]).unwrap();
        assert!(!c.summary().contains("hunter2"), "{}", c.summary());
        assert!(c.summary().contains("database.url=postgres://app:***@db:5432/app (env DATABASE_URL)"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn request_timeout_defaults_to_timeout() {
        let c = load("timeout = 12\n", &[]).unwrap();
        assert_eq!(c.app.request_timeout, Duration::from_secs(12));
        assert_eq!(source_of(&c, "app.request_timeout"), supervisor::config::Source::Default);
    }

    #[test]
    fn database_time_limits_follow_a_short_request_deadline_unless_set() {
        let ms = Duration::from_millis;
        let c = load("", &[("APP_REQUEST_TIMEOUT", "2")]).unwrap();
        let db = &c.app.database;
        assert_eq!(
            (db.statement_timeout, db.lock_timeout, db.idle_in_transaction_session_timeout),
            (ms(1000), ms(500), ms(2000))
        );
        assert!(c.report.iter().any(|r| r.key == "database.lock_timeout"
            && r.shown == "0.5s [2, or a quarter of app.request_timeout when that is less]"));
        let c =
            load("[database]\nstatement_timeout = 0\nlock_timeout = 1.5\n", &[("APP_REQUEST_TIMEOUT", "2")]).unwrap();
        assert_eq!((c.app.database.statement_timeout, c.app.database.lock_timeout), (Duration::ZERO, ms(1500)));
        assert!(matches!(source_of(&c, "database.lock_timeout"), supervisor::config::Source::File(_)));
    }

    #[test]
    fn a_time_limit_at_or_past_the_request_deadline_is_refused_by_name() {
        use supervisor::config::Source;
        let e = load("", &[("APP_REQUEST_TIMEOUT", "2"), ("DATABASE_STATEMENT_TIMEOUT", "5")]).unwrap_err();
        assert_eq!(
            (e.key.as_str(), &e.source),
            ("database.statement_timeout", &Source::Env("DATABASE_STATEMENT_TIMEOUT"))
        );
        assert!(e.message.contains("app.request_timeout"), "{e}");
        let e = load("[app]\nrequest_timeout = 3\n[database]\nlock_timeout = 3\n", &[]).unwrap_err();
        assert_eq!(e.key, "database.lock_timeout");
        let e = load("", &[("DATABASE_IDLE_IN_TRANSACTION_SESSION_TIMEOUT", "0.0001")]).unwrap_err();
        assert_eq!(e.key, "database.idle_in_transaction_session_timeout");
        let e = load("", &[("DATABASE_LOCK_TIMEOUT", "-1")]).unwrap_err();
        assert_eq!(e.key, "database.lock_timeout");
    }

    #[test]
    fn the_pool_budget_is_a_warning_of_check() {
        let c = load("workers = 5\n[database]\nmax_connections = 16\n", &[]).unwrap();
        let warnings = c.app.warnings(&c.settings);
        assert!(warnings.len() == 1 && warnings[0].contains("5 workers"), "{warnings:?}");
    }

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
        assert_eq!(config.validate().unwrap_err().key, CORS_ORIGINS.key());
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
            assert_eq!(err.key, CORS_ORIGINS.key(), "{origin}");
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
            assert_eq!(config.validate().unwrap_err().key, CORS_ORIGINS.key(), "{origin}");
        }
    }

    #[test]
    fn debug_settings_are_refused_in_prod() {
        let cases = [
            (Config { debug_routes: true, ..prod() }, DEBUG_ROUTES.key()),
            (Config { debug_fail_boot_file: Some("/tmp/x".into()), ..prod() }, DEBUG_FAIL_BOOT_FILE.key()),
            (Config { debug_boot_delay: Duration::from_secs(1), ..prod() }, DEBUG_BOOT_DELAY.key()),
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
        assert_eq!(db(|d| d.pool_size = 0), POOL_SIZE.key());
        assert_eq!(db(|d| d.connect_timeout = Duration::ZERO), CONNECT_TIMEOUT.key());
        assert_eq!(db(|d| d.wait_timeout = Duration::ZERO), WAIT_TIMEOUT.key());
        assert_eq!(db(|d| d.create_timeout = Duration::ZERO), CREATE_TIMEOUT.key());
        assert_eq!(db(|d| d.readiness_timeout = Duration::ZERO), READINESS_TIMEOUT.key());
        assert_eq!(db(|d| d.max_connections = Some(0)), MAX_CONNECTIONS.key());
        let config = Config { request_timeout: Duration::ZERO, ..Config::default() };
        assert_eq!(config.validate().unwrap_err().key, REQUEST_TIMEOUT.key());
        let config = Config { max_body_bytes: 0, ..Config::default() };
        assert_eq!(config.validate().unwrap_err().key, MAX_BODY_BYTES.key());
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
        assert_eq!(config.validate().unwrap_err().key, STATEMENT_TIMEOUT.key(), "the 5 s default is not below 2 s");
        config.database.statement_timeout = Duration::ZERO;
        assert_eq!(config.validate().unwrap_err().key, LOCK_TIMEOUT.key(), "2 s is not below 2 s");
        config.database.lock_timeout = Duration::from_millis(1999);
        assert_eq!(config.validate(), Ok(()));
        config.database.idle_in_transaction_session_timeout = Duration::from_micros(500);
        assert_eq!(config.validate().unwrap_err().key, IDLE_IN_TRANSACTION_SESSION_TIMEOUT.key());
    }

    #[test]
    fn invalid_database_url_is_refused_without_echoing_it() {
        let mut config = Config::default();
        config.database.url = Some("postgres://u:hunter2@h/db?bogus_option=1".into());
        let err = config.validate().unwrap_err();
        assert_eq!(err.key, DATABASE_URL.key());
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
        assert!("staging".parse::<AppEnv>().unwrap_err().contains("staging"));
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
