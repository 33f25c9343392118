//! What the fuzz targets (`fuzz/`) reach of this crate beyond its public API: the field bounding of log lines
//! and their rendering. Compiled only with `--cfg fuzzing`, which cargo-fuzz sets.

pub use crate::logging::{FIELD_LIMITS, FIELD_MAX, LINE_MAX};

/// [`crate::cut_at`]: `s` cut to at most `limit` bytes on a character boundary, and the bytes left out.
pub fn cut_at(s: &str, limit: usize) -> (&str, usize) {
    crate::cut_at(s, limit)
}

/// The JSON lines that the events of `log` (in the spans it enters) render to, as the output would get them.
pub fn log_lines(log: impl FnOnce()) -> Vec<String> {
    crate::logging::fuzzing::lines(log)
}
