//! Logging end to end: a stalled log consumer never stops the server, lost lines are counted and reported,
//! exiting workers write what they hold, and lines of several processes sharing one pipe stay whole.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::*;

/// The longest line, newline included (supervisor::logging::LINE_MAX).
const LINE_MAX: usize = 4096;

/// A FIFO with a reader that does not read until told to: the fault of a stalled log shipper.
struct StalledFifo {
    path: std::path::PathBuf,
    reader: Option<std::fs::File>,
    /// Lines read once draining, with their arrival time.
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl StalledFifo {
    fn new(dir: &TempDir) -> StalledFifo {
        let path = dir.join("log.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).unwrap();
        // Non-blocking, so that opening does not wait for a writer.
        let reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path).unwrap();
        StalledFifo { path, reader: Some(reader), lines: Arc::default() }
    }

    /// A write end, for a child's standard output (a reader exists, so this does not block).
    fn writer(&self) -> std::fs::File {
        std::fs::OpenOptions::new().write(true).open(&self.path).unwrap()
    }

    /// Starts reading, line by line, until every writer is gone.
    fn drain(&mut self) {
        let reader = self.reader.take().expect("not draining yet");
        let flags = nix::fcntl::fcntl(&reader, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        let blocking = nix::fcntl::OFlag::from_bits_truncate(flags) - nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&reader, nix::fcntl::FcntlArg::F_SETFL(blocking)).unwrap();
        let lines = self.lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(reader).split(b'\n') {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&line).into_owned()));
            }
        });
    }

    /// The lines read so far that parse as JSON.
    fn json(&self) -> Vec<Value> {
        self.lines.lock().unwrap().iter().filter_map(|(_, l)| serde_json::from_str(l).ok()).collect()
    }
}

/// The real binary with the given output; master and workers are killed by pid on drop.
struct Process {
    child: Child,
    pid: i32,
    port: u16,
    dir: TempDir,
}

