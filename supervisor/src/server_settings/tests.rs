//! The layers and the resolver, with the supervisor's own settings and a small application's.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::Settings;
use crate::config::{Invalid, Setting, Source};
use crate::cpus::CpuSource;
use crate::logging::LogSettings;

/// A small application's settings: a table of its own, a computed default, a secret, a cross-field check.
#[derive(Clone, Debug, PartialEq)]
struct Demo {
    greeting: String,
    deadline: Duration,
    password: Option<String>,
    tags: Vec<String>,
}

const GREETING: Setting<String> =
    Setting::text("demo.greeting").env(&["DEMO_GREETING"]).default(r#""hello""#).doc("What it says.");
const DEADLINE: Setting<Duration> = Setting::seconds("demo.deadline", 0.01, 60.0)
    .env(&["DEMO_DEADLINE"])
    .computed("half of timeout", "30")
    .doc("A deadline.");
const PASSWORD: Setting<String> =
    Setting::text("demo.password").env(&["DEMO_PASSWORD"]).unset(r#""x""#).secret(hide).doc("A secret.");
const TAGS: Setting<Vec<String>> = Setting::list("demo.tags").default("[]").doc("Tags.");

fn hide(_: &str) -> String {
    "***".into()
}

impl AppSettings for Demo {
    const SECTIONS: &'static [&'static str] = &["demo"];
    const SETTINGS: &'static [&'static Spec] = &[GREETING.spec(), DEADLINE.spec(), PASSWORD.spec(), TAGS.spec()];

    fn resolve(r: &mut Resolver<'_>, server: &Settings) -> Result<Self, ConfigError> {
        let demo = Demo {
            greeting: r.get(&GREETING)?,
            deadline: r.or(&DEADLINE, server.timeout / 2)?,
            password: r.opt(&PASSWORD)?,
            tags: r.get(&TAGS)?,
        };
        if demo.deadline >= server.timeout {
            return Err(r.refuse(Invalid::new(&DEADLINE, "must be below timeout")));
        }
        Ok(demo)
    }
}

