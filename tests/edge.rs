//! The nginx edge (`conf/nginx/`) end to end: the shipped templates rendered like the container renders them,
//! Debian's nginx on loopback ports, in front of the real `supervisor` binary (and a real PostgreSQL where
//! items are created). docs/edge.md describes the edge.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use test_support::app_checks::{
    assert_error, check_items_crud, check_method_not_allowed, check_validation_errors, create_item,
};
use test_support::http_client::{HttpResponse, get, get_with, parse, raw_exchange, send};
use test_support::nginx::{EdgeOptions, Nginx, conf_dir, default_vars, referenced_vars, render, tls_exchange};
use test_support::pg::{Blackhole, PgServer};
use test_support::*;

/// The security headers every edge response carries (besides the CSP, checked per path).
const FIXED_HEADERS: [(&str, &str); 3] = [
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("x-frame-options", "DENY"),
];

/// The CSP the edge sends for `/api/`, `/healthz` and `/openapi.json` (fixed in the template).
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Generous limits, for tests that are not about rate limiting.
fn unlimited() -> EdgeOptions {
    EdgeOptions::default().var("EDGE_RATE_API", "1000r/s").var("EDGE_BURST_API", "1000")
}

fn base(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A `supervisor` with 2 ready workers, `top` replacing base settings, `DATABASE_URL` if given.
fn api(top: &str, database_url: Option<&str>) -> Server {
    let port = free_port();
    let env: Vec<(&str, &str)> = database_url.map(|u| ("DATABASE_URL", u)).into_iter().collect();
    let server = Server::start_with(binary!(), port, &config_with(port, top, ""), &env, &[]);
    server.wait_workers_ready(2);
    server
}

fn upstream(server: &Server) -> String {
    format!("127.0.0.1:{}", server.port)
}

/// Whether an id follows the API's rule `^[A-Za-z0-9._:-]{1,128}$`.
fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b))
}

/// The security headers, each exactly once, the CSP for the path, exactly one valid X-Request-ID, and HSTS
/// exactly when `tls`. Returns the request id.
fn assert_edge_headers(resp: &HttpResponse, what: &str, tls: Option<&str>) -> String {
    for (name, value) in FIXED_HEADERS {
        assert_eq!(resp.header_all(name), [value], "{name} on {what} ({})", resp.status);
    }
    let permissions = resp.header_all("permissions-policy");
    assert!(permissions.len() == 1 && permissions[0].contains("camera=()"), "Permissions-Policy on {what}");
    let csp = resp.header_all("content-security-policy");
    assert!(csp.len() == 1 && csp[0].contains("frame-ancestors 'none'"), "one CSP with frame-ancestors on {what}");
    let ids = resp.header_all("x-request-id");
    assert_eq!(ids.len(), 1, "exactly one X-Request-ID on {what}: {ids:?}");
    assert!(valid_id(ids[0]), "X-Request-ID {:?} on {what}", ids[0]);
    match tls {
        None => assert!(resp.header("strict-transport-security").is_none(), "HSTS over plain HTTP on {what}"),
        Some(hsts) => assert_eq!(resp.header_all("strict-transport-security"), [hsts], "HSTS over TLS on {what}"),
    }
    ids[0].to_owned()
}

/// An edge error: the contract shape (status, code, JSON content type, request_id = header) and the headers.
fn assert_edge_error(resp: &HttpResponse, status: u16, code: &str, what: &str) {
    assert_error(resp, status, code);
    assert_eq!(resp.header("content-type"), Some("application/json"), "{what}");
    assert_edge_headers(resp, what, None);
}

/// Writes raw bytes to `addr` and parses the answer the server sends before it closes.
fn raw_response(addr: SocketAddr, bytes: &[u8]) -> HttpResponse {
    parse(&raw_exchange(addr, bytes), false).unwrap_or_else(|e| panic!("{e}"))
}

