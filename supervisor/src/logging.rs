//! JSON log lines on stdout, one object per line, for the master and its workers.
//!
//! Every line carries `ts`, `level`, `msg`, `target`, `pid`, `role` (master or worker) and, in a worker,
//! `slot` and `generation`; then the fields of the event itself and of the enclosing spans (for example the
//! app's `request_id`).
//!
//! Lines are bounded: a string value longer than [`FIELD_MAX`] bytes is cut on a character boundary and
//! marked `…[+N bytes]` (N: the bytes left out); a line that would still be longer than [`LINE_MAX`] bytes
//! (newline included) is rendered again with every string cut at the next of [`FIELD_LIMITS`], and, if even
//! the last is too long, as its fixed keys and message only, with `fields_omitted: true` and the length it
//! would have had in `line_bytes`. Every line stays valid JSON.
//!
//! Logging never waits for the log consumer: a line is copied into a bounded buffer per process (see
//! [`output`]) and written from there in batches, by a writer thread in a worker, without blocking in the
//! master. A line that does not fit is dropped and counted (`log_lines_dropped_total`); once the output
//! takes lines again, one line says how many were dropped and since when.

#[cfg(fuzzing)]
pub(crate) mod fuzzing;
mod output;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, filter::LevelFilter};

use self::output::Output;
use crate::{Label, cut_at};

/// A string value longer than this many bytes (of its text, before JSON escaping) is cut to this length and
/// followed by `…[+N bytes]`. Room for the longest line the server logs by design, the startup settings.
pub const FIELD_MAX: usize = FIELD_LIMITS[0];
/// The longest line, newline included: `PIPE_BUF`, up to which a write to a pipe is atomic, so that lines of
/// the master and its workers sharing one pipe never interleave.
pub const LINE_MAX: usize = 4096;
/// The lengths string values are cut to, one after the other, until the line fits in [`LINE_MAX`].
pub const FIELD_LIMITS: [usize; 3] = [3072, 1024, FIELD_MAX_TIGHT];
/// The last of [`FIELD_LIMITS`]; also what the message and target of a line without its fields are cut to.
const FIELD_MAX_TIGHT: usize = 256;
/// How long a process about to exit waits for its buffered lines to be written; what is still unwritten
/// then is counted as dropped.
pub const EXIT_FLUSH: Duration = Duration::from_millis(200);
/// The default of `log_buffer_bytes`: about 3,000 access lines, enough for a writer thread that gets no
/// CPU for 70 ms while its worker logs 40,000 lines a second.
pub const DEFAULT_BUFFER_BYTES: usize = 1024 * 1024;

const NO_SLOT: u64 = u64::MAX;
static PID: AtomicU64 = AtomicU64::new(0);
static SLOT: AtomicU64 = AtomicU64::new(NO_SLOT);
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// This process's log output.
static OUTPUT: Output = Output::new();

/// Dropped lines by role ([`ROLES`]), in memory mapped before the first fork so that totals survive
/// worker restarts.
static DROPPED: OnceLock<&'static [AtomicU64]> = OnceLock::new();
/// The roles `log_lines_dropped_total` is counted by, in counter order.
pub const ROLES: [&str; 2] = ["master", "worker"];

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

/// How a process logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    /// Verbosity.
    pub level: LogLevel,
    /// Log to this file (appending, reopened on USR1) instead of the inherited standard output.
    pub file: Option<PathBuf>,
    /// Bytes of rendered lines each process holds while its output is slower than its logging; lines
    /// beyond are dropped and counted. Also the most a worker killed before it could write them loses.
    pub buffer_bytes: usize,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { level: LogLevel::Info, file: None, buffer_bytes: DEFAULT_BUFFER_BYTES }
    }
}

/// The log file, when logging to a file rather than to the inherited stdout.
static LOG_FILE: OnceLock<PathBuf> = OnceLock::new();

