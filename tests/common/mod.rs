//! Helpers for end-to-end tests: the real `supervisor` binary, real sockets and signals.
//!
//! Every test gets its own temporary directory and free ports; every process a test starts is killed by pid
//! when its handle is dropped. Waiting is always polling against a deadline.
#![allow(dead_code)]

pub mod app_checks;
pub mod cgroup;
pub mod http_client;
pub mod nginx;
pub mod pg;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Polls `cond` every 10 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "e2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Seconds of the day from an RFC 3339 timestamp (enough for gaps within one test).
pub fn ts_seconds(ts: &str) -> f64 {
    let time = &ts[11..ts.len() - 1];
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_supervisor")
}

/// Output captured from a child, line by line, as it arrives.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>, Arc<std::sync::atomic::AtomicBool>);

impl Lines {
    fn capture(self, stream: impl Read + Send + 'static) {
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                self.0.lock().unwrap().push(line);
            }
            self.1.store(true, std::sync::atomic::Ordering::Release);
        });
    }

    /// Whether the stream has ended (every writer closed it) and all of it has been read.
    pub fn ended(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::Acquire)
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
    pub stdout: Lines,
    pub stderr: Lines,
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
    /// Starts `supervisor --config <dir>/supervisor.toml` with `config` (which must bind `port`), extra
    /// environment and arguments. The environment is cleared of supervisor/gunicorn/app variables first.
    pub fn start_with(port: u16, config: &str, env: &[(&str, &str)], args: &[&str]) -> Server {
        Server::launch(port, config, env, |path| {
            let mut cmd = Command::new(binary());
            cmd.arg("--config").arg(path).args(args);
            cmd
        })
    }

    /// Starts the command `make(config_path)` builds (the binary, or a wrapper that execs it) with the
    /// config written to a fresh directory, a clean environment plus `env`, and captured output.
    pub fn launch(port: u16, config: &str, env: &[(&str, &str)], make: impl FnOnce(&Path) -> Command) -> Server {
        let dir = TempDir::new("srv");
        let path = dir.join("supervisor.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = make(&path);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            let ours = ["SUPERVISOR_", "GUNICORN_", "APP_", "DATABASE_", "CORS_", "LISTEN_", "NOTIFY_", "WATCHDOG_"];
            if ours.iter().any(|p| k.starts_with(p)) || k == "WEB_CONCURRENCY" || k == "FORWARDED_ALLOW_IPS" {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        // A binary the test has just copied can be briefly "busy": a concurrent test's fork inherits the
        // copy's write descriptor until its exec. Retry for a moment, as cargo does.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                spawned => break spawned.expect("spawn supervisor"),
            }
        };
        let stdout = Lines::default();
        let stderr = Lines::default();
        stdout.clone().capture(child.stdout.take().unwrap());
        stderr.clone().capture(child.stderr.take().unwrap());
        let pid = child.id() as i32;
        Server { child: Some(child), pid, port, dir, config: path, stdout, stderr }
    }

    /// Starts with the base config, top-level keys in `top` replacing the base's, and `app` lines added to
    /// the `[app]` table.
    pub fn start(top: &str, app: &str) -> Server {
        let port = free_port();
        Server::start_with(port, &config_with(port, top, app), &[], &[])
    }

    /// Starts and waits until `n` workers are ready.
    pub fn start_ready(top: &str, app: &str, n: usize) -> Server {
        let server = Server::start(top, app);
        server.wait_workers_ready(n);
        server
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
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

    /// Waits until the master reports `n` worker pids alive and ready (by the master's "worker ready" lines,
    /// for workers that are still children of the master).
    pub fn wait_workers_ready(&self, n: usize) -> Vec<i32> {
        wait_for(Duration::from_secs(15), &format!("{n} ready workers"), || {
            self.assert_running();
            let children = children(self.pid);
            let ready: Vec<i32> = self
                .master_logs("worker ready")
                .iter()
                .filter_map(|l| l["worker_pid"].as_i64().map(|p| p as i32))
                .filter(|p| children.contains(p))
                .collect();
            (ready.len() == n && children.len() == n).then_some(ready)
        })
    }

    pub fn workers(&self) -> Vec<i32> {
        children(self.pid)
    }

    pub fn signal(&self, sig: i32) {
        signal(self.pid, sig);
    }

    /// Waits for the master to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("still running");
        let status = wait_for(timeout, "the master to exit", || child.try_wait().unwrap());
        self.child = None;
        // Let the readers take in the last lines. Not required: a process the master started (a binary
        // upgrade) may still hold the pipes open, and then the output keeps arriving after this returns.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !(self.stdout.ended() && self.stderr.ended()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
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

/// Sends a signal; ignores a process that is already gone.
pub fn signal(pid: i32, sig: i32) {
    let sig = nix::sys::signal::Signal::try_from(sig).expect("a valid signal number");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Live (not zombie) children of `pid`, from /proc.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for entry in entries.flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Some((state, ppid)) = stat(child)
            && ppid == pid
            && state != 'Z'
        {
            out.push(child);
        }
    }
    out.sort();
    out
}

