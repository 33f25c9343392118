//! The error contract: every 4xx/5xx the app produces is one [`ApiError`], rendered as
//! `{"code", "message", "request_id", "details"}` with `Content-Type: application/json`.
//!
//! An `ApiError` carries only what the client may see. Causes (database errors, panic payloads) are logged
//! where they happen, inside the request span, so the log line carries the same request id as the response.

use hyper::StatusCode;
use hyper::header::{ALLOW, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use serde_json::{Value, json};

use crate::http::{Response, json_response};

/// The stable, machine-readable error codes and their HTTP statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    UriTooLong,
    UnsupportedMediaType,
    ValidationError,
    RateLimited,
    RequestHeaderFieldsTooLarge,
    InternalError,
    NotReady,
    Timeout,
}

impl ErrorCode {
    /// Every code, in the order of their statuses.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UriTooLong,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::ValidationError,
        ErrorCode::RateLimited,
        ErrorCode::RequestHeaderFieldsTooLarge,
        ErrorCode::InternalError,
        ErrorCode::NotReady,
        ErrorCode::Timeout,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UriTooLong => StatusCode::URI_TOO_LONG,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::ValidationError => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RequestHeaderFieldsTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UriTooLong => "uri_too_long",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::ValidationError => "validation_error",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RequestHeaderFieldsTooLarge => "request_header_fields_too_large",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::Timeout => "timeout",
        }
    }
}

/// One invalid field of a request, reported in a 422's `details.fields`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into() }
    }
}

/// An error answer: status and code, a human message, optional details, for 405 the `Allow` header, and
/// for a temporary condition the `Retry-After` header.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    details: Option<Value>,
    allow: Option<String>,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), details: None, allow: None, retry_after: None }
    }

    /// Adds `Retry-After: <seconds>`: the condition is temporary and the client may try again then.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found() -> Self {
        ApiError::new(ErrorCode::NotFound, "no such resource")
    }

    /// `allow` is the value of the `Allow` header, e.g. `"GET, HEAD"`.
    pub fn method_not_allowed(allow: &str) -> Self {
        let mut e = ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed for this resource")
            .with_details(json!({ "allow": allow }));
        e.allow = Some(allow.to_owned());
        e
    }

    pub fn payload_too_large(limit_bytes: usize) -> Self {
        ApiError::new(ErrorCode::PayloadTooLarge, format!("request body is larger than {limit_bytes} bytes"))
            .with_details(json!({ "limit_bytes": limit_bytes }))
    }

    /// A request the worker refused: a head limit (`limit_request_*`: 414 or 431, with the limit in the
    /// details), or the `Host` rules of RFC 9112 (400).
    pub fn refused(refusal: supervisor::Refusal) -> Self {
        use supervisor::Refusal;
        let (code, message, limit) = match refusal {
            Refusal::RequestLineTooLong { limit } => {
                (ErrorCode::UriTooLong, "the request line is longer than the server accepts", limit)
            }
            Refusal::TooManyHeaderFields { limit } => (
                ErrorCode::RequestHeaderFieldsTooLarge,
                "the request has more header fields than the server accepts",
                limit,
            ),
            Refusal::HeaderFieldTooLarge { limit } => {
                (ErrorCode::RequestHeaderFieldsTooLarge, "a header field is longer than the server accepts", limit)
            }
            Refusal::MissingHost | Refusal::DuplicateHost | Refusal::InvalidHost => {
                return ApiError::bad_request(refusal.message());
            }
        };
        ApiError::new(code, message).with_details(json!({ "limit": limit }))
    }

    pub fn unsupported_media_type(expected: &str) -> Self {
        ApiError::new(ErrorCode::UnsupportedMediaType, format!("request body must be {expected}"))
            .with_details(json!({ "expected": expected }))
    }

    pub fn validation(fields: Vec<FieldError>) -> Self {
        ApiError::new(ErrorCode::ValidationError, "request is invalid").with_details(json!({ "fields": fields }))
    }

    pub fn rate_limited() -> Self {
        ApiError::new(ErrorCode::RateLimited, "too many requests")
    }

    /// The message never says why: the cause must already have been logged.
    pub fn internal() -> Self {
        ApiError::new(ErrorCode::InternalError, "internal server error")
    }

    pub fn not_ready(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::NotReady, message)
    }

    pub fn timeout() -> Self {
        ApiError::new(ErrorCode::Timeout, "request took too long")
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn details(&self) -> Option<&Value> {
        self.details.as_ref()
    }

    /// The response, without `X-Request-ID` (the service adds it to every response).
    pub fn to_response(&self, request_id: &str) -> Response {
        let body = json!({
            "code": self.code.as_str(),
            "message": self.message,
            "request_id": request_id,
            "details": self.details,
        });
        let mut response = json_response(self.code.status(), &body);
        if let Some(allow) = self.allow.as_deref().and_then(|a| HeaderValue::from_str(a).ok()) {
            response.headers_mut().insert(ALLOW, allow);
        }
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// An error's text including its causes: tokio-postgres puts the useful part ("connection refused",
/// "password authentication failed for user ...") in the source chain.
pub(crate) fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body_json(response: Response) -> Value {
        let bytes = futures_block_on(response.into_body().collect()).unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn futures_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn every_code_has_its_status() {
        let cases = [
            (ErrorCode::BadRequest, 400, "bad_request"),
            (ErrorCode::NotFound, 404, "not_found"),
            (ErrorCode::MethodNotAllowed, 405, "method_not_allowed"),
            (ErrorCode::PayloadTooLarge, 413, "payload_too_large"),
            (ErrorCode::UriTooLong, 414, "uri_too_long"),
            (ErrorCode::UnsupportedMediaType, 415, "unsupported_media_type"),
            (ErrorCode::ValidationError, 422, "validation_error"),
            (ErrorCode::RateLimited, 429, "rate_limited"),
            (ErrorCode::RequestHeaderFieldsTooLarge, 431, "request_header_fields_too_large"),
            (ErrorCode::InternalError, 500, "internal_error"),
            (ErrorCode::NotReady, 503, "not_ready"),
            (ErrorCode::Timeout, 504, "timeout"),
        ];
        assert_eq!(cases.map(|(code, _, _)| code), ErrorCode::ALL);
        for (code, status, name) in cases {
            assert_eq!(code.status().as_u16(), status);
            assert_eq!(code.as_str(), name);
        }
    }

    #[test]
    fn renders_the_contract() {
        let response = ApiError::validation(vec![FieldError::new("name", "must not be empty")]).to_response("r-1");
        assert_eq!(response.status(), 422);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(
            body_json(response),
            json!({
                "code": "validation_error",
                "message": "request is invalid",
                "request_id": "r-1",
                "details": {"fields": [{"field": "name", "message": "must not be empty"}]},
            })
        );

        let response = ApiError::method_not_allowed("GET, HEAD").to_response("r-2");
        assert_eq!(response.headers()["allow"], "GET, HEAD");
        let response = ApiError::internal().to_response("r-3");
        assert_eq!(response.headers().get("retry-after"), None);
        assert_eq!(body_json(response)["details"], Value::Null);
        let response = ApiError::not_ready("busy").with_retry_after(1).to_response("r-4");
        assert_eq!((response.status().as_u16(), &response.headers()["retry-after"]), (503, &HeaderValue::from(1)));
    }
}
