//! The control socket: a unix stream socket the master serves from its own loop, for `supervisor ctl`.
//!
//! The protocol is one line of JSON each way. The client sends one request, a JSON object ended by a newline
//! (or by the end of its stream), at most [`MAX_REQUEST`] bytes:
//!
//! ```text
//! {"command":"status"}
//! {"command":"reload","wait":true,"timeout":60}       also "upgrade", "recycle"
//! {"command":"stop","fast":false,"wait":true,"timeout":60}
//! {"command":"scale","workers":4}
//! {"command":"reopen-logs"}
//! ```
//!
//! `wait` asks for the answer once the outcome is known (at most `timeout` seconds, default and cap 24 h).
//! The master answers with one JSON object on one line and closes the connection: `{"ok":true,"status":{..}}`
//! for `status` (fields in docs/operations.md), `{"ok":true,"message":"..."}` (a completed upgrade adds
//! `"new_master":PID`), or `{"ok":false,"error":"..."}`.
//!
//! Mechanism only: what a command does, and when a waiting client is answered, is the state's decision
//! (`state::control`). The master never waits for a client: every socket is non-blocking and polled with the
//! signal pipe, a request is bounded in size, clients in number ([`MAX_CLIENTS`]; more are answered "busy"),
//! and each has [`IO_DEADLINE`] to send its request and to take its answer. The socket file is created with
//! mode 0600, and each peer's credentials (SO_PEERCRED) are checked: only the server's own user and root
//! are served; anyone else is refused and logged.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::poll::{PollFd, PollFlags};
use serde_json::{Value, json};

use super::state::{ClientId, Command, Event, MAX_WAIT, Nanos, Reply};

const MS: Nanos = 1_000_000;
/// The longest request accepted, in bytes.
pub const MAX_REQUEST: usize = 4096;
/// Clients served at once; beyond, a client is answered "busy" and closed.
pub const MAX_CLIENTS: usize = 32;
/// How long a client has to send its request, and to take its answer.
pub const IO_DEADLINE: Nanos = 3_000 * MS;
/// Connections taken off the backlog per loop turn; the rest wait for the next turn.
const ACCEPTS_PER_TURN: usize = 64;

/// The master's control socket and its clients.
pub struct ControlSocket {
    listener: UnixListener,
    /// Where the socket file is now: the configured path, or `<path>.2` while this master is the new one of
    /// a binary upgrade that has not taken over yet.
    path: PathBuf,
    /// The configured path.
    target: PathBuf,
    /// Device and inode of the socket file this master bound: a file at `path` with others is not ours.
    id: (u64, u64),
    /// The process that bound it, the only one that removes it (a forked worker drops its copy).
    owner: u32,
    uid: u32,
    clients: BTreeMap<ClientId, Client>,
    next_id: ClientId,
}

struct Client {
    stream: UnixStream,
    peer_pid: i32,
    peer_uid: u32,
    stage: Stage,
    /// While reading or writing: when the client is dropped.
    deadline: Nanos,
    /// The request read so far, then the answer to write.
    buf: Vec<u8>,
    written: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Sending its request.
    Reading,
    /// Its command is with the state, which answers now or once the outcome is known.
    Waiting,
    /// Taking its answer.
    Writing,
}

/// Where the new master of a binary upgrade binds its control socket until it takes over.
pub fn pending_path(path: &Path) -> PathBuf {
    super::upgrade::pending_path(path)
}