/// Process state letter and parent pid, from /proc/PID/stat.
pub fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let mut parts = rest.split_whitespace();
    let state = parts.next()?.chars().next()?;
    let ppid = parts.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(s, _)| s != 'Z')
}

/// Inodes of the TCP sockets a process has open that are listening on `port`.
pub fn listening_inodes(pid: i32, port: u16) -> Vec<u64> {
    let listening: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(String::from).collect::<Vec<_>>())
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && cols.get(3)? == &"0A").then(|| cols.get(9)?.parse().ok())?
        })
        .collect();
    let mut out: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|t| t.to_string_lossy().strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
                .filter(|i| listening.contains(i))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// Socket descriptors the process has open.
pub fn socket_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| {
        d.flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")))
            .count()
    })
}

/// Responses are the shared client's type (header names lowercased, lookups case-insensitive).
pub use http_client::HttpResponse as Response;

/// A client connection that can carry several requests (keep-alive).
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: Vec::new() })
    }

    /// Sends a request with the given extra headers (each "Name: value") and body.
    pub fn send(&mut self, method: &str, path: &str, headers: &[&str], body: &[u8]) -> std::io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes)?;
        self.read_response()
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.send("GET", path, &[], b"")
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    pub fn read_response(&mut self) -> std::io::Result<Response> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let len: usize = head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while self.buf.len() < head_end + 4 + len {
            self.fill()?;
        }
        let raw: Vec<u8> = self.buf.drain(..head_end + 4 + len).collect();
        http_client::parse(&raw, false)
    }

    /// Waits until the server closes this connection; returns how long that took.
    pub fn wait_closed(&mut self, timeout: Duration) -> Duration {
        let start = Instant::now();
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut b = [0u8; 64];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return start.elapsed(),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return start.elapsed(),
                Err(e) => panic!("connection not closed within {timeout:?}: {e}"),
            }
        }
    }
}

/// One request on a fresh connection, closed afterwards.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &[u8]) -> std::io::Result<Response> {
    let mut all = vec!["Connection: close"];
    all.extend_from_slice(headers);
    Conn::open(addr)?.send(method, path, &all, body)
}

/// `GET path` on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(addr, "GET", path, &[], b"")
}

/// What a [`Load`] saw.
#[derive(Debug, Default)]
pub struct LoadStats {
    pub ok: u64,
    /// Requests that got no response, or a non-200 one, with what happened.
    pub failures: Vec<String>,
}

/// Background clients hammering `GET path` until stopped: `keepalive` threads reusing their connection
/// (reconnecting after a `Connection: close` response, as HTTP/1.1 requires) and `fresh` threads opening a
/// new connection per request. Bounded: each thread stops by itself after `max_per_thread` requests.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<LoadStats>>,
}

impl Load {
    pub fn start(addr: SocketAddr, path: &str, keepalive: usize, fresh: usize) -> Load {
        const MAX_PER_THREAD: u64 = 200_000;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..keepalive + fresh {
            let stop = stop.clone();
            let path = path.to_string();
            let reuse = i < keepalive;
            threads.push(std::thread::spawn(move || {
                let mut stats = LoadStats::default();
                let mut conn: Option<Conn> = None;
                for n in 0..MAX_PER_THREAD {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    if conn.is_none() {
                        match Conn::open(addr) {
                            Ok(c) => conn = Some(c),
                            Err(e) => {
                                stats.failures.push(format!("connect: {e}"));
                                continue;
                            }
                        }
                    }
                    let c = conn.as_mut().expect("just opened");
                    let headers: &[&str] = if reuse { &[] } else { &["Connection: close"] };
                    match c.send("GET", &path, headers, b"") {
                        Ok(r) if r.status == 200 => {
                            stats.ok += 1;
                            if !reuse || r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                                conn = None;
                            }
                        }
                        Ok(r) => {
                            stats.failures.push(format!("request {n}: status {} {}", r.status, r.text()));
                            conn = None;
                        }
                        Err(e) => {
                            stats.failures.push(format!("request {n}: {e}"));
                            conn = None;
                        }
                    }
                }
                stats
            }));
        }
        Load { stop, threads }
    }

    /// Stops the clients and sums their results.
    pub fn finish(self) -> LoadStats {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = LoadStats::default();
        for t in self.threads {
            let s = t.join().expect("load thread");
            total.ok += s.ok;
            total.failures.extend(s.failures);
        }
        total
    }
}

/// Replays the master's log: the number of ready workers over time (ready, minus retiring or gone), and
/// returns the smallest count seen after the first time it reached `n`.
pub fn min_ready_after_startup(server: &Server, n: usize) -> usize {
    let mut ready = std::collections::BTreeSet::new();
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
