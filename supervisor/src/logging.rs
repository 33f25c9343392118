//! JSON log lines on stdout, one object per line, for the master and its workers.
//!
//! Every line carries `ts`, `level`, `msg`, `target`, `pid`, `role` (master or worker) and, in a worker,
//! `slot` and `generation`; then the fields of the enclosing spans (for example the app's `request_id`) and
//! of the event itself. Writes are synchronous and start no thread, so the master stays fork-safe.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, filter::LevelFilter};

const NO_SLOT: u64 = u64::MAX;
static PID: AtomicU64 = AtomicU64::new(0);
static SLOT: AtomicU64 = AtomicU64::new(NO_SLOT);
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Log verbosity, as configured by `log_level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Diagnostic detail.
    Debug,
    /// Normal operation.
    Info,
    /// Unexpected but handled.
    Warning,
    /// Failures.
    Error,
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warning" | "warn" => LogLevel::Warning,
            "error" | "critical" => LogLevel::Error,
            _ => return Err("expected one of trace, debug, info, warning, error, critical".into()),
        })
    }
}

impl LogLevel {
    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
        }
    }

    fn filter(self) -> LevelFilter {
        match self {
            LogLevel::Trace => LevelFilter::TRACE,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Warning => LevelFilter::WARN,
            LogLevel::Error => LevelFilter::ERROR,
        }
    }
}

/// The log file, when logging to a file rather than to the inherited stdout.
static LOG_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Installs the JSON subscriber for this process. Call once, before forking. With `file`, standard output
/// itself is pointed at the file (opened for appending), so the workers forked later write there too.
pub fn init(level: LogLevel, file: Option<&std::path::Path>) -> std::io::Result<()> {
    PID.store(std::process::id() as u64, Ordering::Relaxed);
    if let Some(path) = file {
        point_stdout_at(path)?;
        let _ = LOG_FILE.set(path.to_path_buf());
    }
    let _ = tracing_subscriber::registry().with(JsonLayer.with_filter(level.filter())).try_init();
    Ok(())
}

/// Reopens the log file (after it was rotated), if logging to one. Returns whether there was one.
pub fn reopen() -> std::io::Result<bool> {
    match LOG_FILE.get() {
        Some(path) => point_stdout_at(path).map(|()| true),
        None => Ok(false),
    }
}

fn point_stdout_at(path: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let _ = std::io::stdout().lock().flush();
    nix::unistd::dup2_stdout(&file)?;
    Ok(())
}

/// Called in a worker right after fork: later lines carry the worker's pid, slot and generation.
pub fn set_worker_identity(slot: usize, generation: u64) {
    PID.store(std::process::id() as u64, Ordering::Relaxed);
    SLOT.store(slot as u64, Ordering::Relaxed);
    GENERATION.store(generation, Ordering::Relaxed);
}

struct JsonLayer;

/// Where recorded fields go: a name and something that writes the field's JSON value.
trait FieldSink {
    fn field(&mut self, name: &'static str, render: &dyn Fn(&mut String));
}

/// Feeds the fields of a span or an event, rendered as JSON values, to a [`FieldSink`].
struct Fields<'a, S>(&'a mut S);

impl<S: FieldSink> Visit for Fields<'_, S> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.field(field.name(), &|out| json_debug(out, value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.field(field.name(), &|out| json_str(out, value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.field(field.name(), &|out| json_display(out, value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.field(field.name(), &|out| json_display(out, value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.field(field.name(), &|out| json_f64(out, value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.field(field.name(), &|out| json_display(out, value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.field(field.name(), &|out| json_debug(out, &format_args!("{value}")));
    }
}

/// A span's fields, rendered once when the span is created (or recorded later): name and JSON value.
#[derive(Default)]
struct SpanFields(Vec<(&'static str, String)>);

impl FieldSink for SpanFields {
    fn field(&mut self, name: &'static str, render: &dyn Fn(&mut String)) {
        let mut value = String::new();
        render(&mut value);
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some((_, old)) => *old = value,
            None => self.0.push((name, value)),
        }
    }
}

/// Writes an event's fields straight into the line, `message` as `msg`, remembering the names written.
struct EventFields<'a> {
    out: &'a mut String,
    written: Vec<&'static str>,
}

impl FieldSink for EventFields<'_> {
    fn field(&mut self, name: &'static str, render: &dyn Fn(&mut String)) {
        let name = if name == "message" { "msg" } else { name };
        self.written.push(name);
        self.out.push(',');
        json_str(self.out, name);
        self.out.push(':');
        render(self.out);
    }
}

/// The keys every line starts with (unless the event has a field of that name); span fields of the same
/// name are left out.
const FIXED_KEYS: [&str; 7] = ["ts", "level", "target", "pid", "role", "slot", "generation"];

impl<S> Layer<S> for JsonLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let mut fields = SpanFields::default();
        attrs.record(&mut Fields(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
        {
            values.record(&mut Fields(fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        thread_local! {
            static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        let render = |out: &mut String| {
            out.clear();
            render_line(out, event, &ctx);
            // One write per line: lines from several processes appending to one file never interleave.
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
        };
        // The buffer is reused; a line logged while rendering another (from a field's Debug) gets its own.
        LINE.with(|line| match line.try_borrow_mut() {
            Ok(mut out) => render(&mut out),
            Err(_) => render(&mut String::new()),
        });
    }
}

/// One JSON object and a newline: the fixed keys, then the event's fields, then its spans' fields
/// (innermost first; a name already written is not repeated).
fn render_line<S>(out: &mut String, event: &Event<'_>, ctx: &Context<'_, S>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let meta = event.metadata();
    // An event's own field wins over a fixed key of the same name (the master logs a worker's `slot`).
    let own = |key: &str| meta.fields().field(key).is_some();
    out.push('{');
    let mut fixed = |key: &str, render: &mut dyn FnMut(&mut String)| {
        if !own(key) {
            if out.len() > 1 {
                out.push(',');
            }
            json_str(out, key);
            out.push(':');
            render(out);
        }
    };
    fixed("ts", &mut |out| {
        out.push('"');
        timestamp(out);
        out.push('"');
    });
    fixed("level", &mut |out| json_str(out, level_name(*meta.level())));
    fixed("target", &mut |out| json_str(out, meta.target()));
    fixed("pid", &mut |out| json_display(out, PID.load(Ordering::Relaxed)));
    let slot = SLOT.load(Ordering::Relaxed);
    if slot == NO_SLOT {
        fixed("role", &mut |out| json_str(out, "master"));
    } else {
        fixed("role", &mut |out| json_str(out, "worker"));
        fixed("slot", &mut |out| json_display(out, slot));
        fixed("generation", &mut |out| json_display(out, GENERATION.load(Ordering::Relaxed)));
    }
    let mut fields = EventFields { out, written: Vec::new() };
    event.record(&mut Fields(&mut fields));
    let EventFields { out, mut written } = fields;
    if !written.contains(&"msg") {
        out.push_str(",\"msg\":null");
    }
    if let Some(scope) = ctx.event_scope(event) {
        for span in scope {
            let extensions = span.extensions();
            let Some(fields) = extensions.get::<SpanFields>() else { continue };
            for (name, value) in &fields.0 {
                if written.contains(name) || FIXED_KEYS.contains(name) {
                    continue;
                }
                written.push(name);
                out.push(',');
                json_str(out, name);
                out.push(':');
                out.push_str(value);
            }
        }
    }
    out.push_str("}\n");
}

/// Appends `s` as a JSON string.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    escape_into(out, s);
    out.push('"');
}

/// Appends a `Debug` rendering as a JSON string, escaped as it is formatted (no intermediate string).
fn json_debug(out: &mut String, value: &dyn std::fmt::Debug) {
    struct Escaping<'a>(&'a mut String);
    impl std::fmt::Write for Escaping<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            escape_into(self.0, s);
            Ok(())
        }
    }
    out.push('"');
    let _ = write!(Escaping(out), "{value:?}");
    out.push('"');
}

/// Appends a number or boolean, which JSON writes as Rust displays it.
fn json_display(out: &mut String, value: impl std::fmt::Display) {
    let _ = write!(out, "{value}");
}

/// Appends a float; JSON has no NaN or infinity, so those become `null`.
fn json_f64(out: &mut String, value: f64) {
    if value.is_finite() {
        let _ = write!(out, "{value:?}");
    } else {
        out.push_str("null");
    }
}

fn escape_into(out: &mut String, s: &str) {
    let mut rest = s;
    while let Some(i) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
        out.push_str(&rest[..i]);
        let c = rest[i..].chars().next().expect("found a char");
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
        }
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warning",
        Level::ERROR => "error",
    }
}

/// Appends the UTC time as RFC 3339 with milliseconds.
fn timestamp(s: &mut String) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        s,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    );
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
    }

    /// Renders lines like [`JsonLayer`] does, into memory.
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
            let mut out = String::new();
            render_line(&mut out, event, &ctx);
            self.0.lock().unwrap().push(out);
        }
    }

    #[test]
    fn lines_are_json_with_span_fields_and_escaped_values() {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(JsonLayer).with(Capture(lines.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = "r-1", user = "outer");
            let _entered = span.enter();
            tracing::warn!(
                user = "event wins",
                ratio = 0.5,
                nan = f64::NAN,
                n = -3i64,
                ok = true,
                "quote \" and\n newline"
            );
            tracing::info!(pid = 1u64, "a field named like a fixed key");
        });
        let lines = lines.lock().unwrap();
        assert!(lines.iter().all(|l| l.ends_with("}\n") && !l[..l.len() - 1].contains('\n')), "{lines:?}");
        let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["msg"], "quote \" and\n newline");
        assert_eq!(first["level"], "warning");
        assert_eq!(first["request_id"], "r-1", "span field");
        assert_eq!(first["user"], "event wins");
        assert_eq!(lines[0].matches("\"user\"").count(), 1, "no key twice: {}", lines[0]);
        assert_eq!(
            (first["ratio"].as_f64(), first["n"].as_i64(), first["ok"].as_bool()),
            (Some(0.5), Some(-3), Some(true))
        );
        assert!(first["nan"].is_null());
        assert!(first["ts"].as_str().unwrap().ends_with('Z'));
        let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(second["pid"], 1, "an event's own field wins over the fixed key");
        assert_eq!(lines[1].matches("\"pid\"").count(), 1, "{}", lines[1]);
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = String::new();
        json_str(&mut out, "a\u{1}b\tc\\");
        assert_eq!(out, r#""a\u0001b\tc\\""#);
    }

    #[test]
    fn log_levels_accept_gunicorn_names() {
        assert_eq!("critical".parse::<LogLevel>(), Ok(LogLevel::Error));
        assert_eq!("WARNING".parse::<LogLevel>(), Ok(LogLevel::Warning));
        assert!("loud".parse::<LogLevel>().is_err());
    }
}
