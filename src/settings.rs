//! Every setting of the server, declared once (in the manner of gunicorn's `config.py`): its key in the
//! TOML file, its environment variables, its command-line flag, its type and bounds, its default, a line of
//! documentation, and whether a reload (HUP) applies it.
//!
//! Everything else comes from [`SETTINGS`]: the flags the CLI accepts, the environment variables read, the
//! unknown-key check, the validation of bounds, the order and sources `supervisor check` prints, the
//! commented `conf/supervisor.toml` and the settings tables of `docs/configuration.md` (the tests below
//! generate both and fail when a file differs; `BLESS=1 cargo test --bin supervisor settings` rewrites them).
//!
//! Adding a setting: one entry here, and its consumer in `config::Layers::resolve` (which builds the
//! typed `supervisor::Settings` or `app::Config` field from it).

/// How a value is written and which values are accepted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// Seconds, a whole or decimal number, within `[min, max]`.
    Seconds { min: f64, max: f64 },
    /// A whole number within `[min, max]`.
    Count { min: u64, max: u64 },
    /// `true` or `false` (also `1`/`0`, `yes`/`no`, `on`/`off` in the environment and flags).
    Bool,
    /// A string.
    Text,
    /// A list of strings: a TOML array, or a comma-separated string in the environment and flags.
    List,
}

/// The value a setting has when no layer sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultValue {
    /// This TOML literal.
    Value(&'static str),
    /// Unset (the feature is off); the string is an example, shown commented out in the sample file.
    Unset(&'static str),
    /// Computed from something else, as described; the second string is an example value.
    Computed(&'static str, &'static str),
}

/// What a reload (HUP) does with a changed value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnHup {
    /// The new generation of workers runs with it.
    Applies,
    /// It keeps its value until the server restarts; a changed value is logged by name on HUP.
    NeedsRestart,
}

/// One setting.
#[derive(Debug)]
pub struct Setting {
    /// Dotted path in the TOML file: `timeout`, `app.env`, `database.url`.
    pub key: &'static str,
    /// Environment variables, highest precedence first.
    pub env: &'static [&'static str],
    /// Long command-line flag, without the dashes.
    pub flag: Option<&'static str>,
    /// Short flag (gunicorn's `-b`, `-w`, `-t`).
    pub short: Option<char>,
    /// Another name for the key in the file and for the flag (gunicorn's name where ours differs): the key
    /// with underscores, and the flag with dashes.
    pub alias: Option<(&'static str, &'static str)>,
    /// Type and bounds.
    pub kind: Kind,
    /// The default.
    pub default: DefaultValue,
    /// What it does, in a sentence or two.
    pub doc: &'static str,
    /// Whether HUP applies a change.
    pub on_hup: OnHup,
    /// Printed redacted (`check`, the startup log).
    pub secret: bool,
}

/// The top-level key, the `[app]` table and the `[database]` table, in this order.
pub const SECTIONS: [&str; 3] = ["", "app", "database"];

const DAY: f64 = 86_400.0;
/// The most workers a server may have: its scoreboard holds two generations of them.
const MAX_WORKERS: u64 = supervisor::Settings::MAX_WORKERS as u64;
/// Upper bound of request counts (`max_requests`, its jitter).
const MAX_COUNT: u64 = 1_000_000_000;