/// Installs the JSON subscriber for this process. Call once, before forking, and before any other thread
/// starts: the master writes its own lines, without a thread. With a file, standard output itself is
/// pointed at the file (opened for appending), so the workers forked later write there too.
pub fn init(settings: &LogSettings) -> std::io::Result<()> {
    PID.store(std::process::id() as u64, Ordering::Relaxed);
    if let Some(path) = &settings.file {
        point_stdout_at(path)?;
        let _ = LOG_FILE.set(path.clone());
    }
    if let Ok(words) = crate::sys::shared_words(ROLES.len()) {
        let _ = DROPPED.set(words);
    }
    OUTPUT.configure(settings.buffer_bytes);
    // The level filters for the whole subscriber, not per layer: a span or event below it is never built,
    // and the registry keeps no per-layer filter state for each span (the request span of every request).
    let _ = tracing_subscriber::registry().with(settings.level.filter()).with(JsonLayer).try_init();
    Ok(())
}

/// Reopens the log file (after it was rotated), if logging to one; returns whether there is one. The master
/// reopens at once; a worker's writer thread reopens between two batches (and logs a failure itself), so
/// that a slow disk never holds up the worker's runtime.
pub fn reopen() -> std::io::Result<bool> {
    match LOG_FILE.get() {
        Some(path) => OUTPUT.reopen(path).map(|()| true),
        None => Ok(false),
    }
}

