//! What the handlers of one worker share, built once per worker at boot.

use crate::config::Config;
use crate::cors::Cors;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// The worker's shared state, handed to every handler.
pub(crate) struct State {
    pub(crate) config: Config,
    pub(crate) metrics: Metrics,
    pub(crate) cors: Cors,
    pub(crate) db: Db,
    pub(crate) readiness: Readiness,
}
