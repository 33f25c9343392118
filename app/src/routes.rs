//! The route table: every resource once, with its path template, whether it is a debug route, and its
//! handler per method. Matching, the route label of the access log and metrics, the `Allow` value of a 405
//! and the methods CORS preflights allow all derive from [`ROUTES`].
//!
//! Adding a route: one entry in [`ROUTES`] and its handler, an `async fn(&State, Request, &Params)`, and its
//! description in `app/openapi.json` (a test fails until both agree).

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::json;

use crate::config::AppEnv;
use crate::error::{ApiError, FieldError};
use crate::handler::{Handler, Params, Reply};
use crate::http::{Request, Response};
use crate::http::{json_response, json_static, query_param};
use crate::items;
use crate::openapi;
use crate::state::State;

/// One resource.
pub(crate) struct Route {
    /// The path, with `{name}` for a parameter segment. Also the label of the access log and the metrics.
    pub(crate) template: &'static str,
    /// Mounted only when debug routes are enabled, and never in prod.
    pub(crate) debug: bool,
    /// The handler of each method. HEAD is answered by the GET handler.
    pub(crate) methods: &'static [(Method, Handler)],
}

/// Every route.
pub(crate) const ROUTES: &[Route] = &[
    Route { template: "/healthz", debug: false, methods: &[(Method::GET, |s, r, p| Box::pin(healthz(s, r, p)))] },
    Route { template: "/readyz", debug: false, methods: &[(Method::GET, |s, r, p| Box::pin(readyz(s, r, p)))] },
    Route { template: "/metrics", debug: false, methods: &[(Method::GET, |s, r, p| Box::pin(metrics(s, r, p)))] },
    Route {
        template: "/openapi.json",
        debug: false,
        methods: &[(Method::GET, |s, r, p| Box::pin(openapi::serve(s, r, p)))],
    },
    Route {
        template: "/api/items",
        debug: false,
        methods: &[
            (Method::GET, |s, r, p| Box::pin(items::list(s, r, p))),
            (Method::POST, |s, r, p| Box::pin(items::create(s, r, p))),
        ],
    },
    Route {
        template: "/api/items/{id}",
        debug: false,
        methods: &[
            (Method::GET, |s, r, p| Box::pin(items::get(s, r, p))),
            (Method::DELETE, |s, r, p| Box::pin(items::delete(s, r, p))),
        ],
    },
    Route { template: "/debug/sleep", debug: true, methods: &[(Method::GET, |s, r, p| Box::pin(sleep(s, r, p)))] },
    Route { template: "/debug/block", debug: true, methods: &[(Method::GET, |s, r, p| Box::pin(block(s, r, p)))] },
    Route { template: "/debug/panic", debug: true, methods: &[(Method::GET, |s, r, p| Box::pin(panic(s, r, p)))] },
    Route { template: "/debug/hog", debug: true, methods: &[(Method::GET, |s, r, p| Box::pin(hog(s, r, p)))] },
];

// Every label has its counters: the route table fits the metrics memory.
const _: () = assert!(ROUTES.len() < crate::metrics::MAX_ROUTES, "more routes than metrics::MAX_ROUTES");

/// The route label of requests that matched no route.
pub(crate) const UNMATCHED: &str = "unmatched";

/// Every route label, in [`ROUTES`] order, then [`UNMATCHED`]; the index of a label is what the metrics
/// count by.
pub(crate) fn labels() -> Vec<&'static str> {
    ROUTES.iter().map(|r| r.template).chain([UNMATCHED]).collect()
}

/// A request's route and its parameters.
pub(crate) struct Matched {
    /// Index in [`ROUTES`], which is also its metrics label.
    pub(crate) index: usize,
    pub(crate) route: &'static Route,
    pub(crate) params: Params,
}

/// Matches a path against the table. Debug routes match only when `debug` is set.
pub(crate) fn resolve(path: &str, debug: bool) -> Option<Matched> {
    ROUTES.iter().enumerate().filter(|(_, r)| debug || !r.debug).find_map(|(index, route)| {
        let params = match_template(route.template, path)?;
        Some(Matched { index, route, params })
    })
}

