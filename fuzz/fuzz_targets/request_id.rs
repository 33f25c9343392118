//! Request ids (app/src/request_id.rs): a client's `X-Request-ID` is kept iff it matches
//! `^[A-Za-z0-9._:-]{1,128}$`, and is then echoed byte for byte; anything else is replaced by a new id, which is
//! always valid itself (a UUIDv7). Only the first header counts.
//!
//! Input: the header values, as raw bytes, separated by `\n` (a byte no header value can hold).
#![no_main]

use std::sync::LazyLock;

use app::fuzzing::{RequestId, is_valid_request_id};
use hyper::HeaderMap;
use hyper::header::HeaderValue;
use libfuzzer_sys::fuzz_target;

/// The rule as written in the documentation, matched by a regular expression engine.
static RULE: LazyLock<regex::Regex> = LazyLock::new(|| regex::Regex::new("^[A-Za-z0-9._:-]{1,128}$").unwrap());

fuzz_target!(|data: &[u8]| {
    // Validation of any text agrees with the rule.
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(is_valid_request_id(text), RULE.is_match(text), "{text:?}");
    }

    let mut headers = HeaderMap::new();
    let values: Vec<HeaderValue> =
        data.split(|b| *b == b'\n').filter_map(|v| HeaderValue::from_bytes(v).ok()).collect();
    for value in &values {
        headers.append("x-request-id", value.clone());
    }
    let id = RequestId::from_headers(&headers);
    let text = id.as_str().to_owned();
    assert!(RULE.is_match(&text), "the id used is invalid: {text:?}");
    assert!(RULE.is_match(RequestId::generate().as_str()));

    let first = values.first().and_then(|v| v.to_str().ok());
    match first {
        // A valid first value is the id, and goes back as it came.
        Some(client) if RULE.is_match(client) => {
            assert_eq!(text, client);
            assert_eq!(id.into_header_value().as_bytes(), values[0].as_bytes());
        }
        // Otherwise a new UUIDv7, whatever the later values hold.
        _ => {
            let uuid = uuid::Uuid::parse_str(&text).unwrap_or_else(|e| panic!("{text:?} is not a UUID: {e}"));
            assert_eq!(uuid.get_version_num(), 7, "{text}");
            assert_eq!(text, uuid.hyphenated().to_string(), "not in the canonical lowercase form");
        }
    }
});
