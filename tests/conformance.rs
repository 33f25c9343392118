//! HTTP/1.1 conformance of the real binary (RFC 9112), bytes written on a socket and the answers read back: the
//! Host rules, message framing and the refusals that keep request smuggling out, pipelining,
//! `Expect: 100-continue`, absolute-form targets. Each case pins who answers (the parser or the app), the status,
//! and whether the connection is closed or kept, so that a change of the HTTP parser (a hyper upgrade) that
//! changes any of them fails here.

use std::time::Duration;

use test_support::app_checks::assert_error;
use test_support::*;

/// Who answers a request, and how.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// A handler of the app, with this status.
    App(u16),
    /// The app, in the error contract (JSON, `code`, `request_id` equal to `X-Request-ID`).
    Contract(u16, &'static str),
    /// The HTTP parser, before the app sees anything: this status, an empty body, no `X-Request-ID`.
    Parser(u16),
}

/// What the server does with the connection after its answer.
#[derive(Clone, Copy, Debug)]
enum After {
    /// Closed, with nothing sent beyond the answer (a request that followed is not answered).
    Closed,
    /// Kept: the same connection answers another request.
    Kept,
}

/// How long a connection that should be closed may stay open; the server's header timeout (`keepalive`) is
/// longer, so that it cannot close a connection that was wrongly kept before this check gives up.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// A server whose idle connections outlive [`CLOSE_WITHIN`].
fn server() -> Server {
    Server::start_ready(binary!(), "workers = 1\nkeepalive = 30", "", 1)
}

/// The bytes of a `POST /api/items` with JSON content, extra header lines (each ending in CRLF) and `body`
/// as it goes on the wire. The app answers the body `{}` with 422 `validation_error` and anything that is
/// not JSON with 400 `bad_request`: its answer tells how the parser framed the body.
fn post(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /api/items HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{headers}\r\n{body}")
        .into_bytes()
}

/// The bytes of a `GET /healthz` with extra header lines (each ending in CRLF).
fn get_healthz(headers: &str) -> Vec<u8> {
    format!("GET /healthz HTTP/1.1\r\nHost: test\r\n{headers}\r\n").into_bytes()
}

/// `{}`, chunked.
const CHUNKED_EMPTY_OBJECT: &str = "2\r\n{}\r\n0\r\n\r\n";

/// Sends `bytes` on a fresh connection and checks the answer and what became of the connection.
fn check(server: &Server, name: &str, bytes: &[u8], answer: Answer, after: After) {
    let mut conn = Conn::open(server.addr()).unwrap();
    conn.write_raw(bytes).unwrap_or_else(|e| panic!("{name}: writing the request: {e}"));
    let response = conn.read_response().unwrap_or_else(|e| panic!("{name}: no answer: {e}"));
    match answer {
        Answer::App(status) => assert_eq!(response.status, status, "{name}: {}", response.text()),
        Answer::Contract(status, code) => {
            assert_error(&response, status, code);
        }
        Answer::Parser(status) => {
            assert_eq!(response.status, status, "{name}: {}", response.text());
            assert!(response.body.is_empty(), "{name}: the parser's answer has a body: {}", response.text());
            assert_eq!(response.header("x-request-id"), None, "{name}: the app answered, not the parser");
        }
    }
    match after {
        After::Closed => {
            let rest = conn.read_until_closed(CLOSE_WITHIN);
            assert!(rest.is_empty(), "{name}: sent more after the answer: {:?}", String::from_utf8_lossy(&rest));
        }
        After::Kept => {
            let next = conn.get("/healthz").unwrap_or_else(|e| panic!("{name}: the connection was not kept: {e}"));
            assert_eq!(next.status, 200, "{name}: the next request on the connection");
        }
    }
}