impl Process {
    fn start(config: impl FnOnce(u16, &TempDir) -> String, stdout: Stdio) -> Process {
        let dir = TempDir::new("logging");
        let port = free_port();
        let path = dir.join("supervisor.toml");
        std::fs::write(&path, config(port, &dir)).unwrap();
        let mut cmd = Command::new(binary!());
        cmd.arg("--config").arg(&path).stdin(Stdio::null()).stdout(stdout);
        cmd.stderr(std::fs::File::create(dir.join("stderr")).unwrap());
        // The control socket in the test's directory: a server killed by the test leaves nothing in /tmp.
        let control = dir.join("supervisor.ctl").display().to_string();
        test_support::server::clean_env(&mut cmd, &[("SUPERVISOR_CONTROL_SOCKET", &control)]);
        let child = cmd.spawn().expect("spawn supervisor");
        let pid = child.id() as i32;
        Process { child, pid, port, dir }
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `/metrics` as series -> value.
    fn metrics(&self) -> BTreeMap<String, f64> {
        let r = get(self.addr(), "/metrics").expect("/metrics answers");
        assert_eq!(r.status, 200);
        r.text()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
            .collect()
    }

    /// Waits until `n` workers are ready, by the server's own account (the log may be stalled).
    fn wait_ready(&self, n: usize) -> Vec<i32> {
        wait_for(Duration::from_secs(15), &format!("{n} ready workers"), || {
            assert!(alive(self.pid), "the master exited: {}", self.stderr());
            let ready = get(self.addr(), "/metrics")
                .ok()
                .filter(|r| r.status == 200)
                .is_some_and(|r| r.text().lines().any(|l| l == format!("supervisor_workers{{state=\"ready\"}} {n}")));
            let workers = children(self.pid);
            (ready && workers.len() == n).then_some(workers)
        })
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let workers = children(self.pid);
        signal(self.pid, libc::SIGKILL);
        for w in workers {
            signal(w, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn dropped(m: &BTreeMap<String, f64>, role: &str) -> f64 {
    m.get(&format!("log_lines_dropped_total{{role=\"{role}\"}}")).copied().expect("log_lines_dropped_total")
}

fn timeouts(m: &BTreeMap<String, f64>) -> f64 {
    m.get("supervisor_worker_restarts_total{reason=\"timeout\"}").copied().unwrap_or(0.0)
}

/// The kernel function a thread of `pid` sleeps in, for each thread named `name` (`comm`).
fn wchan_of_threads(pid: i32, name: &str) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().collect()).unwrap_or(Vec::new());
    tasks
        .iter()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .map(|t| std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default())
        .collect()
}

// A reader that stops reading for 30 s: every request is answered, no worker is killed for `timeout`, the
// lost lines are counted; once it reads again, logging resumes within a second and the reported count
// equals the metric.
#[test]
fn a_stalled_log_reader_never_stops_the_server_and_the_loss_is_counted_and_reported() {
    let dir = TempDir::new("stall");
    let mut fifo = StalledFifo::new(&dir);
    let server = Process::start(|port, _| config_with(port, "workers = 2\ntimeout = 5", ""), fifo.writer().into());
    let stall_began = Instant::now();
    let workers = server.wait_ready(2);

    let load = Load::start(server.addr(), "/healthz", 2, 1);
    let mut seen = Vec::new();
    while stall_began.elapsed() < Duration::from_secs(30) {
        // The stall's length is what is under test, not a wait for an event: sample the metrics every 2.5 s of it.
        std::thread::sleep(Duration::from_millis(2500).min(Duration::from_secs(30) - stall_began.elapsed()));
        let m = server.metrics();
        seen.push(dropped(&m, "worker"));
        assert_eq!(timeouts(&m), 0.0, "no worker was killed for timeout");
    }
    // The fault is real: each worker's writer thread sits in a write to the full pipe, while the thread
    // serving requests does not.
    for w in &workers {
        assert!(
            wchan_of_threads(*w, "log-writer").iter().any(|c| c.contains("pipe")),
            "worker {w}'s log writer blocked on the pipe: {:?}",
            wchan_of_threads(*w, "log-writer")
        );
        let main = std::fs::read_to_string(format!("/proc/{w}/wchan")).unwrap();
        assert!(!main.contains("pipe"), "worker {w}'s runtime thread is in {main}");
    }
    let stats = load.finish();
    assert!(
        stats.failures.is_empty(),
        "{} failures: {:?}",
        stats.failures.len(),
        &stats.failures[..5.min(stats.failures.len())]
    );
    assert!(stats.ok > 1000, "{} requests", stats.ok);
    assert_eq!(children(server.pid), workers, "the same workers serve");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "a counter: {seen:?}");
    let first = seen.iter().copied().find(|&d| d > 0.0).expect("lines dropped during the stall");
    assert!(seen.last().copied() > Some(first), "drops keep being counted: {seen:?}");
    eprintln!("served {} requests in 30 s of stall; worker lines dropped, every 2.5 s: {seen:?}", stats.ok);

    // The reader catches up. A process writes its report once its backlog is out: logging has resumed.
    let drain_began = Instant::now();
    fifo.drain();
    let (arrived, _) = wait_for(Duration::from_secs(1), "logging to resume", || {
        let lines = fifo.lines.lock().unwrap();
        lines.iter().find(|(_, l)| l.contains("\"dropped\":")).cloned()
    });
    eprintln!("logging resumed {:?} after the reader did", arrived - drain_began);
    // Every process that dropped lines reports how many, and the reports add up to the metric.
    let (reported, total) = wait_for(Duration::from_secs(5), "the reports to match the metric", || {
        let reports: Vec<Value> = fifo.json().into_iter().filter(|l| l["dropped"].is_u64()).collect();
        let reported: u64 = reports.iter().map(|l| l["dropped"].as_u64().unwrap()).sum();
        let m = server.metrics();
        let total = (dropped(&m, "worker") + dropped(&m, "master")) as u64;
        (reported == total).then_some((reports, total))
    });
    // From now on nothing is lost.
    request(server.addr(), "GET", "/healthz", &["X-Request-ID: after-the-stall"], b"").unwrap();
    wait_for(Duration::from_secs(5), "a line logged after the stall", || {
        fifo.json().iter().any(|l| field(l, "request_id") == "after-the-stall").then_some(())
    });
    assert!(total > 0);
    for report in &reported {
        assert_eq!(field(report, "level"), "warning");
        assert!(ts_seconds(&field(report, "since")) <= ts_seconds(&field(report, "ts")), "{report}");
    }
    eprintln!("{total} lines dropped, reported by {} lines: {reported:?}", reported.len());
    let lines = fifo.lines.lock().unwrap();
    for (_, line) in lines.iter() {
        assert!(line.len() < LINE_MAX, "{} bytes", line.len());
        assert!(serde_json::from_str::<Value>(line).is_ok(), "not JSON: {line}");
    }
}

// With `log_file` on a FIFO whose reader stalls, a reopen (USR1) neither blocks the master, which goes on
// handling signals, nor the workers, which go on serving; once the reader reads, everything flows again.
#[test]
fn a_reopen_while_the_log_file_is_stalled_blocks_no_one() {
    let dir = TempDir::new("stall-file");
    let mut fifo = StalledFifo::new(&dir);
    let log_file = fifo.path.display().to_string();
    let top = format!("workers = 2\nlog_file = {log_file:?}\nlog_buffer_bytes = 65536");
    let config = move |port, _: &TempDir| config_with(port, &top, "");
    let server = Process::start(config, Stdio::null());
    server.wait_ready(2);
    wait_for(Duration::from_secs(30), "lines dropped", || {
        for i in 0..200 {
            let r = request(server.addr(), "GET", "/healthz", &[&format!("X-Request-ID: fill-{i}")], b"").unwrap();
            assert_eq!(r.status, 200);
        }
        (dropped(&server.metrics(), "worker") > 0.0).then_some(())
    });
    signal(server.pid, libc::SIGUSR1);
    signal(server.pid, libc::SIGTTIN);
    server.wait_ready(3);
    for i in 0..200 {
        let r = request(server.addr(), "GET", "/healthz", &[&format!("X-Request-ID: reopened-{i}")], b"").unwrap();
        assert_eq!(r.status, 200);
    }
    fifo.drain();
    wait_for(Duration::from_secs(5), "the workers to catch up", || {
        let reported: u64 = fifo.json().iter().filter_map(|l| l["dropped"].as_u64()).sum();
        (reported as f64 == dropped(&server.metrics(), "worker")).then_some(())
    });
    request(server.addr(), "GET", "/healthz", &["X-Request-ID: after-the-reopen"], b"").unwrap();
    wait_for(Duration::from_secs(5), "the master's reopen and a request after it", || {
        let lines = fifo.json();
        let reopened = lines.iter().any(|l| field(l, "msg") == "log file reopened; telling the workers");
        let after = lines.iter().any(|l| field(l, "request_id") == "after-the-reopen");
        (reopened && after).then_some(())
    });
}

// A worker retired by max_requests writes every line it logged before it exits: one access line per request,
// and its last words.
#[test]
fn a_worker_retired_by_max_requests_loses_no_log_line() {
    let mut server = Server::start_ready(binary!(), "workers = 2\nmax_requests = 40", "", 2);
    for i in 0..300 {
        let r = request(server.addr(), "GET", "/healthz", &[&format!("X-Request-ID: mr-{i}")], b"").unwrap();
        assert_eq!(r.status, 200);
    }
    let retired = wait_for(Duration::from_secs(10), "recycled workers", || {
        let exits = server.master_logs("worker exited after draining");
        let pids: BTreeSet<i64> = exits
            .iter()
            .filter(|l| field(l, "reason") == "recycle_requests")
            .filter_map(|l| l["worker_pid"].as_i64())
            .collect();
        (pids.len() >= 4).then_some(pids)
    });
    let m = get(server.addr(), "/metrics").unwrap().text();
    assert!(m.contains("log_lines_dropped_total{role=\"worker\"} 0\n"), "{m}");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));

