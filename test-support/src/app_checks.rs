//! HTTP assertions on the app's contract (docs/http-api.md), each taking the base URL of a running server, so
//! the same checks run against the app served in-process, against the real `supervisor` binary and through
//! the edge. Checks that create items never assume an empty table, so they can share a database.
//!
//! Every request a check sends goes through [`send`] (or [`get`], [`get_with`], [`post_json`]), which checks the
//! answer against the API description the server itself serves at `/openapi.json` ([`Description::check`]):
//! a status, header, content type or body field the description does not declare fails the check, so the
//! description cannot drift from what the code answers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};

use crate::http_client::{self, HttpResponse};
use crate::openapi::Description;

/// The description `base` serves, fetched once per base URL.
fn description(base: &str) -> Arc<Description> {
    static FETCHED: OnceLock<Mutex<HashMap<String, Arc<Description>>>> = OnceLock::new();
    let mut fetched = FETCHED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    fetched.entry(base.to_owned()).or_insert_with(|| Arc::new(Description::fetch(base))).clone()
}

/// Sends one request (panicking on transport errors) and asserts that the description the server serves
/// declares the answer.
pub fn send(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> HttpResponse {
    let resp = http_client::send(base, method, path, headers, body);
    if let Err(e) = description(base).check(method, path, headers, &resp) {
        panic!("the answer differs from the API description (/openapi.json): {e}");
    }
    resp
}

/// `GET path`, checked like [`send`].
pub fn get(base: &str, path: &str) -> HttpResponse {
    send(base, "GET", path, &[], None)
}

/// `GET path` with extra headers, checked like [`send`].
pub fn get_with(base: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    send(base, "GET", path, headers, None)
}

/// `POST path` with a JSON body, checked like [`send`].
pub fn post_json(base: &str, path: &str, body: &Value) -> HttpResponse {
    let bytes = serde_json::to_vec(body).expect("serialising a request body");
    send(base, "POST", path, &[("Content-Type", "application/json")], Some(&bytes))
}

/// Asserts the error contract: status, JSON content type, exactly the four keys, the code, and
/// `request_id` equal to the `X-Request-ID` header. Returns the body.
pub fn assert_error(resp: &HttpResponse, status: u16, code: &str) -> Value {
    assert_eq!(resp.status, status, "expected {status} {code}, got {}: {}", resp.status, resp.text());
    let content_type = resp.header("content-type").unwrap_or("");
    assert!(content_type.starts_with("application/json"), "content type {content_type:?} for {status}");
    let body = resp.json();
    let object = body.as_object().unwrap_or_else(|| panic!("error body is not an object: {body}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "details", "message", "request_id"], "error body keys: {body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "message: {body}");
    assert!(body["details"].is_object() || body["details"].is_null(), "details: {body}");
    let header = resp.header("x-request-id").unwrap_or_else(|| panic!("no X-Request-ID on {status}"));
    assert_eq!(body["request_id"], header, "request_id vs header: {body}");
    body
}

/// Every response carries a valid `X-Request-ID`.
pub fn assert_request_id(resp: &HttpResponse) -> String {
    let id = resp.header("x-request-id").unwrap_or_else(|| panic!("no X-Request-ID on {}", resp.status));
    assert!(
        (1..=128).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')),
        "invalid request id {id:?}"
    );
    id.to_owned()
}

pub fn check_healthz(base: &str) {
    let resp = get(base, "/healthz");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json(), json!({"status": "ok"}));
    assert_request_id(&resp);
}

/// HEAD is answered like GET, without a body.
pub fn check_head(base: &str) {
    let resp = send(base, "HEAD", "/healthz", &[], None);
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_empty());
    assert_request_id(&resp);
}

pub fn check_readyz_ready(base: &str) {
    let resp = get(base, "/readyz");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json(), json!({"status": "ready", "checks": {"database": "ok", "migrations": "ok"}}));
}

/// Asserts a 503 `not_ready` whose details name `check` as failing with `status`. Returns the details.
pub fn check_readyz_not_ready(base: &str, check: &str, status: &str) -> Value {
    let resp = get(base, "/readyz");
    let body = assert_error(&resp, 503, "not_ready");
    let details = &body["details"];
    assert_eq!(details["checks"][check], status, "{body}");
    assert!(details["failing"].as_array().is_some_and(|f| f.contains(&json!(check))), "{body}");
    details.clone()
}