// health, items create/get/delete, SPA deep links and caching, JSON 404 for missing assets.
#[test]
fn routes_items_and_the_spa_through_the_edge() {
    let pg = PgServer::new();
    let output = migrate(binary!(), &pg.url());
    assert!(output.status.success(), "migrate failed: {}", String::from_utf8_lossy(&output.stdout));
    let server = api("", Some(&pg.url()));
    let edge = Nginx::start(&upstream(&server), unlimited());
    let base = base(edge.addr());

    let health = get(&base, "/healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), json!({"status": "ok"}));

    let item = create_item(&base, "through the edge", 3);
    let path = format!("/api/items/{}", item["id"].as_str().unwrap());
    let fetched = get(&base, &path);
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json(), item);
    check_items_crud(&base);
    // The API's own errors pass through (validation details, 405 with Allow).
    check_validation_errors(&base);
    check_method_not_allowed(&base);

    // The API's description, byte for byte as the API serves it, with the edge's headers and the API's CSP.
    let direct = get(&server.base(), "/openapi.json");
    let described = get(&base, "/openapi.json");
    assert_eq!((described.status, &described.body), (200, &direct.body));
    assert_eq!(described.header("content-type"), Some("application/json"));
    assert_eq!(described.json()["openapi"], "3.1.0");
    assert_edge_headers(&described, "/openapi.json", None);
    assert_eq!(described.header("content-security-policy"), Some(API_CSP));

    let index = std::fs::read(conf_dir().join("site/index.html")).unwrap();
    for route in ["/", "/some/route", "/deep/link/42?tab=2", "/index.html"] {
        let page = get(&base, route);
        assert_eq!(page.status, 200, "{route}");
        assert_eq!(page.body, index, "{route} is the SPA shell");
        assert!(page.header("content-type").unwrap().starts_with("text/html"), "{route}");
        assert_eq!(page.header("cache-control"), Some("no-cache"), "{route}");
        assert_edge_headers(&page, route, None);
    }

    let asset = get(&base, "/assets/app.3f9a1c.js");
    assert_eq!(asset.status, 200);
    assert_eq!(asset.body, std::fs::read(conf_dir().join("site/assets/app.3f9a1c.js")).unwrap());
    assert_eq!(asset.header("content-type"), Some("application/javascript"));
    assert_eq!(asset.header("cache-control"), Some("public, max-age=31536000, immutable"));
    assert_edge_headers(&asset, "an asset", None);

    // Never index.html under /assets/: a JSON 404, even with a script's extension.
    for missing in ["/assets/x.js", "/assets/deep/style.css", "/assets/"] {
        let resp = get(&base, missing);
        assert_edge_error(&resp, 404, "not_found", missing);
        assert!(resp.header("cache-control").is_none(), "a 404 is not cached for a year: {missing}");
    }
    // /api without the slash is not the SPA either.
    assert_edge_error(&get(&base, "/api"), 404, "not_found", "/api");
}