    let lines = server.stdout.json();
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for l in lines.iter().filter(|l| field(l, "target") == "access") {
        *per_id.entry(field(l, "request_id")).or_default() += 1;
    }
    for i in 0..300 {
        assert_eq!(per_id.get(&format!("mr-{i}")), Some(&1), "one access line for request mr-{i}");
    }
    for pid in &retired {
        let last = lines.iter().rfind(|l| l["pid"].as_i64() == Some(*pid)).expect("lines of the worker");
        assert_eq!(field(last, "msg"), "worker drained", "the last line of worker {pid} before it exited");
    }
}

// Four workers logging 32 KB request paths for 32 concurrent clients into the master's stdout pipe: every
// line is whole JSON of at most 4096 bytes, long values cut with a marker.
#[test]
fn lines_of_several_workers_sharing_a_pipe_never_interleave() {
    let server = Server::start_ready(binary!(), "workers = 4", "", 4);
    let addr = server.addr();
    let clients: Vec<_> = (0..32)
        .map(|c| {
            std::thread::spawn(move || {
                for i in 0..25 {
                    let path = format!("/long/{c}-{i}/{}", "p".repeat(32 * 1024));
                    // With the long user agent, two values too long for one line: both are cut tighter. The head
                    // stays under 36 KB, which the request limits' defaults let through to the app.
                    let agent = format!("User-Agent: {}", "a".repeat(if i % 2 == 0 { 3000 } else { 10 }));
                    let id = format!("X-Request-ID: long-{c}-{i}");
                    let r = request(addr, "GET", &path, &[&agent, &id], b"").expect("answered");
                    assert!(r.status >= 400, "{}", r.status);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let access = wait_for(Duration::from_secs(20), "800 access lines", || {
        let lines: Vec<Value> = server
            .stdout
            .json()
            .into_iter()
            .filter(|l| field(l, "target") == "access" && field(l, "request_id").starts_with("long-"))
            .collect();
        (lines.len() == 800).then_some(lines)
    });
    let pids: BTreeSet<i64> = access.iter().filter_map(|l| l["pid"].as_i64()).collect();
    assert!(pids.len() >= 2, "several workers logged: {pids:?}");
    for l in &access {
        let path = field(l, "path");
        assert!(path.starts_with("/long/") && path.contains("…[+") && path.ends_with(" bytes]"), "{path}");
        if field(l, "user_agent").len() > 1000 {
            assert!(field(l, "user_agent").contains("…[+1976 bytes]"), "{l}");
            assert!(path.len() < 1100, "cut at 1024 bytes beside another long value: {path}");
        }
    }
    assert!(access.iter().any(|l| field(l, "user_agent").len() > 1000), "some lines had two long values");
    let raw = server.stdout.all();
    for line in &raw {
        assert!(line.len() < LINE_MAX, "a line of {} bytes", line.len());
        assert!(serde_json::from_str::<Value>(line).is_ok(), "not whole JSON: {}", &line[..line.len().min(300)]);
    }
}