impl ControlSocket {
    /// Binds the control socket at `target`, or at its pending path (`pending`: this master is the new one
    /// of a binary upgrade, and the old one still serves `target`). A stale socket (left by a master that
    /// was killed: nothing answers) is replaced; a live one is never taken: this fails instead.
    pub fn open(target: &Path, pending: bool) -> std::io::Result<ControlSocket> {
        let path = if pending { pending_path(target) } else { target.to_path_buf() };
        match UnixStream::connect(&path) {
            Ok(_) => {
                return Err(std::io::Error::new(
                    ErrorKind::AddrInUse,
                    "a running server answers there; it is not taken from it (stop that server, or give this \
                     one another control_socket or pidfile)",
                ));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                if !std::fs::symlink_metadata(&path)?.file_type().is_socket() {
                    return Err(std::io::Error::other("the path exists and is not a socket"));
                }
                std::fs::remove_file(&path)?;
                tracing::warn!(path = %path.display(), "replaced a stale control socket: its server is gone");
            }
            Err(e) => return Err(e),
        }
        // Mode 0600 from its creation: bind(2) applies the umask. The master is single-threaded, so nothing
        // else creates a file meanwhile.
        let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(&path);
        nix::sys::stat::umask(previous);
        let listener = bound?;
        listener.set_nonblocking(true)?;
        let meta = std::fs::symlink_metadata(&path)?;
        tracing::info!(path = %path.display(), "control socket ready");
        Ok(ControlSocket {
            listener,
            path,
            target: target.to_path_buf(),
            id: (meta.dev(), meta.ino()),
            owner: std::process::id(),
            uid: nix::unistd::geteuid().as_raw(),
            clients: BTreeMap::new(),
            next_id: 1,
        })
    }

    /// The configured path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Whether another socket file took this master's place at the configured path (a binary upgrade's new
    /// master, once it took over).
    pub fn replaced(&self) -> bool {
        std::fs::symlink_metadata(&self.target).is_ok_and(|m| (m.dev(), m.ino()) != self.id)
    }

    /// As the new master of a binary upgrade: moves the socket to the configured path, in place of the old
    /// master's (which keeps answering the clients it has).
    pub fn take_over(&mut self) {
        if self.path == self.target {
            return;
        }
        match std::fs::rename(&self.path, &self.target) {
            Ok(()) => self.path = self.target.clone(),
            Err(error) => tracing::error!(
                error = %error,
                path = %self.target.display(),
                "binary upgrade: cannot take over the control socket"
            ),
        }
    }

    /// What to poll: the listener, then each client (reading: readable; writing: writable; waiting: only its
    /// hang-up, which poll always reports). [`ControlSocket::turn`] takes the results in the same order.
    pub fn poll_fds(&self) -> Vec<PollFd<'_>> {
        use std::os::fd::AsFd;
        let mut fds = vec![PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        for client in self.clients.values() {
            let events = match client.stage {
                Stage::Reading => PollFlags::POLLIN,
                Stage::Writing => PollFlags::POLLOUT,
                Stage::Waiting => PollFlags::empty(),
            };
            fds.push(PollFd::new(client.stream.as_fd(), events));
        }
        fds
    }

    /// The earliest client deadline.
    pub fn next_deadline(&self) -> Option<Nanos> {
        self.clients.values().filter(|c| c.stage != Stage::Waiting).map(|c| c.deadline).min()
    }