// the /api/ zone answers 429s in the contract; /api/auth/ trips its stricter zone first.
#[test]
fn rate_limits_answer_429_in_the_contract_and_auth_trips_first() {
    let server = api("", None);
    let options = EdgeOptions::default()
        .var("EDGE_RATE_API", "1r/s")
        .var("EDGE_BURST_API", "8")
        .var("EDGE_RATE_AUTH", "1r/m")
        .var("EDGE_BURST_AUTH", "1");
    let edge = Nginx::start(&upstream(&server), options);
    let base = base(edge.addr());

    // Auth: 1 + burst 1 pass (the API's own 404: there is no auth route), the third is refused by the edge.
    let auth: Vec<HttpResponse> = (0..3).map(|_| get(&base, "/api/auth/login")).collect();
    assert_eq!(auth.iter().map(|r| r.status).collect::<Vec<_>>(), [404, 404, 429]);
    assert_edge_error(&auth[2], 429, "rate_limited", "an auth 429");
    assert_eq!(auth[2].header("retry-after"), Some(edge.var("EDGE_RETRY_AFTER_AUTH")));
    // The API zone still has room: /api/items passes (the API's own 404 for an id that is no UUID).
    let passed = get_with(&base, "/api/items/not-a-uuid", &[("X-Request-ID", "still-passes")]);
    assert_eq!(passed.status, 404);
    assert!(server.pid_of_request("still-passes") > 0, "the API answered");

    // A burst past the API zone: 429s in the contract shape, request_id = header, security headers.
    let burst: Vec<HttpResponse> =
        (0..20).map(|i| get_with(&base, "/api/items/x", &[("X-Request-ID", &format!("burst-{i}"))])).collect();
    let limited: Vec<&HttpResponse> = burst.iter().filter(|r| r.status == 429).collect();
    assert!(limited.len() >= 8, "{} of 20 refused", limited.len());
    assert!(burst.iter().all(|r| r.status == 429 || r.status == 404), "only passes and 429s");
    for resp in &limited {
        assert_edge_error(resp, 429, "rate_limited", "an API 429");
        assert!(resp.json()["request_id"].as_str().unwrap().starts_with("burst-"));
        assert_eq!(resp.header("retry-after"), Some(edge.var("EDGE_RETRY_AFTER_API")));
    }
    // Refusals are the edge's: logged there with status 429 and no upstream, never seen by the API.
    let refused_id = limited.last().unwrap().json()["request_id"].as_str().unwrap().to_owned();
    let refused = edge.wait_access_log(&refused_id);
    assert_eq!((refused["status"].as_u64(), refused["upstream"].as_str()), (Some(429), Some("")));
    assert!(server.stdout.json().iter().all(|l| field(l, "request_id") != refused_id), "the API saw {refused_id}");
}

// every kind of response carries the security headers and one request id, and no
// HSTS; nginx's own errors are JSON in the contract; the API's errors pass through byte for byte.
#[test]
fn every_response_carries_the_security_headers_and_one_request_id() {
    let mut server = api("", None);
    let options = EdgeOptions::default()
        .var("EDGE_CLIENT_MAX_BODY_SIZE", "1k")
        .var("EDGE_RATE_AUTH", "1r/m")
        .var("EDGE_BURST_AUTH", "1");
    let edge = Nginx::start(&upstream(&server), options);
    let base = base(edge.addr());
    let spa_csp = edge.var("EDGE_CSP").to_owned();
    let csp = |r: &HttpResponse| r.header("content-security-policy").unwrap_or("").to_owned();

    for path in ["/", "/some/route", "/assets/app.3f9a1c.js"] {
        let resp = get(&base, path);
        assert_eq!(resp.status, 200, "{path}");
        assert_edge_headers(&resp, path, None);
        assert_eq!(csp(&resp), spa_csp, "{path}");
    }
    let health = get(&base, "/healthz");
    assert_eq!(health.status, 200);
    assert_edge_headers(&health, "/healthz", None);
    assert_eq!(csp(&health), API_CSP);

    assert_edge_error(&get(&base, "/assets/missing.js"), 404, "not_found", "a static 404");
    assert_edge_error(&send(&base, "POST", "/index.html", &[], Some(b"x")), 405, "method_not_allowed", "POST static");
    let big = vec![b'x'; 4096];
    let too_large = send(&base, "POST", "/api/items", &[("Content-Type", "application/json")], Some(&big));
    assert_edge_error(&too_large, 413, "payload_too_large", "a 413");
    assert_eq!(csp(&too_large), API_CSP);
    let auth: Vec<HttpResponse> = (0..3).map(|_| get(&base, "/api/auth/x")).collect();
    assert_edge_error(&auth[2], 429, "rate_limited", "a 429");
    let long_uri = format!("/{}", "a".repeat(10_000));
    assert_edge_error(&get(&base, &long_uri), 414, "uri_too_long", "a 414");
    let garbage = raw_response(edge.addr(), b"GARBAGE\r\n\r\n");
    assert_edge_error(&garbage, 400, "bad_request", "an unparsable request line");
    let header = format!("X-Big: {}", "b".repeat(20_000));
    let big_header = raw_response(
        edge.addr(),
        format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{header}\r\n\r\n").as_bytes(),
    );
    assert_edge_error(&big_header, 400, "bad_request", "a header too large");

    // The API's own error passes through untouched: same status, body and type as straight from the API
    // (same request id), plus the edge's headers.
    let id = [("X-Request-ID", "passthrough-1")];
    let direct = get_with(&server.base(), "/api/items/not-a-uuid", &id);
    let proxied = get_with(&base, "/api/items/not-a-uuid", &id);
    assert_eq!((proxied.status, &proxied.body), (direct.status, &direct.body));
    assert_eq!(proxied.header("content-type"), direct.header("content-type"));
    assert_eq!(assert_edge_headers(&proxied, "an API 404", None), "passthrough-1");
    assert_eq!(csp(&proxied), API_CSP);

    // The API stopped: 502 in the contract, for /api/ and /healthz alike.
    let pid = server.pid;
    let workers = server.workers();
    signal(pid, libc::SIGKILL);
    for w in workers {
        signal(w, libc::SIGKILL);
    }
    server.wait_exit(Duration::from_secs(5));
    wait_for(Duration::from_secs(5), "the API's port to refuse connections", || {
        TcpStream::connect(server.addr()).is_err().then_some(())
    });
    assert_edge_error(&get(&base, "/api/items/x"), 502, "bad_gateway", "a 502");
    assert_edge_error(&get(&base, "/healthz"), 502, "bad_gateway", "a 502 on /healthz");
    // Static files do not need the API.
    assert_eq!(get(&base, "/").status, 200);
}

