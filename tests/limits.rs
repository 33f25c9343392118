//! Request and connection limits through the real binary: gunicorn's limit_request_* answered in the error
//! contract, worker_connections bounding memory under slow clients, bounded body parsing, query values,
//! forwarded_allow_ips ranges.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::*;

fn status_of(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A GET with `path` and `headers`, answered on a connection the server closes afterwards.
fn get_with(server: &Server, path: &str, headers: &[String]) -> Vec<u8> {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    http_client::raw_exchange(server.addr(), head.as_bytes())
}

/// The JSON error body of a raw response, with its request id checked against the header.
fn contract(response: &[u8]) -> Value {
    let parsed = http_client::parse(response, false).expect("an HTTP response");
    let body: Value = serde_json::from_slice(&parsed.body).expect("a JSON body");
    assert_eq!(parsed.header("content-type"), Some("application/json"));
    assert_eq!(body["request_id"].as_str(), parsed.header("x-request-id"), "{body}");
    body
}

fn headers(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("X-Filler-{i}: {i}")).collect()
}

// Over-limit requests get the error contract where the parser lets the app answer, hyper's bare 431 where it
// refuses the head itself; each limit changed by the environment changes the outcome.
#[test]
fn request_head_limits_are_answered_in_the_contract_and_follow_the_settings() {
    let server = Server::start_ready(binary!(), "", "", 2);
    let long_path = format!("/healthz?{}", "a".repeat(5 * 1024));
    let big_header = vec![format!("X-Big: {}", "b".repeat(9 * 1024))];

    let r = get_with(&server, &long_path, &[]);
    assert_eq!(status_of(&r), 414);
    let body = contract(&r);
    assert_eq!((body["code"].as_str(), body["details"]["limit"].as_u64()), (Some("uri_too_long"), Some(4094)));

    let r = get_with(&server, "/healthz", &big_header);
    assert_eq!(status_of(&r), 431);
    assert_eq!(contract(&r)["code"], "request_header_fields_too_large");

    // Past hyper's own cap of 100 fields (the default limit), the parser refuses: 431, no body, closed.
    let r = get_with(&server, "/healthz", &headers(101));
    assert_eq!(status_of(&r), 431);
    assert!(http_client::parse(&r, false).unwrap().body.is_empty());

    // Within the limits.
    assert_eq!(status_of(&get_with(&server, "/healthz", &headers(90))), 200);
    assert_eq!(status_of(&get_with(&server, &format!("/healthz?{}", "a".repeat(3000)), &[])), 200);

    // Each limit moved by its environment variable.
    let port = free_port();
    let env = [
        ("SUPERVISOR_LIMIT_REQUEST_LINE", "8190"),
        ("SUPERVISOR_LIMIT_REQUEST_FIELDS", "10"),
        ("SUPERVISOR_LIMIT_REQUEST_FIELD_SIZE", "16384"),
    ];
    let relaxed = Server::start_with(binary!(), port, &base_config(port), &env, &[]);
    relaxed.wait_workers_ready(2);
    assert_eq!(status_of(&get_with(&relaxed, &long_path, &[])), 200, "a 5 KB line fits 8190");
    assert_eq!(status_of(&get_with(&relaxed, "/healthz", &big_header)), 200, "a 9 KB field fits 16384");
    let r = get_with(&relaxed, "/healthz", &headers(11));
    assert_eq!(status_of(&r), 431, "13 fields exceed 10");
    assert_eq!(contract(&r)["details"]["limit"], 10);
}

/// Resident memory of a process, kB (VmRSS), and its peak (VmHWM).
fn memory_kb(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status.lines().find_map(|l| l.strip_prefix(name)).unwrap().split_whitespace().next().unwrap().parse().unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Raises this process's open-file limit to its hard limit, to hold thousands of client sockets.
fn raise_fd_limit(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(hard >= needed, "the test needs {needed} open files; the hard limit is {hard}");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

// Slow clients holding unterminated heads: each worker stops accepting at max_connections, its memory stays
// bounded, every held connection is closed by the header timeout, and a fresh client is answered.
#[test]
fn slow_heads_are_bounded_by_max_connections_and_closed_by_the_header_timeout() {
    const CLIENTS: usize = 3000;
    const PER_WORKER: usize = 500;
    raise_fd_limit(CLIENTS as u64 + 200);
    let server = Server::start_ready(
        binary!(),
        &format!("keepalive = 2\nmax_connections = {PER_WORKER}"),
        "access_log = false",
        2,
    );
    let workers = server.workers();
    let before: u64 = workers.iter().map(|w| memory_kb(*w).0).sum();
    let head = format!("GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: {}\r\n", "s".repeat(8 * 1024));
    let mut held = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        held.push(stream);
    }
    // Both workers at their cap, the rest waiting in the backlog.
    wait_for(Duration::from_secs(10), "both workers at max_connections", || {
        let open: usize = workers.iter().map(|w| socket_fds(*w)).sum();
        (open >= 2 * PER_WORKER).then_some(())
    });
    let during: u64 = workers.iter().map(|w| memory_kb(*w).0).sum();
    let growth_kb = during.saturating_sub(before);
    // Each held connection costs its read buffer (the 8 KB head, in a buffer of at most 16 KB) and the
    // connection's task: 2 x 500 x 48 KB is a generous bound. Without the cap, 3000 connections of up to
    // hyper's 400 KB head each had no bound at all.
    assert!(growth_kb < (2 * PER_WORKER * 48) as u64, "the workers grew by {growth_kb} kB holding 1000 slow heads");
    assert!(workers.iter().all(|w| socket_fds(*w) <= PER_WORKER + 4), "a worker exceeded its cap");

    let fresh = Instant::now();
    let answered = wait_for(Duration::from_secs(60), "a fresh client answered", || {
        let mut conn = Conn::open(server.addr()).ok()?;
        conn.stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        conn.send("GET", "/healthz", &["Connection: close"], b"").ok()
    });
    assert_eq!(answered.status, 200);
    eprintln!("fresh client answered after {:?}; workers grew {growth_kb} kB", fresh.elapsed());

    // Every held connection is closed by the server (header timeout), none left open.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, stream) in held.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 512];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("held connection {i} not closed by the header timeout: {e}"),
            }
        }
    }
}

