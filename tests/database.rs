//! The app's database time limits through the real binary and a real PostgreSQL: a real `LOCK TABLE` held by
//! another session, statements that outlive their limits, and what `pg_stat_activity` shows afterwards.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use test_support::app_checks::{assert_error, check_readyz_ready};
use test_support::http_client::{HttpResponse, get, get_with};
use test_support::pg::PgServer;
use test_support::provision::tools;
use test_support::*;

/// A migrated database.
fn migrated() -> PgServer {
    let pg = PgServer::new();
    let out = migrate(binary!(), &pg.url());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    pg
}

/// One worker on `pg`, with the environment of the scenario (`WEB_CONCURRENCY` and the like) plus `env`.
fn serve(pg: &PgServer, env: &[(&str, &str)]) -> Server {
    let port = free_port();
    let url = pg.url();
    let mut all = vec![("DATABASE_URL", url.as_str()), ("WEB_CONCURRENCY", "1")];
    all.extend_from_slice(env);
    let server = Server::start_with(binary!(), port, &config_with(port, "", ""), &all, &[]);
    server.wait_workers_ready(1);
    server
}

/// Another session holding `LOCK TABLE <table>` (ACCESS EXCLUSIVE) for `seconds`: a psql process, killed by
/// pid and its backend terminated when dropped.
struct Locker<'a> {
    pg: &'a PgServer,
    child: Child,
}

impl<'a> Locker<'a> {
    fn hold(pg: &'a PgServer, table: &str, seconds: u32) -> Locker<'a> {
        let sql = format!("BEGIN; LOCK TABLE {table}; SELECT pg_sleep({seconds}); COMMIT;");
        let child = Command::new(tools().pg_bin.join("psql"))
            .arg("-h")
            .arg(pg.dir())
            .args(["-p", &pg.port().to_string(), "-U", "postgres", "-d", "postgres", "-X", "-q", "-c", &sql])
            .env("PGAPPNAME", "locker")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting psql");
        let held = format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'locker' AND l.relation = '{table}'::regclass AND l.granted \
             AND l.mode = 'AccessExclusiveLock'"
        );
        wait_for(Duration::from_secs(10), "the lock to be held", || (pg.psql(&held) == "1").then_some(()));
        Locker { pg, child }
    }

    /// Ends the locking session now (its transaction rolls back, the lock is released).
    fn release(&mut self) {
        self.pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'locker'");
        let _ = self.child.wait();
    }
}

impl Drop for Locker<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self
            .pg
            .try_psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'locker'");
    }
}

/// Backend pids of the app's connections (`application_name = app`) matching a `pg_stat_activity` condition.
fn app_backends(pg: &PgServer, condition: &str) -> BTreeSet<i32> {
    let sql = format!(
        "SELECT coalesce(string_agg(pid::text, ','), '') FROM pg_stat_activity \
         WHERE application_name = 'app' AND {condition}"
    );
    pg.psql(&sql).split(',').filter(|p| !p.is_empty()).map(|p| p.parse().unwrap()).collect()
}

fn waiting_on_a_lock(pg: &PgServer) -> BTreeSet<i32> {
    app_backends(pg, "wait_event_type = 'Lock'")
}

