//! Settings from four layers: command-line flag > environment > config file > default.
//!
//! Every key the server understands is listed once in [`KEYS`], with its environment names (the first set one
//! wins, so `SUPERVISOR_TIMEOUT` beats `GUNICORN_TIMEOUT`) and its flag. Each resolved value remembers its
//! [`Source`], so that an error names the key and where the bad value came from, and `supervisor check` and
//! the startup log can say where every value came from. The environment is read through a function so tests
//! can feed a map.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use supervisor::Settings;
use supervisor::logging::LogLevel;

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Built-in default.
    Default,
    /// The config file.
    File(PathBuf),
    /// An environment variable.
    Env(&'static str),
    /// A command-line flag.
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(name) => write!(f, "env {name}"),
            Source::Flag(name) => write!(f, "flag {name}"),
        }
    }
}

/// A configuration problem, naming the key and the source of the offending value. Exit code 2.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The key (`timeout`, `database.pool_size`, ...) or file.
    pub key: String,
    /// Where the value came from.
    pub source: Source,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: `{}` (from {}): {}", self.key, self.source, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// One configurable key.
pub struct Key {
    /// Dotted path in the TOML file (`timeout`, `app.env`, `database.url`).
    pub path: &'static str,
    /// Environment variables, highest precedence first.
    pub env: &'static [&'static str],
    /// Command-line flag, if any.
    pub flag: Option<&'static str>,
}

