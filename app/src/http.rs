//! Small HTTP helpers shared by the handlers: JSON responses, bounded JSON bodies, query strings.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::StatusCode;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use serde::Serialize;

use crate::error::ApiError;
use supervisor::{Request, Response};

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

/// Whether a `Content-Type` value is JSON: `application/json` or `application/<anything>+json`, any parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads a JSON request body's bytes: 415 unless the content type is JSON, 413 past `limit` bytes (checked
/// against `Content-Length` first, then while reading). The caller parses it into its own type.
pub async fn read_json_body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !is_json(content_type) {
        return Err(ApiError::unsupported_media_type("application/json"));
    }
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::payload_too_large(limit)),
        Err(e) => {
            tracing::info!(error = %e, "request body could not be read");
            Err(ApiError::bad_request("the request body could not be read"))
        }
    }
}

/// The 400 for a body that is not JSON.
pub fn invalid_json(error: &dyn std::fmt::Display) -> ApiError {
    ApiError::bad_request("request body is not valid JSON")
        .with_details(serde_json::json!({ "error": error.to_string() }))
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
    fn json_content_types() {
        for ok in
            ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/merge-patch+json"]
        {
            assert!(is_json(ok), "{ok}");
        }
        for bad in ["", "text/plain", "application/x-www-form-urlencoded", "text/json", "application/jsonp"] {
            assert!(!is_json(bad), "{bad}");
        }
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("limit=5&after=abc"), "after"), Some("abc"));
        assert_eq!(query_param(Some("limit=5&limit=6"), "limit"), Some("5"));
        assert_eq!(query_param(Some("limit"), "limit"), Some(""));
        assert_eq!(query_param(Some("limited=5"), "limit"), None);
        assert_eq!(query_param(None, "limit"), None);
    }
}
