//! The app through the real `supervisor` binary and a real PostgreSQL: the error contract, request ids and
//! access logs, readiness, migrations, items, CORS guardrails and secrets in logs.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use test_support::app_checks::*;
use test_support::pg::{Blackhole, PgOptions, PgServer};
use test_support::*;

/// A server on `url`, with a short request timeout and a small body limit for the contract checks.
fn serve(url: &str, top: &str, app: &str) -> Server {
    let port = free_port();
    let config = config_with(port, top, &format!("request_timeout = 1\nmax_body_bytes = 1024\n{app}"));
    let workers = if top.contains("workers = 1") { 1 } else { 2 };
    let server = Server::start_with(binary!(), port, &config, &[("DATABASE_URL", url)], &[]);
    server.wait_workers_ready(workers);
    server
}

// every error code of the contract, the items resource, panics, through the binary.
#[test]
fn the_contract_and_items_through_the_binary() {
    let pg = PgServer::new();
    let out = migrate(binary!(), &pg.url());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let server = serve(&pg.url(), "", "");
    let base = server.base();
    check_healthz(&base);
    check_not_found(&base);
    check_method_not_allowed(&base);
    check_unsupported_media_type(&base);
    check_malformed_json(&base);
    check_validation_errors(&base);
    check_payload_too_large(&base, 1024);
    check_timeout_is_504(&base, 3000);
    check_items_crud(&base);
    check_pagination(&base);

    // A panic answers 500 in the contract, and the same worker keeps serving.
    let panicked = get_with(&base, "/debug/panic", &[("X-Request-ID", "panic-1")]);
    let body = assert_error(&panicked, 500, "internal_error");
    assert!(!body["message"].as_str().unwrap().contains("panic requested"), "no cause text leaks: {body}");
    let pid = server.pid_of_request("panic-1");
    let after = wait_for(Duration::from_secs(10), "a request on the panicked worker", || {
        for i in 0..20 {
            let id = format!("after-panic-{i}");
            get_with(&base, "/healthz", &[("X-Request-ID", &id)]);
            if server.pid_of_request(&id) == pid {
                return Some(id);
            }
        }
        None
    });
    assert!(!after.is_empty());
    let logged = server.wait_log(Duration::from_secs(2), "the panic logged with its request id", |l| {
        field(l, "request_id") == "panic-1" && field(l, "level") == "error"
    });
    assert_eq!(logged["pid"].as_i64(), Some(pid as i64));
}

// valid client ids are echoed and logged in the access log; invalid ones are replaced.
#[test]
fn request_ids_are_echoed_logged_or_replaced() {
    let server = Server::start_ready(binary!(), "", "", 2);
    let base = server.base();
    check_request_id_echo(&base);
    let r = request(server.addr(), "GET", "/healthz", &["X-Request-ID: abc-123"], b"").unwrap();
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let line = server.wait_log(Duration::from_secs(2), "the access line", |l| {
        field(l, "target") == "access" && field(l, "request_id") == "abc-123"
    });
    assert_eq!(
        (field(&line, "method"), field(&line, "path"), field(&line, "status")),
        ("GET".into(), "/healthz".into(), "200".into())
    );
    // A newline inside the header is not HTTP: the request is refused before the app sees it (hyper's bare
    // 400; behind the edge, nginx answers it in the contract), and the bad id is never echoed.
    let mut raw = Conn::open(server.addr()).unwrap();
    use std::io::Write;
    raw.stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: a\nb\r\n\r\n").unwrap();
    let refused = raw.read_response().unwrap();
    assert_eq!(refused.status, 400);
    assert_eq!(refused.header("x-request-id"), None);
    for bad in ["x".repeat(129), "a\"b".to_string(), "has space".to_string()] {
        let r = request(server.addr(), "GET", "/healthz", &[&format!("X-Request-ID: {bad}")], b"").unwrap();
        let id = r.header("x-request-id").unwrap();
        assert_ne!(id, bad);
        assert!(id.len() == 36, "replaced by a UUID: {id}");
    }
}

// readiness follows migrations and the database, answers within its deadline even when the
// database swallows packets, and recovers without a worker restart.
#[test]
fn readyz_follows_the_database_and_migrations() {
    let mut pg = PgServer::new();
    // Readiness is checked per worker; one worker makes every probe see the same state.
    let server = serve(&pg.url(), "workers = 1", "");
    let base = server.base();
    let workers = server.workers();
    check_readyz_not_ready(&base, "migrations", "pending");
    let out = migrate(binary!(), &pg.url());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let ready = |status: u16| {
        wait_for(Duration::from_secs(3), &format!("/readyz {status}"), || {
            let started = Instant::now();
            let r = test_support::http_client::get(&base, "/readyz");
            assert!(started.elapsed() < Duration::from_secs(2), "answered within its deadline");
            (r.status == status).then_some(())
        })
    };
    ready(200);
    pg.stop();
    ready(503);
    check_readyz_not_ready(&base, "database", "unavailable");
    pg.start();
    let back = Instant::now();
    ready(200);
    assert!(back.elapsed() < Duration::from_secs(2) + Duration::from_millis(500));
    assert_eq!(server.workers(), workers, "no worker was restarted");

    let hole = Blackhole::new();
    let stuck = serve(&hole.url(), "", "");
    let started = Instant::now();
    let r = test_support::http_client::get(&stuck.base(), "/readyz");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_error(&r, 503, "not_ready");
}