const fn key(path: &'static str, env: &'static [&'static str], flag: Option<&'static str>) -> Key {
    Key { path, env, flag }
}

/// Every key, in the order `check` prints them.
pub const KEYS: &[Key] = &[
    key("bind", &["SUPERVISOR_BIND"], Some("--bind")),
    key("backlog", &["SUPERVISOR_BACKLOG"], Some("--backlog")),
    key("workers", &["WEB_CONCURRENCY"], Some("--workers")),
    key("threads", &["SUPERVISOR_THREADS"], Some("--threads")),
    key("timeout", &["SUPERVISOR_TIMEOUT", "GUNICORN_TIMEOUT"], Some("--timeout")),
    key("graceful_timeout", &["SUPERVISOR_GRACEFUL_TIMEOUT", "GUNICORN_GRACEFUL_TIMEOUT"], Some("--graceful-timeout")),
    key("keepalive", &["SUPERVISOR_KEEPALIVE", "GUNICORN_KEEPALIVE"], Some("--keepalive")),
    key("log_level", &["SUPERVISOR_LOG_LEVEL", "GUNICORN_LOG_LEVEL"], Some("--log-level")),
    key("boot_timeout", &["SUPERVISOR_BOOT_TIMEOUT"], Some("--boot-timeout")),
    key("max_requests", &["SUPERVISOR_MAX_REQUESTS"], Some("--max-requests")),
    key("max_requests_jitter", &["SUPERVISOR_MAX_REQUESTS_JITTER"], Some("--max-requests-jitter")),
    key("pidfile", &["SUPERVISOR_PIDFILE"], Some("--pidfile")),
    key("log_file", &["SUPERVISOR_LOG_FILE"], Some("--log-file")),
    key("app.env", &["APP_ENV"], None),
    key("app.request_timeout", &["APP_REQUEST_TIMEOUT"], None),
    key("app.max_body_bytes", &["APP_MAX_BODY_BYTES"], None),
    key("app.access_log", &["APP_ACCESS_LOG"], None),
    key("app.forwarded_allow_ips", &["FORWARDED_ALLOW_IPS"], None),
    key("app.cors_origins", &["CORS_ORIGINS"], None),
    key("app.cors_allow_credentials", &["CORS_ALLOW_CREDENTIALS"], None),
    key("app.debug_routes", &[], None),
    key("app.debug_fail_boot_file", &[], None),
    key("app.debug_boot_delay", &[], None),
    // Shown redacted (no password) wherever settings are printed.
    key("database.url", &["DATABASE_URL"], None),
    key("database.pool_size", &["DATABASE_POOL_SIZE"], None),
    key("database.connect_timeout", &["DATABASE_CONNECT_TIMEOUT"], None),
    key("database.wait_timeout", &["DATABASE_WAIT_TIMEOUT"], None),
    key("database.create_timeout", &["DATABASE_CREATE_TIMEOUT"], None),
    key("database.readiness_timeout", &["DATABASE_READINESS_TIMEOUT"], None),
    key("database.max_connections", &["DATABASE_MAX_CONNECTIONS"], None),
];

/// The resolved configuration.
#[derive(Debug)]
pub struct Config {
    /// Supervisor settings.
    pub supervisor: Settings,
    /// `workers = 0`: serve in this process, without a master.
    pub single_process: bool,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Log to this file instead of standard output (reopened on SIGUSR1).
    pub log_file: Option<PathBuf>,
    /// Application settings.
    pub app: app::Config,
    /// Every key with its display value and source, in [`KEYS`] order.
    pub report: Vec<(&'static str, String, Source)>,
}

impl Config {
    /// `key=value (source)` pairs for the startup log line.
    pub fn summary(&self) -> String {
        self.report.iter().map(|(k, v, s)| format!("{k}={v} ({s})")).collect::<Vec<_>>().join(", ")
    }
}

/// A raw value found in one layer.
enum Raw {
    Text(String),
    Toml(toml::Value),
}

/// The layers, before resolution.
pub struct Layers {
    file: toml::Table,
    path: Option<PathBuf>,
    env: BTreeMap<&'static str, String>,
    flags: BTreeMap<&'static str, String>,
}

impl Layers {
    /// Reads the config file (if any) and the environment through `env`; `flags` maps flag names to values.
    pub fn new(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: BTreeMap<&'static str, String>,
    ) -> Result<Layers, ConfigError> {
        let file = match path {
            None => toml::Table::new(),
            Some(path) => {
                let source = Source::File(path.to_path_buf());
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    key: "config".into(),
                    source: source.clone(),
                    message: format!("cannot read the file: {e}"),
                })?;
                let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
                    key: "config".into(),
                    source: source.clone(),
                    message: format!("not valid TOML: {}", e.message()),
                })?;
                check_known_keys(&table, &source)?;
                table
            }
        };
        let env = KEYS.iter().flat_map(|k| k.env.iter()).filter_map(|&name| env(name).map(|v| (name, v))).collect();
        Ok(Layers { file, path: path.map(Path::to_path_buf), env, flags })
    }

    /// The highest-precedence raw value of `key`, if any layer sets it.
    fn raw(&self, key: &Key) -> Option<(Raw, Source)> {
        if let Some(flag) = key.flag
            && let Some(v) = self.flags.get(flag)
        {
            return Some((Raw::Text(v.clone()), Source::Flag(flag)));
        }
        for &name in key.env {
            if let Some(v) = self.env.get(name) {
                return Some((Raw::Text(v.clone()), Source::Env(name)));
            }
        }
        let mut node = &self.file;
        let mut parts = key.path.split('.').peekable();
        while let Some(part) = parts.next() {
            let value = node.get(part)?;
            if parts.peek().is_none() {
                let path = self.path.clone().expect("a file value implies a file");
                return Some((Raw::Toml(value.clone()), Source::File(path)));
            }
            node = value.as_table()?;
        }
        None
    }

    /// Resolves every key, validates, and builds the configuration.
    pub fn resolve(&self, cpus: (usize, supervisor::cpus::CpuSource)) -> Result<Config, ConfigError> {
        let mut r = Resolver { layers: self, report: Vec::new(), sources: BTreeMap::new() };
        let d = Settings::default();
        let (n, cpu_source) = cpus;
        let default_workers = n.clamp(2, 4);
        let bind = r.get(
            "bind",
            d.bind.clone(),
            |raw| list(raw)?.iter().map(|s| parse_addr(s)).collect(),
            |v| format!("{v:?}"),
        )?;
        if bind.is_empty() {
            return Err(r.error("bind", "at least one address is required"));
        }
        let backlog = r.get("backlog", d.backlog as u64, |raw| int(raw, 1, 65_535), u64::to_string)? as u32;
        let workers =
            r.get("workers", default_workers as u64, |raw| int(raw, 0, Settings::MAX_WORKERS as u64), u64::to_string)?;
        if r.sources["workers"] == Source::Default {
            let last = r.report.last_mut().expect("workers was just reported");
            last.1 = format!("{workers} [min(4, max(2, {n} CPUs from {}))]", cpu_source.as_str());
        }
        let threads = r.get("threads", d.threads as u64, |raw| int(raw, 1, 64), u64::to_string)? as usize;
        let timeout = r.get("timeout", d.timeout, |raw| seconds(raw, 1.0, DAY), secs)?;
        let graceful_timeout = r.get("graceful_timeout", d.graceful_timeout, |raw| seconds(raw, 0.0, DAY), secs)?;
        let keepalive = r.get("keepalive", d.keepalive, |raw| seconds(raw, 0.0, 3600.0), secs)?;
        let log_level = r.get("log_level", LogLevel::Info, |raw| text(raw)?.parse(), |l| l.as_str().into())?;
        let boot_timeout = r.get("boot_timeout", d.boot_timeout, |raw| seconds(raw, 1.0, DAY), secs)?;
        let max_requests = r.get("max_requests", 0, |raw| int(raw, 0, MAX_COUNT), u64::to_string)?;
        let max_requests_jitter = r.get("max_requests_jitter", 0, |raw| int(raw, 0, MAX_COUNT), u64::to_string)?;
        let pidfile = r.get(
            "pidfile",
            None,
            |raw| Ok(Some(PathBuf::from(text(raw)?))),
            |p| opt(p.as_ref().map(|p| p.display())),
        )?;
        let log_file = r.get(
            "log_file",
            None,
            |raw| Ok(Some(PathBuf::from(text(raw)?))),
            |p| opt(p.as_ref().map(|p| p.display())),
        )?;

        let a = app::Config::default();
        let env =
            r.get("app.env", a.env, |raw| text(raw)?.parse::<app::AppEnv>().map_err(|e| e.message), |e| e.to_string())?;
        let request_timeout = r.get("app.request_timeout", timeout, |raw| seconds(raw, 0.01, DAY), secs)?;
        let max_body_bytes =
            r.get("app.max_body_bytes", a.max_body_bytes as u64, |raw| int(raw, 1, 1 << 30), u64::to_string)? as usize;
        let access_log = r.get("app.access_log", a.access_log, boolean, bool::to_string)?;
        let forwarded_allow_ips = r.get(
            "app.forwarded_allow_ips",
            a.forwarded_allow_ips.clone(),
            |raw| {
                list(raw)?
                    .iter()
                    .map(|s| s.parse::<IpAddr>().map_err(|_| format!("{s:?} is not an IP address")))
                    .collect()
            },
            |v| format!("{v:?}"),
        )?;
        let cors_origins = r.get("app.cors_origins", a.cors_origins.clone(), list, |v| format!("{v:?}"))?;
        let cors_allow_credentials =
            r.get("app.cors_allow_credentials", a.cors_allow_credentials, boolean, bool::to_string)?;
        let debug_routes = r.get("app.debug_routes", a.debug_routes, boolean, bool::to_string)?;
        let debug_fail_boot_file = r.get(
            "app.debug_fail_boot_file",
            None,
            |raw| Ok(Some(PathBuf::from(text(raw)?))),
            |p| opt(p.as_ref().map(|p| p.display())),
        )?;
        let debug_boot_delay =
            r.get("app.debug_boot_delay", a.debug_boot_delay, |raw| seconds(raw, 0.0, 3600.0), secs)?;
        let db = &a.database;
        let url =
            r.get("database.url", None, |raw| Ok(Some(app::DatabaseUrl::new(text(raw)?))), |u| opt(u.as_ref()))?;
        let pool_size =
            r.get("database.pool_size", db.pool_size as u64, |raw| int(raw, 1, 10_000), u64::to_string)? as usize;
        let connect_timeout =
            r.get("database.connect_timeout", db.connect_timeout, |raw| seconds(raw, 0.01, 3600.0), secs)?;
        let wait_timeout = r.get("database.wait_timeout", db.wait_timeout, |raw| seconds(raw, 0.01, 3600.0), secs)?;
        let create_timeout =
            r.get("database.create_timeout", db.create_timeout, |raw| seconds(raw, 0.01, 3600.0), secs)?;
        let readiness_timeout =
            r.get("database.readiness_timeout", db.readiness_timeout, |raw| seconds(raw, 0.01, 3600.0), secs)?;
        let max_connections = r.get(
            "database.max_connections",
            None,
            |raw| int(raw, 1, u32::MAX as u64).map(|n| Some(n as u32)),
            |n| opt(n.as_ref()),
        )?;

        let app = app::Config {
            env,
            debug_routes,
            debug_fail_boot_file,
            debug_boot_delay,
            request_timeout,
            max_body_bytes,
            access_log,
            forwarded_allow_ips,
            cors_origins,
            cors_allow_credentials,
            database: app::DatabaseConfig {
                url,
                pool_size,
                connect_timeout,
                wait_timeout,
                create_timeout,
                readiness_timeout,
                max_connections,
            },
        };
        app.validate().map_err(|e| r.error(e.key, &e.message))?;
        let supervisor = Settings {
            bind,
            backlog,
            workers: workers.max(1) as usize,
            threads,
            timeout,
            graceful_timeout,
            keepalive,
            boot_timeout,
            max_requests,
            max_requests_jitter,
            pidfile,
        };
        Ok(Config { supervisor, single_process: workers == 0, log_level, log_file, app, report: r.report })
    }
}

