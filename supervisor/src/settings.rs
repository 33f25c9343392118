//! The supervisor's settings: the typed [`Settings`] the master and its workers run with, and the
//! declaration of each field's setting (key, environment variables, flag, bounds, default, doc, HUP),
//! which [`Settings::resolve`] reads through the layers.
//!
//! Adding a setting: its declaration below, a line in [`SETTINGS`], and the field it fills in
//! [`Settings::resolve`]. A binary's tests regenerate its sample config and docs tables from the
//! declarations (see [`crate::server_settings`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{ConfigError, Invalid, Resolver, Setting, Spec};
use crate::cpus::CpuSource;
use crate::logging::{LogLevel, LogSettings};

/// Everything the master and its workers need to know. Resolved from flags, environment and the config
/// file by [`Settings::resolve`] (or built by hand); the supervisor itself reads only the service
/// manager's variables (`LISTEN_*`, `NOTIFY_SOCKET`, `WATCHDOG_*`).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Addresses to listen on. IPv6 addresses are bound IPv6-only so that `0.0.0.0:P` and `[::]:P` can coexist.
    pub bind: Vec<SocketAddr>,
    /// Listen backlog (capped by the kernel's `net.core.somaxconn`).
    pub backlog: u32,
    /// Number of workers to keep running; 0 serves in a single process without a master.
    pub workers: usize,
    /// Tokio worker threads per worker; 1 selects the current-thread runtime.
    pub threads: usize,
    /// A ready worker whose heartbeat is older than this is killed and replaced.
    pub timeout: Duration,
    /// How long a graceful stop waits for in-flight requests, streams and upgraded connections before
    /// closing them.
    pub graceful_timeout: Duration,
    /// Idle keep-alive timeout. Zero disables keep-alive (every response carries `Connection: close`).
    pub keepalive: Duration,
    /// A worker that is not ready this long after it was forked is killed.
    pub boot_timeout: Duration,
    /// Recycle a worker after this many requests (0 = never).
    pub max_requests: u64,
    /// Random extra requests in `[0, max_requests_jitter]` added per worker, so workers do not recycle together.
    pub max_requests_jitter: u64,
    /// Recycle a worker whose memory (PSS, else RSS) stays above this many bytes (0 = never).
    pub max_worker_memory: u64,
    /// Recycle a worker after it has lived this long (zero = never).
    pub max_worker_lifetime: Duration,
    /// Random extra lifetime in `[0, max_worker_lifetime_jitter]` per worker.
    pub max_worker_lifetime_jitter: Duration,
    /// Write the master's pid here while it runs.
    pub pidfile: Option<PathBuf>,
    /// Where the master serves its control socket (`supervisor ctl`); `None`: no control socket. Resolved,
    /// its default follows `pidfile` and `bind`; built by hand, it is what it is set to.
    pub control_socket: Option<PathBuf>,
    /// Request head limits (gunicorn's `limit_request_*`).
    pub limits: Limits,
    /// Connections a worker holds at most (gunicorn's `worker_connections`), upgraded ones included; at the
    /// cap it stops accepting until one closes, leaving new connections to its siblings and the kernel's
    /// backlog.
    pub max_connections: usize,
    /// Log verbosity, file and buffer.
    pub log: LogSettings,
}

/// Limits on a request's head. Zero means the parser's own maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the request line (method, target, version).
    pub request_line: usize,
    /// Header fields.
    pub request_fields: usize,
    /// Bytes of one header field (name and value).
    pub request_field_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { request_line: 4094, request_fields: 100, request_field_size: 8190 }
    }
}

impl Limits {
    /// The whole head hyper buffers at most before refusing it (431, connection closed): room for the request
    /// line and four fields at their limits. This is what bounds a connection's read buffer while its head is
    /// incomplete, so `max_connections` times this bounds a worker's memory for slow clients. `None` (either
    /// limit off): hyper's own maximum, about 400 KiB.
    pub fn head_bytes(&self) -> Option<usize> {
        if self.request_line == 0 || self.request_field_size == 0 {
            return None;
        }
        Some((self.request_line + 4 * (self.request_field_size + 4)).max(8192))
    }
}

impl Settings {
    /// Upper bound for `workers`; the scoreboard has room for two full generations of this many.
    pub const MAX_WORKERS: usize = 128;

    /// How long a connection may wait for a request's headers. With keep-alive on this is the keep-alive
    /// timeout (the wait restarts when a response has been written); with keep-alive off a fixed bound still
    /// protects against clients that never finish their headers.
    pub fn header_timeout(&self) -> Duration {
        if self.keepalive.is_zero() { Duration::from_secs(5) } else { self.keepalive }
    }

