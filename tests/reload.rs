//! Zero-downtime operations end to end: HUP generation switches and max_requests recycling, under load.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use libc::SIGHUP;
use test_support::*;

/// Worker pid -> generation, from the master's "worker spawned" lines.
fn generations(server: &Server) -> BTreeMap<i32, u64> {
    server
        .master_logs("worker spawned")
        .iter()
        .map(|l| (l["worker_pid"].as_i64().unwrap() as i32, l["generation"].as_u64().unwrap()))
        .collect()
}

/// Waits until `n` requests more than `before` were served, judged by access log lines.
fn wait_served(server: &Server, n: usize) {
    let before = access_lines(server);
    wait_for(Duration::from_secs(20), &format!("{n} more requests served"), || {
        (access_lines(server) >= before + n).then_some(())
    });
}

fn access_lines(server: &Server) -> usize {
    server.stdout.json().iter().filter(|l| field(l, "target") == "access").count()
}

/// Sends HUP and waits for the reload to finish one way or the other; returns its final log line.
fn reload(server: &Server, outcome: &str) -> serde_json::Value {
    let before = server.stdout.json().len();
    server.signal(SIGHUP);
    wait_for(Duration::from_secs(20), outcome, || {
        server.stdout.json().into_iter().skip(before).find(|l| field(l, "msg").starts_with(outcome))
    })
}

/// Asserts a HUP under load switches every worker with no failed request.
fn hup_under_load(top: &str, app: &str) {
    let server = Server::start_ready(binary!(), top, app, 2);
    let old: BTreeSet<i32> = server.workers().into_iter().collect();
    let load = Load::start(server.addr(), "/healthz", 16, 4);
    wait_served(&server, 300);
    let done = reload(&server, "reload complete");
    assert_eq!(done["generation"].as_u64(), Some(2), "{done}");
    // The old generation drains and leaves.
    wait_for(Duration::from_secs(15), "old workers gone", || old.iter().all(|p| !alive(*p)).then_some(()));
    wait_served(&server, 300);
    let stats = load.finish();
    assert!(
        stats.failures.is_empty(),
        "{} failures, e.g. {:?}",
        stats.failures.len(),
        &stats.failures[..stats.failures.len().min(5)]
    );
    assert!(stats.ok > 600);
    let new: BTreeSet<i32> = server.workers().into_iter().collect();
    assert_eq!(new.len(), 2);
    assert!(new.is_disjoint(&old), "every worker pid changed: {old:?} -> {new:?}");
    let gens = generations(&server);
    assert!(new.iter().all(|p| gens[p] == 2));
    assert!(min_ready_after_startup(&server, 2) >= 2, "never fewer ready workers than configured");
}

// HUP under continuous load (keep-alive and fresh connections): no failure, all pids change.
#[test]
fn hup_switches_generations_under_load_without_failures() {
    hup_under_load("", "");
}

// the same with workers that take a second to boot.
#[test]
fn hup_with_slow_booting_workers_loses_nothing() {
    hup_under_load("", "debug_boot_delay = 1");
}

// a new generation that cannot boot is killed; the old one keeps serving; a later HUP works.
#[test]
fn a_reload_whose_workers_cannot_boot_is_aborted_and_the_old_generation_serves() {
    let server = Server::start_ready(binary!(), "", "", 2);
    let old: BTreeSet<i32> = server.workers().into_iter().collect();
    let flag = server.dir.join("fail-boot");
    std::fs::write(&flag, "").unwrap();
    server.rewrite("", &format!("debug_fail_boot_file = {:?}", flag.display().to_string()));
    let load = Load::start(server.addr(), "/healthz", 8, 2);
    wait_served(&server, 100);
    let aborted = reload(&server, "reload aborted");
    assert!(field(&aborted, "reason").contains("died"), "{aborted}");
    wait_served(&server, 100);
    let stats = load.finish();
    assert!(stats.failures.is_empty(), "{:?}", &stats.failures[..stats.failures.len().min(5)]);
    wait_for(Duration::from_secs(5), "aborted workers reaped", || {
        (server.workers().into_iter().collect::<BTreeSet<_>>() == old).then_some(())
    });

    server.rewrite("", "");
    let done = reload(&server, "reload complete");
    assert_eq!(done["generation"].as_u64(), Some(3));
    wait_for(Duration::from_secs(15), "old workers gone", || old.iter().all(|p| !alive(*p)).then_some(()));
}

// invalid TOML changes nothing and forks nothing.
#[test]
fn a_reload_with_invalid_toml_changes_nothing() {
    let server = Server::start_ready(binary!(), "", "", 2);
    let before = server.workers();
    let spawned = server.master_logs("worker spawned").len();
    std::fs::write(&server.config, "workers = [\n").unwrap();
    let line = reload(&server, "reload aborted");
    assert!(field(&line, "error").contains("not valid TOML"), "{line}");
    assert_eq!(server.master_logs("worker spawned").len(), spawned, "nothing forked");
    assert_eq!(server.workers(), before);
    assert_eq!(get(server.addr(), "/healthz").unwrap().status, 200);
}