fn load(toml: &str, env: &[(&str, &str)], flags: &[(&'static str, &str)]) -> Result<Resolved<Demo>, ConfigError> {
    let dir =
        std::env::temp_dir().join(format!("config-test-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server.toml");
    std::fs::write(&path, toml).unwrap();
    let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let flags = flags.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let result = Layers::new(Some(&path), &specs::<Demo>(), &sections::<Demo>(), |k| env.get(k).cloned(), flags)
        .and_then(|l| Resolved::from_layers(&l, (2, CpuSource::Affinity)));
    std::fs::remove_dir_all(&dir).unwrap();
    result
}

fn source_of(c: &Resolved<Demo>, key: &str) -> Source {
    c.report.iter().find(|r| r.key == key).unwrap().source.clone()
}

fn shown(c: &Resolved<Demo>, key: &str) -> String {
    c.report.iter().find(|r| r.key == key).unwrap().shown.clone()
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let c = load(
        "timeout = 10\nkeepalive = 7\nthreads = 2\n",
        &[("GUNICORN_TIMEOUT", "20"), ("SUPERVISOR_KEEPALIVE", "8")],
        &[("timeout", "30")],
    )
    .unwrap();
    assert_eq!(c.settings.timeout, Duration::from_secs(30));
    assert_eq!(source_of(&c, "timeout"), Source::Flag("timeout"));
    assert_eq!(c.settings.keepalive, Duration::from_secs(8));
    assert_eq!(source_of(&c, "keepalive"), Source::Env("SUPERVISOR_KEEPALIVE"));
    assert_eq!(c.settings.threads, 2);
    assert!(matches!(source_of(&c, "threads"), Source::File(_)));
    assert_eq!(c.settings.graceful_timeout, Duration::from_secs(30));
    assert_eq!(source_of(&c, "graceful_timeout"), Source::Default);
}

#[test]
fn supervisor_env_names_beat_gunicorn_aliases() {
    let c = load("", &[("GUNICORN_TIMEOUT", "20"), ("SUPERVISOR_TIMEOUT", "25")], &[]).unwrap();
    assert_eq!(c.settings.timeout, Duration::from_secs(25));
    assert_eq!(source_of(&c, "timeout"), Source::Env("SUPERVISOR_TIMEOUT"));
    let c = load("", &[("GUNICORN_TIMEOUT", "20")], &[]).unwrap();
    assert_eq!(source_of(&c, "timeout"), Source::Env("GUNICORN_TIMEOUT"));
}

#[test]
fn default_workers_follow_cpus_and_web_concurrency_overrides() {
    let c = load("", &[], &[]).unwrap();
    assert_eq!(c.settings.workers, 2);
    assert_eq!(shown(&c, "workers"), "2 [min(4, max(2, 2 CPUs from affinity))]");
    let c = load("", &[("WEB_CONCURRENCY", "3")], &[]).unwrap();
    assert_eq!(c.settings.workers, 3);
    let c = load("workers = 0\n", &[], &[]).unwrap();
    assert_eq!(c.settings.workers, 0, "0 asks for a single process");
}

#[test]
fn errors_name_the_key_and_source() {
    let e = load("timeout = -1\n", &[], &[]).unwrap_err();
    assert_eq!(e.key, "timeout");
    assert!(matches!(e.source, Source::File(_)));
    let e = load("", &[("GUNICORN_KEEPALIVE", "abc")], &[]).unwrap_err();
    assert_eq!((e.key.as_str(), e.source), ("keepalive", Source::Env("GUNICORN_KEEPALIVE")));
    let e = load("", &[], &[("workers", "500")]).unwrap_err();
    assert_eq!((e.key.as_str(), e.source), ("workers", Source::Flag("workers")));
    let e = load("timeout = 0\n", &[], &[]).unwrap_err();
    assert_eq!(e.key, "timeout");
    let e = load("", &[("SUPERVISOR_BIND", "localhost")], &[]).unwrap_err();
    assert_eq!((e.key.as_str(), e.source), ("bind", Source::Env("SUPERVISOR_BIND")));
    let e = load("", &[("SUPERVISOR_LOG_LEVEL", "loud")], &[]).unwrap_err();
    assert_eq!((e.key.as_str(), e.source), ("log_level", Source::Env("SUPERVISOR_LOG_LEVEL")));
    let e = load("bind = []\n", &[], &[]).unwrap_err();
    assert_eq!(e.key, "bind");
    assert!(e.to_string().contains("`bind` (from file "), "{e}");
}

#[test]
fn out_of_range_values_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("SUPERVISOR_MAX_REQUESTS_JITTER", "18446744073709551615", "max_requests_jitter"),
        ("SUPERVISOR_MAX_REQUESTS", "18446744073709551615", "max_requests"),
        ("SUPERVISOR_TIMEOUT", "1e-10", "timeout"),
        ("SUPERVISOR_TIMEOUT", "NaN", "timeout"),
        ("SUPERVISOR_TIMEOUT", "inf", "timeout"),
        ("SUPERVISOR_GRACEFUL_TIMEOUT", "-1", "graceful_timeout"),
        ("SUPERVISOR_BOOT_TIMEOUT", "0.5", "boot_timeout"),
        ("SUPERVISOR_KEEPALIVE", "3601", "keepalive"),
        ("SUPERVISOR_BACKLOG", "0", "backlog"),
        ("SUPERVISOR_THREADS", "65", "threads"),
        ("WEB_CONCURRENCY", "-1", "workers"),
        ("SUPERVISOR_LOG_BUFFER_BYTES", "100", "log_buffer_bytes"),
        ("DEMO_DEADLINE", "0", "demo.deadline"),
    ];
    for (var, value, key) in cases {
        let e = load("", &[(var, value)], &[]).unwrap_err();
        assert_eq!((e.key.as_str(), &e.source), (*key, &Source::Env(var)), "{var}={value}");
    }
}

#[test]
fn gunicorn_names_are_aliases() {
    let c = load("worker_connections = 50\n", &[], &[]).unwrap();
    assert_eq!(c.settings.max_connections, 50);
    assert!(matches!(source_of(&c, "max_connections"), Source::File(_)));
    let c = load("worker_connections = 50\n", &[("SUPERVISOR_MAX_CONNECTIONS", "60")], &[]).unwrap();
    assert_eq!(c.settings.max_connections, 60);
    let e = load("max_connections = 40\nworker_connections = 50\n", &[], &[]).unwrap_err();
    assert_eq!(e.key, "max_connections");
    assert!(e.message.contains("worker_connections"), "{}", e.message);
    assert!(matches!(e.source, Source::File(_)));
}

#[test]
fn unknown_keys_are_refused() {
    let e = load("timeoutt = 5\n", &[], &[]).unwrap_err();
    assert_eq!(e.key, "timeoutt");
    let e = load("[demo]\nfoo = 1\n", &[], &[]).unwrap_err();
    assert_eq!(e.key, "demo.foo");
    let e = load("[nope]\nfoo = 1\n", &[], &[]).unwrap_err();
    assert_eq!(e.key, "nope");
    let e = load("timeout = [\n", &[], &[]).unwrap_err();
    assert_eq!(e.key, "config");
    let e = load("greeting = \"top level\"\n", &[], &[]).unwrap_err();
    assert_eq!(e.key, "greeting", "an application's key lives in its table");
}

#[test]
fn application_settings_resolve_after_the_supervisors() {
    let c = load("timeout = 10\n[demo]\ngreeting = \"hi\"\ntags = [\"a\", \"b\"]\n", &[], &[]).unwrap();
    assert_eq!(
        c.app,
        Demo {
            greeting: "hi".into(),
            deadline: Duration::from_secs(5),
            password: None,
            tags: vec!["a".into(), "b".into()]
        }
    );
    assert_eq!(shown(&c, "demo.deadline"), "5s [half of timeout]");
    assert_eq!(source_of(&c, "demo.deadline"), Source::Default);
    let c = load("", &[("DEMO_DEADLINE", "2.5")], &[]).unwrap();
    assert_eq!(
        (c.app.deadline, source_of(&c, "demo.deadline")),
        (Duration::from_millis(2500), Source::Env("DEMO_DEADLINE"))
    );
}

#[test]
fn a_refused_value_names_where_it_came_from() {
    let e = load("timeout = 10\n", &[("DEMO_DEADLINE", "20")], &[]).unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.source, e.message.as_str()),
        ("demo.deadline", Source::Env("DEMO_DEADLINE"), "must be below timeout")
    );
}

