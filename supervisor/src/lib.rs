//! A prefork application server for Rust HTTP services, in the manner of gunicorn: a master process binds
//! the listening sockets and forks workers; each worker builds your service on its own tokio runtime and
//! serves HTTP/1.1 on the shared sockets. The master keeps the workers alive (heartbeats, boot and request
//! timeouts, crash-loop backoff, recycling after `max_requests`), reloads them without dropping a request
//! on SIGHUP, and stops them gracefully on SIGTERM.
//!
//! Your `main` hands the supervisor a boot function and lets [`Server::main`] do the rest: the command line
//! (`serve`, `check`, `healthcheck`, `--config FILE`, a flag per setting), the settings from the file, the
//! environment (gunicorn's names included) and the flags, JSON logging, signals, exit codes.
//!
//! ```no_run
//! use std::convert::Infallible;
//!
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper::{Request, Response};
//!
//! async fn hello(_: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
//!     Ok(Response::new(Full::new(Bytes::from("hello\n"))))
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     // Runs in every worker, after fork: build clients, pools and state here.
//!     supervisor::Server::new(|| async { Ok(supervisor::from_hyper(hyper::service::service_fn(hello))) })
//!         .version(env!("CARGO_PKG_VERSION"))
//!         .main()
//! }
//! ```
//!
//! Any [`tower_service::Service`] over [`Request`]s whose responses have a body of [`bytes::Bytes`] can be
//! served: an axum `Router`, a tower middleware stack, a hyper `service_fn` through [`from_hyper`].
//! Responses may stream, request bodies stream in, and HTTP/1.1 upgrades (WebSocket) work. An application
//! with settings of its own declares them like the supervisor's ([`config`]), and gets them in its boot
//! function ([`Server::with_settings`]).
//!
//! The crate knows nothing of routes, JSON or databases. All `unsafe` code (fork, shared memory, signal
//! dispositions) lives in one private module; everything else is safe Rust.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod balance;
pub mod config;
pub mod cpus;
mod ctl;
pub mod exit;
mod healthcheck;
mod host;
mod listen;
pub mod logging;
mod master;
mod scoreboard;
mod server;
pub mod server_settings;
mod service;
mod settings;
pub mod stats;
mod sys;
mod systemd;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use server::Server;
pub use server_settings::{AppSettings, Resolved};
pub use service::{
    BootError, BoxError, BoxFuture, Connections, FromHyper, HttpService, Label, PeerAddr, PerConnection, Refusal,
    Request, WithPeer, from_hyper, per_connection,
};
pub use settings::{Limits, Settings};
pub use worker::draining;

/// docs/library.md, whose `main.rs` is compiled as a doctest so that the page cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../docs/library.md")]
mod library_md {}

/// `s` cut to at most `limit` bytes on a character boundary, and how many bytes were left out.
pub(crate) fn cut_at(s: &str, limit: usize) -> (&str, usize) {
    if s.len() <= limit {
        return (s, 0);
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], s.len() - end)
}

/// Why the master could not start.
#[derive(Debug)]
pub enum MasterError {
    /// An address could not be bound.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The shared scoreboard could not be mapped.
    Scoreboard(std::io::Error),
    /// Signal handlers or the wake-up pipe could not be set up.
    Signals(std::io::Error),
    /// The pidfile could not be written.
    Pidfile {
        /// Its path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The control socket could not be served (another server answers at its path, for one).
    ControlSocket {
        /// Its path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The single-process runtime could not be built.
    Runtime(std::io::Error),
    /// Listeners handed over by the service manager or a previous master are unusable.
    Inherit(std::io::Error),
}

impl std::fmt::Display for MasterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MasterError::Bind { addr, source } => write!(f, "cannot bind {addr}: {source}"),
            MasterError::Scoreboard(e) => write!(f, "cannot map the scoreboard: {e}"),
            MasterError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            MasterError::Pidfile { path, source } => write!(f, "cannot write pidfile {}: {source}", path.display()),
            MasterError::ControlSocket { path, source } => {
                write!(f, "cannot serve the control socket {}: {source}", path.display())
            }
            MasterError::Runtime(e) => write!(f, "cannot build the runtime: {e}"),
            MasterError::Inherit(e) => write!(f, "cannot use the inherited listeners: {e}"),
        }
    }
}

/// The cause is part of the `Display` text, so it is not repeated as a `source`.
impl std::error::Error for MasterError {}

#[cfg(fuzzing)]
pub mod fuzzing;
