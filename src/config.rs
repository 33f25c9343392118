//! Settings from four layers: command-line flag > environment > config file > default.
//!
//! Every key is declared once in [`crate::settings::SETTINGS`], with its environment names (the first set one
//! wins, so `SUPERVISOR_TIMEOUT` beats `GUNICORN_TIMEOUT`), its flag, type, bounds and default. Each resolved
//! value remembers its [`Source`], so that an error names the key and where the bad value came from, and
//! `supervisor check` and the startup log can say where every value came from. The environment is read
//! through a function so tests can feed a map.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use supervisor::Settings;
use supervisor::logging::{LogLevel, LogSettings};

use crate::settings::{DefaultValue, Kind, OnHup, SECTIONS, SETTINGS, Setting, setting_of};

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Built-in default.
    Default,
    /// The config file.
    File(PathBuf),
    /// An environment variable.
    Env(&'static str),
    /// A command-line flag (its long name, without the dashes).
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(name) => write!(f, "env {name}"),
            Source::Flag(name) => write!(f, "flag --{name}"),
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

/// The resolved configuration.
#[derive(Debug)]
pub struct Config {
    /// Supervisor settings.
    pub supervisor: Settings,
    /// `workers = 0`: serve in this process, without a master.
    pub single_process: bool,
    /// Log verbosity, file and buffer.
    pub log: LogSettings,
    /// Application settings.
    pub app: app::Config,
    /// Every setting with its display value and source, in declaration order.
    pub report: Vec<(&'static str, String, Source)>,
}

impl Config {
    /// `key=value (source)` pairs for the startup log line.
    pub fn summary(&self) -> String {
        self.report.iter().map(|(k, v, s)| format!("{k}={v} ({s})")).collect::<Vec<_>>().join(", ")
    }

    /// The settings a reload cannot apply whose value differs in `newer`.
    pub fn needs_restart(&self, newer: &Config) -> Vec<&'static str> {
        let shown = |c: &Config, key: &str| c.report.iter().find(|r| r.0 == key).map(|r| r.1.clone());
        (SETTINGS.iter().filter(|s| s.on_hup == OnHup::NeedsRestart))
            .filter(|s| shown(self, s.key) != shown(newer, s.key))
            .map(|s| s.key)
            .collect()
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
    /// Flag values by setting key.
    flags: BTreeMap<&'static str, String>,
}

impl Layers {
    /// Reads the config file (if any) and the environment through `env`; `flags` maps setting keys to the
    /// values given on the command line.
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
        let env = SETTINGS.iter().flat_map(|s| s.env.iter()).filter_map(|&name| env(name).map(|v| (name, v))).collect();
        Ok(Layers { file, path: path.map(Path::to_path_buf), env, flags })
    }

    /// The highest-precedence raw value of a setting, if any layer sets it.
    fn raw(&self, s: &Setting) -> Option<(Raw, Source)> {
        if let (Some(flag), Some(v)) = (s.flag, self.flags.get(s.key)) {
            return Some((Raw::Text(v.clone()), Source::Flag(flag)));
        }
        for &name in s.env {
            if let Some(v) = self.env.get(name) {
                return Some((Raw::Text(v.clone()), Source::Env(name)));
            }
        }
        let path = self.path.clone()?;
        let in_file = |key: &str| {
            let mut node = &self.file;
            let mut parts = key.split('.').peekable();
            while let Some(part) = parts.next() {
                let value = node.get(part)?;
                if parts.peek().is_none() {
                    return Some(value.clone());
                }
                node = value.as_table()?;
            }
            None
        };
        let value = in_file(s.key).or_else(|| s.alias.and_then(|(alias, _)| in_file(alias)))?;
        Some((Raw::Toml(value), Source::File(path)))
    }

    /// Resolves every setting, validates, and builds the configuration: the consumer of each declaration.
    pub fn resolve(&self, cpus: (usize, supervisor::cpus::CpuSource)) -> Result<Config, ConfigError> {
        let mut r = Resolver { layers: self, values: BTreeMap::new() };
        let bind = r.list("bind")?;
        let bind: Vec<SocketAddr> = r.check("bind", bind.iter().map(|s| parse_addr(s)).collect())?;
        if bind.is_empty() {
            return Err(r.error("bind", "at least one address is required"));
        }
        let backlog = r.count("backlog")? as u32;
        let (n, cpu_source) = cpus;
        let workers = match r.opt_count("workers")? {
            Some(workers) => workers as usize,
            None => {
                let workers = n.clamp(2, 4);
                r.show("workers", format!("{workers} [min(4, max(2, {n} CPUs from {}))]", cpu_source.as_str()));
                workers
            }
        };
        let threads = r.count("threads")? as usize;
        let timeout = r.seconds("timeout")?;
        let graceful_timeout = r.seconds("graceful_timeout")?;
        let keepalive = r.seconds("keepalive")?;
        let log_level = r.text("log_level")?.unwrap_or_default();
        let log_level = r.check("log_level", log_level.parse::<LogLevel>())?;
        let boot_timeout = r.seconds("boot_timeout")?;
        let max_requests = r.count("max_requests")?;
        let max_requests_jitter = r.count("max_requests_jitter")?;
        let limits = supervisor::Limits {
            request_line: r.count("limit_request_line")? as usize,
            request_fields: r.count("limit_request_fields")? as usize,
            request_field_size: r.count("limit_request_field_size")? as usize,
        };
        let worker_connections = r.count("max_connections")? as usize;
        let pidfile = r.text("pidfile")?.map(PathBuf::from);
        let log_file = r.text("log_file")?.map(PathBuf::from);
        let log_buffer_bytes = r.count("log_buffer_bytes")? as usize;

        let env = r.text("app.env")?.unwrap_or_default();
        let env = r.check("app.env", env.parse::<app::AppEnv>().map_err(|e| e.message))?;
        let request_timeout = match r.opt_seconds("app.request_timeout")? {
            Some(t) => t,
            None => {
                r.show("app.request_timeout", secs(&timeout));
                timeout
            }
        };
        let max_body_bytes = r.count("app.max_body_bytes")? as usize;
        let access_log = r.boolean("app.access_log")?;
        let forwarded_allow_ips = r.list("app.forwarded_allow_ips")?;
        let forwarded_allow_ips =
            r.check("app.forwarded_allow_ips", app::TrustedProxies::parse(&forwarded_allow_ips))?;
        let cors_origins = r.list("app.cors_origins")?;
        let cors_allow_credentials = r.boolean("app.cors_allow_credentials")?;
        let debug_routes = r.boolean("app.debug_routes")?;
        let debug_fail_boot_file = r.text("app.debug_fail_boot_file")?.map(PathBuf::from);
        let debug_boot_delay = r.seconds("app.debug_boot_delay")?;
        let url = r.text("database.url")?.map(app::DatabaseUrl::new);
        let pool_size = r.count("database.pool_size")? as usize;
        let connect_timeout = r.seconds("database.connect_timeout")?;
        let wait_timeout = r.seconds("database.wait_timeout")?;
        let create_timeout = r.seconds("database.create_timeout")?;
        let readiness_timeout = r.seconds_or(
            "database.readiness_timeout",
            app::DatabaseConfig::default_readiness_timeout(request_timeout),
            "min(1s, app.request_timeout / 2)",
        )?;
        let max_connections = r.opt_count("database.max_connections")?.map(|n| n as u32);
        // Unset, each time limit follows the request deadline (and stays below it).
        let statement_timeout = r.seconds_or(
            "database.statement_timeout",
            app::DatabaseConfig::default_statement_timeout(request_timeout),
            "min(5s, app.request_timeout / 2)",
        )?;
        let lock_timeout = r.seconds_or(
            "database.lock_timeout",
            app::DatabaseConfig::default_lock_timeout(request_timeout),
            "min(2s, app.request_timeout / 4)",
        )?;
        let idle_in_transaction_session_timeout = r.seconds_or(
            "database.idle_in_transaction_session_timeout",
            app::DatabaseConfig::default_idle_in_transaction_session_timeout(request_timeout),
            "app.request_timeout",
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
                statement_timeout,
                lock_timeout,
                idle_in_transaction_session_timeout,
            },
        };
        app.validate().map_err(|e| r.error(e.key, &e.message))?;
        let supervisor = Settings {
            bind,
            backlog,
            workers: workers.max(1),
            threads,
            timeout,
            graceful_timeout,
            keepalive,
            boot_timeout,
            max_requests,
            max_requests_jitter,
            pidfile,
            limits,
            max_connections: worker_connections,
        };
        let report = SETTINGS
            .iter()
            .map(|s| {
                let (shown, source) = r.values.remove(s.key).unwrap_or_else(|| panic!("`{}` is never read", s.key));
                (s.key, shown, source)
            })
            .collect();
        let log = LogSettings { level: log_level, file: log_file, buffer_bytes: log_buffer_bytes };
        Ok(Config { supervisor, single_process: workers == 0, log, app, report })
    }
}