struct Resolver<'a> {
    layers: &'a Layers,
    report: Vec<(&'static str, String, Source)>,
    sources: BTreeMap<&'static str, Source>,
}

impl Resolver<'_> {
    /// Resolves one key: parses the winning layer's value, or takes the default, and records the source.
    fn get<T>(
        &mut self,
        path: &'static str,
        default: T,
        parse: impl FnOnce(&Raw) -> Result<T, String>,
        show: impl FnOnce(&T) -> String,
    ) -> Result<T, ConfigError> {
        let key = KEYS.iter().find(|k| k.path == path).expect("every resolved key is listed in KEYS");
        let (value, source) = match self.layers.raw(key) {
            None => (default, Source::Default),
            Some((raw, source)) => match parse(&raw) {
                Ok(v) => (v, source),
                Err(message) => return Err(ConfigError { key: path.into(), source, message }),
            },
        };
        let shown = show(&value);
        self.report.push((path, shown, source.clone()));
        self.sources.insert(path, source);
        Ok(value)
    }

    /// An error about an already resolved key.
    fn error(&self, path: &str, message: &str) -> ConfigError {
        let source = self.sources.get(path).cloned().unwrap_or(Source::Default);
        ConfigError { key: path.into(), source, message: message.into() }
    }
}

/// Rejects keys the server does not know, naming the first one.
fn check_known_keys(table: &toml::Table, source: &Source) -> Result<(), ConfigError> {
    for (name, value) in table {
        let known_table = KEYS.iter().any(|k| k.path.starts_with(&format!("{name}.")));
        let known_key = KEYS.iter().any(|k| k.path == name.as_str());
        match value.as_table() {
            Some(sub) if known_table => {
                for inner in sub.keys() {
                    let path = format!("{name}.{inner}");
                    if !KEYS.iter().any(|k| k.path == path) {
                        return Err(ConfigError { key: path, source: source.clone(), message: "unknown key".into() });
                    }
                }
            }
            _ if known_key => {}
            _ => return Err(ConfigError { key: name.clone(), source: source.clone(), message: "unknown key".into() }),
        }
    }
    Ok(())
}