    /// One loop turn: takes new clients, reads requests, writes answers, drops clients past their
    /// deadline or gone. `revents`: what the last poll reported for [`ControlSocket::poll_fds`] (empty if it
    /// did not poll). Returns the commands for the state, and the waiting clients that hung up.
    pub fn turn(&mut self, revents: &[PollFlags], now: Nanos) -> Vec<Event> {
        let hung_up: Vec<ClientId> = (self.clients.iter().zip(revents.iter().skip(1)))
            .filter(|(_, r)| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
            .map(|((id, _), _)| *id)
            .collect();
        let mut events = Vec::new();
        for id in hung_up {
            if self.clients.remove(&id).is_some_and(|c| c.stage == Stage::Waiting) {
                events.push(Event::ClientGone(id));
            }
        }
        self.accept(now);
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for id in ids {
            let client = self.clients.get_mut(&id).expect("listed");
            match client.stage {
                Stage::Reading => match client.read() {
                    Got::Pending if now >= client.deadline => {
                        self.answer(id, error("timed out waiting for the request"), now);
                        self.flush(id);
                    }
                    Got::Pending => {}
                    Got::Gone => {
                        self.clients.remove(&id);
                    }
                    Got::TooLarge => {
                        self.answer(id, error(&format!("request too large (at most {MAX_REQUEST} bytes)")), now);
                        self.flush(id);
                    }
                    Got::Complete => match parse(&client.buf) {
                        Ok(command) => {
                            let name = name(&command);
                            let (pid, uid) = (client.peer_pid, client.peer_uid);
                            if command == Command::Status {
                                tracing::debug!(command = name, peer_pid = pid, "control command");
                            } else {
                                tracing::info!(command = name, peer_pid = pid, peer_uid = uid, "control command");
                            }
                            client.stage = Stage::Waiting;
                            client.buf.clear();
                            events.push(Event::Control { client: id, command });
                        }
                        Err(why) => {
                            self.answer(id, error(&why), now);
                            self.flush(id);
                        }
                    },
                },
                Stage::Writing if now >= client.deadline => {
                    self.clients.remove(&id);
                }
                Stage::Writing => self.flush(id),
                Stage::Waiting => {}
            }
        }
        events
    }

    /// Accepts what waits in the backlog: the server's user and root are served while there is room; anyone
    /// else is refused and logged, and a client beyond [`MAX_CLIENTS`] is answered "busy".
    fn accept(&mut self, now: Nanos) {
        let mut busy = 0;
        for _ in 0..ACCEPTS_PER_TURN {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::ConnectionAborted => continue,
                Err(error) => {
                    tracing::warn!(error = %error, "control socket: accept failed");
                    break;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
            let (peer_pid, peer_uid) = match peer {
                Ok(c) => (c.pid(), c.uid()),
                Err(error) => {
                    tracing::warn!(error = %error, "control client refused: its credentials cannot be read");
                    continue;
                }
            };
            if peer_uid != self.uid && peer_uid != 0 {
                tracing::warn!(
                    peer_pid,
                    peer_uid,
                    server_uid = self.uid,
                    "control client refused: neither the server's user nor root"
                );
                refuse(stream, "permission denied: only the server's user and root may use the control socket");
                continue;
            }
            if self.clients.len() >= MAX_CLIENTS {
                busy += 1;
                refuse(stream, "busy: too many control clients at once, try again");
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let client = Client {
                stream,
                peer_pid,
                peer_uid,
                stage: Stage::Reading,
                deadline: now.saturating_add(IO_DEADLINE),
                buf: Vec::new(),
                written: 0,
            };
            self.clients.insert(id, client);
        }
        if busy > 0 {
            tracing::warn!(refused = busy, max = MAX_CLIENTS, "control clients refused: too many at once");
        }
    }

    /// Queues an answer to `client` (if it is still there) and tries to write it.
    pub fn reply(&mut self, client: ClientId, answer: Value, now: Nanos) {
        if self.clients.get(&client).is_some_and(|c| c.stage == Stage::Waiting) {
            self.answer(client, answer, now);
            self.flush(client);
        }
    }

    fn answer(&mut self, id: ClientId, answer: Value, now: Nanos) {
        if let Some(client) = self.clients.get_mut(&id) {
            client.buf = format!("{answer}\n").into_bytes();
            client.written = 0;
            client.stage = Stage::Writing;
            client.deadline = now.saturating_add(IO_DEADLINE);
        }
    }

    /// Writes what the socket takes of a client's answer; closes it once written, or if it is gone.
    fn flush(&mut self, id: ClientId) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        loop {
            match client.stream.write(&client.buf[client.written..]) {
                Ok(0) => break,
                Ok(n) => {
                    client.written += n;
                    if client.written == client.buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        self.clients.remove(&id);
    }

    /// Before the master exits: one last attempt to write every pending answer.
    pub fn flush_all(&mut self) {
        let writing: Vec<ClientId> =
            self.clients.iter().filter(|(_, c)| c.stage == Stage::Writing).map(|(id, _)| *id).collect();
        for id in writing {
            self.flush(id);
        }
    }
}

impl Drop for ControlSocket {
    /// Removes the socket file, if it is still this master's: never in a forked worker, nor once a new
    /// master's socket has replaced it.
    fn drop(&mut self) {
        if std::process::id() == self.owner
            && std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What reading a request got to.
enum Got {
    Pending,
    Complete,
    TooLarge,
    Gone,
}

impl Client {
    /// Reads what the client sent; a request ends at a newline or at the end of the client's stream.
    fn read(&mut self) -> Got {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => return Got::Gone,
                Ok(0) => return Got::Complete,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                        self.buf.truncate(end);
                        return Got::Complete;
                    }
                    if self.buf.len() > MAX_REQUEST {
                        return Got::TooLarge;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Got::Pending,
                Err(_) => return Got::Gone,
            }
        }
    }
}

/// Tells a client it is refused, if its socket takes the line at once, and closes it.
fn refuse(mut stream: UnixStream, why: &str) {
    let _ = stream.write(format!("{}\n", error(why)).as_bytes());
}

fn error(why: &str) -> Value {
    json!({ "ok": false, "error": why })
}

impl super::Master {
    /// The server's state for `ctl status`: the master, its reload or upgrade in progress, every worker as
    /// the state and the scoreboard know it, and the restart counters. The field names are stable (see
    /// docs/operations.md).
    pub(super) fn status(&self) -> Value {
        use super::state::{Phase, UpgradeStage};
        let now = crate::sys::monotonic_ns();
        let seconds = |ns: Nanos| (ns / MS) as f64 / 1000.0;
        let workers: Vec<Value> = (self.state.worker_status().into_iter())
            .map(|w| {
                let view = self.board.slot(w.slot).view();
                let (state, reason) = w.life.describe();
                let requests: Vec<Value> = (view.requests_in_flight.iter())
                    .map(|r| {
                        json!({
                            "method": r.method,
                            "path": r.path,
                            "request_id": r.label,
                            "age_seconds": seconds(now.saturating_sub(r.started_ns)),
                        })
                    })
                    .collect();
                json!({
                    "pid": w.pid,
                    "slot": w.slot,
                    "generation": w.generation,
                    "state": state,
                    "reason": reason,
                    "age_seconds": seconds(now.saturating_sub(view.started_ns)),
                    "requests": view.requests,
                    "connections": view.connections,
                    "in_flight": view.in_flight,
                    "requests_in_flight": requests,
                    "memory_bytes": view.memory_bytes,
                })
            })
            .collect();
        let phase = match self.state.phase() {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Quitting { .. } => "quitting",
        };
        let reload = self.state.reload_progress().map(|r| {
            json!({
                "generation": r.generation,
                "stage": if r.loading { "loading_config" } else { "booting" },
                "ready": r.ready,
                "workers": r.wanted,
            })
        });
        let upgrade = self.state.upgrade_stage().map(|u| match u {
            UpgradeStage::Starting => json!({ "stage": "starting", "new_master": null }),
            UpgradeStage::Booting { pid } => json!({ "stage": "booting", "new_master": pid }),
            UpgradeStage::TookOver { pid } => json!({ "stage": "took_over", "new_master": pid }),
        });
        let counters = self.state.counters();
        let restarts: serde_json::Map<String, Value> = (crate::scoreboard::RestartReason::ALL.iter())
            .map(|r| (r.as_str().to_string(), json!(counters.restarts[r.index()])))
            .collect();
        json!({
            "pid": self.pid,
            "version": self.identity.version,
            "uptime_seconds": seconds(now.saturating_sub(self.started)),
            "config_file": self.identity.config.as_ref().map(|p| p.display().to_string()),
            "control_socket": self.control.as_ref().map(|c| c.target().display().to_string()),
            "phase": phase,
            "generation": self.state.generation(),
            "workers_wanted": self.state.desired(),
            "reload": reload,
            "reload_queued": self.state.reload_queued(),
            "upgrade": upgrade,
            "workers": workers,
            "restarts": restarts,
            "reloads": { "ok": counters.reloads_ok, "aborted": counters.reloads_aborted },
        })
    }
}

/// The JSON answer for a reply of the state's (a status is rendered by the caller).
pub fn render(reply: &Reply) -> Value {
    match reply {
        Reply::Done(message) => json!({ "ok": true, "message": message }),
        Reply::Failed(why) => error(why),
        Reply::Upgraded { new_master } => json!({
            "ok": true,
            "message": format!("binary upgrade complete: new master {new_master} took over"),
            "new_master": new_master,
        }),
        Reply::Status => unreachable!("the status is rendered by the executor"),
    }
}

fn name(command: &Command) -> &'static str {
    match command {
        Command::Status => "status",
        Command::Reload { .. } => "reload",
        Command::Upgrade { .. } => "upgrade",
        Command::Scale { .. } => "scale",
        Command::Recycle { .. } => "recycle",
        Command::Stop { .. } => "stop",
        Command::ReopenLogs => "reopen-logs",
    }
}

/// Reads a request (see the module's documentation).
fn parse(request: &[u8]) -> Result<Command, String> {
    let value: Value = serde_json::from_slice(request).map_err(|e| format!("not a JSON request: {e}"))?;
    let Some(command) = value.get("command").and_then(Value::as_str) else {
        return Err("a request is a JSON object with a \"command\"".into());
    };
    let flag = |key: &str| match value.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| format!("\"{key}\" must be true or false")),
    };
    let wait = || -> Result<Option<Nanos>, String> {
        if !flag("wait")? {
            return Ok(None);
        }
        match value.get("timeout") {
            None | Some(Value::Null) => Ok(Some(MAX_WAIT)),
            Some(t) => match t.as_f64() {
                Some(s) if s > 0.0 && s.is_finite() => Ok(Some(((s * 1e9) as Nanos).min(MAX_WAIT))),
                _ => Err("\"timeout\" must be a positive number of seconds".into()),
            },
        }
    };
    Ok(match command {
        "status" => Command::Status,
        "reload" => Command::Reload { wait: wait()? },
        "upgrade" => Command::Upgrade { wait: wait()? },
        "recycle" => Command::Recycle { wait: wait()? },
        "stop" => Command::Stop { fast: flag("fast")?, wait: wait()? },
        "scale" => {
            let workers = value.get("workers").and_then(Value::as_u64);
            let workers = workers.ok_or("\"scale\" needs \"workers\", a whole number")?;
            Command::Scale { workers: usize::try_from(workers).unwrap_or(usize::MAX) }
        }
        "reopen-logs" => Command::ReopenLogs,
        other => {
            return Err(format!(
                "unknown command {other:?} (status, reload, upgrade, scale, recycle, stop, reopen-logs)"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_into_commands_and_anything_else_is_an_error() {
        assert_eq!(parse(br#"{"command":"status"}"#), Ok(Command::Status));
        assert_eq!(parse(br#"{"command":"reload"}"#), Ok(Command::Reload { wait: None }));
        assert_eq!(parse(br#"{"command":"reload","wait":true}"#), Ok(Command::Reload { wait: Some(MAX_WAIT) }));
        assert_eq!(
            parse(br#"{"command":"recycle","wait":true,"timeout":1.5}"#),
            Ok(Command::Recycle { wait: Some(1_500 * MS) })
        );
        assert_eq!(parse(br#"{"command":"stop","fast":true}"#), Ok(Command::Stop { fast: true, wait: None }));
        assert_eq!(parse(br#"{"command":"scale","workers":3}"#), Ok(Command::Scale { workers: 3 }));
        assert_eq!(parse(br#"{"command":"reopen-logs"}"#), Ok(Command::ReopenLogs));
        for bad in [
            &b"garbage"[..],
            b"",
            b"[1,2]",
            br#"{"command":"reboot"}"#,
            br#"{"command":"scale"}"#,
            br#"{"command":"scale","workers":-1}"#,
            br#"{"command":"reload","wait":"yes"}"#,
            br#"{"command":"reload","wait":true,"timeout":0}"#,
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_live_socket_is_not_taken_a_stale_one_is_replaced_and_the_file_goes_with_its_master() {
        let dir = std::env::temp_dir().join(format!("ctl-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.ctl");
        let first = ControlSocket::open(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let error = ControlSocket::open(&path, false).err().expect("a live socket is not taken");
        assert_eq!(error.kind(), ErrorKind::AddrInUse);
        // A socket nobody listens on any more (a killed master's) is stale.
        let stale = UnixListener::bind(dir.join("stale.ctl")).unwrap();
        drop(stale);
        let second = ControlSocket::open(&dir.join("stale.ctl"), false).unwrap();
        assert!(!second.replaced());
        // A regular file is never removed.
        std::fs::write(dir.join("file.ctl"), "x").unwrap();
        assert!(ControlSocket::open(&dir.join("file.ctl"), false).is_err());
        assert!(dir.join("file.ctl").exists());
        drop(first);
        assert!(!path.exists(), "removed with its master");
        drop(second);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
