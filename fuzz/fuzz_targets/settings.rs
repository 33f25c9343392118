//! The settings' value parsers and layers (supervisor/src/config/): any config file and environment either
//! resolve, or are refused with an error that names a key (the file itself is `config`) and where the bad
//! value came from; never a panic. What resolves is within its declared bounds, and what `check` prints
//! parses back to the same settings. A value parsed from text (the environment, a flag) prints back to
//! text that parses to the same value.
//!
//! Input: a structured case (arbitrary): the config file's text, environment values by setting, and one
//! value of each kind as text.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use supervisor::fuzzing::{DefaultValue, Kind, Source, Value, parse_text, resolve, specs};

#[derive(Arbitrary, Debug)]
struct Case {
    file: String,
    env: Vec<(u8, String)>,
    text: String,
    min: u32,
    span: u32,
}

fuzz_target!(|case: Case| {
    // One value of each kind, from text.
    let (min, max) = (u64::from(case.min), u64::from(case.min) + u64::from(case.span));
    if let Ok(n) = parse_text::<u64>(Kind::Count { min, max }, &case.text) {
        assert!((min..=max).contains(&n));
        assert_eq!(parse_text::<u64>(Kind::Count { min, max }, &n.show()), Ok(n));
    }
    let seconds = Kind::Seconds { min: 0.0, max: 86_400.0 };
    if let Ok(d) = parse_text::<Duration>(seconds, &case.text) {
        assert!(d <= Duration::from_secs(86_400));
        let shown = d.show();
        let again = parse_text::<Duration>(seconds, shown.strip_suffix('s').expect("seconds end in s")).unwrap();
        assert_eq!(again, d, "{shown}");
    }
    if let Ok(b) = parse_text::<bool>(Kind::Bool, &case.text) {
        assert_eq!(parse_text::<bool>(Kind::Bool, &b.show()), Ok(b));
    }
    if let Ok(items) = parse_text::<Vec<String>>(Kind::List, &case.text) {
        assert!(items.iter().all(|i| !i.is_empty() && !i.contains(',') && i.trim() == i), "{items:?}");
        assert_eq!(parse_text::<Vec<String>>(Kind::List, &items.join(",")), Ok(items));
    }

    // The whole configuration: the file and the environment, as a server running the app reads them.
    let specs = specs::<app::Config>();
    let env: Vec<(String, String)> = case
        .env
        .iter()
        .filter_map(|(i, v)| {
            let names: Vec<&str> = specs.iter().flat_map(|s| s.env.iter().copied()).collect();
            names.get(usize::from(*i) % names.len().max(1)).map(|n| (n.to_string(), v.clone()))
        })
        .collect();
    match resolve::<app::Config>(&case.file, &env) {
        Err(e) => {
            let known = e.key == "config" || specs.iter().any(|s| s.key == e.key);
            let unknown_key = matches!(e.source, Source::File(_)) && e.message == "unknown key";
            assert!(known || unknown_key, "an error about no key: {e}");
            if let Source::Env(name) = e.source {
                assert!(specs.iter().any(|s| s.key == e.key && s.env.contains(&name)), "{e}");
            }
        }
        Ok(resolved) => {
            assert!(resolved.settings.workers <= 128 && resolved.settings.threads >= 1);
            assert!(!resolved.settings.bind.is_empty());
            // What `check` prints, written back as a file, resolves to the same settings.
            let text: String = resolved
                .report
                .iter()
                .filter(|r| r.shown != "none" && !r.key.starts_with("database.url"))
                .map(|r| {
                    let spec = specs.iter().find(|s| s.key == r.key).expect("reported keys are declared");
                    let computed = r.source == Source::Default && matches!(spec.default, DefaultValue::Computed(..));
                    format!("{} = {}\n", r.key, literal(spec.kind, &r.shown, computed))
                })
                .collect();
            let mut again = resolve::<app::Config>(&text, &[])
                .unwrap_or_else(|e| panic!("what check printed does not resolve: {e}\n{text}"));
            assert_eq!(again.settings, resolved.settings, "{text}");
            // The database URL is shown without its password, so it is left out of the file.
            again.app.database.url = resolved.app.database.url.clone();
            assert_eq!(again.app, resolved.app, "{text}");
        }
    }
});

/// A value of `kind` as `check` shows it, as a TOML literal: seconds lose their unit, lists and text get
/// quotes, a computed default (`computed`) loses the explanation that follows it in brackets.
fn literal(kind: Kind, shown: &str, computed: bool) -> String {
    let string = |s: &str| toml::Value::String(s.to_string()).to_string();
    let value = if computed { shown.rsplit_once(" [").map_or(shown, |(value, _)| value) } else { shown };
    match kind {
        Kind::Text => string(value),
        Kind::List => {
            let items = value.strip_prefix('[').and_then(|s| s.strip_suffix(']')).expect("a list is shown in brackets");
            let items: Vec<String> = items.split(", ").filter(|s| !s.is_empty()).map(string).collect();
            format!("[{}]", items.join(", "))
        }
        Kind::Seconds { .. } => value.strip_suffix('s').expect("seconds end in s").to_string(),
        Kind::Count { .. } | Kind::Bool => value.to_string(),
    }
}
