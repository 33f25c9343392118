//! A prefork process supervisor for HTTP services: the master process, its workers, and the worker runtime
//! that serves a hyper [`Service`] on the inherited listeners.
//!
//! This crate knows nothing of routes, JSON or databases. All `unsafe` code lives in the private `sys`
//! module; everything else is safe Rust.
#![deny(unsafe_code)]

mod balance;
pub mod cpus;
pub mod exit;
mod listen;
pub mod logging;
mod master;
mod scoreboard;
mod service;
mod settings;
pub mod stats;
mod sys;
mod systemd;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use master::{Reloader, run};
pub use service::{Body, BootError, BoxFuture, Call, Label, Refusal, Request, Response, Service, WorkerApp};
pub use settings::{Limits, Settings};
pub use worker::serve_in_process;

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
            MasterError::Runtime(e) => write!(f, "cannot build the runtime: {e}"),
            MasterError::Inherit(e) => write!(f, "cannot use the inherited listeners: {e}"),
        }
    }
}

/// The cause is part of the `Display` text, so it is not repeated as a `source`.
impl std::error::Error for MasterError {}

#[cfg(fuzzing)]
pub mod fuzzing;