/// The parameters if `path` matches `template` segment by segment; a parameter is one non-empty segment.
fn match_template(template: &str, path: &str) -> Option<Params> {
    // A template without parameters (most of them) matches one path: compared whole, not split.
    if !template.contains('{') {
        return (template == path).then(Params::default);
    }
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    let mut params = Vec::new();
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(Params::new(params)),
            (Some(seg), Some(value)) if seg.starts_with('{') && seg.ends_with('}') && !value.is_empty() => {
                params.push(value.to_owned())
            }
            (Some(seg), Some(value)) if seg == value => {}
            _ => return None,
        }
    }
}

/// The methods a route answers, in its order, with HEAD right after GET.
fn answered(route: &Route) -> Vec<&'static str> {
    let mut methods = Vec::new();
    for (m, _) in route.methods {
        methods.push(m.as_str());
        if m == Method::GET {
            methods.push("HEAD");
        }
    }
    methods
}

/// The methods a route answers, as an `Allow` header value.
pub(crate) fn allow(route: &Route) -> String {
    answered(route).join(", ")
}

/// Every method some route answers, plus OPTIONS: what a CORS preflight may allow.
pub(crate) fn cors_methods() -> String {
    let mut methods: Vec<&str> = Vec::new();
    for m in ROUTES.iter().flat_map(answered) {
        if !methods.contains(&m) {
            methods.push(m);
        }
    }
    methods.push("OPTIONS");
    methods.join(", ")
}

/// Whether debug routes are mounted for this configuration.
pub(crate) fn debug_enabled(state: &State) -> bool {
    state.config.debug_routes && state.config.env != AppEnv::Prod
}

/// The handler of the request's method, called (its reply is yet to be awaited), or 405 with `Allow`.
pub(crate) fn dispatch<'a>(state: &'a State, matched: &'a Matched, req: Request) -> Result<Reply<'a>, ApiError> {
    let method = if req.method() == Method::HEAD { &Method::GET } else { req.method() };
    match matched.route.methods.iter().find(|(m, _)| m == method) {
        Some((_, handler)) => Ok(handler(state, req, &matched.params)),
        None => Err(ApiError::method_not_allowed(&allow(matched.route))),
    }
}

/// The body of `GET /healthz`, `{"status":"ok"}`, written out: the most frequent request serialises nothing.
const HEALTHZ: &str = r#"{"status":"ok"}"#;

async fn healthz(_: &State, _: Request, _: &Params) -> Result<Response, ApiError> {
    Ok(json_static(StatusCode::OK, HEALTHZ))
}

async fn readyz(state: &State, _: Request, _: &Params) -> Result<Response, ApiError> {
    let report = state.readiness.check().await;
    if report.ready() {
        Ok(json_response(StatusCode::OK, &json!({ "status": "ready", "checks": report.checks() })))
    } else {
        Err(ApiError::not_ready("not ready").with_details(report.details()))
    }
}