    /// How often a worker stamps its heartbeat: a quarter of `timeout`, at most once a second.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.timeout / 4).min(Duration::from_secs(1))
    }

    /// Reads every setting declared in [`SETTINGS`] through `r`. `cpus` is the usable CPU count and where
    /// it came from (see [`crate::cpus::usable_cpus`]), for the default worker count.
    pub fn resolve(r: &mut Resolver<'_>, cpus: (usize, CpuSource)) -> Result<Settings, ConfigError> {
        let bind = resolve_bind(r)?;
        let (n, cpu_source) = cpus;
        let default_workers = n.clamp(2, 4);
        let how = format!("min(4, max(2, {n} CPUs from {}))", cpu_source.as_str());
        let mut settings = Settings {
            bind,
            backlog: r.get(&BACKLOG)? as u32,
            workers: r.or_with(&WORKERS, default_workers as u64, &how)? as usize,
            threads: r.get(&THREADS)? as usize,
            timeout: r.get(&TIMEOUT)?,
            graceful_timeout: r.get(&GRACEFUL_TIMEOUT)?,
            keepalive: r.get(&KEEPALIVE)?,
            boot_timeout: r.get(&BOOT_TIMEOUT)?,
            max_requests: r.get(&MAX_REQUESTS)?,
            max_requests_jitter: r.get(&MAX_REQUESTS_JITTER)?,
            max_worker_memory: r.get(&MAX_WORKER_MEMORY)? << 20,
            max_worker_lifetime: r.parse(&MAX_WORKER_LIFETIME, |d| {
                if d.is_zero() || d >= Duration::from_secs(1) {
                    Ok(d)
                } else {
                    Err("must be 0 (never) or at least 1 second")
                }
            })?,
            max_worker_lifetime_jitter: r.get(&MAX_WORKER_LIFETIME_JITTER)?,
            limits: Limits {
                request_line: r.get(&LIMIT_REQUEST_LINE)? as usize,
                request_fields: r.get(&LIMIT_REQUEST_FIELDS)? as usize,
                request_field_size: r.get(&LIMIT_REQUEST_FIELD_SIZE)? as usize,
            },
            max_connections: r.get(&MAX_CONNECTIONS)? as usize,
            pidfile: r.opt(&PIDFILE)?.map(PathBuf::from),
            control_socket: None, // below: its default follows `bind` and `pidfile`
            log: LogSettings {
                level: r.parse(&LOG_LEVEL, |s| s.parse::<LogLevel>())?,
                file: r.opt(&LOG_FILE)?.map(PathBuf::from),
                buffer_bytes: r.get(&LOG_BUFFER_BYTES)? as usize,
            },
        };
        settings.control_socket = resolve_control_socket(r, &settings.bind, settings.pidfile.as_deref())?;
        Ok(settings)
    }

    /// Reads only what locates the control socket (`control_socket`, and the `pidfile` and `bind` its
    /// default follows), for `supervisor ctl`: a file with other mistakes in it still tells `ctl` where the
    /// master listens, and the master, reloading it, names the mistake.
    pub(crate) fn resolve_control_socket(r: &mut Resolver<'_>) -> Result<Option<PathBuf>, ConfigError> {
        let bind = resolve_bind(r)?;
        let pidfile = r.opt(&PIDFILE)?.map(PathBuf::from);
        resolve_control_socket(r, &bind, pidfile.as_deref())
    }
}

fn resolve_bind(r: &mut Resolver<'_>) -> Result<Vec<SocketAddr>, ConfigError> {
    let bind = r.parse(&BIND, |list| list.iter().map(|s| parse_addr(s)).collect::<Result<Vec<_>, _>>())?;
    if bind.is_empty() {
        return Err(r.refuse(Invalid::new(&BIND, "at least one address is required")));
    }
    Ok(bind)
}

/// The longest control socket path: a unix socket address holds 107 bytes, and the new master of a binary
/// upgrade binds `<path>.2` until it takes over.
const CONTROL_SOCKET_MAX: usize = 100;

