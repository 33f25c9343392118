//! Settings declared once, read from four layers: command-line flag > environment > config file > default.
//!
//! A crate that consumes settings declares each of them once, as a typed [`Setting`] constant next to the
//! struct field it fills (in the manner of gunicorn's `config.py`): its key in the TOML file, its
//! environment variables, its flag, its bounds, its default, a line of documentation and whether a reload
//! (HUP) applies it. From those declarations come the flags the command line accepts, the environment
//! variables read, the unknown-key check, the bound checks, what `check` prints, the sample configuration
//! file and the settings tables of the documentation ([`docs`]).
//!
//! The supervisor declares its own settings ([`crate::Settings`], top-level keys); an application declares
//! its own the same way, in TOML tables of its own, by implementing [`crate::AppSettings`]:
//!
//! ```
//! use std::time::Duration;
//! use supervisor::AppSettings;
//! use supervisor::config::{ConfigError, Resolver, Setting, Spec};
//!
//! /// `[app] greeting`.
//! const GREETING: Setting<String> =
//!     Setting::text("app.greeting").env(&["GREETING"]).default(r#""hello""#).doc("What `GET /` answers.");
//! /// `[app] slow_after`: unset, it follows the supervisor's `timeout`.
//! const SLOW_AFTER: Setting<Duration> = Setting::seconds("app.slow_after", 0.001, 3600.0)
//!     .computed("half of timeout", "30")
//!     .doc("Requests slower than this are logged.");
//!
//! #[derive(Clone, Debug)]
//! struct Config {
//!     greeting: String,
//!     slow_after: Duration,
//! }
//!
//! impl AppSettings for Config {
//!     const SECTIONS: &'static [&'static str] = &["app"];
//!     const SETTINGS: &'static [&'static Spec] = &[GREETING.spec(), SLOW_AFTER.spec()];
//!
//!     fn resolve(r: &mut Resolver<'_>, server: &supervisor::Settings) -> Result<Self, ConfigError> {
//!         Ok(Config { greeting: r.get(&GREETING)?, slow_after: r.or(&SLOW_AFTER, server.timeout / 2)? })
//!     }
//! }
//! ```
//!
//! Every resolved value remembers its [`Source`], so that an error names the key and where the bad value
//! came from ([`ConfigError`]), and `check` and the startup log say where each value came from. This module
//! knows nothing of the supervisor's own settings: [`crate::server_settings`] puts the two sets together.

pub mod docs;
mod layers;
pub(crate) mod values;

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

pub use self::layers::Layers;
use self::values::Raw;
pub use self::values::Value;

/// How a value is written and which values are accepted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// Seconds, a whole or decimal number, within `[min, max]`.
    Seconds {
        /// Smallest accepted.
        min: f64,
        /// Largest accepted.
        max: f64,
    },
    /// A whole number within `[min, max]`.
    Count {
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
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
    /// Computed from other settings, as described; the second string is an example value.
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

/// One setting's declaration, whatever its type: what the layers, the command line and the generated files
/// need to know of it.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Dotted path in the TOML file: `timeout` for the supervisor's, `section.name` for an application's.
    pub key: &'static str,
    /// Environment variables, highest precedence first.
    pub env: &'static [&'static str],
    /// Long command-line flag, without the dashes: the key with dashes (top-level keys only).
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
    /// How the value is printed (`check`, the startup log) when it is a secret: the value with its secret
    /// parts hidden.
    pub redact: Option<fn(&str) -> String>,
}

impl Spec {
    /// The TOML table the key lives in (`""` for the top level).
    pub fn section(&self) -> &'static str {
        self.key.rsplit_once('.').map_or("", |(section, _)| section)
    }

    /// The key within its table.
    pub fn name(&self) -> &'static str {
        self.key.rsplit_once('.').map_or(self.key, |(_, name)| name)
    }
}

/// A setting whose value is a `T`: its [`Spec`], built with the constructors and `const` methods below.
/// Read it with a [`Resolver`].
#[derive(Debug)]
pub struct Setting<T> {
    spec: Spec,
    value: PhantomData<fn() -> T>,
}

const fn declare<T>(key: &'static str, kind: Kind) -> Setting<T> {
    Setting {
        spec: Spec {
            key,
            env: &[],
            flag: None,
            short: None,
            alias: None,
            kind,
            default: DefaultValue::Unset(""),
            doc: "",
            on_hup: OnHup::Applies,
            redact: None,
        },
        value: PhantomData,
    }
}

impl Setting<Duration> {
    /// Seconds within `[min, max]`.
    pub const fn seconds(key: &'static str, min: f64, max: f64) -> Self {
        declare(key, Kind::Seconds { min, max })
    }
}