/// `GET /metrics`: the whole server's metrics, whichever worker answers.
async fn metrics(state: &State, _: Request, _: &Params) -> Result<Response, ApiError> {
    let stats = supervisor::stats::server_stats().unwrap_or_default();
    let body = state.metrics.render(&stats, env!("CARGO_PKG_VERSION"), &labels());
    let mut response = Response::new(http_body_util::Full::from(body));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

async fn sleep(_: &State, req: Request, _: &Params) -> Result<Response, ApiError> {
    let ms = millis(req.uri().query())?;
    tracing::info!(ms, "debug sleep");
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(json_response(StatusCode::OK, &json!({ "slept_ms": ms })))
}

async fn block(_: &State, req: Request, _: &Params) -> Result<Response, ApiError> {
    let ms = millis(req.uri().query())?;
    tracing::warn!(ms, "blocking the runtime thread on purpose");
    // Deliberately blocking: the worker's runtime stalls and its heartbeat stops.
    std::thread::sleep(Duration::from_millis(ms));
    Ok(json_response(StatusCode::OK, &json!({ "blocked_ms": ms })))
}

async fn panic(_: &State, _: Request, _: &Params) -> Result<Response, ApiError> {
    panic!("panic requested at /debug/panic")
}

/// What `/debug/hog` keeps allocated in this worker.
static HOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// Keeps `?mib=N` MiB allocated in this worker (written, so the pages are resident) until the next call:
/// the memory a leak would hold, to exercise `max_worker_memory` and the OOM killer.
async fn hog(_: &State, req: Request, _: &Params) -> Result<Response, ApiError> {
    let mib = match query_param(req.uri().query(), "mib").map(str::parse::<usize>) {
        Some(Ok(mib)) if mib <= 4096 => mib,
        _ => return Err(ApiError::validation(vec![FieldError::new("mib", "must be an integer between 0 and 4096")])),
    };
    tracing::warn!(mib, "holding memory on purpose");
    let mut held = HOG.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    *held = vec![0x5a; mib << 20];
    Ok(json_response(StatusCode::OK, &json!({ "held_mib": mib })))
}

/// `?ms=N` of the debug routes, at most an hour.
fn millis(query: Option<&str>) -> Result<u64, ApiError> {
    match query_param(query, "ms").map(str::parse::<u64>) {
        Some(Ok(ms)) if ms <= 3_600_000 => Ok(ms),
        _ => Err(ApiError::validation(vec![FieldError::new("ms", "must be an integer between 0 and 3600000")])),
    }
}

/// Matching as the fuzz targets see it (`app/src/fuzzing.rs`); compiled only with `--cfg fuzzing`.
#[cfg(fuzzing)]
pub(crate) mod fuzzing {
    pub(crate) fn params(matched: &super::Matched) -> &[String] {
        matched.params.all()
    }

    pub(crate) fn match_template(template: &str, path: &str) -> Option<Vec<String>> {
        super::match_template(template, path).map(|p| p.all().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(path: &str, debug: bool) -> Option<&'static str> {
        resolve(path, debug).map(|m| m.route.template)
    }

    #[test]
    fn resolves_paths_to_templates() {
        let cases = [
            ("/healthz", Some("/healthz")),
            ("/readyz", Some("/readyz")),
            ("/openapi.json", Some("/openapi.json")),
            ("/api/items", Some("/api/items")),
            ("/api/items/abc", Some("/api/items/{id}")),
            ("/api/items/", None),
            ("/api/items/a/b", None),
            ("/api/itemsx", None),
            ("/nope", None),
            ("/", None),
            ("/debug/panic", None),
        ];
        for (path, expected) in cases {
            assert_eq!(template(path, false), expected, "{path}");
        }
        assert_eq!(template("/debug/panic", true), Some("/debug/panic"));
        assert_eq!(resolve("/api/items/x", false).unwrap().params.first(), "x");
    }

    #[test]
    fn every_route_matches_its_own_template_and_has_a_distinct_label() {
        let labels = labels();
        for (i, route) in ROUTES.iter().enumerate() {
            assert!(!route.methods.is_empty(), "{}: no method", route.template);
            let path = route.template.replace("{id}", "x");
            assert_eq!(resolve(&path, true).map(|m| m.index), Some(i), "{}", route.template);
            assert_eq!(labels.iter().filter(|l| **l == route.template).count(), 1, "{}", route.template);
        }
        assert_eq!(labels.last(), Some(&UNMATCHED));
    }

    #[test]
    fn every_route_has_its_metrics_series() {
        let metrics = crate::metrics::Metrics::private();
        for (i, route) in ROUTES.iter().enumerate() {
            metrics.record(&route.methods[0].0, i, 200, Duration::from_millis(1));
        }
        let text = metrics.render(&Default::default(), "test", &labels());
        for route in ROUTES {
            let series = format!("http_request_duration_seconds_count{{route=\"{}\"}} 1\n", route.template);
            assert!(text.contains(&series), "no metrics for {}", route.template);
        }
    }

    #[test]
    fn allow_and_cors_methods_come_from_the_table() {
        let item = resolve("/api/items/x", false).unwrap();
        assert_eq!(allow(item.route), "GET, HEAD, DELETE");
        assert_eq!(allow(resolve("/healthz", false).unwrap().route), "GET, HEAD");
        assert_eq!(cors_methods(), "GET, HEAD, POST, DELETE, OPTIONS");
    }

    #[test]
    fn healthz_body_is_the_json_document() {
        assert_eq!(serde_json::from_str::<serde_json::Value>(HEALTHZ).unwrap(), json!({ "status": "ok" }));
        assert_eq!(HEALTHZ, json!({ "status": "ok" }).to_string());
    }

    #[test]
    fn debug_millis() {
        assert_eq!(millis(Some("ms=250")), Ok(250));
        assert!(millis(None).is_err());
        assert!(millis(Some("ms=-1")).is_err());
        assert!(millis(Some("ms=3600001")).is_err());
    }
}
