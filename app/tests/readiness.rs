//! `/readyz` against a real PostgreSQL that is stopped, unmigrated, or swallowing packets, and under a probe
//! storm.

mod support;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use support::server::TestServer;
use support::{config, migrate};
use test_support::app_checks::{check_readyz_not_ready, check_readyz_ready};
use test_support::http_client::get;
use test_support::pg::{Blackhole, PgOptions, PgServer};
use test_support::wait_for;

/// every probe is answered within this, whatever the database does.
const PROBE_DEADLINE: Duration = Duration::from_secs(2);

/// Polls `/readyz` until it answers `status`, checking that every probe answers within [`PROBE_DEADLINE`].
fn wait_for_readyz(base: &str, status: u16, within: Duration) {
    wait_for(within, &format!("/readyz to answer {status}"), || {
        let started = Instant::now();
        let resp = get(base, "/readyz");
        assert!(started.elapsed() < PROBE_DEADLINE, "/readyz took {:?}", started.elapsed());
        (resp.status == status).then_some(())
    });
}

/// Sends `n` probes at once from `n` threads; returns each one's status and latency.
fn probe_storm(base: &str, n: usize) -> Vec<(u16, Duration)> {
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            let base = base.to_owned();
            std::thread::spawn(move || {
                barrier.wait();
                let started = Instant::now();
                let status = get(&base, "/readyz").status;
                (status, started.elapsed())
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("probe thread")).collect()
}

#[test]
fn readyz_follows_migrations_and_database_availability() {
    let mut pg = PgServer::with_options(PgOptions { stat_statements: true, ..PgOptions::default() });
    let server = TestServer::start(config(Some(pg.url())));
    let base = server.base.as_str();

    // (b) Migrations pending.
    let details = check_readyz_not_ready(base, "migrations", "pending");
    assert_eq!(details["checks"]["database"], "ok");
    assert_eq!(details["expected_version"], app::latest_embedded_version().unwrap());
    migrate(&pg.url());
    wait_for_readyz(base, 200, Duration::from_secs(2));
    check_readyz_ready(base);

    // 200 concurrent probes share a handful of checks. Let the last result expire first, so the storm
    // must run at least one check of its own.
    std::thread::sleep(Duration::from_millis(600));
    pg.reset_statement_stats();
    let results = probe_storm(base, 200);
    assert!(results.iter().all(|(status, _)| *status == 200), "{results:?}");
    let checks = pg.statement_calls("%refinery_schema_history%");
    assert!((1..=5).contains(&checks), "200 probes ran {checks} schema checks");

    // (a) Database stopped: 503 naming the database, answered in time.
    pg.stop();
    wait_for_readyz(base, 503, Duration::from_secs(2));
    check_readyz_not_ready(base, "database", "unavailable");

    // Back within 2 s of the database returning, same server (no restart).
    pg.start();
    let back = Instant::now();
    wait_for_readyz(base, 200, Duration::from_secs(2));
    assert!(back.elapsed() < Duration::from_secs(2), "ready again after {:?}", back.elapsed());
    check_readyz_ready(base);
}

#[test]
fn readyz_answers_in_time_when_the_database_never_replies() {
    // (c) The address accepts TCP and never answers.
    let blackhole = Blackhole::new();
    let server = TestServer::start(config(Some(blackhole.url())));
    let base = server.base.as_str();

    let started = Instant::now();
    check_readyz_not_ready(base, "database", "timeout");
    assert!(started.elapsed() < PROBE_DEADLINE, "/readyz took {:?}", started.elapsed());

    // Concurrent probes wait for the one check in flight instead of each waiting for the database.
    let results = probe_storm(base, 20);
    for (status, took) in &results {
        assert_eq!(*status, 503);
        assert!(*took < PROBE_DEADLINE, "a probe took {took:?}");
    }
}