/// The control socket: as set (`off` or empty: none), else beside the pidfile (its name with `.ctl`), else
/// `/tmp/supervisor-PORT.ctl` with the first bind address's port. Derived from the configuration alone,
/// never from the environment of the moment (`XDG_RUNTIME_DIR` differs between a service and an operator's
/// shell), so that `ctl` finds it with the same settings; per port, so that servers on one host do not
/// collide; under /tmp, which every deployment here can write (a tmpfs in the containers).
fn resolve_control_socket(
    r: &mut Resolver<'_>,
    bind: &[SocketAddr],
    pidfile: Option<&Path>,
) -> Result<Option<PathBuf>, ConfigError> {
    let (default, how) = match pidfile {
        Some(pidfile) => {
            let beside = pidfile.with_extension("ctl");
            let path = if beside == pidfile { PathBuf::from(format!("{}.ctl", pidfile.display())) } else { beside };
            (path, "beside the pidfile")
        }
        None => (PathBuf::from(format!("/tmp/supervisor-{}.ctl", bind[0].port())), "the port of the first bind"),
    };
    let path = r.or_with(&CONTROL_SOCKET, default.display().to_string(), how)?;
    match path.as_str() {
        "" | "off" => Ok(None),
        path if path.len() > CONTROL_SOCKET_MAX => Err(r.refuse(Invalid::new(
            &CONTROL_SOCKET,
            format!(
                "{path} is longer than {CONTROL_SOCKET_MAX} bytes, too long for a unix socket: choose a shorter path"
            ),
        ))),
        path => Ok(Some(PathBuf::from(path))),
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bind: vec![SocketAddr::from(([0, 0, 0, 0], 8000))],
            backlog: 2048,
            workers: 2,
            threads: 1,
            timeout: Duration::from_secs(60),
            graceful_timeout: Duration::from_secs(30),
            keepalive: Duration::from_secs(5),
            boot_timeout: Duration::from_secs(30),
            max_requests: 0,
            max_requests_jitter: 0,
            max_worker_memory: 0,
            max_worker_lifetime: Duration::ZERO,
            max_worker_lifetime_jitter: Duration::ZERO,
            pidfile: None,
            control_socket: Some(PathBuf::from("/tmp/supervisor-8000.ctl")),
            limits: Limits::default(),
            max_connections: 1000,
            log: LogSettings::default(),
        }
    }
}

/// `HOST:PORT`, with IPv6 hosts in brackets; `:PORT` alone means all IPv4 interfaces.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_string() };
    full.parse().map_err(|_| format!("{s:?} is not HOST:PORT (IPv6 as [::1]:8000)"))
}

const DAY: f64 = 86_400.0;
/// Upper bound of request counts (`max_requests`, its jitter).
const MAX_COUNT: u64 = 1_000_000_000;

/// Every setting of the supervisor, in the order `check` prints them and the sample file lists them.
pub const SETTINGS: &[&Spec] = &[
    BIND.spec(),
    BACKLOG.spec(),
    WORKERS.spec(),
    THREADS.spec(),
    TIMEOUT.spec(),
    GRACEFUL_TIMEOUT.spec(),
    KEEPALIVE.spec(),
    LOG_LEVEL.spec(),
    BOOT_TIMEOUT.spec(),
    MAX_REQUESTS.spec(),
    MAX_REQUESTS_JITTER.spec(),
    MAX_WORKER_MEMORY.spec(),
    MAX_WORKER_LIFETIME.spec(),
    MAX_WORKER_LIFETIME_JITTER.spec(),
    LIMIT_REQUEST_LINE.spec(),
    LIMIT_REQUEST_FIELDS.spec(),
    LIMIT_REQUEST_FIELD_SIZE.spec(),
    MAX_CONNECTIONS.spec(),
    PIDFILE.spec(),
    CONTROL_SOCKET.spec(),
    LOG_FILE.spec(),
    LOG_BUFFER_BYTES.spec(),
];

const BIND: Setting<Vec<String>> =
    Setting::list("bind").env(&["SUPERVISOR_BIND"]).flag("bind").short('b').default(r#"["0.0.0.0:8000"]"#).doc(
        "Addresses to listen on, HOST:PORT; IPv6 as \"[::]:8000\" (bound IPv6-only, so both families can be listed).",
    );

const BACKLOG: Setting<u64> = Setting::count("backlog", 1, 65_535)
    .env(&["SUPERVISOR_BACKLOG"])
    .flag("backlog")
    .default("2048")
    .doc("Listen backlog (the kernel caps it at net.core.somaxconn); applies to newly bound addresses.");

const WORKERS: Setting<u64> = Setting::count("workers", 0, Settings::MAX_WORKERS as u64)
    .env(&["WEB_CONCURRENCY"])
    .flag("workers")
    .short('w')
    .computed("min(4, max(2, CPUs))", "2")
    .doc(
        "Worker processes. CPUs honours the cgroup CPU quota and the affinity mask. 0 serves in a single process \
         without a master (debugging, benchmarks).",
    );

