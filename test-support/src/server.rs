//! The real `supervisor` binary under test: started with a test configuration in a directory of its own, its
//! stdout and stderr captured line by line (JSON log lines parsed on demand), killed with its workers by pid
//! when the handle is dropped.
//!
//! Only the root package's integration tests know where cargo put the binary, so they pass its path in:
//! `Server::start_ready(binary!(), "workers = 3", "", 3)` (see [`crate::binary!`]). Its one-shot commands
//! (`migrate`, `check`) run the same way, in the same clean environment: [`run_binary`], [`migrate`].

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::process::{alive, children, signal};
use crate::{POLL_INTERVAL, TempDir, free_port, poll, wait_for};

/// Seconds of the day from an RFC 3339 timestamp (enough for gaps within one test).
pub fn ts_seconds(ts: &str) -> f64 {
    let time = &ts[11..ts.len() - 1];
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

/// Output captured from a child, line by line, as it arrives.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>, Arc<AtomicBool>);

impl Lines {
    fn capture(self, stream: impl Read + Send + 'static) {
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                self.0.lock().unwrap().push(line);
            }
            self.1.store(true, Ordering::Release);
        });
    }

    /// Whether the stream has ended (every writer closed it) and all of it has been read.
    pub fn ended(&self) -> bool {
        self.1.load(Ordering::Acquire)
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Every line that parses as a JSON object.
    pub fn json(&self) -> Vec<Value> {
        self.all().iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect()
    }
}

/// A JSON log line's field as a string ("" if absent).
pub fn field(line: &Value, name: &str) -> String {
    match &line[name] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A running `supervisor` process.
pub struct Server {
    pub child: Option<Child>,
    pub pid: i32,
    pub port: u16,
    pub dir: TempDir,
    pub config: PathBuf,
    /// The environment it was started with (besides what [`clean_env`] removes).
    pub env: Vec<(String, String)>,
    pub stdout: Lines,
    pub stderr: Lines,
}

/// Removes from `cmd`'s environment every variable the binary reads (supervisor, gunicorn, app, database,
/// CORS, systemd), so that the caller's environment cannot change what a test runs, then sets `env`.
pub fn clean_env(cmd: &mut Command, env: &[(&str, &str)]) {
    for (k, _) in std::env::vars() {
        let ours = ["SUPERVISOR_", "GUNICORN_", "APP_", "DATABASE_", "CORS_", "LISTEN_", "NOTIFY_", "WATCHDOG_"];
        if ours.iter().any(|p| k.starts_with(p)) || k == "WEB_CONCURRENCY" || k == "FORWARDED_ALLOW_IPS" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
}

/// Spawns `cmd`. A binary the test has just copied can be briefly "busy": a concurrent test's fork inherits
/// the copy's write descriptor until its exec. Retry for a moment, as cargo does.
fn spawn(cmd: &mut Command) -> Child {
    let busy = |spawned: &std::io::Result<Child>| {
        spawned.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ExecutableFileBusy)
    };
    let spawned = poll(Duration::from_secs(5), POLL_INTERVAL, || Some(cmd.spawn()).filter(|s| !busy(s)));
    spawned.unwrap_or_else(|| cmd.spawn()).unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()))
}