// Hostile item bodies are refused without building them: a small 422, a small peak in the worker's memory.
#[test]
fn hostile_bodies_get_a_small_422_at_a_small_memory_cost() {
    let server = Server::start_ready(binary!(), "workers = 1", "", 1);
    let worker = server.workers()[0];
    assert_eq!(get(server.addr(), "/healthz").unwrap().status, 200);
    let (_, peak_before) = memory_kb(worker);
    let array = format!("[{}0]", "0,".repeat(499_999));
    let keys: Vec<String> = (0..90_000).map(|i| format!("\"k{i}\":0")).collect();
    let object = format!("{{{}}}", keys.join(","));
    for body in [&array, &object] {
        assert!(body.len() < 1024 * 1024, "within max_body_bytes: {}", body.len());
        let r =
            request(server.addr(), "POST", "/api/items", &["Content-Type: application/json"], body.as_bytes()).unwrap();
        assert_eq!(r.status, 422, "{}", r.text());
        assert!(r.body.len() < 16 * 1024, "a {} byte 422", r.body.len());
    }
    let (_, peak_after) = memory_kb(worker);
    let growth_kb = peak_after.saturating_sub(peak_before);
    // The body itself (1 MB, read into one buffer) plus parsing that keeps nothing of it: under 4 MB.
    assert!(growth_kb < 4 * 1024, "the worker's peak grew by {growth_kb} kB");
    eprintln!("hostile bodies: the worker's peak memory grew by {growth_kb} kB");
    assert_eq!(get(server.addr(), "/healthz").unwrap().status, 200);
}

// An empty query value is invalid like any other.
#[test]
fn empty_query_values_are_422() {
    let server = Server::start_ready(binary!(), "workers = 1", "", 1);
    for path in ["/api/items?limit=", "/api/items?after="] {
        let r = get(server.addr(), path).unwrap();
        assert_eq!(r.status, 422, "{path}: {}", r.text());
    }
}

/// The `client` the access log recorded for a request with this id.
fn logged_client(server: &Server, id: &str) -> String {
    let line = server.wait_log(Duration::from_secs(5), "the access line", |l| {
        field(l, "request_id") == id && field(l, "target") == "access"
    });
    field(&line, "client")
}

// forwarded_allow_ips takes CIDR ranges and `*`; a bad range exits 2 naming the key.
#[test]
fn forwarded_allow_ips_ranges_decide_whose_forwarded_for_is_trusted() {
    for (allow, expected) in
        [("[\"127.0.0.0/8\"]", "198.51.100.7"), ("[\"10.0.0.0/8\"]", "127.0.0.1"), ("\"*\"", "198.51.100.7")]
    {
        let server = Server::start_ready(binary!(), "workers = 1", &format!("forwarded_allow_ips = {allow}"), 1);
        let id = format!("xff-{}", server.port);
        let headers = [format!("X-Request-ID: {id}"), "X-Forwarded-For: 198.51.100.7".to_string()];
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        assert_eq!(request(server.addr(), "GET", "/healthz", &headers, b"").unwrap().status, 200);
        assert_eq!(logged_client(&server, &id), expected, "{allow}");
    }
    let port = free_port();
    let mut server =
        Server::start_with(binary!(), port, &base_config(port), &[("FORWARDED_ALLOW_IPS", "10.0.0.0/33")], &[]);
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(2));
    let stderr = server.stderr.all().join("\n");
    assert!(stderr.contains("`app.forwarded_allow_ips`") && stderr.contains("FORWARDED_ALLOW_IPS"), "{stderr}");
}