/// A value parsed by its setting's kind.
enum Parsed {
    Seconds(Duration),
    Count(u64),
    Bool(bool),
    Text(String),
    List(Vec<String>),
}

struct Resolver<'a> {
    layers: &'a Layers,
    /// Display value and source of every setting read so far.
    values: BTreeMap<&'static str, (String, Source)>,
}

impl Resolver<'_> {
    /// The value of `key` from the highest layer that sets it, or its default, parsed and checked against
    /// its declaration; `None` when it is unset and has no literal default.
    fn get(&mut self, key: &'static str) -> Result<Option<Parsed>, ConfigError> {
        let s = setting_of(key);
        let (parsed, source) = match self.layers.raw(s) {
            Some((raw, source)) => match parse(s.kind, &raw) {
                Ok(v) => (Some(v), source),
                Err(message) => return Err(ConfigError { key: key.into(), source, message }),
            },
            None => match s.default {
                DefaultValue::Value(literal) => {
                    let value = format!("v = {literal}").parse::<toml::Table>().expect("a TOML default")["v"].clone();
                    let parsed = parse(s.kind, &Raw::Toml(value)).expect("a default within its bounds");
                    (Some(parsed), Source::Default)
                }
                DefaultValue::Unset(_) | DefaultValue::Computed(..) => (None, Source::Default),
            },
        };
        let shown = match &parsed {
            None => "none".to_string(),
            Some(Parsed::Seconds(d)) => secs(d),
            Some(Parsed::Count(n)) => n.to_string(),
            Some(Parsed::Bool(b)) => b.to_string(),
            Some(Parsed::Text(t)) if s.secret => app::DatabaseUrl::new(t.clone()).redacted(),
            Some(Parsed::Text(t)) => t.clone(),
            Some(Parsed::List(items)) => format!("[{}]", items.join(", ")),
        };
        self.values.insert(key, (shown, source));
        Ok(parsed)
    }

    fn opt_seconds(&mut self, key: &'static str) -> Result<Option<Duration>, ConfigError> {
        Ok(match self.get(key)? {
            Some(Parsed::Seconds(d)) => Some(d),
            _ => None,
        })
    }

    /// The value of `key`, or `default` when no layer sets it (shown with `how` it was computed).
    fn seconds_or(&mut self, key: &'static str, default: Duration, how: &str) -> Result<Duration, ConfigError> {
        Ok(match self.opt_seconds(key)? {
            Some(value) => value,
            None => {
                self.show(key, format!("{} [{how}]", secs(&default)));
                default
            }
        })
    }

    fn seconds(&mut self, key: &'static str) -> Result<Duration, ConfigError> {
        Ok(self.opt_seconds(key)?.unwrap_or_else(|| panic!("`{key}` has a default")))
    }

    fn opt_count(&mut self, key: &'static str) -> Result<Option<u64>, ConfigError> {
        Ok(match self.get(key)? {
            Some(Parsed::Count(n)) => Some(n),
            _ => None,
        })
    }

    fn count(&mut self, key: &'static str) -> Result<u64, ConfigError> {
        Ok(self.opt_count(key)?.unwrap_or_else(|| panic!("`{key}` has a default")))
    }

    fn boolean(&mut self, key: &'static str) -> Result<bool, ConfigError> {
        Ok(matches!(self.get(key)?, Some(Parsed::Bool(true))))
    }

    fn text(&mut self, key: &'static str) -> Result<Option<String>, ConfigError> {
        Ok(match self.get(key)? {
            Some(Parsed::Text(t)) => Some(t),
            _ => None,
        })
    }

    fn list(&mut self, key: &'static str) -> Result<Vec<String>, ConfigError> {
        Ok(match self.get(key)? {
            Some(Parsed::List(items)) => items,
            _ => Vec::new(),
        })
    }

    /// Replaces how a read value is displayed (a computed default says how it was computed).
    fn show(&mut self, key: &'static str, shown: String) {
        if let Some(entry) = self.values.get_mut(key) {
            entry.0 = shown;
        }
    }

    /// A further check of a read value, its error naming the key and where the value came from.
    fn check<T>(&self, key: &str, result: Result<T, String>) -> Result<T, ConfigError> {
        result.map_err(|message| self.error(key, &message))
    }

    /// An error about an already resolved key.
    fn error(&self, key: &str, message: &str) -> ConfigError {
        let source = self.values.get(key).map_or(Source::Default, |v| v.1.clone());
        ConfigError { key: key.into(), source, message: message.into() }
    }
}

