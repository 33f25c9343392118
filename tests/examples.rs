//! The example applications (examples/) run under the supervisor as any user's service would: an axum
//! router with server-sent events and a WebSocket, and a bare hyper `service_fn`. What the binary of this
//! repository gets, they get: reloads that lose nothing, streamed responses, upgrades, graceful stops,
//! `max_connections`, request limits and the heartbeat timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libc::{SIGHUP, SIGTERM};
use test_support::*;

/// The example `name`, started with `top` as its config file (loopback, free port).
fn example(name: &str, top: &str) -> Server {
    let port = free_port();
    let config = format!("bind = [\"127.0.0.1:{port}\"]\nboot_timeout = 10\n{top}\n");
    Server::start_with(&example_binary(name), port, &config, &[], &[])
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
}

/// A WebSocket to the example's `/ws`.
fn websocket(server: &Server) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (socket, response) = tungstenite::client(format!("ws://{}/ws", server.addr()), stream).expect("a handshake");
    assert_eq!(response.status(), 101);
    socket
}

fn echo(socket: &mut tungstenite::WebSocket<TcpStream>, text: &str) {
    socket.send(tungstenite::Message::text(text)).unwrap();
    match socket.read().unwrap() {
        tungstenite::Message::Text(echoed) => assert_eq!(echoed.as_str(), text),
        other => panic!("expected the echo, got {other:?}"),
    }
}

// Both examples serve from every worker, and the axum one through a HUP reload under load without losing a
// request.
#[test]
fn the_examples_serve_and_reload_under_load_without_losing_a_request() {
    let hyper = example("hyper", "workers = 2");
    hyper.wait_workers_ready(2);
    let r = conn::get(hyper.addr(), "/hello").unwrap();
    assert_eq!((r.status, r.text()), (200, "hello from a worker: GET /hello\n".to_string()));
    let lines = hyper.stdout.json();
    assert!(lines.iter().any(|l| field(l, "msg") == "worker accepting connections"), "the example logs as JSON");

    let server = example("axum", "workers = 2\ngraceful_timeout = 5");
    let before = server.wait_workers_ready(2);
    let load = Load::start(server.addr(), "/", 4, 2);
    wait_for(Duration::from_secs(10), "requests under load", || {
        (conn::get(server.addr(), "/").ok()?.status == 200).then_some(())
    });
    server.signal(SIGHUP);
    server.wait_log(Duration::from_secs(15), "the reload to complete", |l| {
        field(l, "msg") == "reload complete: new generation ready, retiring the previous one"
    });
    let after = wait_for(Duration::from_secs(15), "the old generation gone", || {
        let workers = server.workers();
        (workers.len() == 2 && workers.iter().all(|w| !before.contains(w))).then_some(workers)
    });
    wait_for(Duration::from_secs(10), "the new generation serving", || {
        (conn::get(server.addr(), "/").ok()?.status == 200).then_some(())
    });
    let stats = load.finish();
    assert!(stats.failures.is_empty(), "failed during the reload: {:?}", stats.failures);
    assert!(stats.ok > 0, "the load ran");
    assert_eq!(after.len(), 2);
}

