//! Every setting of a server: the supervisor's ([`crate::Settings`], top-level keys) and an application's
//! ([`AppSettings`], in tables of its own), put together: their declarations, the files generated from them,
//! and their values resolved out of the layers ([`Resolved`]).

use crate::Settings;
use crate::config::{ConfigError, Layers, OnHup, Reported, Resolver, Spec, docs};

/// An application's own settings, declared like the supervisor's and read from the same file, environment
/// and flags. The supervisor resolves them after its own, and hands the result to the application's boot
/// function in every worker; a reload (HUP) resolves them again.
pub trait AppSettings: Clone + Send + Sync + 'static {
    /// The TOML tables this application's keys live in (`app`, `database`), in the order the sample file
    /// and the docs list them. Every key of [`AppSettings::SETTINGS`] is in one of them.
    const SECTIONS: &'static [&'static str];
    /// Every setting, in the order `check` prints them.
    const SETTINGS: &'static [&'static Spec];

    /// Reads every setting of [`AppSettings::SETTINGS`] through `r` (each exactly once) and builds the
    /// configuration; `server` holds the supervisor's settings, already resolved, for defaults that follow
    /// them.
    fn resolve(r: &mut Resolver<'_>, server: &Settings) -> Result<Self, ConfigError>;

    /// Warnings about a valid but risky combination, printed by `check` and logged at startup.
    fn warnings(&self, _server: &Settings) -> Vec<String> {
        Vec::new()
    }
}

/// No settings of its own.
impl AppSettings for () {
    const SECTIONS: &'static [&'static str] = &[];
    const SETTINGS: &'static [&'static Spec] = &[];

    fn resolve(_: &mut Resolver<'_>, _: &Settings) -> Result<Self, ConfigError> {
        Ok(())
    }
}

/// Every setting of a server running the application `C`: the supervisor's, then the application's.
pub fn specs<C: AppSettings>() -> Vec<&'static Spec> {
    crate::settings::SETTINGS.iter().chain(C::SETTINGS).copied().collect()
}

/// The TOML tables of a server running `C`: the top level (`""`), then the application's.
pub fn sections<C: AppSettings>() -> Vec<&'static str> {
    [""].into_iter().chain(C::SECTIONS.iter().copied()).collect()
}

/// The commented sample configuration of a server running `C`: every setting with its default, by table.
pub fn sample_toml<C: AppSettings>() -> String {
    docs::sample_toml(&specs::<C>(), &sections::<C>())
}

/// Markdown tables of every setting of a server running `C`, one per table.
pub fn docs_tables<C: AppSettings>() -> String {
    docs::docs_tables(&specs::<C>(), &sections::<C>())
}

/// Checks the declarations of a server running `C` ([`docs::lint`]), and that the application declares no
/// top-level key (those are the supervisor's). Returns the first mistake found.
pub fn lint<C: AppSettings>() -> Result<(), String> {
    if let Some(s) = C::SETTINGS.iter().find(|s| s.section().is_empty()) {
        return Err(format!("{}: not in a table of its own", s.key));
    }
    docs::lint(&specs::<C>(), &sections::<C>())
}

/// Every setting of a server running the application `C`, resolved: the supervisor's, the application's,
/// and how each came to its value.
#[derive(Debug)]
pub struct Resolved<C> {
    /// The supervisor's settings.
    pub settings: Settings,
    /// The application's.
    pub app: C,
    /// Every setting, the supervisor's first, in declaration order.
    pub report: Vec<Reported>,
}

impl<C: AppSettings> Resolved<C> {
    /// Resolves every setting out of `layers`. `cpus` is the usable CPU count and where it came from (see
    /// [`crate::cpus::usable_cpus`]), for the default worker count.
    pub fn from_layers(layers: &Layers, cpus: (usize, crate::cpus::CpuSource)) -> Result<Resolved<C>, ConfigError> {
        let mut r = Resolver::new(layers);
        let settings = Settings::resolve(&mut r, cpus)?;
        let app = C::resolve(&mut r, &settings)?;
        Ok(Resolved { settings, app, report: r.report(&specs::<C>()) })
    }

    /// `key=value (source)` pairs, for the startup log line.
    pub fn summary(&self) -> String {
        self.report.iter().map(|r| format!("{}={} ({})", r.key, r.shown, r.source)).collect::<Vec<_>>().join(", ")
    }

    /// The settings a reload cannot apply whose value differs in `newer`.
    pub fn needs_restart(&self, newer: &Resolved<C>) -> Vec<&'static str> {
        let shown = |report: &[Reported], key: &str| report.iter().find(|r| r.key == key).map(|r| r.shown.clone());
        (specs::<C>().into_iter().filter(|s| s.on_hup == OnHup::NeedsRestart))
            .filter(|s| shown(&self.report, s.key) != shown(&newer.report, s.key))
            .map(|s| s.key)
            .collect()
    }
}

#[cfg(test)]
mod tests;
