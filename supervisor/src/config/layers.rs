//! The layers a setting's value can come from, before anything is parsed: the config file (checked for
//! unknown keys), the environment and the command-line flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::values::Raw;
use super::{ConfigError, Source, Spec};

/// The config file, the environment and the flags, read once.
pub struct Layers {
    file: toml::Table,
    path: Option<PathBuf>,
    env: BTreeMap<&'static str, String>,
    /// Flag values by setting key.
    flags: BTreeMap<&'static str, String>,
}

impl Layers {
    /// Reads the config file at `path` (if any), refusing keys that none of `specs` declares (the top level
    /// and the tables of `sections`), and the environment variables `specs` name through `env`; `flags`
    /// maps setting keys to the values given on the command line.
    pub fn new(
        path: Option<&Path>,
        specs: &[&Spec],
        sections: &[&str],
        env: impl Fn(&str) -> Option<String>,
        flags: BTreeMap<&'static str, String>,
    ) -> Result<Layers, ConfigError> {
        Layers::read(path, specs, Some(sections), env, flags)
    }

    /// Like [`Layers::new`], without refusing unknown keys: for a reader of a few keys that must not fail on
    /// a mistake elsewhere in the file (`supervisor ctl`, which only locates the control socket).
    pub(crate) fn lenient(
        path: Option<&Path>,
        specs: &[&Spec],
        env: impl Fn(&str) -> Option<String>,
        flags: BTreeMap<&'static str, String>,
    ) -> Result<Layers, ConfigError> {
        Layers::read(path, specs, None, env, flags)
    }

    fn read(
        path: Option<&Path>,
        specs: &[&Spec],
        sections: Option<&[&str]>,
        env: impl Fn(&str) -> Option<String>,
        flags: BTreeMap<&'static str, String>,
    ) -> Result<Layers, ConfigError> {
        let text = match path {
            None => None,
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| ConfigError {
                key: "config".into(),
                source: Source::File(path.to_path_buf()),
                message: format!("cannot read the file: {e}"),
            })?),
        };
        Layers::parse(path.zip(text.as_deref()), specs, sections, env, flags)
    }

    /// Like [`Layers::read`], with the config file's text already read (`file`: its path and text).
    pub(crate) fn parse(
        file: Option<(&Path, &str)>,
        specs: &[&Spec],
        sections: Option<&[&str]>,
        env: impl Fn(&str) -> Option<String>,
        flags: BTreeMap<&'static str, String>,
    ) -> Result<Layers, ConfigError> {
        let table = match file {
            None => toml::Table::new(),
            Some((path, text)) => {
                let source = Source::File(path.to_path_buf());
                let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
                    key: "config".into(),
                    source: source.clone(),
                    message: format!("not valid TOML: {}", e.message()),
                })?;
                if let Some(sections) = sections {
                    check_known_keys(&table, specs, sections, &source)?;
                }
                table
            }
        };
        let env = specs.iter().flat_map(|s| s.env.iter()).filter_map(|&name| env(name).map(|v| (name, v))).collect();
        Ok(Layers { file: table, path: file.map(|(path, _)| path.to_path_buf()), env, flags })
    }

    /// The config file, if one was given.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The highest-precedence raw value of a setting, if any layer sets it.
    pub(crate) fn raw(&self, s: &Spec) -> Option<(Raw, Source)> {
        if let (Some(flag), Some(v)) = (s.flag, self.flags.get(s.key)) {
            return Some((Raw::Text(v.clone()), Source::Flag(flag)));
        }
        for &name in s.env {
            if let Some(v) = self.env.get(name) {
                return Some((Raw::Text(v.clone()), Source::Env(name)));
            }
        }
        let path = self.path.clone()?;
        let in_file = |key: &str| {
            let mut node = &self.file;
            let mut parts = key.split('.').peekable();
            while let Some(part) = parts.next() {
                let value = node.get(part)?;
                if parts.peek().is_none() {
                    return Some(value.clone());
                }
                node = value.as_table()?;
            }
            None
        };
        let value = in_file(s.key).or_else(|| s.alias.and_then(|(alias, _)| in_file(alias)))?;
        Some((Raw::Toml(value), Source::File(path)))
    }
}

/// Refuses keys nothing declares, naming the first one, and a key set twice (under its name and its alias).
fn check_known_keys(
    table: &toml::Table,
    specs: &[&Spec],
    sections: &[&str],
    source: &Source,
) -> Result<(), ConfigError> {
    let unknown = |key: String| ConfigError { key, source: source.clone(), message: "unknown key".into() };
    for (name, value) in table {
        match value.as_table() {
            Some(sub) if sections.contains(&name.as_str()) => {
                for inner in sub.keys() {
                    let key = format!("{name}.{inner}");
                    if !specs.iter().any(|s| s.key == key) {
                        return Err(unknown(key));
                    }
                }
            }
            _ if specs.iter().any(|s| s.key == name.as_str() || s.alias.is_some_and(|a| a.0 == name.as_str())) => {}
            _ => return Err(unknown(name.clone())),
        }
    }
    // A key and its alias both set: which one wins would be a guess.
    for s in specs {
        if let Some((alias, _)) = s.alias.filter(|(alias, _)| table.contains_key(s.key) && table.contains_key(*alias)) {
            return Err(ConfigError {
                key: s.key.into(),
                source: source.clone(),
                message: format!("set twice, also as `{alias}`: keep one"),
            });
        }
    }
    Ok(())
}