/// Points standard output at `path`, opened for appending. Opened non-blocking, so that a FIFO without a
/// reader fails (ENXIO) instead of blocking the master; then made blocking again for the workers.
fn point_stdout_at(path: &std::path::Path) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().create(true).append(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let flags = OFlag::from_bits_truncate(fcntl(&file, FcntlArg::F_GETFL)?);
    fcntl(&file, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    nix::unistd::dup2_stdout(&file)?;
    Ok(())
}

/// Called in a worker right after fork, with signals still blocked: later lines carry the worker's pid,
/// slot and generation; the lines the master had not written yet are the master's to write, so they are
/// forgotten here; and the worker's writer thread starts.
pub(crate) fn enter_worker(slot: usize, generation: u64) {
    PID.store(std::process::id() as u64, Ordering::Relaxed);
    SLOT.store(slot as u64, Ordering::Relaxed);
    GENERATION.store(generation, Ordering::Relaxed);
    OUTPUT.forget_inherited();
    start_writer();
}

/// Starts this process's writer thread (a worker, or the single-process mode). Should the thread not start
/// (a pids limit), lines are written the master's way: without blocking, dropped when the output is full.
pub(crate) fn start_writer() {
    if let Err(error) = OUTPUT.start_writer_thread() {
        tracing::warn!(error = %error, "no log writer thread: writing inline, without blocking");
    }
}

/// Writes what this process still holds, waiting at most [`EXIT_FLUSH`]; lines still unwritten then are
/// counted as dropped. Call before the process exits.
pub fn flush_before_exit() {
    OUTPUT.flush(EXIT_FLUSH);
}

/// The master: the output to wait for (writable) when lines are waiting for it, to be polled beside the
/// master's other descriptors; then [`retry_stalled`].
pub(crate) fn stalled_output() -> Option<output::Stalled> {
    OUTPUT.stalled()
}

/// The master: writes what waited for the output, as far as it takes it without blocking.
pub(crate) fn retry_stalled() {
    OUTPUT.retry();
}

/// Lines dropped since the master started, by role ([`ROLES`]).
pub fn dropped_by_role() -> [(&'static str, u64); 2] {
    let n = |i: usize| DROPPED.get().map_or(0, |w| w[i].load(Ordering::Relaxed));
    [(ROLES[0], n(0)), (ROLES[1], n(1))]
}

/// Counts `n` dropped lines for this process's role.
fn count_dropped(n: u64) {
    if let Some(words) = DROPPED.get() {
        let role = usize::from(SLOT.load(Ordering::Relaxed) != NO_SLOT);
        words[role].fetch_add(n, Ordering::Relaxed);
    }
}

struct JsonLayer;

/// A field's value as tracing hands it over.
#[derive(Clone, Copy)]
enum FieldValue<'a> {
    Str(&'a str),
    Debug(&'a dyn std::fmt::Debug),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

/// Where recorded fields go.
trait FieldSink {
    fn field(&mut self, name: &'static str, value: FieldValue<'_>);
}

/// Feeds the fields of a span or an event to a [`FieldSink`].
struct Fields<'a, S>(&'a mut S);

impl<S: FieldSink> Visit for Fields<'_, S> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.field(field.name(), FieldValue::Debug(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.field(field.name(), FieldValue::Str(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.field(field.name(), FieldValue::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.field(field.name(), FieldValue::U64(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.field(field.name(), FieldValue::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.field(field.name(), FieldValue::Bool(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.field(field.name(), FieldValue::Debug(&format_args!("{value}")));
    }
}

/// A span field as kept until its events are rendered: text (cut at [`FIELD_MAX`], escaped when rendered,
/// so that a tighter limit can still apply), or a JSON number or boolean.
enum Stored {
    /// Text of at most [`Label::CAPACITY`] bytes, kept inline: a span with such fields (the request span and
    /// its id) is recorded without allocating.
    Short(Label),
    Text {
        kept: String,
        cut: usize,
    },
    Json(String),
}

impl Stored {
    fn text(s: &str) -> Stored {
        if s.len() <= Label::CAPACITY {
            return Stored::Short(Label::new(s));
        }
        let (kept, cut) = cut_at(s, FIELD_MAX);
        Stored::Text { kept: kept.to_string(), cut }
    }
}

/// A span's fields, recorded when the span is created (or recorded later): name and value. The first one
/// is kept apart from the others, so that a span of one field needs no list.
#[derive(Default)]
struct SpanFields {
    first: Option<(&'static str, Stored)>,
    more: Vec<(&'static str, Stored)>,
}

impl SpanFields {
    fn iter(&self) -> impl Iterator<Item = &(&'static str, Stored)> {
        self.first.iter().chain(&self.more)
    }
}

impl FieldSink for SpanFields {
    fn field(&mut self, name: &'static str, value: FieldValue<'_>) {
        let stored = match value {
            FieldValue::Str(s) => Stored::text(s),
            FieldValue::Debug(d) => {
                let mut kept = String::new();
                let cut = write_capped(&mut kept, d, FIELD_MAX, false);
                Stored::Text { kept, cut }
            }
            other => {
                let mut json = String::new();
                write_value(&mut json, other, FIELD_MAX);
                Stored::Json(json)
            }
        };
        if let Some((_, old)) = self.first.iter_mut().chain(&mut self.more).find(|(n, _)| *n == name) {
            *old = stored;
        } else if self.first.is_none() {
            self.first = Some((name, stored));
        } else {
            self.more.push((name, stored));
        }
    }
}

/// Writes an event's fields straight into the line, `message` as `msg`, remembering the names written.
struct EventFields<'a> {
    out: &'a mut String,
    written: &'a mut Vec<&'static str>,
    limit: usize,
}

impl FieldSink for EventFields<'_> {
    fn field(&mut self, name: &'static str, value: FieldValue<'_>) {
        let name = if name == "message" { "msg" } else { name };
        self.written.push(name);
        self.out.push(',');
        json_str(self.out, name, usize::MAX);
        self.out.push(':');
        write_value(self.out, value, self.limit);
    }
}

/// Keeps only the event's message, for a line that is too long with all its fields.
struct MessageOnly<'a> {
    out: &'a mut String,
    found: bool,
}

impl FieldSink for MessageOnly<'_> {
    fn field(&mut self, name: &'static str, value: FieldValue<'_>) {
        if name == "message" && !self.found {
            self.found = true;
            self.out.push_str(",\"msg\":");
            write_value(self.out, value, FIELD_MAX_TIGHT);
        }
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
            static LINE: std::cell::RefCell<Line> = const { std::cell::RefCell::new(Line::new()) };
        }
        let render = |line: &mut Line| {
            render_bounded(line, event, &ctx);
            OUTPUT.push(line.out.as_bytes());
        };
        // The buffers are reused; a line logged while rendering another (from a field's Debug) gets its own.
        LINE.with(|line| match line.try_borrow_mut() {
            Ok(mut line) => render(&mut line),
            Err(_) => render(&mut Line::new()),
        });
    }
}

/// What rendering a line needs, kept from one line to the next: the text, and the field names written.
struct Line {
    out: String,
    written: Vec<&'static str>,
}

