//! What the application may know about the whole server, for its `/metrics`: a read-only snapshot of the
//! scoreboard (workers by state, restarts, reloads, heartbeats, requests in flight), per-worker gauges that
//! are summed over live workers, and shared counter memory that survives worker restarts
//! ([`ShardedCounters`]).

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::scoreboard::RestartReason;
use crate::scoreboard::{GAUGE_COUNT, Scoreboard, SlotState};
use crate::sys;

/// The scoreboard and this worker's slot, set in each worker after fork (never in the master).
static BOARD: OnceLock<(Scoreboard, usize)> = OnceLock::new();

/// The shard of [`ShardedCounters`] this process adds into: its scoreboard slot (0 outside a worker).
static SHARD: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn install(board: Scoreboard, slot: usize) {
    let _ = BOARD.set((board, slot));
    SHARD.store(slot, Ordering::Relaxed);
}

/// Counters that each worker adds into its own shard, one per scoreboard slot, summed when read: totals as
/// exact as one shared set of counters, without the workers' processors taking each other's cache lines
/// on every addition.
///
/// The memory is mapped before the server starts (not in the boot function of a worker) and shared by every process
/// forked afterwards. A shard is never reset: a worker that takes over a slot (a replacement, the next
/// generation) keeps adding to what its predecessors counted there, so totals never go backwards; two
/// workers alive at once (two generations during a reload) always hold different slots. Only shards that
/// were ever added into are read, so the memory of unused slots is never touched.
#[derive(Clone, Copy)]
pub struct ShardedCounters {
    /// `shards` shards of `words` words each.
    counters: &'static [AtomicU64],
    /// One word per shard: non-zero once the shard was added into.
    used: &'static [AtomicU64],
    words: usize,
}

impl ShardedCounters {
    /// Shards in memory shared with the workers: one per scoreboard slot.
    pub const SHARDS: usize = crate::scoreboard::SLOTS;

    /// Zeroed sharded counters of `words` words in memory shared with every process forked afterwards.
    /// Allocate them before the server starts.
    pub fn shared(words: usize) -> io::Result<ShardedCounters> {
        Ok(ShardedCounters {
            counters: sys::shared_words(words * Self::SHARDS)?,
            used: sys::shared_words(Self::SHARDS)?,
            words,
        })
    }

    /// Zeroed counters of `words` words, with one shard, in this process's memory only (tests, tools).
    pub fn private(words: usize) -> ShardedCounters {
        let leak = |n: usize| -> &'static [AtomicU64] { Vec::leak((0..n).map(|_| AtomicU64::new(0)).collect()) };
        ShardedCounters { counters: leak(words), used: leak(1), words }
    }

    /// Adds `n` to counter `i` in this process's shard.
    pub fn add(&self, i: usize, n: u64) {
        self.add_in(SHARD.load(Ordering::Relaxed), i, n);
    }

    fn add_in(&self, shard: usize, i: usize, n: u64) {
        let shard = shard.min(self.used.len() - 1);
        // Read, not written, once marked: the marks of all shards share cache lines.
        if self.used[shard].load(Ordering::Relaxed) == 0 {
            self.used[shard].store(1, Ordering::Relaxed);
        }
        self.counters[shard * self.words + i].fetch_add(n, Ordering::Relaxed);
    }

    /// Every counter summed over the shards, in counter order.
    pub fn totals(&self) -> Vec<u64> {
        let mut totals = vec![0u64; self.words];
        for (shard, _) in self.used.iter().enumerate().filter(|(_, u)| u.load(Ordering::Relaxed) != 0) {
            let counters = &self.counters[shard * self.words..(shard + 1) * self.words];
            for (total, counter) in totals.iter_mut().zip(counters) {
                *total = total.wrapping_add(counter.load(Ordering::Relaxed));
            }
        }
        totals
    }
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
    /// Every live worker, by scoreboard slot.
    pub each_worker: Vec<WorkerStats>,
}

/// One live worker, as its scoreboard slot shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerStats {
    /// Its scoreboard slot: a small number, reused by the worker that replaces it.
    pub slot: usize,
    /// Its pid.
    pub pid: i32,
    /// Its generation.
    pub generation: u64,
    /// `booting`, `ready`, `draining` or `retiring`.
    pub state: &'static str,
    /// Its memory (PSS, else RSS) as the master last sampled it, in bytes (0 before the first sample).
    pub memory_bytes: u64,
    /// Seconds since it was forked.
    pub age_seconds: f64,
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
        stats.each_worker.push(WorkerStats {
            slot: i,
            pid: view.pid,
            generation: view.generation,
            state: view.state.as_str(),
            memory_bytes: view.memory_bytes,
            age_seconds: now.saturating_sub(view.started_ns) as f64 / 1e9,
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_summed_when_read() {
        let counters = ShardedCounters::shared(4).unwrap();
        counters.add_in(0, 1, 5);
        counters.add_in(3, 1, 7);
        counters.add_in(ShardedCounters::SHARDS - 1, 1, 1);
        counters.add_in(3, 2, 2);
        assert_eq!(counters.totals(), [0, 13, 2, 0]);
        let used: Vec<usize> =
            (0..ShardedCounters::SHARDS).filter(|&s| counters.used[s].load(Ordering::Relaxed) != 0).collect();
        assert_eq!(used, [0, 3, ShardedCounters::SHARDS - 1], "only the shards added into are marked");
    }

    #[test]
    fn a_slot_taken_over_keeps_counting_from_where_its_predecessor_left() {
        let counters = ShardedCounters::shared(2).unwrap();
        // A worker in slot 2 counts, dies; its replacement in the same slot counts on.
        counters.add_in(2, 0, 40);
        let before = counters.totals()[0];
        counters.add_in(2, 0, 2);
        assert_eq!((before, counters.totals()[0]), (40, 42), "totals never go backwards");
        // The next generation's worker, in another slot, beside the old one: both count.
        counters.add_in(5, 0, 3);
        counters.add_in(2, 0, 1);
        assert_eq!(counters.totals()[0], 46);
    }

    #[test]
    fn private_counters_have_one_shard_whatever_the_slot() {
        let counters = ShardedCounters::private(3);
        counters.add_in(0, 2, 1);
        counters.add_in(17, 2, 1);
        counters.add(2, 1);
        assert_eq!(counters.totals()[2], 3);
    }
}
