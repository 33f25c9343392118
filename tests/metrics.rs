//! /metrics end to end: totals aggregated over every worker, surviving worker restarts, in a format that
//! promtool accepts.

use std::collections::BTreeMap;
use std::time::Duration;

use test_support::*;

/// Series -> value, from a text exposition.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l:?}"));
            (series.to_string(), value.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

fn scrape(server: &Server) -> (String, BTreeMap<String, f64>) {
    let r = get(server.addr(), "/metrics").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = r.text();
    let parsed = parse(&text);
    (text, parsed)
}

const HEALTHZ: &str = "http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"}";
const METRICS: &str = "http_requests_total{method=\"GET\",route=\"/metrics\",status=\"200\"}";

fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

// exact totals over all workers, the same from every worker; histogram consistent.
#[test]
fn every_scrape_reports_the_totals_of_all_workers() {
    let server = Server::start_ready(binary!(), "workers = 3", "", 3);
    for i in 0..3000 {
        let r = request(server.addr(), "GET", "/healthz", &[&format!("X-Request-ID: m-{i}")], b"").unwrap();
        assert_eq!(r.status, 200);
    }
    // Spread: every worker served some of them.
    wait_for(Duration::from_secs(10), "3000 access lines", || {
        (server.stdout.json().iter().filter(|l| field(l, "request_id").starts_with("m-")).count() == 3000).then_some(())
    });
    let pids: std::collections::BTreeSet<i64> = server
        .stdout
        .json()
        .iter()
        .filter(|l| field(l, "request_id").starts_with("m-"))
        .filter_map(|l| l["pid"].as_i64())
        .collect();
    assert_eq!(pids.len(), 3, "all three workers served");

    let mut scrapes_before = 0.0;
    for n in 0..12 {
        let (_, m) = scrape(&server);
        assert_eq!(value(&m, HEALTHZ), 3000.0, "scrape {n}");
        // Each scrape is counted once it is answered, whichever worker answered it.
        assert_eq!(value(&m, METRICS), scrapes_before, "scrape {n}");
        scrapes_before += 1.0;
        // The histogram agrees with the counter; buckets are cumulative.
        let count = value(&m, "http_request_duration_seconds_count{route=\"/healthz\"}");
        assert_eq!(count, 3000.0);
        let buckets: Vec<f64> = m
            .iter()
            .filter(|(k, _)| k.starts_with("http_request_duration_seconds_bucket{route=\"/healthz\""))
            .map(|(_, v)| *v)
            .collect();
        assert!(!buckets.is_empty());
        assert_eq!(m["http_request_duration_seconds_bucket{route=\"/healthz\",le=\"+Inf\"}"], 3000.0);
        let le = |b: &str| m[&format!("http_request_duration_seconds_bucket{{route=\"/healthz\",le=\"{b}\"}}")];
        let bounds = [
            "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30",
            "+Inf",
        ];
        assert!(bounds.windows(2).all(|w| le(w[0]) <= le(w[1])), "cumulative buckets");
        assert_eq!(m["supervisor_workers{state=\"ready\"}"], 3.0);
    }
}

// counters survive a killed worker; restarts are counted with the right reason.
#[test]
fn counters_survive_worker_restarts_and_name_the_reason() {
    let server = Server::start_ready(binary!(), "timeout = 2", "", 2);
    for _ in 0..200 {
        get(server.addr(), "/healthz").unwrap();
    }
    let (_, before) = scrape(&server);
    let victim = server.workers()[0];
    signal(victim, libc::SIGKILL);
    server.wait_log(Duration::from_secs(5), "the kill noticed", |l| {
        l["worker_pid"].as_i64() == Some(victim as i64) && field(l, "reason") == "killed"
    });
    server.wait_workers_ready(2);
    for _ in 0..100 {
        assert_eq!(get(server.addr(), "/healthz").unwrap().status, 200);
    }
    let (_, after) = scrape(&server);
    for (series, v) in &before {
        let monotonic = series.contains("_total")
            || series.contains("_bucket")
            || series.contains("_count")
            || series.contains("_sum");
        if monotonic {
            assert!(value(&after, series) >= *v, "{series} went from {v} to {}", value(&after, series));
        }
    }
    assert_eq!(value(&after, HEALTHZ), value(&before, HEALTHZ) + 100.0);
    assert_eq!(after["supervisor_worker_restarts_total{reason=\"killed\"}"], 1.0);
    assert_eq!(after["supervisor_worker_restarts_total{reason=\"timeout\"}"], 0.0);

    // A heartbeat timeout counts as `timeout`.
    let stalled = server.workers()[0];
    signal(stalled, libc::SIGSTOP);
    server.wait_log(Duration::from_secs(5), "the timeout kill", |l| {
        l["worker_pid"].as_i64() == Some(stalled as i64) && field(l, "msg") == "worker killed by the supervisor"
    });
    server.wait_workers_ready(2);
    let (_, last) = scrape(&server);
    assert_eq!(last["supervisor_worker_restarts_total{reason=\"timeout\"}"], 1.0);
    assert_eq!(last["supervisor_worker_restarts_total{reason=\"killed\"}"], 1.0);
}

// promtool accepts the exposition.
#[test]
fn promtool_accepts_the_exposition() {
    let promtool = &provision::tools().promtool;
    let server = Server::start_ready(binary!(), "", "", 2);
    for path in ["/healthz", "/nope", "/readyz", "/debug/sleep?ms=5"] {
        get(server.addr(), path).unwrap();
    }
    let (text, _) = scrape(&server);
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running promtool");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool: {report}\n{text}");
}
