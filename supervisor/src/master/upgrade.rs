//! Binary upgrade (USR2): the running master starts the binary on disk as a new master that inherits the
//! listening sockets. The new master writes `<pidfile>.2` and binds `<control_socket>.2`, boots its own
//! workers, and once all are ready it renames both into place and sends the old master SIGTERM, which drains
//! and exits as on any graceful stop. If the new master exits first, the old master reaps it, logs why, and
//! keeps serving. The old master tells that the new one took over by the files it renamed, and reports both
//! outcomes to the state (`ctl upgrade --wait`).

use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};

use super::state::ExitHow;
use crate::listen::Listeners;
use crate::{sys, systemd};

/// Fd numbers of the inherited listeners, comma-separated.
const FDS_VAR: &str = "SUPERVISOR_UPGRADE_FDS";
/// Pid of the master being replaced.
const FROM_VAR: &str = "SUPERVISOR_UPGRADE_FROM";

/// In a new master started by USR2: the old master's pid and the listeners it handed over. The
/// variables are removed so that no later child sees them.
pub fn predecessor() -> io::Result<Option<(i32, Listeners)>> {
    let (Ok(fds), Ok(from)) = (std::env::var(FDS_VAR), std::env::var(FROM_VAR)) else { return Ok(None) };
    sys::remove_env(&[FDS_VAR, FROM_VAR])?;
    let from: i32 = from.trim().parse().map_err(|_| io::Error::other(format!("{FROM_VAR}={from:?} is not a pid")))?;
    let fds = fds
        .split(',')
        .map(|fd| {
            fd.trim().parse::<i32>().map_err(|_| io::Error::other(format!("{FDS_VAR}={fds:?} is not a list of fds")))
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(Some((from, systemd::inherit(fds)?)))
}

/// Where a new master writes its pid (and binds its control socket) until it takes over.
pub fn pending_path(pidfile: &Path) -> PathBuf {
    let mut name = pidfile.as_os_str().to_owned();
    name.push(".2");
    PathBuf::from(name)
}

/// The upgrade state of this master.
pub struct Upgrade {
    /// As a new master: the master to stop once our workers are ready.
    predecessor: Option<i32>,
    /// As an old master: the new master we started, until it exits or stops us.
    successor: Option<i32>,
    /// As an old master: the new master was seen taking over.
    taken_over: bool,
    pidfile: Option<PathBuf>,
    /// The binary and arguments to start, captured at startup: the file on disk may be replaced later.
    exe: io::Result<PathBuf>,
    args: Vec<OsString>,
}

impl Upgrade {
    pub fn new(predecessor: Option<i32>, pidfile: Option<PathBuf>) -> Upgrade {
        Upgrade {
            predecessor,
            successor: None,
            taken_over: false,
            pidfile,
            exe: std::env::current_exe(),
            args: std::env::args_os().skip(1).collect(),
        }
    }

    /// Whether this is the new master of an upgrade that has not taken over yet.
    pub fn replacing(&self) -> bool {
        self.predecessor.is_some()
    }

    /// As an old master: the new master's pid, once it took over (the pidfile names it, or `socket_taken`:
    /// the control socket at its path is another's); reported once.
    pub fn took_over(&mut self, socket_taken: impl FnOnce() -> bool) -> Option<i32> {
        let pid = self.successor.filter(|_| !self.taken_over)?;
        let pidfile = || self.pidfile.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
        if pidfile().is_some_and(|s| s.trim() == pid.to_string()) || socket_taken() {
            self.taken_over = true;
            return Some(pid);
        }
        None
    }

    /// As a new master whose workers are all ready: take over the pidfile and stop the old master.
    pub fn take_over(&mut self) {
        let Some(old) = self.predecessor.take() else { return };
        if let Some(pidfile) = &self.pidfile
            && let Err(error) = std::fs::rename(pending_path(pidfile), pidfile)
        {
            tracing::error!(error = %error, pidfile = %pidfile.display(), "binary upgrade: cannot take over the pidfile");
        }
        tracing::info!(old_master = old, "binary upgrade: workers ready, stopping the previous master");
        if let Err(error) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), nix::sys::signal::Signal::SIGTERM) {
            tracing::warn!(old_master = old, error = %error, "binary upgrade: could not signal the previous master");
        }
    }

    /// As the running master (USR2): start the binary on disk with our listeners. Returns the new master's
    /// pid (also when one is already starting), or why there is none.
    pub fn start(&mut self, listeners: &[(SocketAddr, TcpListener)]) -> Result<i32, String> {
        if let Some(pid) = self.successor {
            tracing::warn!(new_master = pid, "binary upgrade already in progress: ignored");
            return Ok(pid);
        }
        if self.predecessor.is_some() {
            tracing::warn!("this master is still taking over from its predecessor: upgrade ignored");
            return Err("this master is still taking over from its predecessor".into());
        }
        let exe = match &self.exe {
            Ok(exe) => exe.clone(),
            Err(error) => {
                tracing::error!(error = %error, "binary upgrade failed: the binary's path is unknown");
                return Err(format!("the binary's path is unknown: {error}"));
            }
        };
        let fds: Vec<String> = listeners.iter().map(|(_, l)| l.as_raw_fd().to_string()).collect();
        // The listeners must survive exec in the new master, and only for that one spawn.
        let inheritable = |on: bool| {
            listeners.iter().try_for_each(|(_, l)| {
                let flags = if on { FdFlag::empty() } else { FdFlag::FD_CLOEXEC };
                fcntl(l.as_fd(), FcntlArg::F_SETFD(flags)).map(drop)
            })
        };
        let spawned = inheritable(true).map_err(io::Error::from).and_then(|()| {
            std::process::Command::new(&exe)
                .args(&self.args)
                .env(FDS_VAR, fds.join(","))
                .env(FROM_VAR, std::process::id().to_string())
                .spawn()
        });
        if let Err(error) = inheritable(false) {
            tracing::error!(error = %error, "could not restore close-on-exec on the listeners");
        }
        match spawned {
            Ok(child) => {
                tracing::info!(new_master = child.id(), binary = %exe.display(), "binary upgrade: new master started");
                self.successor = Some(child.id() as i32);
                self.taken_over = false;
                Ok(child.id() as i32)
            }
            Err(error) => {
                tracing::error!(error = %error, binary = %exe.display(), "binary upgrade failed: cannot start the new binary; still serving");
                Err(format!("cannot start {}: {error}", exe.display()))
            }
        }
    }

    /// If a reaped child was the new master (which then failed): logs it, and says why.
    pub fn reaped(&mut self, pid: i32, how: ExitHow) -> Option<String> {
        if self.successor != Some(pid) {
            return None;
        }
        self.successor = None;
        let (code, signal) = match how {
            ExitHow::Code(c) => (Some(c), None),
            ExitHow::Signal(s) => (None, Some(s)),
        };
        tracing::error!(new_master = pid, code, signal, "binary upgrade failed: the new master exited; still serving");
        let meaning = match how {
            ExitHow::Code(1) => " (a runtime failure: see its log)",
            ExitHow::Code(2) => " (bad configuration: see its log)",
            ExitHow::Code(3) => " (no worker could boot: see its log)",
            _ => "",
        };
        Some(format!("the new master {pid} exited ({how}){meaning}; still serving"))
    }
}
