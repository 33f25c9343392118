//! Lines rendered into memory rather than to the output, as [`super::JsonLayer`] renders them, for the fuzz
//! targets (`fuzz/`). Compiled only with `--cfg fuzzing`, which cargo-fuzz sets.

use std::sync::{Arc, Mutex};

use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use super::{JsonLayer, Line, render_bounded};

/// Keeps span fields as [`JsonLayer`] does; renders each event into the shared list instead of the output.
struct Capture(Arc<Mutex<Vec<String>>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        JsonLayer.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        JsonLayer.on_record(id, values, ctx);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut line = Line::new();
        render_bounded(&mut line, event, &ctx);
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line.out);
    }
}

/// The lines the events and spans of `log` render to, in order.
pub(crate) fn lines(log: impl FnOnce()) -> Vec<String> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    tracing::subscriber::with_default(tracing_subscriber::registry().with(Capture(lines.clone())), log);
    std::mem::take(&mut *lines.lock().unwrap_or_else(|e| e.into_inner()))
}
