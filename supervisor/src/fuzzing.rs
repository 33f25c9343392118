//! What the fuzz targets (`fuzz/`) reach of this crate beyond its public API: the field bounding of log lines
//! and their rendering, the settings' value parsers and layers, and the refusal of request heads (limits and
//! Host rules). Compiled only with `--cfg fuzzing`, which cargo-fuzz sets.

pub use crate::logging::{FIELD_LIMITS, FIELD_MAX, LINE_MAX};

/// [`crate::cut_at`]: `s` cut to at most `limit` bytes on a character boundary, and the bytes left out.
pub fn cut_at(s: &str, limit: usize) -> (&str, usize) {
    crate::cut_at(s, limit)
}

/// The JSON lines that the events of `log` (in the spans it enters) render to, as the output would get them.
pub fn log_lines(log: impl FnOnce()) -> Vec<String> {
    crate::logging::fuzzing::lines(log)
}

pub use crate::config::{ConfigError, DefaultValue, Kind, Reported, Source, Value};
pub use crate::host::is_valid as host_is_valid;
pub use crate::server_settings::{Resolved, specs};
pub use crate::{Limits, Refusal};

/// A setting's value parsed from `text` as the environment or a flag gives it, as `kind`.
pub fn parse_text<T: Value>(kind: Kind, text: &str) -> Result<T, String> {
    T::parse(kind, &crate::config::values::Raw::Text(text.to_string()))
}

/// Every setting of a server running the app `C`, resolved from `file` (the config file's text) and `env`
/// (the environment), as `serve` and `check` resolve them, with 2 CPUs.
pub fn resolve<C: crate::AppSettings>(file: &str, env: &[(String, String)]) -> Result<Resolved<C>, ConfigError> {
    let specs = specs::<C>();
    let layers = crate::config::Layers::parse(
        Some((std::path::Path::new("fuzz.toml"), file)),
        &specs,
        Some(&crate::server_settings::sections::<C>()),
        |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
        Default::default(),
    )?;
    Resolved::from_layers(&layers, (2, crate::cpus::CpuSource::Affinity))
}

/// Why the worker refuses a request with this head, if it does (the head limits, then the Host rules).
pub fn refusal<B>(limits: &Limits, req: &hyper::Request<B>) -> Option<Refusal> {
    crate::worker::refusal(limits, req)
}