#[test]
fn secrets_never_reach_the_report() {
    let c = load("", &[("DEMO_PASSWORD", "hunter2")], &[]).unwrap();
    assert_eq!(c.app.password.as_deref(), Some("hunter2"));
    assert_eq!(shown(&c, "demo.password"), "***");
    assert!(!c.summary().contains("hunter2"));
}

#[test]
fn declared_defaults_are_the_typed_defaults() {
    let c = load("", &[], &[]).unwrap();
    assert_eq!(c.settings, Settings::default());
    assert_eq!(c.settings.log, LogSettings::default());
    assert_eq!(
        c.report.iter().map(|r| r.key).collect::<Vec<_>>(),
        specs::<Demo>().iter().map(|s| s.key).collect::<Vec<_>>()
    );
}

#[test]
fn a_reload_names_the_changed_settings_that_need_a_restart() {
    let before = load("timeout = 10\nlog_level = \"info\"\n", &[], &[]).unwrap();
    let after = load("timeout = 20\nlog_level = \"debug\"\npidfile = \"/tmp/x.pid\"\n", &[], &[]).unwrap();
    // The control socket's default follows the pidfile.
    assert_eq!(before.needs_restart(&after), ["log_level", "pidfile", "control_socket"]);
    assert!(before.needs_restart(&before).is_empty());
}

#[test]
fn the_declarations_pass_the_lint() {
    assert_eq!(lint::<()>(), Ok(()));
    assert_eq!(lint::<Demo>(), Ok(()));
}

