//! Reading a JSON request body: its content type checked, its size bounded.

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};

use crate::error::ApiError;
use crate::http::Request;

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
}