/// How long a one-shot command of the binary ([`run_binary`], [`migrate`]) may take before the test fails.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// Runs `<bin> <args>` to its end, like [`Server::launch`] in a clean environment plus `env`, and returns its
/// output. Past [`COMMAND_LIMIT`] it is killed by its pid and the test fails with what it printed.
pub fn run_binary(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    clean_env(&mut cmd, env);
    let mut child = spawn(&mut cmd);
    let read_all = |mut stream: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stream.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let finished = poll(COMMAND_LIMIT, POLL_INTERVAL, || child.try_wait().expect("waiting for a child"));
    if finished.is_none() {
        signal(child.id() as i32, libc::SIGKILL);
    }
    let status = finished.unwrap_or_else(|| child.wait().expect("waiting for a killed child"));
    // The pipes close when the process exits: it starts no other process that could hold them.
    let output = Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() };
    if finished.is_none() {
        panic!(
            "{bin} {args:?} did not finish within {COMMAND_LIMIT:?} and was killed; stdout: {} stderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

/// The path of the root package's example `name` (`examples/NAME.rs`), a server like the binary under test.
/// `cargo test` builds the examples beside the test binaries (`target/<profile>/examples/`).
pub fn example_binary(name: &str) -> String {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile = exe.parent().and_then(Path::parent).expect("a test binary lives in target/<profile>/deps/");
    let path = profile.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: `cargo test` builds the examples (or `cargo build --examples`)",
        path.display()
    );
    path.display().to_string()
}

/// Runs `<bin> migrate` against the database at `url` (see [`run_binary`]) and returns its output.
pub fn migrate(bin: &str, url: &str) -> Output {
    run_binary(bin, &["migrate"], &[("DATABASE_URL", url)])
}

/// Base config for tests: loopback port, debug routes, short timeouts.
pub fn base_config(port: u16) -> String {
    config_with(port, "", "")
}

/// The base config with top-level keys replaced by those in `top` (TOML lines) and `app` lines appended
/// to its `[app]` table.
pub fn config_with(port: u16, top: &str, app: &str) -> String {
    let base = format!(
        "bind = [\"127.0.0.1:{port}\"]\nworkers = 2\ntimeout = 10\ngraceful_timeout = 5\nkeepalive = 5\nboot_timeout = 10\n"
    );
    let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_string();
    let overridden: Vec<String> = top.lines().map(key).collect();
    let mut out: String = base.lines().filter(|l| !overridden.contains(&key(l))).map(|l| format!("{l}\n")).collect();
    out.push_str(top);
    out.push_str("\n\n[app]\ndebug_routes = true\n");
    out.push_str(app);
    out.push('\n');
    out
}

impl Server {
    /// Starts `<bin> --config <dir>/supervisor.toml` with `config` (which must bind `port`), extra
    /// environment and arguments. The environment is cleared of supervisor/gunicorn/app variables first.
    pub fn start_with(bin: &str, port: u16, config: &str, env: &[(&str, &str)], args: &[&str]) -> Server {
        Server::launch(port, config, env, |path| {
            let mut cmd = Command::new(bin);
            cmd.arg("--config").arg(path).args(args);
            cmd
        })
    }

    /// Starts the command `make(config_path)` builds (the binary, or a wrapper that execs it) with the
    /// config written to a fresh directory, a clean environment plus `env`, and captured output. Unless the
    /// test places the control socket itself (`control_socket` or `pidfile` in its config or environment),
    /// it goes into that directory (`SUPERVISOR_CONTROL_SOCKET`): a server killed by the test leaves nothing
    /// behind in /tmp.
    pub fn launch(port: u16, config: &str, env: &[(&str, &str)], make: impl FnOnce(&Path) -> Command) -> Server {
        let dir = TempDir::new("srv");
        let path = dir.join("supervisor.toml");
        std::fs::write(&path, config).unwrap();
        let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let placed = |key: &str| config.contains(key) || env.iter().any(|(k, _)| k.to_lowercase().ends_with(key));
        if !placed("control_socket") && !placed("pidfile") {
            env.push(("SUPERVISOR_CONTROL_SOCKET".into(), dir.join("supervisor.ctl").display().to_string()));
        }
        let mut cmd = make(&path);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        clean_env(&mut cmd, &env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>());
        let mut child = spawn(&mut cmd);
        let stdout = Lines::default();
        let stderr = Lines::default();
        stdout.clone().capture(child.stdout.take().unwrap());
        stderr.clone().capture(child.stderr.take().unwrap());
        let pid = child.id() as i32;
        Server { child: Some(child), pid, port, dir, config: path, env, stdout, stderr }
    }

    /// Rewrites the server's config file (a reload reads it again) as [`config_with`] its port, `top` and
    /// `app`.
    pub fn rewrite(&self, top: &str, app: &str) {
        std::fs::write(&self.config, config_with(self.port, top, app)).unwrap();
    }

    /// Runs `<bin> ctl ARGS` with this server's config file and environment (so it finds the same control
    /// socket), like [`run_binary`].
    pub fn ctl(&self, bin: &str, args: &[&str]) -> Output {
        let config = self.config.display().to_string();
        let args: Vec<&str> = ["ctl"].iter().chain(args).chain(&["--config", config.as_str()]).copied().collect();
        run_binary(bin, &args, &self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>())
    }

    /// Starts with the base config, top-level keys in `top` replacing the base's, and `app` lines added to
    /// the `[app]` table.
    pub fn start(bin: &str, top: &str, app: &str) -> Server {
        let port = free_port();
        Server::start_with(bin, port, &config_with(port, top, app), &[], &[])
    }

    /// Starts and waits until `n` workers are ready.
    pub fn start_ready(bin: &str, top: &str, app: &str, n: usize) -> Server {
        let server = Server::start(bin, top, app);
        server.wait_workers_ready(n);
        server
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The base URL of the server, `http://127.0.0.1:<port>`, for the HTTP clients.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Master log lines with this message.
    pub fn master_logs(&self, msg: &str) -> Vec<Value> {
        self.stdout.json().into_iter().filter(|l| field(l, "role") == "master" && field(l, "msg") == msg).collect()
    }

    /// Waits for a log line satisfying `pred` and returns it.
    pub fn wait_log(&self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(timeout, what, || self.stdout.json().into_iter().find(|l| pred(l)))
    }

    /// Panics (with the server's stderr) if the master has exited: a wait for it to do more is pointless.
    fn assert_running(&self) {
        if self.child.is_some() && !alive(self.pid) {
            panic!("the master exited early; stderr: {:?}", self.stderr.all());
        }
    }

    /// Pids of the workers the master logged ready ("worker ready") that are still its children.
    pub fn ready_workers(&self) -> BTreeSet<i32> {
        self.ready_among(&self.workers())
    }

    /// Those of `children` that the master logged ready.
    fn ready_among(&self, children: &[i32]) -> BTreeSet<i32> {
        self.master_logs("worker ready")
            .iter()
            .filter_map(|l| l["worker_pid"].as_i64().map(|p| p as i32))
            .filter(|p| children.contains(p))
            .collect()
    }

    /// Waits until the master has exactly `n` workers and reports all of them ready; returns their pids in
    /// ascending order.
    pub fn wait_workers_ready(&self, n: usize) -> Vec<i32> {
        wait_for(Duration::from_secs(15), &format!("{n} ready workers"), || {
            self.assert_running();
            let children = self.workers();
            let ready = self.ready_among(&children);
            (ready.len() == n && children.len() == n).then(|| ready.into_iter().collect())
        })
    }

    pub fn workers(&self) -> Vec<i32> {
        children(self.pid)
    }

    pub fn signal(&self, sig: i32) {
        signal(self.pid, sig);
    }

    /// Sends `sig` once the master has logged `msg` at least `count` times (orders two signals that the
    /// kernel would otherwise merge).
    pub fn signal_after_log(&self, sig: i32, msg: &str, count: usize) {
        wait_for(Duration::from_secs(5), msg, || (self.master_logs(msg).len() >= count).then_some(()));
        self.signal(sig);
    }

    /// Waits for the master to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("still running");
        let status = wait_for(timeout, "the master to exit", || child.try_wait().unwrap());
        self.child = None;
        // Let the readers take in the last lines. Not required: a process the master started (a binary
        // upgrade) may still hold the pipes open, and then the output keeps arriving after this returns.
        poll(Duration::from_secs(2), POLL_INTERVAL, || (self.stdout.ended() && self.stderr.ended()).then_some(()));
        status
    }

    /// Pid of the worker that logged the access line of the request with this id.
    pub fn pid_of_request(&self, request_id: &str) -> i32 {
        let line = self.wait_log(Duration::from_secs(5), &format!("access log of {request_id}"), |l| {
            field(l, "request_id") == request_id && field(l, "target") == "access"
        });
        line["pid"].as_i64().unwrap() as i32
    }

    pub fn dump_logs(&self) {
        for l in self.stdout.all() {
            eprintln!("stdout: {l}");
        }
        for l in self.stderr.all() {
            eprintln!("stderr: {l}");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        if let Some(mut child) = self.child.take() {
            let workers = children(self.pid);
            signal(self.pid, libc::SIGKILL);
            for w in workers {
                signal(w, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

/// Replays the master's log: the number of ready workers over time (ready, minus retiring or gone), and
/// returns the smallest count seen after the first time it reached `n`.
pub fn min_ready_after_startup(server: &Server, n: usize) -> usize {
    let mut ready = BTreeSet::new();
    let mut min = usize::MAX;
    let mut started = false;
    for l in server.stdout.json().iter().filter(|l| field(l, "role") == "master") {
        let Some(pid) = l["worker_pid"].as_i64() else { continue };
        let msg = field(l, "msg");
        if msg == "worker ready" {
            ready.insert(pid);
        } else if msg.starts_with("worker retiring")
            || msg.starts_with("worker exited")
            || msg.starts_with("worker killed")
            || msg.starts_with("worker timed out")
            || msg.starts_with("worker failed")
        {
            ready.remove(&pid);
        } else {
            continue;
        }
        if ready.len() >= n {
            started = true;
        }
        if started {
            min = min.min(ready.len());
        }
    }
    min
}