// an upstream that accepts and never answers gets nginx's 504 in the contract.
#[test]
fn an_upstream_that_never_answers_is_a_json_504() {
    let blackhole = Blackhole::new();
    let options = EdgeOptions::default().var("EDGE_PROXY_READ_TIMEOUT", "1s");
    let edge = Nginx::start(&format!("127.0.0.1:{}", blackhole.port()), options);
    let started = Instant::now();
    let resp = get_with(&base(edge.addr()), "/api/items", &[("X-Request-ID", "slow-1")]);
    assert_edge_error(&resp, 504, "timeout", "a 504");
    assert_eq!(resp.json()["request_id"], "slow-1");
    assert!(started.elapsed() < Duration::from_secs(10), "the read timeout applied: {:?}", started.elapsed());
}

// One client address with more requests in progress than EDGE_CONN_PER_CLIENT gets 429 in the contract.
#[test]
fn requests_in_progress_per_client_are_limited() {
    let blackhole = Blackhole::new();
    let options = unlimited().var("EDGE_CONN_PER_CLIENT", "2").var("EDGE_PROXY_READ_TIMEOUT", "10s");
    let edge = Nginx::start(&format!("127.0.0.1:{}", blackhole.port()), options);
    // Two requests held by an upstream that never answers.
    let held: Vec<TcpStream> = (0..2)
        .map(|i| {
            let mut stream = TcpStream::connect(edge.addr()).unwrap();
            write!(stream, "GET /api/items HTTP/1.1\r\nHost: x\r\nX-Request-ID: held-{i}\r\n\r\n").unwrap();
            stream
        })
        .collect();
    wait_for(Duration::from_secs(5), "both held requests at the upstream", || {
        (blackhole.accepted() >= 2).then_some(())
    });
    let resp = get_with(&base(edge.addr()), "/api/items", &[("X-Request-ID", "third-1")]);
    assert_edge_error(&resp, 429, "rate_limited", "a 429");
    assert_eq!(resp.json()["request_id"], "third-1");
    drop(held);
}