/// Rejects keys the server does not know, naming the first one.
fn check_known_keys(table: &toml::Table, source: &Source) -> Result<(), ConfigError> {
    let unknown = |key: String| ConfigError { key, source: source.clone(), message: "unknown key".into() };
    for (name, value) in table {
        match value.as_table() {
            Some(sub) if SECTIONS.contains(&name.as_str()) => {
                for inner in sub.keys() {
                    let key = format!("{name}.{inner}");
                    if !SETTINGS.iter().any(|s| s.key == key) {
                        return Err(unknown(key));
                    }
                }
            }
            _ if SETTINGS.iter().any(|s| s.key == name.as_str() || s.alias.is_some_and(|a| a.0 == name.as_str())) => {}
            _ => return Err(unknown(name.clone())),
        }
    }
    // A key and its alias both set: which one wins would be a guess.
    for s in SETTINGS {
        if let Some((alias, _)) = s.alias.filter(|(alias, _)| table.contains_key(s.key) && table.contains_key(*alias)) {
            return Err(ConfigError {
                key: s.key.into(),
                source: source.clone(),
                message: format!("set twice, also as `{alias}`: keep one"),
            });
        }
    }
    Ok(())
}

/// Parses a raw value as `kind`, within its bounds.
fn parse(kind: Kind, raw: &Raw) -> Result<Parsed, String> {
    Ok(match kind {
        Kind::Seconds { min, max } => Parsed::Seconds(seconds(raw, min, max)?),
        Kind::Count { min, max } => Parsed::Count(int(raw, min, max)?),
        Kind::Bool => Parsed::Bool(boolean(raw)?),
        Kind::Text => Parsed::Text(text(raw)?),
        Kind::List => Parsed::List(list(raw)?),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)], flags: &[(&'static str, &str)]) -> Result<Config, ConfigError> {
        let dir = test_support::TempDir::new("config-test");
        let path = dir.join("supervisor.toml");
        std::fs::write(&path, toml).unwrap();
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let flags = flags.iter().map(|(k, v)| (*k, v.to_string())).collect();
        Layers::new(Some(&path), |k| env.get(k).cloned(), flags)
            .and_then(|l| l.resolve((2, supervisor::cpus::CpuSource::Affinity)))
    }

    fn source_of(c: &Config, key: &str) -> Source {
        c.report.iter().find(|r| r.0 == key).unwrap().2.clone()
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let c = load(
            "timeout = 10\nkeepalive = 7\nthreads = 2\n",
            &[("GUNICORN_TIMEOUT", "20"), ("SUPERVISOR_KEEPALIVE", "8")],
            &[("timeout", "30")],
        )
        .unwrap();
        assert_eq!(c.supervisor.timeout, Duration::from_secs(30));
        assert_eq!(source_of(&c, "timeout"), Source::Flag("timeout"));
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
        let e = load("", &[], &[("workers", "500")]).unwrap_err();
        assert_eq!((e.key.as_str(), e.source), ("workers", Source::Flag("workers")));
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
            ("SUPERVISOR_LOG_BUFFER_BYTES", "100", "log_buffer_bytes"),
        ];
        for (var, value, key) in cases {
            let e = load("", &[(var, value)], &[]).unwrap_err();
            assert_eq!((e.key.as_str(), &e.source), (*key, &Source::Env(var)), "{var}={value}");
        }
    }

    #[test]
    fn forwarded_allow_ips_takes_ranges_and_refuses_bad_ones_by_name() {
        let c = load("[app]\nforwarded_allow_ips = [\"10.0.0.0/8\"]\n", &[], &[]).unwrap();
        assert!(c.app.forwarded_allow_ips.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.app.forwarded_allow_ips.contains("11.0.0.1".parse().unwrap()));
        let c = load("", &[("FORWARDED_ALLOW_IPS", "*")], &[]).unwrap();
        assert_eq!(c.app.forwarded_allow_ips, app::TrustedProxies::Any);
        let e = load("", &[("FORWARDED_ALLOW_IPS", "10.0.0.0/33")], &[]).unwrap_err();
        assert_eq!((e.key.as_str(), e.source), ("app.forwarded_allow_ips", Source::Env("FORWARDED_ALLOW_IPS")));
    }

    #[test]
    fn gunicorn_names_are_aliases() {
        let c = load("worker_connections = 50\n", &[], &[]).unwrap();
        assert_eq!(c.supervisor.max_connections, 50);
        assert!(matches!(source_of(&c, "max_connections"), Source::File(_)));
        let c = load("worker_connections = 50\n", &[("SUPERVISOR_MAX_CONNECTIONS", "60")], &[]).unwrap();
        assert_eq!(c.supervisor.max_connections, 60);
        let e = load("max_connections = 40\nworker_connections = 50\n", &[], &[]).unwrap_err();
        assert_eq!(e.key, "max_connections");
        assert!(e.message.contains("worker_connections"), "{}", e.message);
        assert!(matches!(e.source, Source::File(_)));
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
    fn declared_defaults_are_the_typed_defaults() {
        let c = load("", &[], &[]).unwrap();
        assert_eq!(c.supervisor, Settings::default());
        assert_eq!(c.app, app::Config::default());
        assert_eq!(c.log, LogSettings::default());
        assert_eq!(
            c.report.iter().map(|r| r.0).collect::<Vec<_>>(),
            SETTINGS.iter().map(|s| s.key).collect::<Vec<_>>()
        );
    }

    #[test]
    fn every_key_the_app_names_is_declared() {
        for key in app::keys::ALL {
            setting_of(key);
        }
    }

    #[test]
    fn a_reload_names_the_changed_settings_that_need_a_restart() {
        let before = load("timeout = 10\nlog_level = \"info\"\n", &[], &[]).unwrap();
        let after = load("timeout = 20\nlog_level = \"debug\"\npidfile = \"/tmp/x.pid\"\n", &[], &[]).unwrap();
        assert_eq!(before.needs_restart(&after), ["log_level", "pidfile"]);
        assert!(before.needs_restart(&before).is_empty());
    }

    #[test]
    fn request_timeout_defaults_to_timeout() {
        let c = load("timeout = 12\n", &[], &[]).unwrap();
        assert_eq!(c.app.request_timeout, Duration::from_secs(12));
    }

    #[test]
    fn database_time_limits_follow_a_short_request_deadline_unless_set() {
        let ms = Duration::from_millis;
        let c = load("", &[("APP_REQUEST_TIMEOUT", "2")], &[]).unwrap();
        let db = &c.app.database;
        assert_eq!(
            (db.statement_timeout, db.lock_timeout, db.idle_in_transaction_session_timeout),
            (ms(1000), ms(500), ms(2000))
        );
        assert!(
            c.report.iter().any(|r| r.0 == "database.lock_timeout" && r.1 == "0.5s [min(2s, app.request_timeout / 4)]")
        );
        let c = load("[database]\nstatement_timeout = 0\nlock_timeout = 1.5\n", &[("APP_REQUEST_TIMEOUT", "2")], &[])
            .unwrap();
        assert_eq!((c.app.database.statement_timeout, c.app.database.lock_timeout), (Duration::ZERO, ms(1500)));
        assert!(matches!(source_of(&c, "database.lock_timeout"), Source::File(_)));
    }

    #[test]
    fn a_time_limit_at_or_past_the_request_deadline_is_refused_by_name() {
        let e = load("", &[("APP_REQUEST_TIMEOUT", "2"), ("DATABASE_STATEMENT_TIMEOUT", "5")], &[]).unwrap_err();
        assert_eq!(
            (e.key.as_str(), &e.source),
            ("database.statement_timeout", &Source::Env("DATABASE_STATEMENT_TIMEOUT"))
        );
        assert!(e.message.contains("app.request_timeout"), "{e}");
        let e = load("[app]\nrequest_timeout = 3\n[database]\nlock_timeout = 3\n", &[], &[]).unwrap_err();
        assert_eq!(e.key, "database.lock_timeout");
        let e = load("", &[("DATABASE_IDLE_IN_TRANSACTION_SESSION_TIMEOUT", "0.0001")], &[]).unwrap_err();
        assert_eq!(e.key, "database.idle_in_transaction_session_timeout");
        let e = load("", &[("DATABASE_LOCK_TIMEOUT", "-1")], &[]).unwrap_err();
        assert_eq!(e.key, "database.lock_timeout");
    }
}