impl Line {
    const fn new() -> Line {
        Line { out: String::new(), written: Vec::new() }
    }
}

/// Renders the event as one line of at most [`LINE_MAX`] bytes (see the module documentation).
fn render_bounded<S>(line: &mut Line, event: &Event<'_>, ctx: &Context<'_, S>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let Line { out, written } = line;
    for limit in FIELD_LIMITS {
        out.clear();
        render_line(out, written, event, ctx, limit);
        if out.len() <= LINE_MAX {
            return;
        }
    }
    let full = out.len();
    out.clear();
    let meta = event.metadata();
    out.push('{');
    render_head(out, *meta.level(), meta.target(), &|_| false);
    let mut message = MessageOnly { out, found: false };
    event.record(&mut Fields(&mut message));
    let MessageOnly { out, found } = message;
    if !found {
        out.push_str(",\"msg\":null");
    }
    let _ = writeln!(out, ",\"fields_omitted\":true,\"line_bytes\":{full}}}");
}

/// One JSON object and a newline: the fixed keys, then the event's fields, then its spans' fields
/// (innermost first; a name already written is not repeated); string values cut at `limit` bytes.
fn render_line<S>(
    out: &mut String,
    written: &mut Vec<&'static str>,
    event: &Event<'_>,
    ctx: &Context<'_, S>,
    limit: usize,
) where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let meta = event.metadata();
    // An event's own field wins over a fixed key of the same name (the master logs a worker's `slot`).
    let own = |key: &str| meta.fields().field(key).is_some();
    out.push('{');
    render_head(out, *meta.level(), meta.target(), &own);
    written.clear();
    let mut fields = EventFields { out, written, limit };
    event.record(&mut Fields(&mut fields));
    let EventFields { out, written, .. } = fields;
    if !written.contains(&"msg") {
        out.push_str(",\"msg\":null");
    }
    if let Some(scope) = ctx.event_scope(event) {
        for span in scope {
            let extensions = span.extensions();
            let Some(fields) = extensions.get::<SpanFields>() else { continue };
            for (name, value) in fields.iter() {
                if written.contains(name) || FIXED_KEYS.contains(name) {
                    continue;
                }
                written.push(name);
                out.push(',');
                json_str(out, name, usize::MAX);
                out.push(':');
                match value {
                    Stored::Short(label) => json_str(out, label.as_str(), limit),
                    Stored::Text { kept, cut } => {
                        let (text, more) = cut_at(kept, limit);
                        json_text(out, text, cut + more);
                    }
                    Stored::Json(json) => out.push_str(json),
                }
            }
        }
    }
    out.push_str("}\n");
}

/// The fixed keys, after the opening brace: `ts`, `level`, `target`, `pid`, `role`, and a worker's `slot`
/// and `generation`, except those for which `skip` is true. The target is cut like a value.
fn render_head(out: &mut String, level: Level, target: &str, skip: &dyn Fn(&str) -> bool) {
    let mut fixed = |key: &str, render: &mut dyn FnMut(&mut String)| {
        if !skip(key) {
            if out.len() > 1 {
                out.push(',');
            }
            json_str(out, key, usize::MAX);
            out.push(':');
            render(out);
        }
    };
    fixed("ts", &mut |out| json_time(out, now()));
    fixed("level", &mut |out| json_str(out, level_name(level), usize::MAX));
    fixed("target", &mut |out| json_str(out, target, FIELD_MAX_TIGHT));
    fixed("pid", &mut |out| json_display(out, PID.load(Ordering::Relaxed)));
    let slot = SLOT.load(Ordering::Relaxed);
    if slot == NO_SLOT {
        fixed("role", &mut |out| json_str(out, "master", usize::MAX));
    } else {
        fixed("role", &mut |out| json_str(out, "worker", usize::MAX));
        fixed("slot", &mut |out| json_display(out, slot));
        fixed("generation", &mut |out| json_display(out, GENERATION.load(Ordering::Relaxed)));
    }
}

