//! The supervisor's settings, already resolved and validated by the caller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the master and its workers need to know. Built by the binary from flags, environment and
/// the config file; the supervisor itself reads only the service manager's variables (`LISTEN_*`,
/// `NOTIFY_SOCKET`, `WATCHDOG_*`).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Addresses to listen on. IPv6 addresses are bound IPv6-only so that `0.0.0.0:P` and `[::]:P` can coexist.
    pub bind: Vec<SocketAddr>,
    /// Listen backlog (capped by the kernel's `net.core.somaxconn`).
    pub backlog: u32,
    /// Number of workers to keep running.
    pub workers: usize,
    /// Tokio worker threads per worker; 1 selects the current-thread runtime.
    pub threads: usize,
    /// A ready worker whose heartbeat is older than this is killed and replaced.
    pub timeout: Duration,
    /// How long a graceful stop waits for in-flight requests before killing stragglers.
    pub graceful_timeout: Duration,
    /// Idle keep-alive timeout. Zero disables keep-alive (every response carries `Connection: close`).
    pub keepalive: Duration,
    /// A worker that is not ready this long after it was forked is killed.
    pub boot_timeout: Duration,
    /// Recycle a worker after this many requests (0 = never).
    pub max_requests: u64,
    /// Random extra requests in `[0, max_requests_jitter]` added per worker, so workers do not recycle together.
    pub max_requests_jitter: u64,
    /// Write the master's pid here while it runs.
    pub pidfile: Option<PathBuf>,
    /// Request head limits (gunicorn's `limit_request_*`).
    pub limits: Limits,
    /// Connections a worker holds at most (gunicorn's `worker_connections`); at the cap it stops accepting
    /// until one closes, leaving new connections to its siblings and the kernel's backlog.
    pub max_connections: usize,
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
    /// timeout (the wait restarts when a response goes out); with keep-alive off a fixed bound still
    /// protects against clients that never finish their headers.
    pub fn header_timeout(&self) -> Duration {
        if self.keepalive.is_zero() { Duration::from_secs(5) } else { self.keepalive }
    }

    /// How often a worker stamps its heartbeat: a quarter of `timeout`, at most once a second.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.timeout / 4).min(Duration::from_secs(1))
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
            pidfile: None,
            limits: Limits::default(),
            max_connections: 1000,
        }
    }
}
