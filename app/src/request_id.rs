//! Request ids: the client's `X-Request-ID` when it is safe to log and echo, otherwise a new UUIDv7.

use std::fmt;

use hyper::HeaderMap;
use hyper::header::HeaderName;

/// The header that carries the id in both directions.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id of one request, stored in the request's extensions by `Service::label`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// The client's id if it is valid (see [`is_valid`]), else a fresh one. Only the first header counts.
    pub fn from_headers(headers: &HeaderMap) -> RequestId {
        match headers.get(&HEADER).and_then(|v| v.to_str().ok()) {
            Some(id) if is_valid(id) => RequestId(id.to_owned()),
            _ => RequestId::generate(),
        }
    }

    /// A new UUIDv7: unique and time-ordered, so ids sort with the log.
    pub fn generate() -> RequestId {
        RequestId(uuid::Uuid::now_v7().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `^[A-Za-z0-9._:-]{1,128}$`: short, and nothing that could break a header, a log line or a JSON string.
pub fn is_valid(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn validation() {
        for ok in ["a", "abc-123", "req_1.2:3", "0f8fad5b-d9cb-469f-a165-70867728950e", &"x".repeat(128)] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in ["", &"x".repeat(129), "a b", "a\"b", "a\nb", "a/b", "é", "a;b", "<script>"] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn client_id_is_kept_when_valid_and_replaced_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_static("client-42"));
        assert_eq!(RequestId::from_headers(&headers).as_str(), "client-42");

        headers.insert(HEADER, HeaderValue::from_static("has \"quotes\""));
        let id = RequestId::from_headers(&headers);
        assert_ne!(id.as_str(), "has \"quotes\"");
        assert!(uuid::Uuid::parse_str(id.as_str()).is_ok());

        let generated = RequestId::from_headers(&HeaderMap::new());
        assert!(is_valid(generated.as_str()));
        assert_ne!(generated, RequestId::from_headers(&HeaderMap::new()));
    }
}
