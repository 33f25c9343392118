//! The route table: path -> resource, method -> handler. Every resource has a template (the access log and
//! metrics use it instead of the raw path) and an `Allow` value for 405s.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::json;

use crate::config::AppEnv;
use crate::error::{ApiError, FieldError};
use crate::http::{json_response, query_param};
use crate::items;
use crate::service::State;
use supervisor::{Request, Response};

/// A matched resource, with its path parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Healthz,
    Readyz,
    Metrics,
    Items,
    Item(String),
    DebugSleep,
    DebugBlock,
    DebugPanic,
}

/// The route label of requests that matched no resource.
pub(crate) const UNMATCHED: &str = "unmatched";

/// Every route label, in the order the metrics store them: the templates, then [`UNMATCHED`].
pub(crate) const TEMPLATES: [&str; 9] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/items",
    "/api/items/{id}",
    "/debug/sleep",
    "/debug/block",
    "/debug/panic",
    UNMATCHED,
];

/// The metrics index of a route label.
pub(crate) fn template_index(template: &str) -> usize {
    TEMPLATES.iter().position(|t| *t == template).unwrap_or(TEMPLATES.len() - 1)
}

impl Route {
    /// Matches a path. Debug routes exist only when enabled, and never in prod.
    pub(crate) fn resolve(path: &str, debug: bool) -> Option<Route> {
        let route = match path {
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            "/api/items" => Route::Items,
            "/debug/sleep" if debug => Route::DebugSleep,
            "/debug/block" if debug => Route::DebugBlock,
            "/debug/panic" if debug => Route::DebugPanic,
            _ => {
                let id = path.strip_prefix("/api/items/")?;
                if id.is_empty() || id.contains('/') {
                    return None;
                }
                Route::Item(id.to_owned())
            }
        };
        Some(route)
    }

    /// The path template, for logs and metrics.
    pub(crate) fn template(&self) -> &'static str {
        match self {
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Items => "/api/items",
            Route::Item(_) => "/api/items/{id}",
            Route::DebugSleep => "/debug/sleep",
            Route::DebugBlock => "/debug/block",
            Route::DebugPanic => "/debug/panic",
        }
    }

    /// The methods the resource answers, as an `Allow` header value. HEAD is answered wherever GET is.
    pub(crate) fn allow(&self) -> &'static str {
        match self {
            Route::Items => "GET, HEAD, POST",
            Route::Item(_) => "GET, HEAD, DELETE",
            _ => "GET, HEAD",
        }
    }
}

/// Whether debug routes are mounted for this configuration.
pub(crate) fn debug_enabled(state: &State) -> bool {
    state.config.debug_routes && state.config.env != AppEnv::Prod
}

/// Runs the handler of a matched route.
pub(crate) async fn dispatch(state: &State, route: Route, req: Request) -> Result<Response, ApiError> {
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    match (&route, get, &method) {
        (Route::Healthz, true, _) => Ok(json_response(StatusCode::OK, &json!({ "status": "ok" }))),
        (Route::Readyz, true, _) => readyz(state).await,
        (Route::Metrics, true, _) => Ok(metrics(state)),
        (Route::Items, true, _) => items::list(state, req.uri().query()).await,
        (Route::Items, false, &Method::POST) => items::create(state, req).await,
        (Route::Item(id), true, _) => items::get(state, id).await,
        (Route::Item(id), false, &Method::DELETE) => items::delete(state, id).await,
        (Route::DebugSleep, true, _) => {
            let ms = millis(req.uri().query())?;
            tracing::info!(ms, "debug sleep");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json_response(StatusCode::OK, &json!({ "slept_ms": ms })))
        }
        (Route::DebugBlock, true, _) => {
            let ms = millis(req.uri().query())?;
            tracing::warn!(ms, "blocking the runtime thread on purpose");
            // Deliberately blocking: the worker's runtime stalls and its heartbeat stops.
            std::thread::sleep(Duration::from_millis(ms));
            Ok(json_response(StatusCode::OK, &json!({ "blocked_ms": ms })))
        }
        (Route::DebugPanic, true, _) => panic!("panic requested at /debug/panic"),
        _ => Err(ApiError::method_not_allowed(route.allow())),
    }
}

/// `?ms=N` of the debug routes, at most an hour.
fn millis(query: Option<&str>) -> Result<u64, ApiError> {
    match query_param(query, "ms").map(str::parse::<u64>) {
        Some(Ok(ms)) if ms <= 3_600_000 => Ok(ms),
        _ => Err(ApiError::validation(vec![FieldError::new("ms", "must be an integer between 0 and 3600000")])),
    }
}

/// `GET /metrics`: the whole server's metrics, whichever worker answers.
fn metrics(state: &State) -> Response {
    let stats = supervisor::stats::server_stats().unwrap_or_default();
    let body = state.metrics.render(&stats, env!("CARGO_PKG_VERSION"));
    let mut response = Response::new(supervisor::Body::from(body));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

async fn readyz(state: &State) -> Result<Response, ApiError> {
    let report = state.readiness.check().await;
    if report.ready() {
        Ok(json_response(StatusCode::OK, &json!({ "status": "ready", "checks": report.checks() })))
    } else {
        Err(ApiError::not_ready("not ready").with_details(report.details()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_paths_to_templates() {
        let cases = [
            ("/healthz", Some("/healthz")),
            ("/readyz", Some("/readyz")),
            ("/api/items", Some("/api/items")),
            ("/api/items/abc", Some("/api/items/{id}")),
            ("/api/items/", None),
            ("/api/items/a/b", None),
            ("/api/items/", None),
            ("/nope", None),
            ("/debug/panic", None),
        ];
        for (path, template) in cases {
            assert_eq!(Route::resolve(path, false).map(|r| r.template()), template, "{path}");
        }
        assert_eq!(Route::resolve("/debug/panic", true), Some(Route::DebugPanic));
        assert_eq!(Route::resolve("/api/items/x", false), Some(Route::Item("x".into())));
    }

    #[test]
    fn debug_millis() {
        assert_eq!(millis(Some("ms=250")), Ok(250));
        assert!(millis(None).is_err());
        assert!(millis(Some("ms=-1")).is_err());
        assert!(millis(Some("ms=3600001")).is_err());
    }
}