// the TLS variant sends HSTS on every response, errors included; plain HTTP never does.
#[test]
fn the_tls_variant_sends_hsts() {
    let server = api("", None);
    let edge = Nginx::start(&upstream(&server), EdgeOptions::default().tls());
    let hsts = edge.var("EDGE_HSTS").to_owned();
    let over_tls = |path: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        parse(&tls_exchange(edge.tls_addr(), &request), false).unwrap_or_else(|e| panic!("{e}"))
    };

    let page = over_tls("/some/route");
    assert_eq!(page.status, 200, "{}", page.text());
    assert_edge_headers(&page, "a page over TLS", Some(&hsts));
    let health = over_tls("/healthz");
    assert_eq!(health.status, 200);
    assert_edge_headers(&health, "/healthz over TLS", Some(&hsts));
    let missing = over_tls("/assets/missing.js");
    assert_error(&missing, 404, "not_found");
    assert_edge_headers(&missing, "a 404 over TLS", Some(&hsts));
    let blocked = over_tls("/metrics");
    assert_error(&blocked, 403, "forbidden");
    assert_edge_headers(&blocked, "a 403 over TLS", Some(&hsts));

    // Plain HTTP to the TLS port is redirected to HTTPS.
    let plain_to_tls = get(&base(edge.tls_addr()), "/some/route");
    assert_eq!(plain_to_tls.status, 301);
    let location = format!("https://{}/some/route", edge.tls_addr());
    assert_eq!(plain_to_tls.header("location"), Some(location.as_str()));

    // The same edge over plain HTTP: no HSTS.
    assert_edge_headers(&get(&base(edge.addr()), "/some/route"), "the plain server", None);
    assert_edge_headers(&get(&base(edge.addr()), "/healthz"), "the plain server", None);
}