/// The line saying that `dropped` lines were lost since `since` (time since the Unix epoch).
fn render_dropped(out: &mut String, dropped: u64, since: Duration) {
    out.push('{');
    render_head(out, Level::WARN, module_path!(), &|_| false);
    let _ = write!(out, ",\"msg\":\"log lines dropped: the output was not keeping up\",\"dropped\":{dropped}");
    out.push_str(",\"since\":");
    json_time(out, since);
    out.push_str("}\n");
}

/// Appends a field value; strings are cut at `limit` bytes.
fn write_value(out: &mut String, value: FieldValue<'_>, limit: usize) {
    match value {
        FieldValue::Str(s) => json_str(out, s, limit),
        FieldValue::Debug(d) => {
            out.push('"');
            let cut = write_capped(out, d, limit, true);
            if cut > 0 {
                marker(out, cut);
            }
            out.push('"');
        }
        FieldValue::I64(n) => json_display(out, n),
        FieldValue::U64(n) => json_display(out, n),
        FieldValue::F64(f) => json_f64(out, f),
        FieldValue::Bool(b) => json_display(out, b),
    }
}

/// Formats `value` with `Debug` into `out` (JSON-escaped if `escape`), keeping at most `limit` bytes of its
/// text; returns the number of bytes left out. Nothing beyond the limit is stored.
fn write_capped(out: &mut String, value: &dyn std::fmt::Debug, limit: usize, escape: bool) -> usize {
    struct Capped<'a> {
        out: &'a mut String,
        left: usize,
        cut: usize,
        escape: bool,
    }
    impl std::fmt::Write for Capped<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let (kept, cut) = if self.cut > 0 { ("", s.len()) } else { cut_at(s, self.left) };
            self.left -= kept.len();
            self.cut += cut;
            if self.escape {
                escape_into(self.out, kept);
            } else {
                self.out.push_str(kept);
            }
            Ok(())
        }
    }
    let mut capped = Capped { out, left: limit, cut: 0, escape };
    let _ = write!(capped, "{value:?}");
    capped.cut
}

/// Appends `s` as a JSON string, cut at `limit` bytes.
fn json_str(out: &mut String, s: &str, limit: usize) {
    let (kept, cut) = cut_at(s, limit);
    json_text(out, kept, cut);
}

/// Appends `kept` as a JSON string, followed by the cut marker when `cut` bytes were left out.
fn json_text(out: &mut String, kept: &str, cut: usize) {
    out.push('"');
    escape_into(out, kept);
    if cut > 0 {
        marker(out, cut);
    }
    out.push('"');
}