/// A valid client id is echoed; invalid ones are replaced by a generated id.
pub fn check_request_id_echo(base: &str) {
    let resp = get_with(base, "/healthz", &[("X-Request-ID", "client-id_1.2:3")]);
    assert_eq!(resp.header("x-request-id"), Some("client-id_1.2:3"));
    let resp = get_with(base, "/nope", &[("X-Request-ID", "client-id-404")]);
    assert_eq!(assert_error(&resp, 404, "not_found")["request_id"], "client-id-404");

    let too_long = "a".repeat(129);
    for invalid in [too_long.as_str(), "has\"quotes\"", "has space", "tab\there", "semi;colon"] {
        let resp = get_with(base, "/healthz", &[("X-Request-ID", invalid)]);
        let id = assert_request_id(&resp);
        assert_ne!(id, invalid);
    }
    // Two requests without an id get different ids.
    assert_ne!(assert_request_id(&get(base, "/healthz")), assert_request_id(&get(base, "/healthz")));
}

pub fn check_not_found(base: &str) {
    assert_error(&get(base, "/no/such/route"), 404, "not_found");
    assert_error(&get(base, "/api/items/not-a-uuid"), 404, "not_found");
    assert_error(&get(base, "/api/items/0190c6d8-0000-7000-8000-000000000000"), 404, "not_found");
}

pub fn check_method_not_allowed(base: &str) {
    let resp = send(base, "DELETE", "/healthz", &[], None);
    assert_error(&resp, 405, "method_not_allowed");
    assert_eq!(resp.header("allow"), Some("GET, HEAD"));
    let resp = send(base, "PUT", "/api/items", &[("Content-Type", "application/json")], Some(b"{}"));
    assert_error(&resp, 405, "method_not_allowed");
    assert_eq!(resp.header("allow"), Some("GET, HEAD, POST"));
}

pub fn check_unsupported_media_type(base: &str) {
    let body = br#"{"name": "x", "quantity": 1}"#;
    let resp = send(base, "POST", "/api/items", &[("Content-Type", "text/plain")], Some(body));
    assert_error(&resp, 415, "unsupported_media_type");
    let resp = send(base, "POST", "/api/items", &[], Some(body));
    assert_error(&resp, 415, "unsupported_media_type");
}

pub fn check_malformed_json(base: &str) {
    for body in [&b"{\"name\": "[..], b"not json", b""] {
        let resp = send(base, "POST", "/api/items", &[("Content-Type", "application/json")], Some(body));
        assert_error(&resp, 400, "bad_request");
    }
}

/// 422 with per-field details for each kind of invalid payload.
pub fn check_validation_errors(base: &str) {
    let cases = [
        (json!({"name": "", "quantity": 1}), "name"),
        (json!({"name": "x".repeat(201), "quantity": 1}), "name"),
        (json!({"name": "ok", "quantity": -1}), "quantity"),
        (json!({"name": 42, "quantity": 1}), "name"),
        (json!({"name": "ok", "quantity": "1"}), "quantity"),
        (json!({"name": "ok", "quantity": 1.5}), "quantity"),
        (json!({"name": "ok"}), "quantity"),
    ];
    for (payload, field) in cases {
        let resp = post_json(base, "/api/items", &payload);
        let body = assert_error(&resp, 422, "validation_error");
        let fields = body["details"]["fields"].as_array().unwrap_or_else(|| panic!("no fields: {body}"));
        assert!(
            fields.iter().any(|f| f["field"] == field && f["message"].as_str().is_some_and(|m| !m.is_empty())),
            "expected an error on {field} for {payload}: {body}"
        );
    }
    let resp = get(base, "/api/items?limit=1000");
    assert_error(&resp, 422, "validation_error");
    let resp = get(base, "/api/items?after=garbage");
    assert_error(&resp, 422, "validation_error");
}

