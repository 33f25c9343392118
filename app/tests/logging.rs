//! What the app logs, captured at TRACE level: one access line per request with the request id, the request
//! span on every line logged inside a request, and never the database password.
//!
//! The subscriber is process-global, so this file holds a single test.

mod support;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use serde_json::json;
use support::server::TestServer;
use support::{config, migrate};
use test_support::app_checks::{assert_error, create_item};
use test_support::http_client::{get, get_with, post_json};
use test_support::pg::{PgOptions, PgServer};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

const PASSWORD: &str = "pw-Sup3rSecret-4711";

/// One captured event: its target, message fields, and the fields of every span it was logged in.
#[derive(Clone, Debug)]
struct Line {
    target: String,
    fields: BTreeMap<String, String>,
    spans: Vec<(String, BTreeMap<String, String>)>,
}

impl Line {
    fn span_field(&self, span: &str, field: &str) -> Option<&str> {
        self.spans.iter().find(|(name, _)| name == span).and_then(|(_, f)| f.get(field)).map(String::as_str)
    }
}

#[derive(Clone, Default)]
struct Capture {
    lines: Arc<Mutex<Vec<Line>>>,
}

struct SpanFields(BTreeMap<String, String>);

struct Visitor<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Visitor(&mut fields));
        ctx.span(id).expect("new span").extensions_mut().insert(SpanFields(fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("recorded span");
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(fields)) = extensions.get_mut::<SpanFields>() {
            values.record(&mut Visitor(fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Visitor(&mut fields));
        let spans = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .from_root()
                    .map(|span| {
                        let fields = span.extensions().get::<SpanFields>().map(|f| f.0.clone()).unwrap_or_default();
                        (span.name().to_owned(), fields)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let line = Line { target: event.metadata().target().to_owned(), fields, spans };
        self.lines.lock().unwrap().push(line);
    }
}

#[test]
fn logs_carry_request_ids_and_never_the_password() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone()))
        .expect("installing the capturing subscriber");

    let mut pg = PgServer::with_options(PgOptions { password: Some(PASSWORD.to_owned()), ..PgOptions::default() });
    assert!(pg.url().contains(PASSWORD), "the test must actually use the password");
    let report = migrate(&pg.url());
    assert!(!report.applied.is_empty());
    let config = config(Some(pg.url()));
    // What the binary does at startup: log the effective settings.
    tracing::info!(config = ?config, "effective settings");

    let server = TestServer::start(config.clone());
    let base = server.base.as_str();

    // Access line with the client's id.
    let resp = get_with(base, "/healthz", &[("X-Request-ID", "trace-me-1"), ("User-Agent", "probe/1.0")]);
    assert_eq!(resp.status, 200);
    // An invalid id is replaced, in the response and in the log.
    let replaced = get_with(base, "/healthz", &[("X-Request-ID", "bad id \"quoted\"")]);
    let replaced_id = replaced.header("x-request-id").unwrap().to_owned();
    assert_ne!(replaced_id, "bad id \"quoted\"");

    let item = create_item(base, "logged", 3);
    let item_path = format!("/api/items/{}", item["id"].as_str().unwrap());
    assert_eq!(get(base, &item_path).status, 200);
    assert_eq!(get(base, "/readyz").status, 200);
    let panicked = get(base, "/debug/panic");
    assert_error(&panicked, 500, "internal_error");
    let panic_id = panicked.header("x-request-id").unwrap().to_owned();

    // Failures that log database errors: a wrong password, then the database going away.
    let mut wrong = config.clone();
    wrong.database.url = Some(pg.url().replace(PASSWORD, "not-the-password").into());
    let wrong_server = TestServer::start(wrong.clone());
    assert_error(&get(&wrong_server.base, "/readyz"), 503, "not_ready");
    assert_error(&post_json(&wrong_server.base, "/api/items", &json!({"name": "x", "quantity": 1})), 503, "not_ready");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let err = rt.block_on(app::migrate(&wrong)).expect_err("wrong password");
    tracing::error!(error = %err, "migration failed");
    assert!(err.to_string().contains("password authentication failed"), "{err}");
    pg.stop();
    assert_error(&get(base, &item_path), 503, "not_ready");
    drop(wrong_server);
    drop(server);

    let lines = capture.lines.lock().unwrap().clone();
    assert!(lines.len() > 10, "captured only {} lines", lines.len());

    // 9: the password appears nowhere.
    for line in &lines {
        let text = format!("{line:?}");
        assert!(!text.contains(PASSWORD), "the password leaked into a log line: {text}");
    }
    assert!(lines.iter().any(|l| format!("{l:?}").contains("password authentication failed")));

    // 2: one access line per request, with the request id and the request's particulars.
    let access: Vec<&Line> = lines.iter().filter(|l| l.target == "access").collect();
    let line = access.iter().find(|l| l.fields.get("request_id").map(String::as_str) == Some("trace-me-1")).unwrap();
    let f = &line.fields;
    assert_eq!(f["message"], "request");
    assert_eq!(f["method"], "GET");
    assert_eq!(f["path"], "/healthz");
    assert_eq!(f["route"], "/healthz");
    assert_eq!(f["status"], "200");
    assert_eq!(f["client"], "127.0.0.1");
    assert_eq!(f["user_agent"], "probe/1.0");
    assert!(f["duration_ms"].parse::<f64>().is_ok() && f["bytes"].parse::<u64>().unwrap() > 0, "{f:?}");
    assert_eq!(access.iter().filter(|l| l.fields["request_id"] == "trace-me-1").count(), 1);
    assert!(access.iter().any(|l| l.fields["request_id"] == replaced_id));
    assert!(access.iter().all(|l| !l.fields["request_id"].contains("quoted")));
    let item_line = access.iter().find(|l| l.fields["path"] == item_path).unwrap();
    assert_eq!(item_line.fields["route"], "/api/items/{id}");

    // Lines logged inside a request carry its id through the request span.
    let panic_line =
        lines.iter().find(|l| l.fields.get("message").map(String::as_str) == Some("handler panicked")).unwrap();
    assert_eq!(panic_line.span_field("request", "request_id"), Some(panic_id.as_str()));
    assert!(panic_line.fields["panic"].contains("/debug/panic"), "the cause is logged: {panic_line:?}");
    let created = lines.iter().find(|l| l.fields.get("message").map(String::as_str) == Some("item created")).unwrap();
    assert!(created.span_field("request", "request_id").is_some(), "{created:?}");
    for line in lines.iter().filter(|l| l.spans.iter().any(|(name, _)| name == "request")) {
        assert!(line.span_field("request", "request_id").is_some_and(|id| !id.is_empty()), "{line:?}");
    }
}