// Server-sent events reach the client one at a time, as the handler produces them: the first arrives before
// the second has even been produced.
#[test]
fn server_sent_events_arrive_one_by_one() {
    let server = example("axum", "workers = 1");
    server.wait_workers_ready(1);
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"GET /events?n=3 HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut seen = String::new();
    let mut events: Vec<(u64, u128, u128)> = Vec::new(); // (n, sent_ms, arrived_ms)
    let mut buf = [0u8; 4096];
    while events.len() < 3 {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended after {} events: {seen}", events.len());
        let arrived = now_ms();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        for line in seen.lines().filter_map(|l| l.strip_prefix("data: ")) {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            let n = event["n"].as_u64().unwrap();
            if events.iter().all(|e| e.0 != n) {
                events.push((n, event["sent_ms"].as_u64().unwrap().into(), arrived));
            }
        }
    }
    assert!(seen.starts_with("HTTP/1.1 200 OK\r\n") && seen.contains("content-type: text/event-stream"), "{seen}");
    assert_eq!(events.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(
        events[0].2 < events[1].1,
        "event 0 arrived at {} ms, after event 1 was sent at {} ms",
        events[0].2,
        events[1].1
    );
    assert!(events[1].2 < events[2].1, "event 1 arrived after event 2 was sent: {events:?}");
}

// A WebSocket echo round-trips through a worker, and the upgraded connection counts towards the worker's
// max_connections as long as it is open.
#[test]
fn websockets_echo_and_count_towards_max_connections() {
    let server = example("axum", "workers = 1\nmax_connections = 2");
    server.wait_workers_ready(1);
    let mut socket = websocket(&server);
    echo(&mut socket, "hello");
    echo(&mut socket, "twice");
    let mut kept = conn::Conn::open(server.addr()).unwrap();
    assert_eq!(kept.get("/").unwrap().status, 200);

    // The WebSocket and the keep-alive connection fill the cap: a third client waits in the backlog.
    let mut third = conn::Conn::open(server.addr()).unwrap();
    third.stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    third.stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut byte = [0u8; 1];
    let waiting = third.stream.read(&mut byte);
    assert!(
        waiting
            .as_ref()
            .is_err_and(|e| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "a third connection was served while the WebSocket held its place: {waiting:?}"
    );
    // Once the WebSocket closes, its place is free.
    socket.close(None).unwrap();
    while socket.read().is_ok() {}
    drop(socket);
    third.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let response = third.read_response().expect("the third client answered once the WebSocket closed");
    assert_eq!(response.status, 200);
}

// On TERM an open event stream and an open WebSocket are closed within graceful_timeout (the WebSocket by the
// app, with a close frame, when the worker starts draining; the endless stream by the supervisor at the
// deadline, naming it), and the master exits 0.
#[test]
fn term_closes_open_streams_and_websockets_within_graceful_timeout() {
    let mut server = example("axum", "workers = 1\ngraceful_timeout = 2");
    server.wait_workers_ready(1);
    let mut socket = websocket(&server);
    echo(&mut socket, "before");
    let mut events = TcpStream::connect(server.addr()).unwrap();
    events.write_all(b"GET /events?n=100000 HTTP/1.1\r\nHost: test\r\nX-Request-ID: endless-1\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    assert!(events.read(&mut buf).unwrap() > 0, "the stream started");

    let term_at = Instant::now();
    server.signal(SIGTERM);
    match socket.read() {
        Ok(tungstenite::Message::Close(_)) => {}
        other => panic!("expected a close frame from the draining worker, got {other:?}"),
    }
    events.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let closed = loop {
        match events.read(&mut buf) {
            Ok(0) | Err(_) => break term_at.elapsed(),
            Ok(_) => continue,
        }
    };
    assert!(closed < Duration::from_secs(4), "the stream was still open {closed:?} after TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(5)).code(), Some(0));
    let line = server.master_logs("worker still busy at its drain deadline: killing it").pop().expect("named");
    assert!(field(&line, "requests").contains("GET /events id=endless-1"), "{line}");
}

// The supervisor's limits apply to any service: a request line over limit_request_line and a request
// without Host are refused by the worker itself; a runtime blocked past timeout gets its worker killed,
// the request named, and a new worker started.
#[test]
fn request_limits_and_the_heartbeat_timeout_apply_to_the_example() {
    let server = example("axum", "workers = 1\ntimeout = 2\nlimit_request_line = 100");
    let first = server.wait_workers_ready(1);
    let long = http_client::raw_exchange(
        server.addr(),
        format!("GET /?{} HTTP/1.1\r\nHost: test\r\n\r\n", "a".repeat(200)).as_bytes(),
    );
    let long = http_client::parse(&long, false).unwrap();
    assert_eq!((long.status, long.header("connection")), (414, Some("close")));
    let missing =
        http_client::parse(&http_client::raw_exchange(server.addr(), b"GET / HTTP/1.1\r\n\r\n"), false).unwrap();
    assert_eq!(missing.status, 400);
    assert!(missing.text().contains("Host"), "{}", missing.text());

    let addr = server.addr();
    let stalled =
        std::thread::spawn(move || conn::request(addr, "GET", "/stall?secs=30", &["X-Request-ID: stall-7"], b""));
    let line = server.wait_log(Duration::from_secs(10), "the timeout", |l| {
        field(l, "msg") == "worker timed out: no heartbeat within timeout, killing it"
    });
    assert_eq!(
        (field(&line, "request_id"), field(&line, "request_path")),
        ("stall-7".to_string(), "/stall".to_string())
    );
    assert!(stalled.join().unwrap().is_err(), "the stalled request died with its worker");
    wait_for(Duration::from_secs(10), "a new worker", || {
        let ready = server.ready_workers();
        (ready.len() == 1 && !ready.contains(&first[0])).then_some(())
    });
    assert_eq!(conn::get(server.addr(), "/").unwrap().status, 200);
}

// `ctl` is part of every service built on the library: the example's own binary asks its master.
#[test]
fn an_example_answers_ctl_like_the_binary() {
    let axum = example_binary("axum");
    let server = example("axum", "workers = 1");
    server.wait_workers_ready(1);
    let out = server.ctl(&axum, &["status", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["pid"].as_i64(), Some(server.pid as i64));
    assert_eq!(status["workers"].as_array().map(Vec::len), Some(1));
    let out = server.ctl(&axum, &["scale", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    server.wait_workers_ready(2);
}