// RFC 9112 3.2: an HTTP/1.1 request without Host, with two, or with an invalid one is answered 400, in the error
// contract since the app answers it; HTTP/1.0 needs no Host.
#[test]
fn host_rules() {
    let server = server();
    let cases: [(&str, &[u8]); 3] = [
        ("no Host in HTTP/1.1", b"GET /healthz HTTP/1.1\r\n\r\n"),
        ("two Host fields", b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("a Host that is not a host", b"GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n"),
    ];
    for (name, bytes) in cases {
        check(&server, name, bytes, Answer::Contract(400, "bad_request"), After::Closed);
    }
    // A refused request never reaches its handler: this one would answer 500.
    let panic = b"GET /debug/panic HTTP/1.1\r\nHost: a b\r\n\r\n";
    check(
        &server,
        "a refused request to a handler that panics",
        panic,
        Answer::Contract(400, "bad_request"),
        After::Closed,
    );
    check(&server, "HTTP/1.0 without Host", b"GET /healthz HTTP/1.0\r\n\r\n", Answer::App(200), After::Closed);
}

// Message framing (RFC 9112 6): every head that two parsers could frame differently is refused by the parser
// and the connection closed; a body with both Content-Length and Transfer-Encoding is read as chunked,
// answered once, and nothing after it is read as a request.
#[test]
fn framing_refuses_what_could_smuggle_a_request() {
    let server = server();
    let smuggled = "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";
    let te = |value: &str| post(&format!("Transfer-Encoding: {value}\r\n"), CHUNKED_EMPTY_OBJECT);
    let cl = |value: &str| post(&format!("Content-Length: {value}\r\n"), "{}   ");
    let validation = Answer::Contract(422, "validation_error");
    // Refused by the parser, the connection closed; or the body `{}` read, the connection kept.
    let refused = (Answer::Parser(400), After::Closed);
    let read = (validation, After::Kept);
    let http10 = "POST /api/items HTTP/1.0\r\nHost: test\r\nContent-Type: application/json\r\n";
    let cases: Vec<(&str, Vec<u8>, (Answer, After))> = vec![
        // The baselines: the same body framed by each header alone.
        ("chunked", te("chunked"), read),
        ("Content-Length", post("Content-Length: 2\r\n", "{}"), read),
        // Both: chunked wins (Content-Length 7 would frame `2\r\n{}\r`, not JSON), then the connection closes.
        (
            "Content-Length then Transfer-Encoding",
            post("Content-Length: 7\r\nTransfer-Encoding: chunked\r\n", &format!("{CHUNKED_EMPTY_OBJECT}{smuggled}")),
            (validation, After::Closed),
        ),
        (
            "Transfer-Encoding then Content-Length",
            post("Transfer-Encoding: chunked\r\nContent-Length: 7\r\n", &format!("{CHUNKED_EMPTY_OBJECT}{smuggled}")),
            (validation, After::Closed),
        ),
        // Content-Length: two values that differ, a list, and values that are not a decimal number.
        ("conflicting Content-Length", post("Content-Length: 2\r\nContent-Length: 3\r\n", "{} "), refused),
        ("Content-Length as a list", post("Content-Length: 2, 2\r\n", "{}"), refused),
        ("Content-Length: +5", cl("+5"), refused),
        ("Content-Length: -1", cl("-1"), refused),
        ("Content-Length: 0x5", cl("0x5"), refused),
        ("Content-Length:  5 5", cl(" 5 5"), refused),
        // The same length twice is one length (RFC 9112 6.3 allows it).
        ("duplicated identical Content-Length", post("Content-Length: 2\r\nContent-Length: 2\r\n", "{}"), read),
        // Transfer-Encoding: only chunked, last, is a framing; its spelling varies only where the RFC lets it.
        ("unknown Transfer-Encoding", te("gzip"), refused),
        ("Transfer-Encoding: chunked, identity", te("chunked, identity"), refused),
        ("Transfer-Encoding: xchunked", te("xchunked"), refused),
        ("Transfer-Encoding with a vertical tab", te("\x0bchunked"), refused),
        (
            "whitespace between the field name and the colon",
            post("Transfer-Encoding : chunked\r\n", CHUNKED_EMPTY_OBJECT),
            refused,
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!("{http10}Transfer-Encoding: chunked\r\n\r\n{CHUNKED_EMPTY_OBJECT}").into_bytes(),
            refused,
        ),
        ("Transfer-Encoding with more spaces", te(" chunked"), read),
        ("Transfer-Encoding after a tab", post("Transfer-Encoding:\tchunked\r\n", CHUNKED_EMPTY_OBJECT), read),
        ("Transfer-Encoding: CHUNKED", te("CHUNKED"), read),
        (
            "Transfer-Encoding: chunked twice",
            post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", CHUNKED_EMPTY_OBJECT),
            read,
        ),
        // Header lines that are not field lines.
        ("obs-fold", get_healthz("X-Folded: a\r\n b\r\n"), refused),
        (
            "a Transfer-Encoding line folded into the previous field",
            post(" Transfer-Encoding: chunked\r\n", CHUNKED_EMPTY_OBJECT),
            refused,
        ),
        ("a bare CR in a field value", get_healthz("X-Bare: a\rb\r\n"), refused),
        ("a NUL in a field value", get_healthz("X-Nul: a\0b\r\n"), refused),
        // A lone LF ends a line (RFC 9112 2.2 allows it).
        ("LF line ends", b"GET /healthz HTTP/1.1\nHost: test\n\n".to_vec(), (Answer::App(200), After::Kept)),
    ];
    for (name, bytes, (answer, after)) in cases {
        check(&server, name, &bytes, answer, after);
    }
}

// 51 requests written at once are answered in order on the one connection.
#[test]
fn pipelined_requests_are_answered_in_order() {
    const N: usize = 51;
    let server = server();
    let mut bytes = Vec::new();
    for i in 0..N {
        let close = if i == N - 1 { "Connection: close\r\n" } else { "" };
        bytes.extend(get_healthz(&format!("X-Request-ID: pipelined-{i}\r\n{close}")));
    }
    let mut conn = Conn::open(server.addr()).unwrap();
    conn.write_raw(&bytes).unwrap();
    for i in 0..N {
        let response = conn.read_response().unwrap_or_else(|e| panic!("answer {i} of {N}: {e}"));
        assert_eq!(response.status, 200, "answer {i}: {}", response.text());
        assert_eq!(response.header("x-request-id"), Some(format!("pipelined-{i}").as_str()), "answer {i}");
    }
    assert!(conn.read_until_closed(CLOSE_WITHIN).is_empty(), "more than {N} answers");
}

// `Expect: 100-continue` gets the interim answer before the body is sent, then the final one.
#[test]
fn expect_100_continue() {
    let server = server();
    let mut conn = Conn::open(server.addr()).unwrap();
    conn.write_raw(&post("Content-Length: 2\r\nExpect: 100-continue\r\n", "")).unwrap();
    let interim = conn.read_response().unwrap();
    assert_eq!(interim.status, 100);
    conn.write_raw(b"{}").unwrap();
    assert_error(&conn.read_response().unwrap(), 422, "validation_error");
    assert_eq!(conn.get("/healthz").unwrap().status, 200, "the connection is kept");
}

// An absolute-form target is served by its path; its authority, not Host, names the host (RFC 9112 3.2.2).
#[test]
fn absolute_form_targets() {
    let server = server();
    let cases: [(&str, &[u8]); 2] = [
        ("absolute form", b"GET http://test/healthz HTTP/1.1\r\nHost: test\r\n\r\n"),
        ("absolute form naming another host", b"GET http://elsewhere.test/healthz HTTP/1.1\r\nHost: test\r\n\r\n"),
    ];
    for (name, bytes) in cases {
        check(&server, name, bytes, Answer::App(200), After::Kept);
    }
}