// a reload applies new settings: worker count and keepalive.
#[test]
fn a_reload_applies_the_new_worker_count_and_keepalive() {
    let server = Server::start_ready(binary!(), "keepalive = 5", "", 2);
    server.rewrite("workers = 4\nkeepalive = 1", "");
    reload(&server, "reload complete");
    wait_for(Duration::from_secs(15), "4 workers of generation 2", || {
        let gens = generations(&server);
        let workers = server.workers();
        (workers.len() == 4 && workers.iter().all(|p| gens.get(p) == Some(&2))).then_some(())
    });
    let mut conn = Conn::open(server.addr()).unwrap();
    assert_eq!(conn.get("/healthz").unwrap().status, 200);
    let idle = conn.wait_closed(Duration::from_secs(4));
    assert!(idle >= Duration::from_millis(800) && idle < Duration::from_secs(4), "new keepalive applies: {idle:?}");
}

// a burst of HUPs coalesces; the end state is one generation of the configured size.
#[test]
fn a_burst_of_hups_settles_on_one_newest_generation() {
    // Boots take 0.3 s so that most HUPs of the burst arrive while a reload is in progress.
    let server = Server::start_ready(binary!(), "", "debug_boot_delay = 0.3", 2);
    for _ in 0..10 {
        server.signal(SIGHUP);
        std::thread::sleep(Duration::from_millis(90)); // spread the burst over ~1 s, as an operator would
    }
    // Judged on one snapshot of the master's log per poll: a HUP the master handles after the last reload
    // completed starts one more, which a later snapshot would count without its completion.
    let (newest, reloads) = wait_for(Duration::from_secs(30), "the reloads to settle", || {
        let log: Vec<serde_json::Value> =
            server.stdout.json().into_iter().filter(|l| field(l, "role") == "master").collect();
        let by_msg = |prefix: &str| log.iter().filter(|l| field(l, "msg").starts_with(prefix)).collect::<Vec<_>>();
        let newest = by_msg("reload complete").last()?["generation"].as_u64()?;
        let started = by_msg("reload started");
        let pending = started.iter().any(|l| l["generation"].as_u64() > Some(newest));
        let gens: BTreeMap<i32, u64> = by_msg("worker spawned")
            .iter()
            .map(|l| (l["worker_pid"].as_i64().unwrap() as i32, l["generation"].as_u64().unwrap()))
            .collect();
        let workers = server.workers();
        let settled = !pending && workers.len() == 2 && workers.iter().all(|p| gens.get(p) == Some(&newest));
        settled.then_some((newest, started.len()))
    });
    assert!(reloads < 10, "HUPs during a reload were coalesced: {reloads} reloads for 10 HUPs");
    assert_eq!(newest, 1 + reloads as u64, "every reload completed, the last one is serving");
    // No leaked process: every worker ever spawned is either a current worker or gone.
    let current = server.workers();
    for pid in generations(&server).keys() {
        assert!(current.contains(pid) || !alive(*pid), "leaked worker {pid}");
    }
}

// max_requests + jitter recycles workers one at a time with no failure and no capacity dip.
#[test]
fn max_requests_recycles_workers_without_failures() {
    let server = Server::start_ready(binary!(), "workers = 3\nmax_requests = 50\nmax_requests_jitter = 20", "", 3);
    let mut failures = Vec::new();
    for i in 0..2000 {
        match request(server.addr(), "GET", "/healthz", &[&format!("X-Request-ID: mr-{i}")], b"") {
            Ok(r) if r.status == 200 => {}
            other => failures.push(format!("{i}: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
    wait_for(Duration::from_secs(5), "2000 access lines", || {
        (server.stdout.json().iter().filter(|l| field(l, "request_id").starts_with("mr-")).count() == 2000)
            .then_some(())
    });
    let mut per_pid: BTreeMap<i64, u64> = BTreeMap::new();
    for l in server.stdout.json().iter().filter(|l| field(l, "request_id").starts_with("mr-")) {
        *per_pid.entry(l["pid"].as_i64().unwrap()).or_default() += 1;
    }
    // Recycled workers served at least their budget. A worker at its budget keeps serving until its
    // replacement is ready (taking new connections only while no sibling accepts), so it may serve a few
    // more than 70 (up to about 85 here) while others recycle before it, but not another budget's worth.
    let running: BTreeSet<i64> = server.workers().iter().map(|&p| p as i64).collect();
    for (pid, n) in &per_pid {
        assert!(running.contains(pid) || *n >= 50, "recycled worker {pid} served {n}: {per_pid:?}");
        assert!(running.contains(pid) || *n <= 2 * 70, "recycled worker {pid} served {n}, replaced late: {per_pid:?}");
    }
    assert!(per_pid.len() >= 2000 / 70, "workers were recycled as they reached their budget: {per_pid:?}");
    assert!(min_ready_after_startup(&server, 3) >= 3, "never fewer than 3 ready workers");
}
