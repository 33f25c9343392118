//! Raw values as the layers hold them, and how each type of setting parses and shows them.

use std::time::Duration;

use super::Kind;

/// A raw value found in one layer: text (environment, flag) or a TOML value (file, declared default).
#[derive(Clone, Debug)]
pub enum Raw {
    /// From the environment or a flag.
    Text(String),
    /// From the file, or a declared default.
    Toml(toml::Value),
}

impl Raw {
    /// A declared default: a TOML literal.
    pub(crate) fn literal(literal: &str) -> Raw {
        let table: toml::Table = format!("v = {literal}").parse().unwrap_or_else(|e| panic!("{literal:?}: {e}"));
        Raw::Toml(table["v"].clone())
    }
}

/// A type a [`super::Setting`] can hold: parsed from a raw value within the bounds of its [`Kind`], and
/// shown the way `check` prints it (and the way it can be written back: parsing what is shown gives the
/// value again, within the precision of the display).
pub trait Value: Sized {
    /// Parses `raw` as `kind`, within its bounds.
    fn parse(kind: Kind, raw: &Raw) -> Result<Self, String>;
    /// The value as `check` prints it.
    fn show(&self) -> String;
}

impl Value for Duration {
    fn parse(kind: Kind, raw: &Raw) -> Result<Self, String> {
        let Kind::Seconds { min, max } = kind else { unreachable!("a duration is declared with seconds()") };
        seconds(raw, min, max)
    }

    fn show(&self) -> String {
        format!("{}s", self.as_secs_f64())
    }
}

impl Value for u64 {
    fn parse(kind: Kind, raw: &Raw) -> Result<Self, String> {
        let Kind::Count { min, max } = kind else { unreachable!("a count is declared with count()") };
        count(raw, min, max)
    }

    fn show(&self) -> String {
        self.to_string()
    }
}

impl Value for bool {
    fn parse(_: Kind, raw: &Raw) -> Result<Self, String> {
        match raw {
            Raw::Toml(toml::Value::Boolean(b)) => Ok(*b),
            Raw::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                other => Err(format!("expected true or false, got {other:?}")),
            },
            Raw::Toml(v) => Err(format!("expected true or false, got {}", v.type_str())),
        }
    }

    fn show(&self) -> String {
        self.to_string()
    }
}

impl Value for String {
    fn parse(_: Kind, raw: &Raw) -> Result<Self, String> {
        match raw {
            Raw::Text(s) => Ok(s.trim().to_string()),
            Raw::Toml(toml::Value::String(s)) => Ok(s.clone()),
            Raw::Toml(v) => Err(format!("expected a string, got {}", v.type_str())),
        }
    }

    fn show(&self) -> String {
        self.clone()
    }
}

/// A TOML array of strings, or a comma-separated string (environment, flags).
impl Value for Vec<String> {
    fn parse(_: Kind, raw: &Raw) -> Result<Self, String> {
        let split = |s: &str| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        match raw {
            Raw::Text(s) | Raw::Toml(toml::Value::String(s)) => Ok(split(s)),
            Raw::Toml(toml::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(String::from).ok_or_else(|| format!("expected strings, got {}", v.type_str())))
                .collect(),
            Raw::Toml(v) => Err(format!("expected a list of strings, got {}", v.type_str())),
        }
    }

    fn show(&self) -> String {
        format!("[{}]", self.join(", "))
    }
}

fn count(raw: &Raw, min: u64, max: u64) -> Result<u64, String> {
    let n: i128 = match raw {
        Raw::Text(s) => s.trim().parse().map_err(|_| format!("expected a whole number, got {:?}", s.trim()))?,
        Raw::Toml(toml::Value::Integer(n)) => i128::from(*n),
        Raw::Toml(v) => return Err(format!("expected a whole number, got {}", v.type_str())),
    };
    if n < i128::from(min) || n > i128::from(max) {
        return Err(format!("must be between {min} and {max}, got {n}"));
    }
    Ok(n as u64)
}

fn seconds(raw: &Raw, min: f64, max: f64) -> Result<Duration, String> {
    let s: f64 = match raw {
        Raw::Text(s) => s.trim().parse().map_err(|_| format!("expected a number of seconds, got {:?}", s.trim()))?,
        Raw::Toml(toml::Value::Integer(n)) => *n as f64,
        Raw::Toml(toml::Value::Float(f)) => *f,
        Raw::Toml(v) => return Err(format!("expected a number of seconds, got {}", v.type_str())),
    };
    if !(min..=max).contains(&s) {
        return Err(format!("must be between {min} and {max} seconds, got {s}"));
    }
    Ok(Duration::from_secs_f64(s))
}