const THREADS: Setting<u64> = Setting::count("threads", 1, 64)
    .env(&["SUPERVISOR_THREADS"])
    .flag("threads")
    .default("1")
    .doc("Runtime threads per worker; 1 uses a current-thread runtime.");

const TIMEOUT: Setting<Duration> = Setting::seconds("timeout", 1.0, DAY)
    .env(&["SUPERVISOR_TIMEOUT", "GUNICORN_TIMEOUT"])
    .flag("timeout")
    .short('t')
    .default("60")
    .doc(
        "A worker whose heartbeat is silent this long (blocked runtime, deadlock, CPU spin) is killed and \
         replaced, after one more heartbeat interval (timeout/4, at most 1 s): never before it has been stuck \
         this long. Also the default per-request deadline of the app (answered 504).",
    );

const GRACEFUL_TIMEOUT: Setting<Duration> = Setting::seconds("graceful_timeout", 0.0, DAY)
    .env(&["SUPERVISOR_GRACEFUL_TIMEOUT", "GUNICORN_GRACEFUL_TIMEOUT"])
    .flag("graceful-timeout")
    .default("30")
    .doc(
        "On SIGTERM, and when a worker is retired, in-flight requests, streamed responses and upgraded \
         connections (WebSocket) get this long; what is still open then is closed, and stragglers are killed \
         and named in the log. Keep a container's stop grace period longer.",
    );

const KEEPALIVE: Setting<Duration> = Setting::seconds("keepalive", 0.0, 3600.0)
    .env(&["SUPERVISOR_KEEPALIVE", "GUNICORN_KEEPALIVE"])
    .flag("keepalive")
    .default("5")
    .doc(
        "Idle keep-alive connections are closed after this long, and so is a connection that has not sent a \
         whole request head within it of opening or of its last response (5 s when keep-alive is off); 0 \
         disables keep-alive. Keep it LONGER than the idle timeout of the proxy in front (nginx upstream \
         keepalive_timeout), or proxied POSTs can fail with 502.",
    );