fn text(raw: &Raw) -> Result<String, String> {
    match raw {
        Raw::Text(s) => Ok(s.trim().to_string()),
        Raw::Toml(toml::Value::String(s)) => Ok(s.clone()),
        Raw::Toml(v) => Err(format!("expected a string, got {}", v.type_str())),
    }
}

fn int(raw: &Raw, min: u64, max: u64) -> Result<u64, String> {
    let n: i128 = match raw {
        Raw::Text(s) => s.trim().parse().map_err(|_| format!("expected a whole number, got {:?}", s.trim()))?,
        Raw::Toml(toml::Value::Integer(n)) => i128::from(*n),
        Raw::Toml(v) => return Err(format!("expected a whole number, got {}", v.type_str())),
    };
    if n < i128::from(min) || n > i128::from(max) {
        return Err(format!("must be between {min} and {max}, got {n}"));
    }
    Ok(n as u64)
}

/// Seconds in a day: the upper bound of most durations.
const DAY: f64 = 86_400.0;
/// Upper bound of request counts (`max_requests`, its jitter).
const MAX_COUNT: u64 = 1_000_000_000;

fn seconds(raw: &Raw, min: f64, max: f64) -> Result<Duration, String> {
    let s: f64 = match raw {
        Raw::Text(s) => s.trim().parse().map_err(|_| format!("expected a number of seconds, got {:?}", s.trim()))?,
        Raw::Toml(toml::Value::Integer(n)) => *n as f64,
        Raw::Toml(toml::Value::Float(f)) => *f,
        Raw::Toml(v) => return Err(format!("expected a number of seconds, got {}", v.type_str())),
    };
    if !(min..=max).contains(&s) {
        return Err(format!("must be between {min} and {max} seconds, got {s}"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn boolean(raw: &Raw) -> Result<bool, String> {
    match raw {
        Raw::Toml(toml::Value::Boolean(b)) => Ok(*b),
        Raw::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            other => Err(format!("expected true or false, got {other:?}")),
        },
        Raw::Toml(v) => Err(format!("expected true or false, got {}", v.type_str())),
    }
}

/// A list: a TOML array of strings, or a comma-separated string (environment, flags).
fn list(raw: &Raw) -> Result<Vec<String>, String> {
    let split = |s: &str| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    match raw {
        Raw::Text(s) | Raw::Toml(toml::Value::String(s)) => Ok(split(s)),
        Raw::Toml(toml::Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(String::from).ok_or_else(|| format!("expected strings, got {}", v.type_str())))
            .collect(),
        Raw::Toml(v) => Err(format!("expected a list of strings, got {}", v.type_str())),
    }
}

/// `HOST:PORT`, with IPv6 hosts in brackets; `:PORT` alone means all IPv4 interfaces.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_string() };
    full.parse().map_err(|_| format!("{s:?} is not HOST:PORT (IPv6 as [::1]:8000)"))
}

fn secs(d: &Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

fn opt(v: Option<impl fmt::Display>) -> String {
    v.map_or_else(|| "none".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)], flags: &[(&'static str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("config-test-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("supervisor.toml");
        std::fs::write(&path, toml).unwrap();
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let flags = flags.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let result = Layers::new(Some(&path), |k| env.get(k).cloned(), flags)
            .and_then(|l| l.resolve((2, supervisor::cpus::CpuSource::Affinity)));
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    fn source_of(c: &Config, key: &str) -> Source {
        c.report.iter().find(|r| r.0 == key).unwrap().2.clone()
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let c = load(
            "timeout = 10\nkeepalive = 7\nthreads = 2\n",
            &[("GUNICORN_TIMEOUT", "20"), ("SUPERVISOR_KEEPALIVE", "8")],
            &[("--timeout", "30")],
        )
        .unwrap();
        assert_eq!(c.supervisor.timeout, Duration::from_secs(30));
        assert_eq!(source_of(&c, "timeout"), Source::Flag("--timeout"));
        assert_eq!(c.supervisor.keepalive, Duration::from_secs(8));
        assert_eq!(source_of(&c, "keepalive"), Source::Env("SUPERVISOR_KEEPALIVE"));
        assert_eq!(c.supervisor.threads, 2);
        assert!(matches!(source_of(&c, "threads"), Source::File(_)));
        assert_eq!(c.supervisor.graceful_timeout, Duration::from_secs(30));
        assert_eq!(source_of(&c, "graceful_timeout"), Source::Default);
    }

    #[test]
    fn supervisor_env_names_beat_gunicorn_aliases() {
        let c = load("", &[("GUNICORN_TIMEOUT", "20"), ("SUPERVISOR_TIMEOUT", "25")], &[]).unwrap();
        assert_eq!(c.supervisor.timeout, Duration::from_secs(25));
        assert_eq!(source_of(&c, "timeout"), Source::Env("SUPERVISOR_TIMEOUT"));
        let c = load("", &[("GUNICORN_TIMEOUT", "20")], &[]).unwrap();
        assert_eq!(source_of(&c, "timeout"), Source::Env("GUNICORN_TIMEOUT"));
    }

    #[test]
    fn default_workers_follow_cpus_and_web_concurrency_overrides() {
        let c = load("", &[], &[]).unwrap();
        assert_eq!(c.supervisor.workers, 2);
        assert!(c.report.iter().any(|r| r.0 == "workers" && r.1.contains("2 CPUs from affinity")));
        let c = load("", &[("WEB_CONCURRENCY", "3")], &[]).unwrap();
        assert_eq!(c.supervisor.workers, 3);
        let c = load("workers = 0\n", &[], &[]).unwrap();
        assert!(c.single_process);
    }

    #[test]
    fn errors_name_the_key_and_source() {
        let e = load("timeout = -1\n", &[], &[]).unwrap_err();
        assert_eq!(e.key, "timeout");
        assert!(matches!(e.source, Source::File(_)));
        let e = load("", &[("GUNICORN_KEEPALIVE", "abc")], &[]).unwrap_err();
        assert_eq!((e.key.as_str(), e.source), ("keepalive", Source::Env("GUNICORN_KEEPALIVE")));
        let e = load("", &[], &[("--workers", "500")]).unwrap_err();
        assert_eq!((e.key.as_str(), e.source), ("workers", Source::Flag("--workers")));
        let e = load("timeout = 0\n", &[], &[]).unwrap_err();
        assert_eq!(e.key, "timeout");
        let e = load("", &[("SUPERVISOR_BIND", "localhost")], &[]).unwrap_err();
        assert_eq!(e.key, "bind");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("SUPERVISOR_MAX_REQUESTS_JITTER", "18446744073709551615", "max_requests_jitter"),
            ("SUPERVISOR_MAX_REQUESTS", "18446744073709551615", "max_requests"),
            ("SUPERVISOR_TIMEOUT", "1e-10", "timeout"),
            ("SUPERVISOR_TIMEOUT", "NaN", "timeout"),
            ("SUPERVISOR_TIMEOUT", "inf", "timeout"),
            ("SUPERVISOR_GRACEFUL_TIMEOUT", "-1", "graceful_timeout"),
            ("SUPERVISOR_BOOT_TIMEOUT", "0.5", "boot_timeout"),
            ("SUPERVISOR_KEEPALIVE", "3601", "keepalive"),
            ("SUPERVISOR_BACKLOG", "0", "backlog"),
            ("SUPERVISOR_THREADS", "65", "threads"),
            ("WEB_CONCURRENCY", "-1", "workers"),
            ("APP_REQUEST_TIMEOUT", "0", "app.request_timeout"),
            ("DATABASE_POOL_SIZE", "0", "database.pool_size"),
            ("DATABASE_WAIT_TIMEOUT", "1e-9", "database.wait_timeout"),
            ("APP_MAX_BODY_BYTES", "0", "app.max_body_bytes"),
        ];
        for (var, value, key) in cases {
            let e = load("", &[(var, value)], &[]).unwrap_err();
            assert_eq!((e.key.as_str(), &e.source), (*key, &Source::Env(var)), "{var}={value}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = load("timeoutt = 5\n", &[], &[]).unwrap_err();
        assert_eq!(e.key, "timeoutt");
        let e = load("[app]\nfoo = 1\n", &[], &[]).unwrap_err();
        assert_eq!(e.key, "app.foo");
        let e = load("[nope]\nfoo = 1\n", &[], &[]).unwrap_err();
        assert_eq!(e.key, "nope");
        let e = load("timeout = [\n", &[], &[]).unwrap_err();
        assert_eq!(e.key, "config");
    }

    #[test]
    fn app_validation_errors_carry_the_source() {
        let e = load("", &[("APP_ENV", "prod"), ("CORS_ORIGINS", "http://localhost:3000")], &[]).unwrap_err();
        assert_eq!((e.key.as_str(), e.source), ("app.cors_origins", Source::Env("CORS_ORIGINS")));
        let e = load("[app]\ncors_origins = [\"*\"]\ncors_allow_credentials = true\n", &[], &[]).unwrap_err();
        assert_eq!(e.key, "app.cors_origins");
    }

    #[test]
    fn secrets_never_reach_the_report() {
        let c = load("", &[("DATABASE_URL", "postgres://app:hunter2@db:5432/app")], &[]).unwrap();
        assert!(!c.summary().contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn request_timeout_defaults_to_timeout() {
        let c = load("timeout = 12\n", &[], &[]).unwrap();
        assert_eq!(c.app.request_timeout, Duration::from_secs(12));
    }
}
