//! Files generated from settings' declarations: a commented sample configuration and Markdown tables for
//! the documentation; and a lint of the declarations. [`crate::server_settings`] applies them to a server's
//! settings (the supervisor's and an application's); a project keeps its copies in step with a test that
//! compares them (see `src/main.rs` of this repository).

use std::fmt::Write as _;

use super::{DefaultValue, Kind, OnHup, Spec};

/// The commented sample configuration: every setting of `specs` with its default, by table of `sections`
/// (`""` the top level).
pub fn sample_toml(specs: &[&Spec], sections: &[&str]) -> String {
    let mut out = String::from(
        "# Server configuration: every setting, with its default. Generated from the settings' declarations\n\
         # (a test keeps them in step).\n\
         #\n\
         # Precedence: command-line flag > environment variable > this file > default.\n\
         # Unknown keys are an error. Durations are seconds (integers or decimals).\n\
         # Check the effective values and where each came from:  supervisor check --config conf/supervisor.toml\n",
    );
    for &section in sections {
        if !section.is_empty() {
            let _ = write!(out, "\n[{section}]\n");
        }
        for s in specs.iter().filter(|s| s.section() == section) {
            out.push('\n');
            wrap(&mut out, "# ", s.doc, 110);
            wrap(&mut out, "# ", &origins(s), 110);
            match s.default {
                DefaultValue::Value(v) => {
                    let _ = writeln!(out, "{} = {v}", s.name());
                }
                DefaultValue::Unset(example) => {
                    let _ = writeln!(out, "# {} = {example}", s.name());
                }
                DefaultValue::Computed(how, example) => {
                    let _ = writeln!(out, "# Default: {how}.\n# {} = {example}", s.name());
                }
            }
        }
    }
    out
}

/// Markdown tables of every setting of `specs`, one per table of `sections` ("Process model" for the top
/// level).
pub fn docs_tables(specs: &[&Spec], sections: &[&str]) -> String {
    let mut out = String::new();
    for &section in sections {
        let title = if section.is_empty() { "Process model".to_string() } else { format!("`[{section}]`") };
        let _ = write!(
            out,
            "\n### {title}\n\n| key | environment | flag | default | on HUP | meaning |\n|---|---|---|---|---|---|\n"
        );
        for s in specs.iter().filter(|s| s.section() == section) {
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
                DefaultValue::Value(v) => format!("`{v}`"),
                DefaultValue::Unset(_) => "none".into(),
                DefaultValue::Computed(how, _) => how.into(),
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

/// Checks declarations for mistakes a reader would trip on: a key outside the tables of `sections`, a key
/// declared twice, an undocumented one, a flag that is not the key with dashes, an environment variable naming
/// two settings. Returns the first one found.
pub fn lint(specs: &[&Spec], sections: &[&str]) -> Result<(), String> {
    for (i, s) in specs.iter().enumerate() {
        if !sections.contains(&s.section()) {
            return Err(format!("{}: not in a table of its own", s.key));
        }
        if s.doc.is_empty() {
            return Err(format!("{}: undocumented", s.key));
        }
        if specs[..i].iter().any(|o| o.key == s.key) {
            return Err(format!("{}: declared twice", s.key));
        }
        if let Some(flag) = s.flag {
            if flag != s.key.replace('_', "-") {
                return Err(format!("{}: the flag is not the key with dashes", s.key));
            }
            if !s.section().is_empty() {
                return Err(format!("{}: only top-level keys have flags", s.key));
            }
        }
        if let Some((key, flag)) = s.alias {
            if flag != key.replace('_', "-") {
                return Err(format!("{}: the alias flag is not the alias key with dashes", s.key));
            }
            if !s.section().is_empty() || key.contains('.') || specs.iter().any(|o| o.key == key) {
                return Err(format!("{}: an alias is a top-level key of no other setting", s.key));
            }
        }
        for env in s.env {
            if specs.iter().filter(|o| o.env.contains(env)).count() != 1 {
                return Err(format!("{env} names two settings"));
            }
        }
    }
    Ok(())
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
fn origins(s: &Spec) -> String {
    let mut parts = Vec::new();
    if !s.env.is_empty() {
        let env = s.env.join(" or ");
        parts.push(if s.kind == Kind::List { format!("env {env} (comma-separated)") } else { format!("env {env}") });
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