/// The time left until `deadline` (zero once it has passed), for [`poll`].
fn until(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// GETs `path` from a thread; returns the response and how long it took.
fn get_in_background(base: &str, path: &str) -> std::thread::JoinHandle<(HttpResponse, Duration)> {
    let (base, path) = (base.to_owned(), path.to_owned());
    std::thread::spawn(move || {
        let started = Instant::now();
        let response = get(&base, &path);
        (response, started.elapsed())
    })
}

// The scenario as a new user meets it: one worker, a pool of two, a 2 s deadline, and a table locked for 8 s by
// another session. The defaults of statement_timeout and lock_timeout follow the short deadline (1 s, 0.5 s),
// so PostgreSQL gives up on the lock itself, every request is answered within its deadline, nothing of the
// app is left waiting, and the connections stay usable.
#[test]
fn a_locked_table_answers_within_the_deadline_and_leaves_nothing_waiting() {
    let pg = migrated();
    let server = serve(&pg, &[("WEB_CONCURRENCY", "1"), ("DATABASE_POOL_SIZE", "2"), ("APP_REQUEST_TIMEOUT", "2")]);
    let base = server.base();
    check_readyz_ready(&base);
    let mut locker = Locker::hold(&pg, "items", 8);

    let requests: Vec<_> = (0..3).map(|_| get_in_background(&base, "/api/items")).collect();
    let mut last = Instant::now();
    for request in requests {
        let (response, took) = request.join().unwrap();
        last = Instant::now();
        // Within the deadline (2 s) and the time to write the answer.
        assert!(took < Duration::from_millis(2500), "answered after {took:?}");
        match response.status {
            503 => assert_error(&response, 503, "not_ready"),
            _ => assert_error(&response, 504, "timeout"),
        };
    }
    let mut waiting = BTreeSet::new();
    poll(until(last + Duration::from_secs(1)), POLL_INTERVAL, || {
        waiting = waiting_on_a_lock(&pg);
        waiting.is_empty().then_some(())
    });
    assert_eq!(waiting, BTreeSet::new(), "1 s after the last answer, no app query waits on the lock");
    wait_for(until(last + Duration::from_secs(1)), "the lock_timeout logged", || {
        server
            .stdout
            .all()
            .iter()
            .any(|l| l.contains("statement gave up waiting for a lock (lock_timeout)"))
            .then_some(())
    });

    locker.release();
    let response = get(&base, "/api/items");
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(app_backends(&pg, "state <> 'idle'").is_empty(), "every app connection is idle, none in a transaction");
}

// The same lock with the server-side limits off (0): now the request deadline is what ends the wait. The
// statements are cancelled on the server, their connections discarded (their backends exit), the request that
// found no free connection got 503 with Retry-After within wait_timeout, and the next request after the lock
// is served on a fresh connection.
#[test]
fn a_deadline_cancels_the_statement_on_the_server_and_discards_the_connection() {
    let pg = migrated();
    let server = serve(
        &pg,
        &[
            ("DATABASE_POOL_SIZE", "2"),
            ("APP_REQUEST_TIMEOUT", "2"),
            ("DATABASE_STATEMENT_TIMEOUT", "0"),
            ("DATABASE_LOCK_TIMEOUT", "0"),
        ],
    );
    let base = server.base();
    let mut locker = Locker::hold(&pg, "items", 8);

    let first = [get_in_background(&base, "/api/items"), get_in_background(&base, "/api/items")];
    let waiting = wait_for(Duration::from_secs(2), "both pooled connections waiting on the lock", || {
        let waiting = waiting_on_a_lock(&pg);
        (waiting.len() == 2).then_some(waiting)
    });
    // The pool is exhausted: the third request waits wait_timeout (1 s) for a connection, then 503.
    let (response, took) = get_in_background(&base, "/api/items").join().unwrap();
    let body = assert_error(&response, 503, "not_ready");
    assert_eq!(response.header("retry-after"), Some("1"), "{body}");
    assert!(took < Duration::from_millis(1900), "503 after {took:?}, before the deadline");

    let mut last = Instant::now();
    for request in first {
        let (response, took) = request.join().unwrap();
        last = Instant::now();
        assert_error(&response, 504, "timeout");
        assert!(took < Duration::from_millis(2500), "504 after {took:?}");
    }
    let (mut still_waiting, mut still) = (BTreeSet::new(), BTreeSet::new());
    poll(until(last + Duration::from_secs(1)), POLL_INTERVAL, || {
        still_waiting = waiting_on_a_lock(&pg);
        still = app_backends(&pg, "true");
        (still_waiting.is_empty() && waiting.is_disjoint(&still)).then_some(())
    });
    assert_eq!(still_waiting, BTreeSet::new(), "1 s after the last 504, no app query waits on the lock");
    assert!(waiting.is_disjoint(&still), "the cancelled statements' connections were closed: {waiting:?} {still:?}");
    let abandoned = || server.stdout.all().iter().filter(|l| l.contains("statement abandoned in flight")).count();
    poll(until(last + Duration::from_secs(1)), POLL_INTERVAL, || (abandoned() >= 2).then_some(()));
    assert_eq!(abandoned(), 2, "each abandoned statement is logged once");

    locker.release();
    let response = get(&base, "/api/items");
    assert_eq!(response.status, 200, "{}", response.text());
    let serving = app_backends(&pg, "true");
    assert!(!serving.is_empty() && waiting.is_disjoint(&serving), "served on a fresh connection: {serving:?}");
}

// A statement longer than statement_timeout is cancelled by PostgreSQL itself: the request is answered 504
// `timeout` before its deadline, the connection stays in the pool, and the worker serves the next request.
#[test]
fn a_statement_over_statement_timeout_is_cancelled_by_the_server() {
    let pg = migrated();
    let server = serve(
        &pg,
        &[("APP_REQUEST_TIMEOUT", "5"), ("DATABASE_STATEMENT_TIMEOUT", "1"), ("DATABASE_LOCK_TIMEOUT", "0")],
    );
    let base = server.base();
    let mut locker = Locker::hold(&pg, "items", 8);

    let request = get_in_background(&base, "/api/items");
    let waiting = wait_for(Duration::from_secs(2), "the statement waiting", || {
        Some(waiting_on_a_lock(&pg)).filter(|w| w.len() == 1)
    });
    let (response, took) = request.join().unwrap();
    let body = assert_error(&response, 504, "timeout");
    assert!(took < Duration::from_secs(5), "answered after {took:?}, not at the 5 s deadline");
    let id = body["request_id"].as_str().unwrap().to_owned();
    server.wait_log(Duration::from_secs(2), "the cause logged with the request id", |l| {
        field(l, "request_id") == id && field(l, "msg") == "statement cancelled by the database (statement_timeout)"
    });
    assert!(pg.log().contains("canceling statement due to statement timeout"), "PostgreSQL cancelled it");
    // The server ended the statement, not the session: the same connection is idle in the pool.
    assert_eq!(app_backends(&pg, "state = 'idle'"), waiting);

    locker.release();
    let worker = server.pid_of_request(&id);
    let response = get_with(&base, "/api/items", &[("X-Request-ID", "after-statement-timeout")]);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(server.pid_of_request("after-statement-timeout"), worker, "the same worker serves on");
}

// A client that closes its connection mid-query: the worker drops the request, and with it the statement is
// cancelled on the server and its connection discarded, long before any time limit.
#[test]
fn a_client_that_goes_away_mid_query_cancels_it() {
    let pg = migrated();
    let server = serve(
        &pg,
        &[("APP_REQUEST_TIMEOUT", "30"), ("DATABASE_STATEMENT_TIMEOUT", "0"), ("DATABASE_LOCK_TIMEOUT", "0")],
    );
    let _locker = Locker::hold(&pg, "items", 20);

    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.write_all(b"GET /api/items HTTP/1.1\r\nHost: x\r\nX-Request-ID: gone-1\r\n\r\n").unwrap();
    let waiting = wait_for(Duration::from_secs(5), "the statement waiting", || {
        Some(waiting_on_a_lock(&pg)).filter(|w| w.len() == 1)
    });
    drop(stream);
    wait_for(Duration::from_secs(3), "the statement cancelled and its connection closed", || {
        app_backends(&pg, "true").is_disjoint(&waiting).then_some(())
    });
    server.wait_log(Duration::from_secs(2), "the abandoned statement logged with its request id", |l| {
        field(l, "request_id") == "gone-1" && field(l, "msg").starts_with("statement abandoned in flight")
    });
}

// /readyz behind a locked migration history, with the server-side limits off: the probe answers within its own
// deadline, and the check it gave up on does not stay behind waiting on the lock.
#[test]
fn a_readiness_check_past_its_deadline_cancels_its_statement() {
    let pg = migrated();
    let server = serve(&pg, &[("DATABASE_STATEMENT_TIMEOUT", "0"), ("DATABASE_LOCK_TIMEOUT", "0")]);
    let base = server.base();
    check_readyz_ready(&base);
    let _locker = Locker::hold(&pg, "refinery_schema_history", 10);
    // The last result is reused for 0.5 s: probe until one runs a check of its own, which finds the lock. Every
    // probe answers within the deadline.
    let response = wait_for(Duration::from_secs(3), "/readyz to answer 503", || {
        let started = Instant::now();
        let response = get(&base, "/readyz");
        assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
        (response.status == 503).then_some(response)
    });
    let body = assert_error(&response, 503, "not_ready");
    assert_eq!(body["details"]["checks"]["database"], "timeout", "{body}");
    wait_for(Duration::from_secs(1), "no readiness statement waiting on the lock", || {
        waiting_on_a_lock(&pg).is_empty().then_some(())
    });
}