/// A body over `limit_bytes`, declared with Content-Length and streamed chunked, is a 413.
pub fn check_payload_too_large(base: &str, limit_bytes: usize) {
    let mut body = br#"{"name": ""#.to_vec();
    body.extend(std::iter::repeat_n(b'x', limit_bytes));
    body.extend_from_slice(br#"", "quantity": 1}"#);
    let resp = send(base, "POST", "/api/items", &[("Content-Type", "application/json")], Some(&body));
    assert_eq!(assert_error(&resp, 413, "payload_too_large")["details"]["limit_bytes"], limit_bytes);

    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let headers = [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")];
    let resp = send(base, "POST", "/api/items", &headers, Some(&chunked));
    assert_error(&resp, 413, "payload_too_large");
}

/// `/debug/panic` answers 500 in the contract without the panic text, and the server keeps serving.
pub fn check_panic_is_500(base: &str) {
    let resp = get(base, "/debug/panic");
    let body = assert_error(&resp, 500, "internal_error");
    assert!(!resp.text().contains("panic requested"), "the panic text leaked: {body}");
    assert_eq!(body["details"], Value::Null);
    check_healthz(base);
}

/// A request that outlives the deadline is a 504; `sleep_ms` must exceed the server's request timeout.
pub fn check_timeout_is_504(base: &str, sleep_ms: u64) {
    let resp = get(base, &format!("/debug/sleep?ms={sleep_ms}"));
    assert_error(&resp, 504, "timeout");
    check_healthz(base);
}

/// Creates an item and checks its representation; returns it.
pub fn create_item(base: &str, name: &str, quantity: i64) -> Value {
    let resp = post_json(base, "/api/items", &json!({"name": name, "quantity": quantity}));
    assert_eq!(resp.status, 201, "{}", resp.text());
    let item = resp.json();
    assert_eq!(item["name"], name);
    assert_eq!(item["quantity"], quantity);
    let id = item["id"].as_str().expect("id");
    assert_eq!(id.len(), 36, "uuid: {id}");
    assert!(item["created_at"].as_str().is_some_and(|t| t.ends_with('Z') && t.contains('T')), "{item}");
    assert_eq!(resp.header("location"), Some(format!("/api/items/{id}").as_str()));
    item
}

pub fn check_items_crud(base: &str) {
    let item = create_item(base, &"n".repeat(200), 0);
    let path = format!("/api/items/{}", item["id"].as_str().unwrap());
    let resp = get(base, &path);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), item);
    let resp = send(base, "DELETE", &path, &[], None);
    assert_eq!(resp.status, 204, "{}", resp.text());
    assert!(resp.body.is_empty());
    assert_error(&send(base, "DELETE", &path, &[], None), 404, "not_found");
    assert_error(&get(base, &path), 404, "not_found");
}

/// Creates 7 items and walks `limit=3` pages to the end: at least 3 pages, no item twice, ours in creation
/// order, `next` null on the last page.
pub fn check_pagination(base: &str) {
    let ours: Vec<String> =
        (0..7).map(|i| create_item(base, &format!("page-item-{i}"), i)["id"].as_str().unwrap().to_owned()).collect();
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            None => "/api/items?limit=3".to_owned(),
            Some(cursor) => format!("/api/items?limit=3&after={cursor}"),
        };
        let resp = get(base, &path);
        assert_eq!(resp.status, 200, "{}", resp.text());
        let page = resp.json();
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
        pages += 1;
        assert!(pages < 10_000, "pagination does not end");
        match &page["next"] {
            Value::Null => break,
            Value::String(cursor) => next = Some(cursor.clone()),
            other => panic!("next is {other}"),
        }
    }
    assert!(pages >= 3, "only {pages} pages");
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an item appeared twice");
    let order: Vec<&String> = seen.iter().filter(|id| ours.contains(id)).collect();
    assert_eq!(order, ours.iter().collect::<Vec<_>>(), "our items, in creation order");
}

/// `allowed` is listed in the server's CORS origins; `https://evil.example` is not.
pub fn check_cors(base: &str, allowed: &str) {
    let preflight = |origin: &str| {
        let headers = [
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ];
        send(base, "OPTIONS", "/api/items", &headers, None)
    };
    let ok = preflight(allowed);
    assert_eq!(ok.status, 204, "{}", ok.text());
    assert_eq!(ok.header("access-control-allow-origin"), Some(allowed));
    let methods = ok.header("access-control-allow-methods").unwrap_or("");
    assert!(methods.contains("POST") && methods.contains("GET"), "{methods}");
    assert!(ok.header("access-control-allow-headers").unwrap_or("").contains("content-type"));
    assert!(ok.header_all("vary").iter().any(|v| v.contains("Origin")));

    let refused = preflight("https://evil.example");
    assert!(refused.headers.iter().all(|(n, _)| !n.starts_with("access-control-")), "{:?}", refused.headers);

    let resp = get_with(base, "/healthz", &[("Origin", allowed)]);
    assert_eq!(resp.header("access-control-allow-origin"), Some(allowed));
    assert!(resp.header_all("vary").iter().any(|v| v.contains("Origin")));
    let resp = get_with(base, "/healthz", &[("Origin", "https://evil.example")]);
    assert!(resp.headers.iter().all(|(n, _)| !n.starts_with("access-control-")), "{:?}", resp.headers);
}
