//! JSON log lines on stdout, one object per line, for the master and its workers.
//!
//! Every line carries `ts`, `level`, `msg`, `target`, `pid`, `role` (master or worker) and, in a worker,
//! `slot` and `generation`; then the fields of the enclosing spans (for example the app's `request_id`) and
//! of the event itself. Writes are synchronous and start no thread, so the master stays fork-safe.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};
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

/// Span fields, stored in the span's extensions.
struct SpanFields(Map<String, Value>);

struct Visitor<'a>(&'a mut Map<String, Value>);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().to_string(), Value::String(value.to_string()));
    }
}

impl<S> Layer<S> for JsonLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let mut fields = Map::new();
        attrs.record(&mut Visitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
        {
            values.record(&mut Visitor(&mut fields.0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("ts".into(), Value::String(timestamp()));
        line.insert("level".into(), Value::String(level_name(*meta.level()).into()));
        line.insert("msg".into(), Value::Null);
        line.insert("target".into(), Value::String(meta.target().into()));
        line.insert("pid".into(), Value::from(PID.load(Ordering::Relaxed)));
        let slot = SLOT.load(Ordering::Relaxed);
        if slot == NO_SLOT {
            line.insert("role".into(), Value::String("master".into()));
        } else {
            line.insert("role".into(), Value::String("worker".into()));
            line.insert("slot".into(), Value::from(slot));
            line.insert("generation".into(), Value::from(GENERATION.load(Ordering::Relaxed)));
        }
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    line.extend(fields.0.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let mut fields = Map::new();
        event.record(&mut Visitor(&mut fields));
        if let Some(msg) = fields.remove("message") {
            line.insert("msg".into(), msg);
        }
        line.extend(fields);
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
    }
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

/// UTC time as RFC 3339 with milliseconds.
fn timestamp() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let mut s = String::with_capacity(24);
    let _ = write!(
        s,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    );
    s
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

    #[test]
    fn log_levels_accept_gunicorn_names() {
        assert_eq!("critical".parse::<LogLevel>(), Ok(LogLevel::Error));
        assert_eq!("WARNING".parse::<LogLevel>(), Ok(LogLevel::Warning));
        assert!("loud".parse::<LogLevel>().is_err());
    }
}
