//! A throwaway PostgreSQL server for tests, started from the local server binaries.
//!
//! - Binaries: [`crate::provision`] finds them (`$PG_BIN`, else `/usr/lib/postgresql/15/bin`, else the newest
//!   `/usr/lib/postgresql/*/bin`) or installs them; missing binaries stop the test with what to install,
//!   never skip it.
//! - PostgreSQL refuses to run as root, so when the tests run as root every server command runs as the
//!   `postgres` user, in a temporary directory owned by it.
//! - The server listens on 127.0.0.1 on a free port, with its unix socket in the temporary directory, and
//!   `fsync=off`. [`PgServer::stop`] / [`PgServer::start`] take it down and up again on the same port.
//! - Drop stops the server (by pid: SIGINT, then SIGKILL after a deadline) and removes the directory.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::process::{is_root, stop};
use crate::{TempDir, free_port, poll, provision};

/// How long a server may take to accept connections after it was started.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGINT before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Polling interval while waiting for a state change (readiness, exit).
const POLL: Duration = Duration::from_millis(25);

/// What to switch on besides the defaults.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// Preload `pg_stat_statements` and create the extension, to count executed statements.
    pub stat_statements: bool,
    /// `log_statement=all`: every statement appears in [`PgServer::log`].
    pub log_statements: bool,
    /// Require this password (SCRAM) for TCP logins as `postgres`; the unix socket stays trusted.
    pub password: Option<String>,
}

/// A running (or stopped) throwaway server.
pub struct PgServer {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    /// (uid, gid) of the `postgres` user when running as root.
    owner: Option<(u32, u32)>,
    child: Option<Child>,
    options: PgOptions,
}

impl PgServer {
    /// A fresh cluster with default options, started.
    pub fn new() -> PgServer {
        PgServer::with_options(PgOptions::default())
    }

    /// A fresh cluster, started.
    pub fn with_options(options: PgOptions) -> PgServer {
        let bin = provision::tools().pg_bin.clone();
        let owner = if is_root() { Some(postgres_user()) } else { None };
        let dir = make_temp_dir(owner);
        let mut server = PgServer { bin, dir, port: free_port(), owner, child: None, options };
        server.initdb();
        server.start();
        if server.options.stat_statements {
            server.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
        }
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's URL over TCP (with the password when one is required).
    pub fn url(&self) -> String {
        match &self.options.password {
            Some(password) => format!("postgres://postgres:{password}@127.0.0.1:{}/postgres", self.port),
            None => format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
        }
    }

    /// The directory holding the unix socket (and the cluster and its log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Everything the server wrote to stdout and stderr so far, across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().expect("polling the postgres process").is_none(),
            None => false,
        }
    }

    /// Starts the server (again) on the same port and waits until it accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "PgServer::start: the server is already running");
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("opening postgres.log");
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=100"]);
        if self.options.stat_statements {
            cmd.args(["-c", "shared_preload_libraries=pg_stat_statements", "-c", "pg_stat_statements.track=all"]);
        }
        if self.options.log_statements {
            cmd.args(["-c", "log_statement=all"]);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("cloning the log handle")).stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}/postgres: {e}", self.bin.display()));
        self.child = Some(child);
        self.wait_until_ready();
    }

    /// Stops the server (fast shutdown) and waits until it has exited; the port and data stay.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        stop(&mut child, libc::SIGINT, STOP_DEADLINE);
    }

    /// Runs SQL as the superuser over the unix socket; panics (with psql's output) if it fails. Returns the
    /// unaligned, tuples-only output, trimmed.
    pub fn psql(&self, sql: &str) -> String {
        let output = self.try_psql(sql);
        if !output.status.success() {
            panic!(
                "psql failed for {sql:?}:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Like [`PgServer::psql`], returning the raw output instead of panicking.
    pub fn try_psql(&self, sql: &str) -> Output {
        self.command("psql")
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres"])
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}/psql: {e}", self.bin.display()))
    }

    /// Forgets the statement counts of `pg_stat_statements` (needs [`PgOptions::stat_statements`]).
    pub fn reset_statement_stats(&self) {
        self.psql("SELECT pg_stat_statements_reset()");
    }

    /// How many times statements whose text matches the SQL `LIKE` pattern ran since the last reset
    /// (needs [`PgOptions::stat_statements`]). Statistics reach the view when a statement finishes.
    pub fn statement_calls(&self, like: &str) -> i64 {
        let escaped = like.replace('\'', "''");
        let sql = format!(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE '{escaped}' \
             AND query NOT LIKE '%pg_stat_statements%'"
        );
        self.psql(&sql).parse().expect("a count")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(self.dir.path()).env("LC_ALL", "C").env_remove("PGPASSWORD").env_remove("PGHOST");
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn initdb(&self) {
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(self.dir.join("data")).args(["-U", "postgres", "-N", "-E", "UTF8", "--locale=C"]);
        match &self.options.password {
            None => {
                cmd.arg("--auth=trust");
            }
            Some(password) => {
                let pwfile = self.dir.join("pwfile");
                fs::write(&pwfile, password).expect("writing the password file");
                if let Some((uid, gid)) = self.owner {
                    std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).expect("chown pwfile");
                }
                cmd.args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                    .arg(format!("--pwfile={}", pwfile.display()));
            }
        }
        let output = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run initdb: {e}"));
        if !output.status.success() {
            panic!(
                "initdb failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    fn wait_until_ready(&mut self) {
        let ready = poll(START_DEADLINE, POLL, || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("polling postgres")) {
                self.child = None;
                panic!("postgres exited during startup ({status}); its log:\n{}", self.log());
            }
            let ready = self
                .command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-t", "1", "-q"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("cannot run {}/pg_isready: {e}", self.bin.display()));
            ready.success().then_some(())
        });
        if ready.is_none() {
            panic!("postgres did not accept connections within {START_DEADLINE:?}; its log:\n{}", self.log());
        }
    }
}

impl Default for PgServer {
    fn default() -> Self {
        PgServer::new()
    }
}

impl Drop for PgServer {
    /// Stops the server; the directory goes with the [`TempDir`] field, after this.
    fn drop(&mut self) {
        self.stop();
    }
}

/// uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_user() -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").expect("reading /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 3 && fields[0] == "postgres").then(|| (fields[2].parse().ok(), fields[3].parse().ok()))
        })
        .and_then(|(uid, gid)| Some((uid?, gid?)))
        .unwrap_or_else(|| {
            panic!(
                "running as root, but there is no `postgres` user to run the test server as (PostgreSQL refuses \
                 to run as root); install the postgresql package, which creates it"
            )
        })
}

/// A directory only the server's user can enter (initdb insists), owned by `postgres` when running as root.
fn make_temp_dir(owner: Option<(u32, u32)>) -> TempDir {
    let dir = TempDir::new("pg");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod the temp dir");
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the temp dir to postgres");
    }
    dir
}

/// A TCP server that accepts connections and never sends a byte: a database host that swallows packets.
pub struct Blackhole {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Blackhole {
    pub fn new() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the blackhole");
        let addr = listener.local_addr().expect("blackhole address");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                // Read nothing, answer nothing; keep the connection open until dropped.
                if let Ok(stream) = stream {
                    held.push(stream);
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Blackhole { addr, stop, accepted, thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// A database URL pointing at the blackhole.
    pub fn url(&self) -> String {
        format!("postgres://postgres:secret@127.0.0.1:{}/postgres", self.addr.port())
    }
}

impl Default for Blackhole {
    fn default() -> Self {
        Blackhole::new()
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