impl Setting<u64> {
    /// A whole number within `[min, max]`.
    pub const fn count(key: &'static str, min: u64, max: u64) -> Self {
        declare(key, Kind::Count { min, max })
    }
}

impl Setting<bool> {
    /// `true` or `false`.
    pub const fn boolean(key: &'static str) -> Self {
        declare(key, Kind::Bool)
    }
}

impl Setting<String> {
    /// A string.
    pub const fn text(key: &'static str) -> Self {
        declare(key, Kind::Text)
    }

    /// Printed by `redact` wherever the value is shown, because it holds a secret (a password).
    pub const fn secret(mut self, redact: fn(&str) -> String) -> Self {
        self.spec.redact = Some(redact);
        self
    }
}

impl Setting<Vec<String>> {
    /// A list of strings.
    pub const fn list(key: &'static str) -> Self {
        declare(key, Kind::List)
    }
}

impl<T> Setting<T> {
    /// The declaration, for a list of [`Spec`]s.
    pub const fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The key.
    pub const fn key(&self) -> &'static str {
        self.spec.key
    }

    /// Read from these environment variables, the first one set winning.
    pub const fn env(mut self, env: &'static [&'static str]) -> Self {
        self.spec.env = env;
        self
    }

    /// Read from `--FLAG` too (the key with dashes; top-level keys only).
    pub const fn flag(mut self, flag: &'static str) -> Self {
        self.spec.flag = Some(flag);
        self
    }

    /// Read from `-SHORT` too.
    pub const fn short(mut self, short: char) -> Self {
        self.spec.short = Some(short);
        self
    }

    /// Also accepted as `key` in the file and `--flag` on the command line.
    pub const fn alias(mut self, key: &'static str, flag: &'static str) -> Self {
        self.spec.alias = Some((key, flag));
        self
    }

    /// The default, as a TOML literal (`"60"`, `"true"`, `r#""info""#`, `r#"["a"]"#`).
    pub const fn default(mut self, literal: &'static str) -> Self {
        self.spec.default = DefaultValue::Value(literal);
        self
    }

    /// No default: the feature is off unless set. `example` is shown commented out in the sample file.
    pub const fn unset(mut self, example: &'static str) -> Self {
        self.spec.default = DefaultValue::Unset(example);
        self
    }

    /// The default is computed from other settings, as `how` says (the consumer computes it, see
    /// [`Resolver::or`]); `example` is shown commented out in the sample file.
    pub const fn computed(mut self, how: &'static str, example: &'static str) -> Self {
        self.spec.default = DefaultValue::Computed(how, example);
        self
    }

    /// What it does.
    pub const fn doc(mut self, doc: &'static str) -> Self {
        self.spec.doc = doc;
        self
    }

    /// A reload does not apply it: it needs a restart.
    pub const fn restart(mut self) -> Self {
        self.spec.on_hup = OnHup::NeedsRestart;
        self
    }
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Built-in default.
    Default,
    /// The config file.
    File(PathBuf),
    /// An environment variable.
    Env(&'static str),
    /// A command-line flag (its long name, without the dashes).
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(name) => write!(f, "env {name}"),
            Source::Flag(name) => write!(f, "flag --{name}"),
        }
    }
}

/// A configuration problem, naming the key and the source of the offending value: exit code 2.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The key (`timeout`, `database.pool_size`, ...), or `config` for the file itself.
    pub key: String,
    /// Where the value came from.
    pub source: Source,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: `{}` (from {}): {}", self.key, self.source, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A value its consumer refuses, found by a check that involves more than one setting (or none of the
/// layers, as when a typed configuration is built by hand). [`Resolver::refuse`] names where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The key of the refused value.
    pub key: &'static str,
    /// Why.
    pub message: String,
}

impl Invalid {
    /// `setting`'s value is refused because of `message`.
    pub fn new<T>(setting: &Setting<T>, message: impl Into<String>) -> Invalid {
        Invalid { key: setting.key(), message: message.into() }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for Invalid {}

/// One line of the report: a key, its value as shown, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reported {
    /// The key.
    pub key: &'static str,
    /// The value as `check` shows it (secrets redacted, computed defaults with how they were computed).
    pub shown: String,
    /// Where it came from.
    pub source: Source,
}

/// Reads settings out of the [`Layers`], each checked against its declaration, and remembers what was read
/// and where it came from.
pub struct Resolver<'a> {
    layers: &'a Layers,
    read: Vec<Reported>,
}

