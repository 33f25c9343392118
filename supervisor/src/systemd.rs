//! systemd integration: socket activation (`LISTEN_FDS`) and readiness notification (`NOTIFY_SOCKET`,
//! `WATCHDOG_USEC`). Everything is optional: without the variables these functions do nothing.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::listen::Listeners;
use crate::sys;

/// Listeners passed by systemd socket activation, if `LISTEN_PID` names this process. The `LISTEN_*`
/// variables are removed so that no child mistakes them for its own.
pub fn activated_listeners() -> io::Result<Option<Listeners>> {
    let (Ok(pid), Ok(fds)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    sys::remove_env(&["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"])?;
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let n: i32 = fds.trim().parse().map_err(|_| io::Error::other(format!("LISTEN_FDS={fds:?} is not a number")))?;
    inherit((3..3 + n).collect()).map(Some)
}

/// Takes ownership of listening sockets by fd number.
pub fn inherit(fds: Vec<i32>) -> io::Result<Listeners> {
    fds.into_iter()
        .map(|fd| {
            let listener = sys::inherited_listener(fd)?;
            Ok((listener.local_addr()?, listener))
        })
        .collect()
}

/// Sends state changes to the service manager over `NOTIFY_SOCKET`.
pub struct Notifier {
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// A notifier if `NOTIFY_SOCKET` is set (a path, or `@name` for the abstract namespace).
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var("NOTIFY_SOCKET").ok()?;
        let addr = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
        } else {
            std::os::unix::net::SocketAddr::from_pathname(&path).ok()?
        };
        let socket = UnixDatagram::unbound().ok()?;
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .filter(|_| std::env::var("WATCHDOG_PID").map_or(true, |p| p.trim() == std::process::id().to_string()))
            .and_then(|us| us.trim().parse::<u64>().ok())
            .filter(|&us| us > 0)
            .map(|us| Duration::from_micros(us / 2));
        Some(Notifier { socket, addr, watchdog })
    }

    /// How often to send `WATCHDOG=1` (half the manager's watchdog timeout), if it asked for it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one notification (`READY=1`, `STATUS=...`, ...; several separated by newlines).
    pub fn notify(&self, message: &str) {
        if let Err(error) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            tracing::warn!(error = %error, "could not notify the service manager");
        }
    }
}