/// The visible sign that a value was cut, and by how much.
fn marker(out: &mut String, cut: usize) {
    let _ = write!(out, "…[+{cut} bytes]");
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

/// The time since the Unix epoch.
fn now() -> Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// Appends a time (since the Unix epoch) as a JSON string, UTC, RFC 3339 with milliseconds.
fn json_time(s: &mut String, time: Duration) {
    let secs = time.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        s,
        "\"{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z\"",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        time.subsec_millis()
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
            let mut line = Line::new();
            render_bounded(&mut line, event, &ctx);
            self.0.lock().unwrap().push(line.out);
        }
    }

    /// The lines `log` emits, rendered.
    fn captured(log: impl FnOnce()) -> Vec<String> {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(JsonLayer).with(Capture(lines.clone()));
        tracing::subscriber::with_default(subscriber, log);
        lines.lock().unwrap().clone()
    }

    #[test]
    fn lines_are_json_with_span_fields_and_escaped_values() {
        let lines = captured(|| {
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
    fn long_values_are_cut_with_a_marker_on_a_character_boundary() {
        let path = format!("/{}", "é".repeat(20_000)); // 40,001 bytes
        let shown = format!("{}/x", "a".repeat(5_000));
        let lines = captured(|| {
            tracing::info!(path = path.as_str(), status = 404u64, "request");
            tracing::info!(shown = %shown, "displayed");
        });
        let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        // 3072 bytes of "/é..." end inside a character: 3071 are kept.
        assert_eq!(line["path"].as_str().unwrap(), format!("{}…[+{} bytes]", &path[..3071], path.len() - 3071));
        assert_eq!(line["status"], 404);
        let line: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        let expected = format!("{}…[+{} bytes]", &shown[..FIELD_MAX], shown.len() - FIELD_MAX);
        assert_eq!(line["shown"].as_str().unwrap(), expected, "a Display value is cut as it is formatted");
    }

    #[test]
    fn several_long_values_are_all_cut_tighter_to_fit_one_line() {
        let path = format!("/{}", "é".repeat(20_000));
        let agent = "u".repeat(3_000);
        let lines = captured(|| {
            let span = tracing::info_span!("request", request_id = %"i".repeat(3_000));
            let _entered = span.enter();
            tracing::info!(path = %path, user_agent = agent.as_str(), status = 200u64, "request");
        });
        assert!(lines[0].len() <= LINE_MAX, "{}", lines[0].len());
        let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(line["path"].as_str().unwrap(), format!("{}…[+{} bytes]", &path[..1023], path.len() - 1023));
        assert_eq!(line["user_agent"].as_str().unwrap(), format!("{}…[+1976 bytes]", &agent[..1024]));
        let id = line["request_id"].as_str().unwrap();
        assert_eq!(id, format!("{}…[+1976 bytes]", &"i".repeat(1024)), "the span's field too");
        assert_eq!(line["status"], 200);
    }

    #[test]
    fn span_fields_short_or_long_recorded_at_creation_or_later() {
        let long = "l".repeat(Label::CAPACITY + 1);
        let lines = captured(|| {
            let span = tracing::info_span!(
                "request",
                request_id = "short",
                user = long.as_str(),
                late = tracing::field::Empty
            );
            let _entered = span.enter();
            tracing::info!("before");
            span.record("request_id", "replaced");
            span.record("late", "x".repeat(Label::CAPACITY).as_str());
            tracing::info!("after");
        });
        let before: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!((before["request_id"].as_str(), before["user"].as_str()), (Some("short"), Some(long.as_str())));
        assert!(before.get("late").is_none(), "{}", lines[0]);
        let after: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(after["request_id"], "replaced");
        assert_eq!(after["late"].as_str().map(str::len), Some(Label::CAPACITY));
        assert_eq!(lines[1].matches("\"request_id\"").count(), 1, "{}", lines[1]);
    }

    #[test]
    fn one_long_value_keeps_the_wider_limit() {
        let agent = "u".repeat(10_000);
        let lines = captured(|| tracing::info!(user_agent = agent.as_str(), "request"));
        let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(line["user_agent"].as_str().unwrap(), format!("{}…[+6928 bytes]", &agent[..FIELD_MAX]));
    }

    #[test]
    fn a_line_too_long_even_when_tight_keeps_its_message_and_says_so() {
        let value = "\u{1}".repeat(1_000); // escaped as \u0001: six bytes each
        let lines = captured(|| {
            tracing::error!(
                a = value.as_str(),
                b = value.as_str(),
                c = value.as_str(),
                d = value.as_str(),
                "many \"escaped\" fields"
            )
        });
        assert!(lines[0].len() <= LINE_MAX, "{}", lines[0].len());
        let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(line["msg"], "many \"escaped\" fields");
        assert_eq!(line["fields_omitted"], true);
        assert!(line["line_bytes"].as_u64().unwrap() > LINE_MAX as u64);
        assert!(line["a"].is_null() && line["level"] == "error" && line["ts"].is_string());
    }

    #[test]
    fn the_dropped_report_is_a_json_line() {
        let mut out = String::new();
        render_dropped(&mut out, 1234, Duration::from_millis(1_764_505_800_123));
        let line: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(line["dropped"], 1234);
        assert_eq!(line["since"], "2025-11-30T12:30:00.123Z");
        assert_eq!(line["level"], "warning");
        assert!(out.ends_with("}\n"));
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = String::new();
        json_str(&mut out, "a\u{1}b\tc\\", usize::MAX);
        assert_eq!(out, r#""a\u0001b\tc\\""#);
    }

    #[test]
    fn log_levels_accept_gunicorn_names() {
        assert_eq!("critical".parse::<LogLevel>(), Ok(LogLevel::Error));
        assert_eq!("WARNING".parse::<LogLevel>(), Ok(LogLevel::Warning));
        assert!("loud".parse::<LogLevel>().is_err());
    }
}
