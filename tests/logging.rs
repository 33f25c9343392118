//! Logging end to end: lines of several processes sharing one pipe stay whole.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The longest line, newline included (supervisor::logging::LINE_MAX).
const LINE_MAX: usize = 4096;

// Four workers logging 32 KB request paths for 32 concurrent clients into the master's stdout pipe: every
// line is whole JSON of at most 4096 bytes, long values cut with a marker.
#[test]
fn lines_of_several_workers_sharing_a_pipe_never_interleave() {
    let server = Server::start_ready("workers = 4", "", 4);
    let addr = server.addr();
    let clients: Vec<_> = (0..32)
        .map(|c| {
            std::thread::spawn(move || {
                for i in 0..25 {
                    let path = format!("/long/{c}-{i}/{}", "p".repeat(32 * 1024));
                    let agent = format!("User-Agent: {}", "a".repeat(if i % 2 == 0 { 8 * 1024 } else { 10 }));
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
    }
    let raw = server.stdout.all();
    for line in &raw {
        assert!(line.len() < LINE_MAX, "a line of {} bytes", line.len());
        assert!(serde_json::from_str::<Value>(line).is_ok(), "not whole JSON: {}", &line[..line.len().min(300)]);
    }
}