impl<'a> Resolver<'a> {
    /// A resolver over `layers`.
    pub fn new(layers: &'a Layers) -> Resolver<'a> {
        Resolver { layers, read: Vec::new() }
    }

    /// The value of a setting with a literal default: from the highest layer that sets it, or the default.
    ///
    /// # Panics
    /// When the setting has no literal default (use [`Resolver::opt`] or [`Resolver::or`]).
    pub fn get<T: Value>(&mut self, setting: &Setting<T>) -> Result<T, ConfigError> {
        let key = setting.key();
        self.opt(setting)?.ok_or_else(|| unreachable!("`{key}` has no literal default: read it with opt or or"))
    }

    /// The value of a setting, or `None` when no layer sets it and it has no literal default.
    pub fn opt<T: Value>(&mut self, setting: &Setting<T>) -> Result<Option<T>, ConfigError> {
        let spec = setting.spec();
        let (value, source) = match self.layers.raw(spec) {
            Some((raw, source)) => match T::parse(spec.kind, &raw) {
                Ok(value) => (Some(value), source),
                Err(message) => return Err(ConfigError { key: spec.key.into(), source, message }),
            },
            None => match spec.default {
                DefaultValue::Value(literal) => {
                    let raw = Raw::literal(literal);
                    let value = T::parse(spec.kind, &raw)
                        .unwrap_or_else(|e| panic!("the default of `{}` is invalid: {e}", spec.key));
                    (Some(value), Source::Default)
                }
                DefaultValue::Unset(_) | DefaultValue::Computed(..) => (None, Source::Default),
            },
        };
        let shown = match (&value, spec.redact) {
            (None, _) => "none".to_string(),
            (Some(v), Some(redact)) => redact(&v.show()),
            (Some(v), None) => v.show(),
        };
        self.remember(spec.key, shown, source);
        Ok(value)
    }

    /// The value of a setting whose default is computed: `computed` when no layer sets it, shown with how it
    /// was computed (the declaration's text).
    pub fn or<T: Value>(&mut self, setting: &Setting<T>, computed: T) -> Result<T, ConfigError> {
        let how = match setting.spec().default {
            DefaultValue::Computed(how, _) => how,
            _ => "computed",
        };
        self.or_with(setting, computed, how)
    }

    /// Like [`Resolver::or`], with `how` the computed value was found (for a default that depends on the
    /// machine, like a CPU count).
    pub fn or_with<T: Value>(&mut self, setting: &Setting<T>, computed: T, how: &str) -> Result<T, ConfigError> {
        Ok(match self.opt(setting)? {
            Some(value) => value,
            None => {
                if let Some(last) = self.read.last_mut() {
                    last.shown = format!("{} [{how}]", computed.show());
                }
                computed
            }
        })
    }

    /// The value of a setting turned into a type of the consumer's by `convert`, whose error is reported
    /// as the setting's, naming where the value came from.
    pub fn parse<T: Value, U, E: fmt::Display>(
        &mut self,
        setting: &Setting<T>,
        convert: impl FnOnce(T) -> Result<U, E>,
    ) -> Result<U, ConfigError> {
        let value = self.get(setting)?;
        convert(value).map_err(|e| self.refuse(Invalid::new(setting, e.to_string())))
    }

    /// Like [`Resolver::parse`] for a setting without a default: `None` when unset.
    pub fn parse_opt<T: Value, U, E: fmt::Display>(
        &mut self,
        setting: &Setting<T>,
        convert: impl FnOnce(T) -> Result<U, E>,
    ) -> Result<Option<U>, ConfigError> {
        match self.opt(setting)? {
            None => Ok(None),
            Some(value) => convert(value).map(Some).map_err(|e| self.refuse(Invalid::new(setting, e.to_string()))),
        }
    }

    /// The error for a value its consumer refused, naming where the value came from.
    pub fn refuse(&self, invalid: Invalid) -> ConfigError {
        let source = self.read.iter().find(|r| r.key == invalid.key).map_or(Source::Default, |r| r.source.clone());
        ConfigError { key: invalid.key.into(), source, message: invalid.message }
    }

    fn remember(&mut self, key: &'static str, shown: String, source: Source) {
        assert!(self.read.iter().all(|r| r.key != key), "setting `{key}` read twice");
        self.read.push(Reported { key, shown, source });
    }

    /// What was read, in the order of `specs`.
    ///
    /// # Panics
    /// When a declared setting was never read: its consumer forgot it.
    pub(crate) fn report(mut self, specs: &[&Spec]) -> Vec<Reported> {
        specs
            .iter()
            .map(|spec| {
                let i = self.read.iter().position(|r| r.key == spec.key);
                self.read.swap_remove(i.unwrap_or_else(|| panic!("setting `{}` is declared but never read", spec.key)))
            })
            .collect()
    }
}