// a storm of probes causes a handful of queries.
#[test]
fn concurrent_probes_share_one_check() {
    let pg = PgServer::with_options(PgOptions { stat_statements: true, ..PgOptions::default() });
    let out = migrate(binary!(), &pg.url());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let server = serve(&pg.url(), "", "");
    let base = server.base();
    check_readyz_ready(&base);
    pg.reset_statement_stats();
    let barrier = Arc::new(Barrier::new(200));
    let threads: Vec<_> = (0..200)
        .map(|_| {
            let (barrier, base) = (barrier.clone(), base.clone());
            std::thread::spawn(move || {
                barrier.wait();
                test_support::http_client::get(&base, "/readyz").status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    // Each check reads the schema version once; the probes spread over two workers.
    let calls = pg.statement_calls("%refinery_schema_history%");
    assert!((1..=10).contains(&calls), "{calls} checks for 200 probes over 2 workers");
}

// two migrators at the same moment both succeed; the schema is applied once.
#[test]
fn concurrent_migrations_both_succeed_once() {
    let pg = PgServer::new();
    let url = pg.url();
    let start = Arc::new(Barrier::new(2));
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (url, start) = (url.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                migrate(binary!(), &url)
            })
        })
        .collect();
    let outputs: Vec<_> = runs.into_iter().map(|t| t.join().unwrap()).collect();
    for o in &outputs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    }
    let applied = outputs.iter().filter(|o| String::from_utf8_lossy(&o.stdout).contains("applied V1")).count();
    assert_eq!(applied, 1, "exactly one run applied V1");
    assert_eq!(pg.psql("SELECT count(*) FROM refinery_schema_history").trim(), "1");
    let again = migrate(binary!(), &url);
    assert!(again.status.success() && String::from_utf8_lossy(&again.stdout).contains("nothing to apply"));
}

// CORS headers for allowed origins only; unsafe settings stop the startup with exit 2.
#[test]
fn cors_allows_listed_origins_and_refuses_unsafe_settings() {
    let server = Server::start_ready(binary!(), "", "cors_origins = [\"https://app.example.com\"]", 2);
    check_cors(&server.base(), "https://app.example.com");

    let cases: [(&str, &[(&str, &str)]); 2] = [
        ("cors_origins = [\"*\"]\ncors_allow_credentials = true", &[]),
        ("", &[("APP_ENV", "prod"), ("CORS_ORIGINS", "http://localhost:3000")]),
    ];
    for (app, env) in cases {
        let port = free_port();
        let config = config_with(port, "", app).replace("debug_routes = true", "debug_routes = false");
        let mut s = Server::start_with(binary!(), port, &config, env, &[]);
        assert_eq!(s.wait_exit(Duration::from_secs(5)).code(), Some(2));
        assert!(s.stderr.all().join("\n").contains("app.cors_origins"), "{:?}", s.stderr.all());
    }
}

// the database password never appears in any log output, even at debug level.
#[test]
fn the_database_password_never_reaches_the_logs() {
    let password = "Sup3r-s3cret-pw";
    let pg = PgServer::with_options(PgOptions { password: Some(password.into()), ..PgOptions::default() });
    let out = run_binary(binary!(), &["migrate", "--log-level", "debug"], &[("DATABASE_URL", &pg.url())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let wrong = pg.url().replace(password, "wrong-pw-XYZ");
    let failed = run_binary(binary!(), &["migrate", "--log-level", "debug"], &[("DATABASE_URL", &wrong)]);
    assert!(!failed.status.success());
    let server = serve(&pg.url(), "log_level = \"debug\"", "");
    check_readyz_ready(&server.base());
    get_with(&server.base(), "/api/items", &[]);
    let check = run_binary(binary!(), &["check"], &[("DATABASE_URL", &pg.url())]);
    let mut all = server.stdout.all().join("\n") + &server.stderr.all().join("\n");
    for o in [&out, &failed, &check] {
        all += &String::from_utf8_lossy(&o.stdout);
        all += &String::from_utf8_lossy(&o.stderr);
    }
    assert!(all.contains("debug"), "debug lines were produced");
    assert!(!all.contains(password) && !all.contains("wrong-pw-XYZ"), "a password leaked into the logs");
}