#[test]
fn what_check_shows_parses_back_to_the_same_settings() {
    let c = load("timeout = 12.5\nbind = [\"127.0.0.1:1\", \"[::1]:2\"]\n[demo]\ntags = [\"x\"]\n", &[], &[]).unwrap();
    let text: String = c
        .report
        .iter()
        .filter(|r| r.shown != "none")
        .map(|r| format!("{} = {}\n", r.key, toml_literal(&r.shown)))
        .collect();
    assert!(text.contains("timeout = 12.5\n"), "{text}");
    let again = load(&text, &[], &[]).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!((again.settings, again.app), (c.settings, c.app));
}

/// `check`'s display of a value as a TOML literal: seconds lose their unit, lists and text get quotes.
fn toml_literal(shown: &str) -> String {
    if !shown.starts_with('[') {
        let value = shown.split(" [").next().unwrap();
        if let Some(secs) = value.strip_suffix('s').filter(|s| s.parse::<f64>().is_ok()) {
            return secs.to_string();
        }
        let bare = value.parse::<f64>().is_ok() || value == "true" || value == "false";
        return if bare { value.to_string() } else { format!("{value:?}") };
    }
    if let Some(items) = shown.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        let items: Vec<String> = items.split(", ").filter(|s| !s.is_empty()).map(|s| format!("{s:?}")).collect();
        return format!("[{}]", items.join(", "));
    }
    unreachable!("a list is shown in brackets: {shown}")
}

#[test]
fn the_control_socket_is_beside_the_pidfile_else_per_port_under_tmp_and_can_be_turned_off() {
    let c = load("bind = [\"127.0.0.1:9100\", \"[::1]:9200\"]\n", &[], &[]).unwrap();
    assert_eq!(c.settings.control_socket.as_deref(), Some(std::path::Path::new("/tmp/supervisor-9100.ctl")));
    assert_eq!(shown(&c, "control_socket"), "/tmp/supervisor-9100.ctl [the port of the first bind]");
    let c = load("pidfile = \"/run/app/server.pid\"\n", &[], &[]).unwrap();
    assert_eq!(c.settings.control_socket.as_deref(), Some(std::path::Path::new("/run/app/server.ctl")));
    let c = load("pidfile = \"/run/app/server.ctl\"\n", &[], &[]).unwrap();
    assert_eq!(c.settings.control_socket.as_deref(), Some(std::path::Path::new("/run/app/server.ctl.ctl")));
    let c = load("control_socket = \"/run/x.sock\"\n", &[("SUPERVISOR_CONTROL_SOCKET", "off")], &[]).unwrap();
    assert_eq!(c.settings.control_socket, None);
    let c = load("control_socket = \"\"\n", &[], &[]).unwrap();
    assert_eq!(c.settings.control_socket, None);
    let long = format!("control_socket = \"/{}\"\n", "x".repeat(120));
    let e = load(&long, &[], &[]).unwrap_err();
    assert_eq!(e.key, "control_socket");
    assert!(matches!(e.source, Source::File(_)) && e.message.contains("too long"), "{e}");
}

#[test]
fn ctl_locates_the_control_socket_in_a_file_with_mistakes_elsewhere() {
    let dir = std::env::temp_dir().join(format!("config-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server.toml");
    std::fs::write(&path, "pidfile = \"/run/a.pid\"\ntimeout = 0\nno_such_key = 1\n[demo]\ntypo = 2\n").unwrap();
    let specs = specs::<Demo>();
    let sections = sections::<Demo>();
    assert!(Layers::new(Some(&path), &specs, &sections, |_| None, BTreeMap::new()).is_err(), "the server refuses it");
    let layers = Layers::lenient(Some(&path), &specs, |_| None, BTreeMap::new()).unwrap();
    let located = Settings::resolve_control_socket(&mut Resolver::new(&layers));
    assert_eq!(located, Ok(Some(std::path::PathBuf::from("/run/a.ctl"))));
    std::fs::remove_dir_all(&dir).unwrap();
}