// a valid client id is forwarded, echoed once and logged by both; an invalid one is replaced by
// an edge-generated id that the API logs too; a line break never carries anything into the id. Both
// access logs have the path without the query string.
#[test]
fn request_ids_are_forwarded_echoed_logged_or_replaced() {
    let server = api("", None);
    let edge = Nginx::start(&upstream(&server), unlimited());
    let base = base(edge.addr());
    let api_logged = |id: &str| {
        server.wait_log(Duration::from_secs(5), &format!("the API's access log line of {id}"), |l| {
            field(l, "target") == "access" && field(l, "request_id") == id
        })
    };

    let resp = get_with(&base, "/healthz", &[("X-Request-ID", "abc-123")]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header_all("x-request-id"), ["abc-123"]);
    assert_eq!(api_logged("abc-123")["path"], "/healthz");
    let logged = edge.wait_access_log("abc-123");
    assert_eq!((logged["status"].as_u64(), logged["path"].as_str()), (Some(200), Some("/healthz")));
    // The API sees the client's address, not the edge's forwarding header as sent by the client.
    assert_eq!(api_logged("abc-123")["client"], "127.0.0.1");

    // A query string may carry a secret: both logs have the path as sent, neither has the query. The SPA
    // fallback is logged under the requested path, not the /index.html it was served from.
    for (id, path, query, proxied) in [
        ("query-api", "/healthz", "access_token=s3cr3t", true),
        ("query-spa", "/deep/link/42", "sig=s3cr3t&tab=2", false),
    ] {
        assert_eq!(get_with(&base, &format!("{path}?{query}"), &[("X-Request-ID", id)]).status, 200, "{path}");
        let logged = edge.wait_access_log(id);
        assert_eq!(logged["path"], path);
        assert!(!logged.to_string().contains("s3cr3t"), "the edge logged the query: {logged}");
        if proxied {
            let api_line = api_logged(id);
            assert_eq!(api_line["path"], path);
            assert!(!api_line.to_string().contains("s3cr3t"), "the API logged the query: {api_line}");
        }
    }

    // Without an id, and with ids that could break a header, a log line or a JSON body: a generated id.
    let too_long = "x".repeat(129);
    let cases = [None, Some("a\"b"), Some(r#"a","x":"y"#), Some("has space"), Some("a\\nb"), Some(too_long.as_str())];
    let mut seen = Vec::new();
    for client_id in cases {
        let headers: Vec<(&str, &str)> = client_id.map(|id| ("X-Request-ID", id)).into_iter().collect();
        let resp = get_with(&base, "/api/items/not-a-uuid", &headers);
        let id = assert_error(&resp, 404, "not_found")["request_id"].as_str().unwrap().to_owned();
        assert_eq!(resp.header_all("x-request-id"), [id.as_str()], "one id");
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "an edge-generated id: {id:?}");
        assert_ne!(Some(id.as_str()), client_id);
        // The API logged the edge's id, so the two logs join on it.
        assert_eq!(api_logged(&id)["path"], "/api/items/not-a-uuid");
        edge.wait_access_log(&id);
        seen.push(id);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), cases.len(), "every generated id is new");

    // A raw line break cannot travel inside an HTTP/1.1 header value. A CR is refused with a JSON 400 and a
    // generated id; a bare LF ends the value (nginx keeps "abc", a valid id) and what follows is never used.
    let cr = raw_response(edge.addr(), b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: abc\rdef\r\n\r\n");
    assert_error(&cr, 400, "bad_request");
    assert!(!cr.header("x-request-id").unwrap().contains("abc"));
    let lf = raw_response(
        edge.addr(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: abc\ninjected\r\nConnection: close\r\n\r\n",
    );
    let id = lf.header("x-request-id").unwrap().to_owned();
    assert!(valid_id(&id) && !id.contains("injected"), "{id:?}");
    if lf.status == 400 {
        assert_error(&lf, 400, "bad_request");
    } else {
        assert_eq!((lf.status, id.as_str()), (200, "abc"));
    }
}

// /metrics and /readyz are not reachable through the edge, however the path is spelled.
#[test]
fn internal_endpoints_are_not_reachable_from_outside() {
    let server = api("", None);
    let edge = Nginx::start(&upstream(&server), unlimited());
    let base = base(edge.addr());
    // The API itself answers /readyz (503 without a database): the edge is what hides it.
    assert_error(&get(&server.base(), "/readyz"), 503, "not_ready");

    for path in ["/metrics", "/readyz", "/metrics?format=text", "/readyz?verbose=1", "//metrics", "/api/../readyz"] {
        for method in ["GET", "POST"] {
            let resp = send(&base, method, path, &[], None);
            assert_edge_error(&resp, 403, "forbidden", &format!("{method} {path}"));
        }
    }
    // None of them reached the API: its only /readyz access line is the direct request above. The worker
    // logs that line after answering, so it may still be on its way.
    server.wait_log(Duration::from_secs(5), "the access line of the direct /readyz", |l| {
        field(l, "target") == "access" && field(l, "path") == "/readyz"
    });
    let reached: Vec<String> = server
        .stdout
        .json()
        .iter()
        .filter(|l| field(l, "target") == "access")
        .map(|l| field(l, "path"))
        .filter(|p| p.contains("metrics") || p.contains("readyz"))
        .collect();
    assert_eq!(reached, ["/readyz"]);
}

// the edge drops idle upstream connections before the API does, so a POST sent after the
// connection sat idle longer than the API's keepalive is never written onto a connection the API closes.
#[test]
fn a_post_after_the_api_keepalive_is_not_a_502() {
    let pg = PgServer::new();
    let output = migrate(binary!(), &pg.url());
    assert!(output.status.success(), "migrate failed: {}", String::from_utf8_lossy(&output.stdout));
    // The API closes idle connections after 2 s; the edge after 250 ms.
    let server = api("keepalive = 2", Some(&pg.url()));
    let edge = Nginx::start(&upstream(&server), unlimited().var("EDGE_UPSTREAM_KEEPALIVE_TIMEOUT", "250ms"));
    let body = serde_json::to_vec(&json!({"name": "idle", "quantity": 1})).unwrap();
    let headers = ["Content-Type: application/json"];
    // One client connection, so both POSTs go through the same nginx worker and its upstream connection cache.
    let mut client = Conn::open(edge.addr()).unwrap();

    let first = client.send("POST", "/api/items", &headers, &body).unwrap();
    assert_eq!(first.status, 201, "{}", first.text());
    let answered = Instant::now();
    // The edge closes its idle upstream connection first: well within the API's 2 s keepalive, nginx holds no
    // established connection to the API any more.
    wait_for(Duration::from_millis(1500), "the edge to close its idle upstream connection", || {
        (established_to(server.port) == 0).then_some(())
    });
    // Then let the idle time pass the API's keepalive. Nothing can be polled here: the point of the test is
    // that the clock runs past the API's idle timeout before the next request, so it waits (bounded: 2.5 s
    // after the last response).
    std::thread::sleep(Duration::from_millis(2500).saturating_sub(answered.elapsed()));

    let second = client.send("POST", "/api/items", &headers, &body).unwrap();
    assert_eq!(second.status, 201, "a POST after the idle time: {}", second.text());
    let third = client.send("POST", "/api/items", &headers, &body).unwrap();
    assert_eq!(third.status, 201, "{}", third.text());
    assert!(!edge.error_log().contains("upstream prematurely closed"), "{}", edge.error_log());
}

/// The defaults plus the TLS variables: every variable any shipped template references.
fn all_vars() -> BTreeMap<String, String> {
    let mut vars = default_vars();
    vars.insert("EDGE_TLS_LISTEN".into(), "443".into());
    vars.insert("EDGE_TLS_CERT".into(), "/etc/nginx/tls/cert.pem".into());
    vars.insert("EDGE_TLS_KEY".into(), "/etc/nginx/tls/key.pem".into());
    vars
}

/// The shipped templates plus the TLS variant, in one directory (as a TLS deployment mounts them).
fn all_templates(dir: &TempDir) -> std::path::PathBuf {
    let templates = dir.join("templates");
    test_support::nginx::copy_tree(&conf_dir().join("templates"), &templates);
    std::fs::copy(conf_dir().join("tls/https.conf.template"), templates.join("https.conf.template")).unwrap();
    templates
}

/// Runs conf/nginx/render.sh with exactly these variables (and PATH) in its environment.
fn render_sh(templates: &Path, out: &Path, vars: &BTreeMap<String, String>) -> std::process::Output {
    Command::new("sh")
        .arg(conf_dir().join("render.sh"))
        .arg(templates)
        .arg(out)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(vars)
        .output()
        .expect("running render.sh")
}

/// Every file under `dir`, relative path -> content.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(relative, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

// a missing (or empty) variable stops rendering, named, before nginx starts; render.sh (what
// the container runs) does the same and renders exactly what the test renderer renders.
#[test]
fn rendering_fails_naming_a_missing_variable() {
    let err = Nginx::try_start("127.0.0.1:9", EdgeOptions::default().unset("EDGE_RATE_API")).err().expect("an error");
    assert!(err.contains("EDGE_RATE_API is not set") && err.contains("edge.conf.template:"), "{err}");
    let err = Nginx::try_start("127.0.0.1:9", EdgeOptions::default().var("EDGE_BURST_AUTH", "")).err().expect("error");
    assert!(err.contains("EDGE_BURST_AUTH is not set") && err.contains("site.conf.template:"), "{err}");

    let dir = TempDir::new("render");
    let templates = all_templates(&dir);
    for missing in ["EDGE_RATE_API", "EDGE_API_UPSTREAM", "EDGE_TLS_CERT"] {
        let mut vars = all_vars();
        vars.remove(missing);
        let out = dir.join(&format!("out-{missing}"));
        let output = render_sh(&templates, &out, &vars);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "render.sh without {missing}: {stderr}");
        assert!(stderr.contains(&format!("{missing} is not set")), "{stderr}");
        assert!(tree(&out).is_empty(), "render.sh wrote files although {missing} is missing");
        let rust = render(&templates, &dir.join(&format!("rust-{missing}")), &vars).unwrap_err();
        assert!(rust.contains(&format!("{missing} is not set")), "{rust}");
    }
    let mut vars = all_vars();
    vars.insert("EDGE_CSP".into(), String::new());
    let output = render_sh(&templates, &dir.join("out-empty"), &vars);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("EDGE_CSP is not set"));

    // With everything set, both renderers write the same files, with no placeholder left, and variables
    // outside the EDGE_ prefix (here one named like an nginx variable) are not substituted.
    let mut vars = all_vars();
    vars.insert("uri".into(), "clobbered".into());
    vars.insert("request_id".into(), "clobbered".into());
    let (sh_out, rust_out) = (dir.join("sh"), dir.join("rust"));
    let output = render_sh(&templates, &sh_out, &vars);
    assert!(output.status.success(), "render.sh: {}", String::from_utf8_lossy(&output.stderr));
    render(&templates, &rust_out, &vars).unwrap();
    let (sh_tree, rust_tree) = (tree(&sh_out), tree(&rust_out));
    assert_eq!(sh_tree.keys().collect::<Vec<_>>(), ["edge.conf", "https.conf", "locations/site.conf"]);
    assert_eq!(sh_tree, rust_tree, "render.sh and the test renderer disagree");
    for (name, text) in &sh_tree {
        assert!(!text.contains("${EDGE_") && !text.contains("$EDGE_"), "placeholder left in {name}");
        assert!(!text.contains("clobbered"), "a variable outside the filter was substituted in {name}");
    }
    assert!(sh_tree["edge.conf"].contains(&format!("rate={};", vars["EDGE_RATE_API"])));
    assert!(sh_tree["edge.conf"].contains("$request_id;"), "nginx's own variables are left alone");
}

