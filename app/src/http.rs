//! The app's request and response types, and small helpers shared by the handlers: JSON responses, query
//! strings.

use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;

/// A request as the worker hands it to the app.
pub type Request = supervisor::Request;
/// A response of the app: small JSON documents or text, fully buffered.
pub type Response = hyper::Response<Full<Bytes>>;

/// A JSON response. Serialising our own `Value`s and derived structs cannot fail.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    // Room for the usual document (an item, an error), so that the buffer is not grown while writing.
    let mut bytes = Vec::with_capacity(256);
    serde_json::to_writer(&mut bytes, body).expect("serialising a JSON response");
    json_bytes(status, Bytes::from(bytes))
}

/// A JSON response with a body fixed at compile time: nothing to serialise or allocate.
pub fn json_static(status: StatusCode, body: &'static str) -> Response {
    json_bytes(status, Bytes::from_static(body.as_bytes()))
}

fn json_bytes(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A response without a body (204, preflight).
pub fn empty_response(status: StatusCode) -> Response {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// The first value of `name` in a query string. Values are used as they are: the parameters this app reads
/// (numbers, cursors) never need percent-decoding.
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("limit=5&after=abc"), "after"), Some("abc"));
        assert_eq!(query_param(Some("limit=5&limit=6"), "limit"), Some("5"));
        assert_eq!(query_param(Some("limit"), "limit"), Some(""));
        assert_eq!(query_param(Some("limited=5"), "limit"), None);
        assert_eq!(query_param(None, "limit"), None);
    }
}
