//! What the application may know about the whole server, for its `/metrics`: a read-only snapshot of the
//! scoreboard (workers by state, restarts, reloads, heartbeats, requests in flight), per-worker gauges that
//! are summed over live workers, and shared counter memory that survives worker restarts.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use crate::scoreboard::RestartReason;
use crate::scoreboard::{GAUGE_COUNT, Scoreboard, SlotState};
use crate::sys;

/// The scoreboard and this worker's slot, set in each worker after fork (never in the master).
static BOARD: OnceLock<(Scoreboard, usize)> = OnceLock::new();

pub(crate) fn install(board: Scoreboard, slot: usize) {
    let _ = BOARD.set((board, slot));
}

/// Zeroed 64-bit counters in memory shared by the master and every worker forked afterwards. Allocate them
/// before the server starts (not in `WorkerApp::boot`), so that all workers, and all generations after a
/// reload, count into the same memory and totals never go backwards when a worker is replaced.
pub fn shared_counters(words: usize) -> io::Result<&'static [AtomicU64]> {
    sys::shared_words(words)
}

/// A snapshot of the server.
#[derive(Clone, Debug, Default)]
pub struct ServerStats {
    /// Unix time the master started, seconds (0 if unknown).
    pub start_time: u64,
    /// Live workers by state (`booting`, `ready`, `draining`, `retiring`).
    pub workers: Vec<(&'static str, u64)>,
    /// Workers replaced or retired since the master started, by reason.
    pub restarts: Vec<(&'static str, u64)>,
    /// Reloads that switched generations.
    pub reloads_ok: u64,
    /// Reloads that were aborted.
    pub reloads_aborted: u64,
    /// Requests in flight in all workers.
    pub in_flight: u64,
    /// Heartbeat age of the most silent serving worker, seconds.
    pub max_heartbeat_age: f64,
    /// Each gauge summed over live workers.
    pub gauges: [u64; GAUGE_COUNT],
    /// Log lines dropped since the master started (the output was not keeping up), by process role.
    pub log_lines_dropped: [(&'static str, u64); 2],
}

/// The server's statistics, or `None` outside a worker.
pub fn server_stats() -> Option<ServerStats> {
    let (board, _) = BOARD.get()?;
    let counters = board.counters();
    let now = sys::monotonic_ns();
    let states = [SlotState::Booting, SlotState::Ready, SlotState::Draining, SlotState::Retiring];
    let mut stats = ServerStats {
        start_time: counters.start_time,
        workers: states.iter().map(|s| (s.as_str(), 0)).collect(),
        restarts: RestartReason::ALL.iter().enumerate().map(|(i, r)| (r.as_str(), counters.restarts[i])).collect(),
        reloads_ok: counters.reloads_ok,
        reloads_aborted: counters.reloads_aborted,
        log_lines_dropped: crate::logging::dropped_by_role(),
        ..ServerStats::default()
    };
    for i in 0..board.len() {
        let slot = board.slot(i);
        let view = slot.view();
        let Some(k) = states.iter().position(|s| *s == view.state) else { continue };
        if view.pid == 0 {
            continue;
        }
        stats.workers[k].1 += 1;
        stats.in_flight = stats.in_flight.saturating_add(view.in_flight);
        if view.state != SlotState::Booting {
            let age = now.saturating_sub(view.heartbeat_ns) as f64 / 1e9;
            stats.max_heartbeat_age = stats.max_heartbeat_age.max(age);
        }
        for (g, total) in stats.gauges.iter_mut().enumerate() {
            *total = total.saturating_add(slot.gauge(g));
        }
    }
    Some(stats)
}

/// Publishes this worker's gauge `i` (ignored outside a worker or for an unknown gauge).
pub fn set_gauge(i: usize, value: u64) {
    if let Some((board, slot)) = BOARD.get()
        && i < GAUGE_COUNT
    {
        board.slot(*slot).set_gauge(i, value);
    }
}
