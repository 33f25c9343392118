//! `supervisor ctl`: the client of the master's control socket (the protocol is described in
//! `master/control.rs` and docs/operations.md). It sends one request, prints the answer, and exits 0 when
//! the master did what was asked, 1 when it refused, failed or could not be reached.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

/// Exit code: done.
const EXIT_OK: u8 = 0;
/// Exit code: refused, failed, timed out, or no master to ask.
const EXIT_FAILED: u8 = 1;
/// How long an answer the master gives at once may take (it may be busy forking a generation).
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// Added to a waiting command's timeout: the master answers at its deadline, this covers the way back.
const GRACE: Duration = Duration::from_secs(10);
/// The longest answer read (a status of 256 workers is far smaller).
const MAX_ANSWER: u64 = 16 << 20;

/// What the command line asks the master.
pub(crate) struct Request {
    /// The request, as sent.
    pub body: Value,
    /// How long to wait for the outcome, when the command waits for it.
    pub wait: Option<Duration>,
    /// `status --json`: the status as JSON instead of a table.
    pub json: bool,
}

/// Sends the request to the master at `path`, prints its answer, and returns the exit code.
pub(crate) fn run(path: &Path, request: &Request) -> u8 {
    let within = request.wait.map_or(ANSWER_WITHIN, |wait| wait + GRACE);
    let answer = match call(path, &request.body, within) {
        Ok(answer) => answer,
        Err(error) => {
            eprintln!("{error}");
            return EXIT_FAILED;
        }
    };
    if answer["ok"] != Value::Bool(true) {
        eprintln!("{}", answer["error"].as_str().unwrap_or("the master answered with an error"));
        return EXIT_FAILED;
    }
    match (request.body["command"].as_str(), answer["new_master"].as_i64()) {
        (Some("status"), _) if request.json => {
            println!("{}", serde_json::to_string_pretty(&answer["status"]).unwrap_or_default());
        }
        (Some("status"), _) => print!("{}", table(&answer["status"])),
        (Some("upgrade"), Some(new_master)) => return confirm_upgrade(path, new_master),
        _ => println!("{}", answer["message"].as_str().unwrap_or("done")),
    }
    EXIT_OK
}

/// The old master saw the new one take over; the new one must now answer at the same path.
fn confirm_upgrade(path: &Path, new_master: i64) -> u8 {
    match call(path, &json!({ "command": "status" }), ANSWER_WITHIN) {
        Ok(answer) if answer["status"]["pid"].as_i64() == Some(new_master) => {
            let generation = &answer["status"]["generation"];
            println!("binary upgrade complete: new master {new_master} serving generation {generation}");
            EXIT_OK
        }
        Ok(answer) => {
            eprintln!(
                "the new master {new_master} took over, but {} is answered by {}",
                path.display(),
                answer["status"]["pid"]
            );
            EXIT_FAILED
        }
        Err(error) => {
            eprintln!("the new master {new_master} took over, but does not answer: {error}");
            EXIT_FAILED
        }
    }
}

/// One request and its answer.
fn call(path: &Path, body: &Value, within: Duration) -> Result<Value, String> {
    let shown = path.display();
    let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => format!(
            "no control socket at {shown}: is the server running? ctl finds the socket through the same settings \
             as the server (control_socket, else beside the pidfile, else /tmp/supervisor-PORT.ctl): give it the \
             server's --config, environment and flags"
        ),
        ErrorKind::ConnectionRefused => format!("nothing answers at {shown}: the server that served it is gone"),
        ErrorKind::PermissionDenied => {
            format!("permission denied on {shown}: run ctl as the server's user or as root")
        }
        _ => format!("cannot connect to {shown}: {e}"),
    })?;
    trust(&stream, path)?;
    stream
        .set_read_timeout(Some(within))
        .and_then(|()| stream.set_write_timeout(Some(ANSWER_WITHIN)))
        .map_err(|e| format!("cannot set up the connection to {shown}: {e}"))?;
    // A master that refuses the client answers before it reads anything, and closes: then the write fails,
    // and the answer is still there to read.
    let sent = (&stream).write_all(format!("{body}\n").as_bytes());
    let mut line = String::new();
    match BufReader::new((&stream).take(MAX_ANSWER)).read_line(&mut line) {
        Ok(0) | Err(_) if sent.is_err() => Err(format!("cannot send to {shown}: {}", sent.unwrap_err())),
        Ok(0) => Err(format!("the master closed {shown} without answering (did it exit?)")),
        Ok(_) => serde_json::from_str(&line).map_err(|e| format!("not an answer from a master at {shown}: {e}")),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Err(format!("no answer from the master within {} s", within.as_secs()))
        }
        Err(e) => Err(format!("reading the answer from {shown}: {e}")),
    }
}

/// Talks only to a master run by this user or root (as root, to any): a socket someone else put at the
/// path (under /tmp, say) gets no commands.
fn trust(stream: &UnixStream, path: &Path) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    let peer = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("cannot tell who serves {}: {e}", path.display()))?;
    if me == 0 || peer.uid() == me || peer.uid() == 0 {
        Ok(())
    } else {
        Err(format!(
            "{} is served by uid {}, neither this user nor root: not talking to it",
            path.display(),
            peer.uid()
        ))
    }
}

