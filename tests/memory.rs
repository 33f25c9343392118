//! Memory and age: workers recycled by max_worker_memory and max_worker_lifetime under load without a failed
//! request, one at a time; a worker OOM-killed by the kernel (a real memory cgroup) named as such, with the
//! request that died with it, and replaced at once.

use std::time::Duration;

use test_support::cgroup::MemoryCgroup;
use test_support::*;

/// A memory cgroup limited to `limit_bytes`, or `None` (and a note on stderr) where this run cannot make one:
/// without root, or where the cgroup filesystem is read-only. With `REQUIRE_MEMORY_CGROUP` set, as CI sets
/// it, that is a failure instead: a fault that cannot be injected must not pass as one survived.
fn memory_cgroup(tag: &str, limit_bytes: u64) -> Option<MemoryCgroup> {
    match MemoryCgroup::new(tag, limit_bytes) {
        Ok(cg) => Some(cg),
        Err(why) if std::env::var_os("REQUIRE_MEMORY_CGROUP").is_some() => panic!("cannot inject an OOM kill: {why}"),
        Err(why) => {
            eprintln!("skipped: {why} (REQUIRE_MEMORY_CGROUP=1 makes this a failure)");
            None
        }
    }
}

fn metric(server: &Server, series: &str) -> f64 {
    let text = get(server.addr(), "/metrics").unwrap().text();
    text.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

// A worker holding more than max_worker_memory for three samples is replaced, its replacement ready before it
// drains: under load, not one request fails. The restart is counted by its reason.
#[test]
fn a_worker_over_max_worker_memory_is_recycled_under_load_without_a_failed_request() {
    let server = Server::start_ready(binary!(), "max_worker_memory = 64", "access_log = false", 2);
    let before = server.workers();
    let load = Load::start(server.addr(), "/healthz", 4, 2);
    let hog = request(server.addr(), "GET", "/debug/hog?mib=96", &["X-Request-ID: hog-1"], b"").unwrap();
    assert_eq!(hog.status, 200, "{}", hog.text());
    let line = server.wait_log(Duration::from_secs(15), "the recycled worker's exit", |l| {
        field(l, "msg") == "worker exited after draining" && field(l, "reason") == "recycle_memory"
    });
    let recycled = line["worker_pid"].as_i64().unwrap() as i32;
    assert!(before.contains(&recycled));
    let asked = server.master_logs("worker over max_worker_memory: asks for a replacement");
    assert!(asked.iter().any(|l| l["worker_pid"].as_i64() == Some(recycled as i64)), "{asked:?}");
    assert!(asked[0]["memory_mib"].as_u64().unwrap() >= 64, "{}", asked[0]);
    server.wait_workers_ready(2);
    let stats = load.finish();
    assert!(stats.failures.is_empty(), "failed while recycling: {:?}", stats.failures);
    assert!(stats.ok > 0);
    assert_eq!(metric(&server, "supervisor_worker_restarts_total{reason=\"recycle_memory\"}"), 1.0);
    let m = get(server.addr(), "/metrics").unwrap().text();
    assert_eq!(m.lines().filter(|l| l.starts_with("supervisor_worker_memory_bytes{slot=")).count(), 2, "{m}");
    assert!(m.contains("supervisor_worker_age_seconds{slot="), "{m}");
}

// With a lifetime and a jitter, every worker is recycled in turn, never two at once (each replacement is
// spawned only after the previous recycle retired its worker), and the load sees no failure.
#[test]
fn workers_past_max_worker_lifetime_are_recycled_one_at_a_time_under_load() {
    let server = Server::start_ready(
        binary!(),
        "max_worker_lifetime = 2\nmax_worker_lifetime_jitter = 1\ngraceful_timeout = 2",
        "access_log = false",
        2,
    );
    let load = Load::start(server.addr(), "/healthz", 4, 2);
    wait_for(Duration::from_secs(30), "four lifetime recycles", || {
        let exits = server.master_logs("worker exited after draining");
        (exits.iter().filter(|l| field(l, "reason") == "recycle_lifetime").count() >= 4).then_some(())
    });
    let stats = load.finish();
    assert!(stats.failures.is_empty(), "failed while recycling: {:?}", stats.failures);
    // After startup, every spawn is a recycle's replacement: spawns and retirements must alternate.
    let started = server.master_logs("server ready").pop().expect("ready")["ts"].as_str().unwrap().to_string();
    let mut order = Vec::new();
    for l in server.stdout.json() {
        if field(&l, "role") != "master" || field(&l, "ts") < started {
            continue;
        }
        match field(&l, "msg").as_str() {
            "worker spawned" => order.push('s'),
            "worker retiring: its replacement is ready" => order.push('r'),
            _ => {}
        }
    }
    let order: String = order.into_iter().collect();
    assert!(order.len() >= 8 && !order.contains("ss") && !order.contains("rr"), "overlapping recycles: {order}");
}

// The kernel's OOM killer takes a worker mid-request (a memory cgroup far below what the request allocates):
// the master says oom_kill, names the request, counts it, and replaces the worker at once.
#[test]
fn an_oom_killed_worker_is_named_with_its_request_and_replaced_at_once() {
    let server = Server::start_ready(binary!(), "", "", 2);
    let mut conn = Conn::open(server.addr()).unwrap();
    let r = conn.send("GET", "/healthz", &["X-Request-ID: which-1"], b"").unwrap();
    assert_eq!(r.status, 200);
    let victim = server.pid_of_request("which-1");
    let Some(cg) = memory_cgroup("oom", 64 * 1024) else { return };
    cg.add(victim);
    let died = conn.send("GET", "/debug/hog?mib=32", &["X-Request-ID: oom-7"], b"");
    assert!(died.is_err(), "the request died with its worker: {:?}", died.map(|r| r.status));
    let line = server.wait_log(Duration::from_secs(10), "the OOM kill", |l| {
        l["worker_pid"].as_i64() == Some(victim as i64) && field(l, "reason") == "oom_kill"
    });
    assert_eq!(field(&line, "msg"), "worker killed by the kernel's OOM killer");
    assert_eq!((field(&line, "request_id"), field(&line, "request_path")), ("oom-7".into(), "/debug/hog".into()));
    assert!(cg.oom_kills() >= 1, "the kernel counted the kill");
    let replaced = server.wait_workers_ready(2);
    assert!(!replaced.contains(&victim));
    assert!(server.master_logs("workers keep dying early: backing off before the next spawn").is_empty());
    assert_eq!(metric(&server, "supervisor_worker_restarts_total{reason=\"oom_kill\"}"), 1.0);
    assert_eq!(metric(&server, "supervisor_worker_restarts_total{reason=\"killed\"}"), 0.0);
}