// The knobs are consistent: edge.env defines every variable the default templates use (no more), the TLS
// template adds only its three, docs/edge.md documents each one, and compose/prod.yml's default upstream is
// edge.env's.
#[test]
fn every_variable_has_a_default_and_documentation() {
    let read = |p: &str| std::fs::read_to_string(conf_dir().join(p)).unwrap();
    let dir = TempDir::new("knobs");
    let templates = dir.join("templates");
    test_support::nginx::copy_tree(&conf_dir().join("templates"), &templates);
    let mut used: Vec<String> = ["edge.conf.template", "locations/site.conf.template"]
        .iter()
        .flat_map(|t| referenced_vars(&read(&format!("templates/{t}"))))
        .collect();
    used.sort();
    used.dedup();
    let defaults: Vec<String> = default_vars().into_keys().collect();
    assert_eq!(used, defaults, "edge.env vs the templates");
    assert_eq!(referenced_vars(&read("tls/https.conf.template")), ["EDGE_TLS_CERT", "EDGE_TLS_KEY", "EDGE_TLS_LISTEN"]);
    let docs = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/edge.md")).unwrap();
    for name in used.iter().chain(["EDGE_TLS_LISTEN", "EDGE_TLS_CERT", "EDGE_TLS_KEY"].map(String::from).iter()) {
        assert!(docs.contains(&format!("`{name}`")), "docs/edge.md does not document {name}");
    }
    // The defaults render.
    render(&templates, &dir.join("out"), &default_vars()).unwrap();
    // compose/prod.yml restates the upstream's default, so that a host sets it once in compose/.env.
    let prod = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("compose/prod.yml")).unwrap();
    let restated = format!("EDGE_API_UPSTREAM: \"${{EDGE_API_UPSTREAM:-{}}}\"", default_vars()["EDGE_API_UPSTREAM"]);
    assert!(prod.contains(&restated), "compose/prod.yml does not restate edge.env's default: {restated}");

    // The sample SPA works under the default CSP: no inline script or style, scripts from /assets/ only.
    let index = read("site/index.html");
    assert!(!index.contains("style=") && !index.contains("<style"), "inline style in index.html");
    for script in index.split("<script").skip(1) {
        let src = script.split("src=\"").nth(1).and_then(|s| s.split('"').next()).expect("script with src");
        assert!(src.starts_with("/assets/") && conf_dir().join("site").join(&src[1..]).is_file(), "{src}");
        assert!(script.split('>').nth(1).is_some_and(|s| s.starts_with("</script")), "inline script body");
    }
    let csp = &default_vars()["EDGE_CSP"];
    assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'") && !csp.contains("unsafe"));
}