/// The status as a table for people.
fn table(s: &Value) -> String {
    let mut out = String::new();
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let _ = writeln!(
        out,
        "master {}  version {}  up {}  {}  generation {}  workers wanted {}",
        s["pid"],
        text(&s["version"]),
        age(&s["uptime_seconds"]),
        text(&s["phase"]),
        s["generation"],
        s["workers_wanted"],
    );
    if let Some(config) = s["config_file"].as_str() {
        let _ = writeln!(out, "config {config}");
    }
    if s["reload"].is_object() {
        let r = &s["reload"];
        let _ = writeln!(
            out,
            "reload: generation {} {}, {} of {} workers ready",
            r["generation"],
            text(&r["stage"]).replace('_', " "),
            r["ready"],
            r["workers"]
        );
    }
    if s["reload_queued"] == Value::Bool(true) {
        let _ = writeln!(out, "reload: another one queued");
    }
    if s["upgrade"].is_object() {
        let u = &s["upgrade"];
        let _ = writeln!(out, "upgrade: {}, new master {}", text(&u["stage"]).replace('_', " "), u["new_master"]);
    }
    let _ = writeln!(
        out,
        "\n{:<8} {:>4} {:>4} {:<26} {:>8} {:>9} {:>6} {:>9} {:>10}",
        "PID", "SLOT", "GEN", "STATE", "AGE", "REQUESTS", "CONNS", "IN FLIGHT", "MEMORY"
    );
    for w in s["workers"].as_array().into_iter().flatten() {
        let state = match w["reason"].as_str() {
            Some(reason) => format!("{} ({reason})", text(&w["state"])),
            None => text(&w["state"]),
        };
        let memory = match w["memory_bytes"].as_u64() {
            Some(0) | None => "-".to_string(),
            Some(bytes) => format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64),
        };
        let _ = writeln!(
            out,
            "{:<8} {:>4} {:>4} {:<26} {:>8} {:>9} {:>6} {:>9} {:>10}",
            w["pid"].to_string(),
            w["slot"].to_string(),
            w["generation"].to_string(),
            state,
            age(&w["age_seconds"]),
            w["requests"].to_string(),
            w["connections"].to_string(),
            w["in_flight"].to_string(),
            memory,
        );
        for r in w["requests_in_flight"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "{:<8} {} {}  id={}  {}",
                "",
                text(&r["method"]),
                text(&r["path"]),
                text(&r["request_id"]),
                age(&r["age_seconds"])
            );
        }
    }
    let restarts: Vec<String> = (s["restarts"].as_object().into_iter().flatten())
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    let restarts = if restarts.is_empty() { "none".to_string() } else { restarts.join(", ") };
    let _ = writeln!(out, "\nrestarts: {restarts}");
    let _ = writeln!(out, "reloads: {} complete, {} aborted", s["reloads"]["ok"], s["reloads"]["aborted"]);
    out
}

/// Seconds as people read an age: `12.3s`, `4m05s`, `2h03m`, `3d04h`.
fn age(seconds: &Value) -> String {
    let s = seconds.as_f64().unwrap_or(0.0);
    let whole = s as u64;
    match whole {
        0..60 => format!("{s:.1}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        3600..86400 => format!("{}h{:02}m", whole / 3600, whole % 3600 / 60),
        _ => format!("{}d{:02}h", whole / 86400, whole % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_shows_every_worker_and_what_it_serves() {
        let status = json!({
            "pid": 10, "version": "1.2.3", "uptime_seconds": 3725.0, "config_file": "/etc/s.toml",
            "control_socket": "/tmp/supervisor-8000.ctl", "phase": "running", "generation": 2,
            "workers_wanted": 2, "reload": {"generation": 3, "stage": "booting", "ready": 1, "workers": 2},
            "reload_queued": false, "upgrade": null,
            "workers": [
                {"pid": 11, "slot": 0, "generation": 2, "state": "ready", "reason": null, "age_seconds": 65.2,
                 "requests": 42, "connections": 3, "in_flight": 1, "memory_bytes": 25165824,
                 "requests_in_flight": [{"method": "GET", "path": "/api/items", "request_id": "abc",
                                         "age_seconds": 0.5}]},
                {"pid": 12, "slot": 1, "generation": 2, "state": "recycling", "reason": "recycle_operator",
                 "age_seconds": 5.0, "requests": 0, "connections": 0, "in_flight": 0, "memory_bytes": 0,
                 "requests_in_flight": []}
            ],
            "restarts": {"crash": 0, "reload": 2}, "reloads": {"ok": 1, "aborted": 0}
        });
        let table = table(&status);
        for expected in [
            "master 10  version 1.2.3  up 1h02m  running  generation 2",
            "config /etc/s.toml",
            "reload: generation 3 booting, 1 of 2 workers ready",
            "recycling (recycle_operator)",
            "24.0 MiB",
            "GET /api/items  id=abc  0.5s",
            "restarts: reload 2\n",
            "reloads: 1 complete, 0 aborted",
        ] {
            assert!(table.contains(expected), "{expected:?} missing from:\n{table}");
        }
        assert_eq!(age(&json!(3.0 * 86400.0 + 4.0 * 3600.0)), "3d04h");
        assert_eq!(age(&json!(245)), "4m05s");
    }
}