const LOG_LEVEL: Setting<String> = Setting::text("log_level")
    .env(&["SUPERVISOR_LOG_LEVEL", "GUNICORN_LOG_LEVEL"])
    .flag("log-level")
    .default(r#""info""#)
    .doc("trace, debug, info, warning, error (critical = error).")
    .restart();

const BOOT_TIMEOUT: Setting<Duration> = Setting::seconds("boot_timeout", 1.0, DAY)
    .env(&["SUPERVISOR_BOOT_TIMEOUT"])
    .flag("boot-timeout")
    .default("30")
    .doc(
        "A new worker not ready within this long is killed; a reload whose new workers miss it is aborted, and at \
         startup forks that keep failing are given up after it.",
    );

const MAX_REQUESTS: Setting<u64> = Setting::count("max_requests", 0, MAX_COUNT)
    .env(&["SUPERVISOR_MAX_REQUESTS"])
    .flag("max-requests")
    .default("0")
    .doc(
        "Recycle a worker after about this many requests (0 = never): it is replaced once a new worker is ready, \
         one at a time. Only to contain a leak.",
    );

const MAX_REQUESTS_JITTER: Setting<u64> = Setting::count("max_requests_jitter", 0, MAX_COUNT)
    .env(&["SUPERVISOR_MAX_REQUESTS_JITTER"])
    .flag("max-requests-jitter")
    .default("0")
    .doc("A random 0..=jitter added to max_requests per worker, so workers do not recycle together.");

const MAX_WORKER_MEMORY: Setting<u64> = Setting::count("max_worker_memory", 0, 1 << 20)
    .env(&["SUPERVISOR_MAX_WORKER_MEMORY"])
    .flag("max-worker-memory")
    .default("0")
    .doc(
        "Recycle a worker whose memory stays above this many MiB (0 = never): the master samples each worker's \
         proportional set size (PSS, its share of the pages it shares with its siblings; RSS where PSS cannot be \
         read) once a second, and after 3 samples in a row over the limit replaces it, one at a time, the \
         replacement ready before the old one drains. Set it below what would get the worker OOM-killed.",
    );

const MAX_WORKER_LIFETIME: Setting<Duration> = Setting::seconds("max_worker_lifetime", 0.0, 365.0 * DAY)
    .env(&["SUPERVISOR_MAX_WORKER_LIFETIME"])
    .flag("max-worker-lifetime")
    .default("0")
    .doc(
        "Recycle a worker after it has lived this many seconds (0 = never; at least 1 otherwise), plus its share \
         of max_worker_lifetime_jitter: replaced one at a time, the replacement ready before the old one drains.",
    );

const MAX_WORKER_LIFETIME_JITTER: Setting<Duration> = Setting::seconds("max_worker_lifetime_jitter", 0.0, 365.0 * DAY)
    .env(&["SUPERVISOR_MAX_WORKER_LIFETIME_JITTER"])
    .flag("max-worker-lifetime-jitter")
    .default("0")
    .doc("A random 0..=jitter seconds added to max_worker_lifetime per worker, so workers do not recycle together.");

const LIMIT_REQUEST_LINE: Setting<u64> = Setting::count("limit_request_line", 0, 8190)
    .env(&["SUPERVISOR_LIMIT_REQUEST_LINE"])
    .flag("limit-request-line")
    .default("4094")
    .doc(
        "Longest request line (method, target, version) in bytes; longer ones are answered 414. 0: only the \
         parser's own maximum.",
    );

const LIMIT_REQUEST_FIELDS: Setting<u64> = Setting::count("limit_request_fields", 1, 32_768)
    .env(&["SUPERVISOR_LIMIT_REQUEST_FIELDS"])
    .flag("limit-request-fields")
    .default("100")
    .doc(
        "Most header fields in a request; more are answered 431 (past 100, the parser's own cap, by the parser: \
         431 without a body, connection closed).",
    );

const LIMIT_REQUEST_FIELD_SIZE: Setting<u64> = Setting::count("limit_request_field_size", 0, 65_536)
    .env(&["SUPERVISOR_LIMIT_REQUEST_FIELD_SIZE"])
    .flag("limit-request-field-size")
    .default("8190")
    .doc(
        "Longest header field (name and value) in bytes; longer ones are answered 431. A whole head larger than \
         limit_request_line + 4 x this is refused by the parser itself (431, connection closed). 0: only the \
         parser's own maximum (about 400 KiB for the whole head).",
    );

const MAX_CONNECTIONS: Setting<u64> = Setting::count("max_connections", 1, 100_000)
    .env(&["SUPERVISOR_MAX_CONNECTIONS"])
    .flag("max-connections")
    .alias("worker_connections", "worker-connections")
    .default("1000")
    .doc(
        "Connections a worker holds at most, upgraded ones (WebSocket) included. At the cap it stops accepting \
         until one closes (never closing one it accepted), so new connections go to its siblings or wait in the \
         backlog. With the head limits this bounds a worker's memory for slow clients.",
    );

const PIDFILE: Setting<String> = Setting::text("pidfile")
    .env(&["SUPERVISOR_PIDFILE"])
    .flag("pidfile")
    .unset(r#""/run/supervisor.pid""#)
    .doc("Write the master's pid here while it runs (not needed in a container).")
    .restart();

const CONTROL_SOCKET: Setting<String> = Setting::text("control_socket")
    .env(&["SUPERVISOR_CONTROL_SOCKET"])
    .flag("control-socket")
    .computed(
        "the pidfile's name with .ctl, else /tmp/supervisor-PORT.ctl (PORT: the first bind's)",
        r#""/run/supervisor.ctl""#,
    )
    .doc(
        "The master's control socket, for `supervisor ctl` (status, reload --wait, scale, recycle, stop, ...): a unix \
         socket of mode 0600 that only the server's user and root may use. \"off\" turns it off. `ctl` finds it \
         through the same settings, so give `ctl` the server's --config, environment and flags.",
    )
    .restart();

const LOG_FILE: Setting<String> = Setting::text("log_file")
    .env(&["SUPERVISOR_LOG_FILE"])
    .flag("log-file")
    .unset(r#""/var/log/supervisor/server.log""#)
    .doc("Log to this file instead of standard output; SIGUSR1 reopens it (for logrotate).")
    .restart();

const LOG_BUFFER_BYTES: Setting<u64> = Setting::count("log_buffer_bytes", 4096, 1 << 26)
    .env(&["SUPERVISOR_LOG_BUFFER_BYTES"])
    .flag("log-buffer-bytes")
    .default("1048576")
    .doc(
        "Bytes of log lines each process (master, every worker) may hold unwritten while its output is slower \
         than its logging (a stalled log shipper, a slow disk); lines beyond are dropped and counted \
         (log_lines_dropped_total), never waited for. Larger rides out longer stalls, but costs up to twice this \
         much memory per process, and a worker killed during a stall loses up to this much.",
    )
    .restart();