const fn setting(key: &'static str, env: &'static [&'static str], kind: Kind, default: DefaultValue) -> Setting {
    Setting {
        key,
        env,
        flag: None,
        short: None,
        alias: None,
        kind,
        default,
        doc: "",
        on_hup: OnHup::Applies,
        secret: false,
    }
}

impl Setting {
    const fn flag(mut self, flag: &'static str) -> Setting {
        self.flag = Some(flag);
        self
    }
    const fn short(mut self, short: char) -> Setting {
        self.short = Some(short);
        self
    }
    const fn alias(mut self, key: &'static str, flag: &'static str) -> Setting {
        self.alias = Some((key, flag));
        self
    }
    const fn doc(mut self, doc: &'static str) -> Setting {
        self.doc = doc;
        self
    }
    const fn restart(mut self) -> Setting {
        self.on_hup = OnHup::NeedsRestart;
        self
    }
    const fn secret(mut self) -> Setting {
        self.secret = true;
        self
    }
}

use DefaultValue::{Computed, Unset, Value};
use Kind::{Bool, Count, List, Seconds, Text};

/// Every setting, in the order `check` prints them and the sample file lists them.
pub const SETTINGS: &[Setting] = &[
    setting("bind", &["SUPERVISOR_BIND"], List, Value(r#"["0.0.0.0:8000"]"#)).flag("bind").short('b').doc(
        "Addresses to listen on, HOST:PORT; IPv6 as \"[::]:8000\" (bound IPv6-only, so both families can be listed).",
    ),
    setting("backlog", &["SUPERVISOR_BACKLOG"], Count { min: 1, max: 65_535 }, Value("2048"))
        .flag("backlog")
        .doc("Listen backlog (the kernel caps it at net.core.somaxconn); applies to newly bound addresses."),
    setting("workers", &["WEB_CONCURRENCY"], Count { min: 0, max: MAX_WORKERS }, Computed("min(4, max(2, CPUs))", "2"))
        .flag("workers")
        .short('w')
        .doc(
            "Worker processes. CPUs honours the cgroup CPU quota and the affinity mask. 0 serves in a single \
             process without a master (debugging, benchmarks).",
        ),
    setting("threads", &["SUPERVISOR_THREADS"], Count { min: 1, max: 64 }, Value("1"))
        .flag("threads")
        .doc("Runtime threads per worker; 1 uses a current-thread runtime."),
    setting("timeout", &["SUPERVISOR_TIMEOUT", "GUNICORN_TIMEOUT"], Seconds { min: 1.0, max: DAY }, Value("60"))
        .flag("timeout")
        .short('t')
        .doc(
            "A worker whose heartbeat is silent this long (blocked runtime, deadlock, CPU spin) is killed and \
             replaced, after one more heartbeat interval (timeout/4, at most 1 s): never before it has been stuck \
             this long. Also the default per-request deadline of the app (answered 504).",
        ),
    setting(
        "graceful_timeout",
        &["SUPERVISOR_GRACEFUL_TIMEOUT", "GUNICORN_GRACEFUL_TIMEOUT"],
        Seconds { min: 0.0, max: DAY },
        Value("30"),
    )
    .flag("graceful-timeout")
    .doc(
        "On SIGTERM, and when a worker is retired, in-flight requests get this long; stragglers are then killed \
         and named in the log. Keep a container's stop grace period longer.",
    ),
    setting(
        "keepalive",
        &["SUPERVISOR_KEEPALIVE", "GUNICORN_KEEPALIVE"],
        Seconds { min: 0.0, max: 3600.0 },
        Value("5"),
    )
    .flag("keepalive")
    .doc(
        "Idle keep-alive connections are closed after this long, and so is a connection that has not sent a \
         whole request head within it of opening or of its last response (5 s when keep-alive is off); 0 \
         disables keep-alive. Keep it LONGER than the idle timeout of the proxy in front (nginx upstream keepalive_timeout), or proxied POSTs can fail with 502.",
    ),
    setting("log_level", &["SUPERVISOR_LOG_LEVEL", "GUNICORN_LOG_LEVEL"], Text, Value(r#""info""#))
        .flag("log-level")
        .doc("trace, debug, info, warning, error (critical = error).")
        .restart(),
    setting("boot_timeout", &["SUPERVISOR_BOOT_TIMEOUT"], Seconds { min: 1.0, max: DAY }, Value("30"))
        .flag("boot-timeout")
        .doc(
            "A new worker not ready within this long is killed; a reload whose new workers miss it is aborted, and \
             at startup forks that keep failing are given up after it.",
        ),
    setting("max_requests", &["SUPERVISOR_MAX_REQUESTS"], Count { min: 0, max: MAX_COUNT }, Value("0"))
        .flag("max-requests")
        .doc(
            "Recycle a worker after about this many requests (0 = never): it is replaced once a new worker is \
             ready, one at a time. Only to contain a leak.",
        ),
    setting("max_requests_jitter", &["SUPERVISOR_MAX_REQUESTS_JITTER"], Count { min: 0, max: MAX_COUNT }, Value("0"))
        .flag("max-requests-jitter")
        .doc("A random 0..=jitter added to max_requests per worker, so workers do not recycle together."),
    setting("limit_request_line", &["SUPERVISOR_LIMIT_REQUEST_LINE"], Count { min: 0, max: 8190 }, Value("4094"))
        .flag("limit-request-line")
        .doc(
            "Longest request line (method, target, version) in bytes; longer ones are answered 414 uri_too_long. \
             0: only the parser's own maximum.",
        ),
    setting("limit_request_fields", &["SUPERVISOR_LIMIT_REQUEST_FIELDS"], Count { min: 1, max: 32_768 }, Value("100"))
        .flag("limit-request-fields")
        .doc(
            "Most header fields in a request; more are answered 431 request_header_fields_too_large (past 100, \
             the parser's own cap, by the parser: 431 without a body, connection closed).",
        ),
    setting(
        "limit_request_field_size",
        &["SUPERVISOR_LIMIT_REQUEST_FIELD_SIZE"],
        Count { min: 0, max: 65_536 },
        Value("8190"),
    )
    .flag("limit-request-field-size")
    .doc(
        "Longest header field (name and value) in bytes; longer ones are answered 431. A whole head larger than \
         limit_request_line + 4 x this is refused by the parser itself (431, connection closed). 0: only the \
         parser's own maximum (about 400 KiB for the whole head).",
    ),
    setting("max_connections", &["SUPERVISOR_MAX_CONNECTIONS"], Count { min: 1, max: 100_000 }, Value("1000"))
        .flag("max-connections")
        .alias("worker_connections", "worker-connections")
        .doc(
            "Connections a worker holds at most. At the cap it stops accepting until one closes (never closing \
             one it accepted), so new connections go to its siblings or wait in the backlog. With the head limits \
             this bounds a worker's memory for slow clients.",
        ),
    setting("pidfile", &["SUPERVISOR_PIDFILE"], Text, Unset(r#""/run/supervisor.pid""#))
        .flag("pidfile")
        .doc("Write the master's pid here while it runs (not needed in a container).")
        .restart(),
    setting("log_file", &["SUPERVISOR_LOG_FILE"], Text, Unset(r#""/var/log/supervisor/server.log""#))
        .flag("log-file")
        .doc("Log to this file instead of standard output; SIGUSR1 reopens it (for logrotate).")
        .restart(),
    setting("log_buffer_bytes", &["SUPERVISOR_LOG_BUFFER_BYTES"], Count { min: 4096, max: 1 << 26 }, Value("1048576"))
        .flag("log-buffer-bytes")
        .doc(
            "Bytes of log lines each process (master, every worker) may hold unwritten while its output is slower \
             than its logging (a stalled log shipper, a slow disk); lines beyond are dropped and counted \
             (log_lines_dropped_total), never waited for. Larger rides out longer stalls, but costs up to twice \
             this much memory per process, and a worker killed during a stall loses up to this much.",
        )
        .restart(),
    setting("app.env", &["APP_ENV"], Text, Value(r#""dev""#))
        .doc("dev or prod. prod refuses the debug settings and localhost CORS origins."),
    setting(
        "app.request_timeout",
        &["APP_REQUEST_TIMEOUT"],
        Seconds { min: 0.01, max: DAY },
        Computed("the value of timeout", "60"),
    )
    .doc("Per-request deadline, answered 504 in the error contract."),
    setting("app.max_body_bytes", &["APP_MAX_BODY_BYTES"], Count { min: 1, max: 1 << 30 }, Value("1048576"))
        .doc("Largest accepted request body, in bytes (413 beyond). Keep the edge's client_max_body_size <= this."),
    setting("app.access_log", &["APP_ACCESS_LOG"], Bool, Value("true")).doc("One JSON access log line per request."),
    setting("app.forwarded_allow_ips", &["FORWARDED_ALLOW_IPS"], List, Value(r#"["127.0.0.1", "::1"]"#)).doc(
        "Peers whose X-Forwarded-For is trusted for the client address in the access log: addresses, CIDR \
             ranges (10.0.0.0/8) or \"*\" (everyone: only when the port is reachable through the proxy alone).",
    ),
    setting("app.cors_origins", &["CORS_ORIGINS"], List, Value("[]")).doc(
        "Origins (scheme://host[:port]) allowed cross-origin access; none by default. \"*\" cannot be combined \
         with credentials.",
    ),
    setting("app.cors_allow_credentials", &["CORS_ALLOW_CREDENTIALS"], Bool, Value("false"))
        .doc("Allow credentials (cookies, Authorization) on cross-origin requests from the listed origins."),
    setting("app.debug_routes", &[], Bool, Value("false"))
        .doc("Test switch, refused in prod: mounts /debug/sleep, /debug/block and /debug/panic."),
    setting("app.debug_fail_boot_file", &[], Text, Unset(r#""/tmp/fail-boot""#))
        .doc("Test switch, refused in prod: every worker fails to boot while this file exists."),
    setting("app.debug_boot_delay", &[], Seconds { min: 0.0, max: 3600.0 }, Value("0"))
        .doc("Test switch, refused in prod: every worker sleeps this long before it reports ready."),
    setting("database.url", &["DATABASE_URL"], Text, Unset(r#""postgres://app:secret@db:5432/app""#))
        .doc("libpq URL or key=value string. Without it /healthz works and /readyz answers 503.")
        .secret(),
    setting("database.pool_size", &["DATABASE_POOL_SIZE"], Count { min: 1, max: 10_000 }, Value("4"))
        .doc("Connections per worker: workers x pool_size must fit the server's max_connections."),
    setting("database.connect_timeout", &["DATABASE_CONNECT_TIMEOUT"], Seconds { min: 0.01, max: 3600.0 }, Value("2"))
        .doc("Seconds for a TCP connect (unless the URL sets connect_timeout)."),
    setting("database.wait_timeout", &["DATABASE_WAIT_TIMEOUT"], Seconds { min: 0.01, max: 3600.0 }, Value("1"))
        .doc("Seconds a request waits for a free pooled connection (503 beyond)."),
    setting("database.create_timeout", &["DATABASE_CREATE_TIMEOUT"], Seconds { min: 0.01, max: 3600.0 }, Value("2"))
        .doc("Seconds for a whole new connection: catches a server that accepts TCP but never answers."),
    setting(
        "database.readiness_timeout",
        &["DATABASE_READINESS_TIMEOUT"],
        Seconds { min: 0.01, max: 3600.0 },
        Computed("1, or half of app.request_timeout when that is less", "1"),
    )
    .doc(
        "Seconds for one /readyz check (connection, SELECT 1, schema version); below the request deadline, so a \
         failing check is a 503, not a 504.",
    ),
    setting(
        "database.max_connections",
        &["DATABASE_MAX_CONNECTIONS"],
        Count { min: 1, max: u32::MAX as u64 },
        Unset("100"),
    )
    .doc(
        "This service's connection budget on the server; `supervisor check` warns when workers x pool_size exceeds it.",
    ),
    setting(
        "database.statement_timeout",
        &["DATABASE_STATEMENT_TIMEOUT"],
        Seconds { min: 0.0, max: DAY },
        Computed("5, or half of app.request_timeout when that is less", "5"),
    )
    .doc(
        "Seconds a statement may run before PostgreSQL cancels it (answered 504), set on every pooled \
         connection; 0 disables it. Must be below app.request_timeout: past the deadline the app cancels the \
         statement itself and discards the connection.",
    ),
    setting(
        "database.lock_timeout",
        &["DATABASE_LOCK_TIMEOUT"],
        Seconds { min: 0.0, max: DAY },
        Computed("2, or a quarter of app.request_timeout when that is less", "2"),
    )
    .doc(
        "Seconds a statement may wait for a lock (a migration, a manual LOCK, a restore) before PostgreSQL \
         gives up (answered 504), set on every pooled connection; 0 disables it. Must be below \
         app.request_timeout.",
    ),
    setting(
        "database.idle_in_transaction_session_timeout",
        &["DATABASE_IDLE_IN_TRANSACTION_SESSION_TIMEOUT"],
        Seconds { min: 0.0, max: DAY },
        Computed("the value of app.request_timeout", "60"),
    )
    .doc(
        "Seconds a pooled connection may sit idle inside a transaction before PostgreSQL ends the session and \
         releases its locks; 0 disables it.",
    ),
];

/// The declaration of `key`. Panics on a key that is not declared: a consumer asking for one is a bug.
pub fn setting_of(key: &str) -> &'static Setting {
    SETTINGS.iter().find(|s| s.key == key).unwrap_or_else(|| panic!("setting `{key}` is not declared"))
}

/// The generated files: the sample configuration and the docs tables, each checked against the file in the
/// repository.
#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    impl Setting {
        /// The TOML section the key lives in (`""` for the top level).
        pub fn section(&self) -> &'static str {
            self.key.rsplit_once('.').map_or("", |(section, _)| section)
        }

        /// The key within its section.
        pub fn name(&self) -> &'static str {
            self.key.rsplit_once('.').map_or(self.key, |(_, name)| name)
        }
    }

    /// Wraps `text` into comment lines of at most `width` columns, each starting with `prefix`.
    fn wrap(out: &mut String, prefix: &str, text: &str, width: usize) {
        let mut line = String::from(prefix);
        for word in text.split_whitespace() {
            if line.len() > prefix.len() && line.len() + 1 + word.len() > width {
                out.push_str(line.trim_end());
                out.push('\n');
                line = String::from(prefix);
            }
            if line.len() > prefix.len() {
                line.push(' ');
            }
            line.push_str(word);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }

    /// Where a setting can also come from, for the sample file and the docs.
    fn origins(s: &Setting) -> String {
        let mut parts = Vec::new();
        if !s.env.is_empty() {
            let env = s.env.join(" or ");
            parts.push(if s.kind == List { format!("env {env} (comma-separated)") } else { format!("env {env}") });
        }
        if let Some(flag) = s.flag {
            parts.push(match s.short {
                Some(short) => format!("flag --{flag} or -{short}"),
                None => format!("flag --{flag}"),
            });
        }
        if s.env.is_empty() && s.flag.is_none() {
            parts.push("file only".into());
        }
        if s.on_hup == OnHup::NeedsRestart {
            parts.push("a reload does not change it: restart".into());
        }
        parts.join(", ")
    }

    /// The commented sample configuration, `conf/supervisor.toml`.
    pub fn sample_toml() -> String {
        let mut out = String::from(
            "# supervisor configuration: every setting, with its default. Generated from the declarations in\n\
             # src/settings.rs (a test keeps them in step).\n\
             #\n\
             # Precedence: command-line flag > environment variable > this file > default.\n\
             # Unknown keys are an error. Durations are seconds (integers or decimals).\n\
             # Check the effective values and where each came from:  supervisor check --config conf/supervisor.toml\n",
        );
        for section in SECTIONS {
            if !section.is_empty() {
                let _ = write!(out, "\n[{section}]\n");
            }
            for s in SETTINGS.iter().filter(|s| s.section() == section) {
                out.push('\n');
                wrap(&mut out, "# ", s.doc, 110);
                wrap(&mut out, "# ", &origins(s), 110);
                match s.default {
                    Value(v) => {
                        let _ = writeln!(out, "{} = {v}", s.name());
                    }
                    Unset(example) => {
                        let _ = writeln!(out, "# {} = {example}", s.name());
                    }
                    Computed(how, example) => {
                        let _ = writeln!(out, "# Default: {how}.\n# {} = {example}", s.name());
                    }
                }
            }
        }
        out
    }

    /// The settings tables of `docs/configuration.md`, one per section.
    pub fn docs_tables() -> String {
        let mut out = String::new();
        for section in SECTIONS {
            let title = if section.is_empty() { "Process model".to_string() } else { format!("`[{section}]`") };
            let _ = write!(
                out,
                "\n### {title}\n\n| key | environment | flag | default | on HUP | meaning |\n|---|---|---|---|---|---|\n"
            );
            for s in SETTINGS.iter().filter(|s| s.section() == section) {
                let env = if s.env.is_empty() {
                    "(file only)".to_string()
                } else {
                    s.env.iter().map(|e| format!("`{e}`")).collect::<Vec<_>>().join(" / ")
                };
                let flag = match (s.flag, s.short) {
                    (Some(f), Some(short)) => format!("`--{f}`, `-{short}`"),
                    (Some(f), None) => format!("`--{f}`"),
                    _ => String::new(),
                };
                let default = match s.default {
                    Value(v) => format!("`{v}`"),
                    Unset(_) => "none".into(),
                    Computed(how, _) => how.into(),
                };
                let hup = match s.on_hup {
                    OnHup::Applies => "applies",
                    OnHup::NeedsRestart => "restart",
                };
                let key = match s.alias {
                    Some((alias, _)) => format!("`{}` (or `{alias}`)", s.key),
                    None => format!("`{}`", s.key),
                };
                let _ = writeln!(out, "| {key} | {env} | {flag} | {default} | {hup} | {} |", s.doc.replace('|', "\\|"));
            }
        }
        out
    }

    /// Compares `actual` with the file at `path` (relative to the workspace root); with `BLESS=1`, rewrites
    /// the file instead.
    fn expect_file(path: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap();
        assert!(
            expected == actual,
            "{} differs from the settings declared in src/settings.rs; run `BLESS=1 cargo test --bin supervisor \
             settings` to rewrite it",
            path.display()
        );
    }

    const BEGIN: &str = "<!-- settings: generated from src/settings.rs, do not edit by hand -->\n";
    const END: &str = "<!-- end of settings -->\n";

    #[test]
    fn the_sample_config_lists_every_setting() {
        expect_file("conf/supervisor.toml", &sample_toml());
    }

    #[test]
    fn the_docs_list_every_setting() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
        let text = std::fs::read_to_string(&path).unwrap();
        let (before, rest) = text.split_once(BEGIN).expect("the docs have a generated settings block");
        let (_, after) = rest.split_once(END).expect("the generated block ends");
        expect_file("docs/configuration.md", &format!("{before}{BEGIN}{}{END}{after}", docs_tables()));
    }

    #[test]
    fn declarations_are_consistent() {
        for (i, s) in SETTINGS.iter().enumerate() {
            assert!(SECTIONS.contains(&s.section()), "{}: unknown section", s.key);
            assert!(!s.doc.is_empty(), "{}: undocumented", s.key);
            assert!(SETTINGS[..i].iter().all(|o| o.key != s.key), "{}: declared twice", s.key);
            if let Some(flag) = s.flag {
                assert_eq!(flag, s.key.replace('_', "-"), "{}: the flag is the key with dashes", s.key);
                assert!(s.section().is_empty(), "{}: only top-level keys have flags", s.key);
            }
            if let Some((key, flag)) = s.alias {
                assert_eq!(flag, key.replace('_', "-"), "{}: the alias flag is the alias key with dashes", s.key);
                assert!(s.section().is_empty() && !key.contains('.'), "{}: only top-level keys have aliases", s.key);
                assert!(SETTINGS.iter().all(|o| o.key != key), "{}: the alias names another setting", s.key);
            }
            for env in s.env {
                assert!(SETTINGS.iter().filter(|o| o.env.contains(env)).count() == 1, "{env} names two settings");
            }
        }
    }
}
