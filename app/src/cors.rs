//! CORS: no cross-origin access unless the request's `Origin` is listed in `cors_origins`.
//!
//! Preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) are answered here for any path,
//! before routing, like the usual middleware does. An origin that is not listed gets the same answers without
//! any `Access-Control-*` header, which is how a browser learns it is refused.

use hyper::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD,
    HeaderMap, HeaderValue, ORIGIN, VARY,
};
use hyper::{Method, StatusCode};

use crate::http::{Response, empty_response};

const ALLOW_HEADERS: &str = "content-type, x-request-id";
const EXPOSE_HEADERS: &str = "x-request-id";
/// How long a browser may cache a preflight answer, in seconds.
const MAX_AGE: &str = "600";

/// The validated CORS policy.
#[derive(Clone, Debug)]
pub struct Cors {
    origins: Vec<String>,
    any: bool,
    credentials: bool,
    /// What a preflight may allow: every method of the route table.
    methods: HeaderValue,
}

impl Cors {
    /// `origins` as validated by `Config::validate` (`*` never comes with credentials); `methods` is the
    /// `Access-Control-Allow-Methods` value of a preflight.
    pub fn new(origins: &[String], credentials: bool, methods: &str) -> Cors {
        Cors {
            any: origins.iter().any(|o| o == "*"),
            origins: origins.iter().filter(|o| *o != "*").map(|o| o.to_ascii_lowercase()).collect(),
            credentials,
            methods: HeaderValue::from_str(methods).expect("method names are header-safe"),
        }
    }

    fn enabled(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    /// The `Access-Control-Allow-Origin` value for this request's origin, if it is allowed.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        if self.any && !self.credentials {
            return Some(HeaderValue::from_static("*"));
        }
        let text = origin.to_str().ok()?.to_ascii_lowercase();
        self.origins.contains(&text).then(|| origin.clone())
    }

    /// Whether the request is a CORS preflight.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS && headers.contains_key(ORIGIN) && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight: 204, with the allowed methods and headers if the origin is listed.
    pub fn preflight(&self, headers: &HeaderMap) -> Response {
        let mut response = empty_response(StatusCode::NO_CONTENT);
        if let Some(allow) = self.allow_origin(headers.get(ORIGIN)) {
            let out = response.headers_mut();
            out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            out.insert(ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
            out.insert(ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
            out.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
            if self.credentials {
                out.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            }
        }
        response
    }

    /// Adds the CORS headers of a simple or actual request, and `Vary: Origin` whenever a policy exists
    /// (the answer then depends on the origin, so caches must key on it).
    pub fn apply(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        if !self.enabled() {
            return;
        }
        headers.append(VARY, HeaderValue::from_static("Origin"));
        if headers.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
            return;
        }
        if let Some(allow) = self.allow_origin(origin) {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
            if self.credentials {
                headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METHODS: &str = "GET, HEAD, POST, DELETE, OPTIONS";

    fn headers(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, HeaderValue::from_str(origin).unwrap());
        h.insert(ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("POST"));
        h
    }

    #[test]
    fn listed_origin_gets_headers_others_none() {
        let cors = Cors::new(&["https://app.example.com".into()], true, METHODS);
        let ok = cors.preflight(&headers("https://app.example.com"));
        assert_eq!(ok.status(), 204);
        assert_eq!(ok.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(ok.headers()[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(ok.headers()[ACCESS_CONTROL_ALLOW_METHODS].to_str().unwrap().contains("POST"));

        let refused = cors.preflight(&headers("https://evil.example.com"));
        assert!(refused.headers().keys().all(|k| !k.as_str().starts_with("access-control-")));

        let mut out = HeaderMap::new();
        cors.apply(Some(&HeaderValue::from_static("https://evil.example.com")), &mut out);
        assert_eq!(out.get(VARY).unwrap(), "Origin");
        assert!(out.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());

        let mut out = HeaderMap::new();
        cors.apply(Some(&HeaderValue::from_static("https://app.example.com")), &mut out);
        assert_eq!(out[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(out[ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
    }

    #[test]
    fn no_policy_adds_nothing() {
        let cors = Cors::new(&[], false, METHODS);
        let mut out = HeaderMap::new();
        cors.apply(Some(&HeaderValue::from_static("https://app.example.com")), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn star_without_credentials() {
        let cors = Cors::new(&["*".into()], false, METHODS);
        let mut out = HeaderMap::new();
        cors.apply(Some(&HeaderValue::from_static("https://anything.example")), &mut out);
        assert_eq!(out[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(out.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
        let mut out = HeaderMap::new();
        cors.apply(None, &mut out);
        assert!(out.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }
}
