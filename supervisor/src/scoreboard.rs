//! The scoreboard: one slot per worker in memory shared by the master and every worker (cf. Apache httpd).
//!
//! A worker writes its own slot (state, heartbeat, counters, in-flight requests); the master reads every slot
//! on each loop turn and resets a slot before forking into it. Nothing here touches the disk, so a slow or
//! full filesystem can never make a healthy worker look dead.
//!
//! Layout: each slot is `SLOT_WORDS` 64-bit atomic words. Strings (method, path, label of an in-flight
//! request) are packed into words under a per-entry sequence lock, so a reader never sees a torn entry.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys;

/// Lifecycle state of a worker as written in its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Slot unused.
    Free,
    /// Forked, initialising the application.
    Booting,
    /// Accepting and serving.
    Ready,
    /// Stopped accepting; finishing in-flight requests.
    Draining,
    /// Reached `max_requests`; asks the master for a replacement, and keeps serving until told to drain.
    Retiring,
}

impl SlotState {
    fn from_word(w: u64) -> SlotState {
        match w {
            1 => SlotState::Booting,
            2 => SlotState::Ready,
            3 => SlotState::Draining,
            4 => SlotState::Retiring,
            _ => SlotState::Free,
        }
    }

    fn word(self) -> u64 {
        match self {
            SlotState::Free => 0,
            SlotState::Booting => 1,
            SlotState::Ready => 2,
            SlotState::Draining => 3,
            SlotState::Retiring => 4,
        }
    }

    /// Name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Free => "free",
            SlotState::Booting => "booting",
            SlotState::Ready => "ready",
            SlotState::Draining => "draining",
            SlotState::Retiring => "retiring",
        }
    }
}

// Words of the scoreboard's own header, written by the master.
const BOARD_START_TIME: usize = 0;
const BOARD_RELOADS_OK: usize = 1;
const BOARD_RELOADS_ABORTED: usize = 2;
const BOARD_RESTARTS: usize = 8;
const BOARD_WORDS: usize = 32;
/// Restart reasons the header can count.
pub const MAX_REASONS: usize = BOARD_WORDS - BOARD_RESTARTS;

// Slot header words.
const PID: usize = 0;
const GENERATION: usize = 1;
const STATE: usize = 2;
const HEARTBEAT: usize = 3;
const REQUESTS: usize = 4;
const IN_FLIGHT: usize = 5;
const CONNECTIONS: usize = 6;
/// Written by the master: the worker's memory as last sampled, in bytes.
const MEMORY: usize = 7;
const GAUGES: usize = 8;
/// Gauges each worker can publish for aggregation (see [`Slot::set_gauge`]).
pub const GAUGE_COUNT: usize = 4;
/// Written by the master: when the worker was forked (monotonic nanoseconds).
const STARTED: usize = GAUGES + GAUGE_COUNT;
const HEADER_WORDS: usize = STARTED + 1;

/// In-flight requests recorded per worker (more may be in flight; only the count is kept for those).
pub const ENTRIES: usize = 4;
const ENTRY_SEQ: usize = 0;
const ENTRY_STARTED: usize = 1;
const TEXT_WORDS: usize = 32;
const ENTRY_WORDS: usize = 2 + TEXT_WORDS;
/// Written by a worker that could not boot: its error, NUL-terminated, for the master to report.
const BOOT_ERROR: usize = HEADER_WORDS + ENTRIES * ENTRY_WORDS;
const BOOT_ERROR_WORDS: usize = 24;
const SLOT_WORDS: usize = BOOT_ERROR + BOOT_ERROR_WORDS;

const METHOD_MAX: usize = 16;
const PATH_MAX: usize = 96;
const LABEL_MAX: usize = TEXT_WORDS * 8 - METHOD_MAX - PATH_MAX - 2;

/// Why a worker left, for the restart counters (`supervisor_worker_restarts_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartReason {
    /// Exited with code 0 on its own (nobody asked it to).
    Exit,
    /// Exited with an error code, or died of a signal nobody sent it on purpose (a panic that aborted, a
    /// segmentation fault).
    Crash,
    /// Killed by a signal the supervisor did not send, with no sign of the OOM killer (an operator).
    Killed,
    /// Killed by the kernel's OOM killer: a SIGKILL the supervisor did not send while the kernel's OOM-kill
    /// count went up.
    OomKill,
    /// Heartbeat timeout.
    Timeout,
    /// Exited before it was ready, or not ready within boot_timeout.
    BootFailure,
    /// Recycled after max_requests.
    RecycleRequests,
    /// Recycled for its memory (max_worker_memory).
    RecycleMemory,
    /// Recycled for its age (max_worker_lifetime).
    RecycleLifetime,
    /// Recycled because an operator asked (`supervisor ctl recycle`).
    RecycleOperator,
    /// Replaced by a new generation.
    Reload,
    /// Retired by TTOU (one worker fewer).
    ScaleDown,
}

impl RestartReason {
    /// Every reason, in counter order.
    pub const ALL: [RestartReason; 12] = [
        RestartReason::Exit,
        RestartReason::Crash,
        RestartReason::Killed,
        RestartReason::OomKill,
        RestartReason::Timeout,
        RestartReason::BootFailure,
        RestartReason::RecycleRequests,
        RestartReason::RecycleMemory,
        RestartReason::RecycleLifetime,
        RestartReason::RecycleOperator,
        RestartReason::Reload,
        RestartReason::ScaleDown,
    ];

    /// Label value, and the `reason` of the log line about the exit.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Exit => "exit",
            RestartReason::Crash => "crash",
            RestartReason::Killed => "killed",
            RestartReason::OomKill => "oom_kill",
            RestartReason::Timeout => "timeout",
            RestartReason::BootFailure => "boot_failure",
            RestartReason::RecycleRequests => "recycle_requests",
            RestartReason::RecycleMemory => "recycle_memory",
            RestartReason::RecycleLifetime => "recycle_lifetime",
            RestartReason::RecycleOperator => "recycle_operator",
            RestartReason::Reload => "reload",
            RestartReason::ScaleDown => "scale_down",
        }
    }

    /// Its index in [`RestartReason::ALL`] and in [`MasterCounters::restarts`].
    pub fn index(self) -> usize {
        RestartReason::ALL.iter().position(|r| *r == self).expect("listed")
    }
}

/// Slots of the master's scoreboard: room for two generations of the largest worker count.
pub(crate) const SLOTS: usize = 2 * crate::Settings::MAX_WORKERS;

/// The shared table of worker slots, after a small header of master-wide counters.
#[derive(Clone, Copy)]
pub struct Scoreboard {
    header: &'static [AtomicU64],
    words: &'static [AtomicU64],
    slots: usize,
}

/// Master-wide counters kept in the scoreboard's header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MasterCounters {
    /// Unix time the master started, seconds.
    pub start_time: u64,
    /// Reloads that switched generations.
    pub reloads_ok: u64,
    /// Reloads that were aborted.
    pub reloads_aborted: u64,
    /// Workers replaced or retired, by reason index.
    pub restarts: [u64; MAX_REASONS],
}

impl Scoreboard {
    /// Maps a new scoreboard with `slots` free slots. Must be created before forking.
    pub fn new(slots: usize) -> io::Result<Scoreboard> {
        let all = sys::shared_words(BOARD_WORDS + slots * SLOT_WORDS)?;
        let (header, words) = all.split_at(BOARD_WORDS);
        Ok(Scoreboard { header, words, slots })
    }

    /// Master: publish its counters.
    pub fn publish(&self, counters: &MasterCounters) {
        self.header[BOARD_START_TIME].store(counters.start_time, Ordering::Relaxed);
        self.header[BOARD_RELOADS_OK].store(counters.reloads_ok, Ordering::Relaxed);
        self.header[BOARD_RELOADS_ABORTED].store(counters.reloads_aborted, Ordering::Relaxed);
        for (i, n) in counters.restarts.iter().enumerate() {
            self.header[BOARD_RESTARTS + i].store(*n, Ordering::Relaxed);
        }
    }

    /// The master's counters as last published.
    pub fn counters(&self) -> MasterCounters {
        let mut restarts = [0; MAX_REASONS];
        for (i, n) in restarts.iter_mut().enumerate() {
            *n = self.header[BOARD_RESTARTS + i].load(Ordering::Relaxed);
        }
        MasterCounters {
            start_time: self.header[BOARD_START_TIME].load(Ordering::Relaxed),
            reloads_ok: self.header[BOARD_RELOADS_OK].load(Ordering::Relaxed),
            reloads_aborted: self.header[BOARD_RELOADS_ABORTED].load(Ordering::Relaxed),
            restarts,
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots
    }

    /// The slot at `index`.
    pub fn slot(&self, index: usize) -> Slot {
        assert!(index < self.slots, "slot {index} out of range");
        Slot { words: &self.words[index * SLOT_WORDS..(index + 1) * SLOT_WORDS], index }
    }

    /// The open connections of every other worker that is accepting (`Ready`) and has stamped its heartbeat
    /// at or after `fresh_since_ns`: the peers a worker shares the listening sockets with.
    pub fn peer_connections(&self, me: usize, fresh_since_ns: u64) -> impl Iterator<Item = u64> + '_ {
        (0..self.slots).filter(move |&i| i != me).filter_map(move |i| {
            let slot = self.slot(i);
            let accepting =
                slot.state() == SlotState::Ready && slot.words[HEARTBEAT].load(Ordering::Acquire) >= fresh_since_ns;
            accepting.then(|| slot.connections())
        })
    }
}

/// One worker's slot.
#[derive(Clone, Copy)]
pub struct Slot {
    words: &'static [AtomicU64],
    index: usize,
}

/// A consistent-enough copy of a slot, as read by the master.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotView {
    /// Pid written by the worker (0 before it runs).
    pub pid: i32,
    /// Generation the slot was prepared for.
    pub generation: u64,
    /// Current state.
    pub state: SlotState,
    /// Last heartbeat, monotonic nanoseconds.
    pub heartbeat_ns: u64,
    /// Requests completed by this worker.
    pub requests: u64,
    /// Requests in flight right now.
    pub in_flight: u64,
    /// The recorded in-flight requests, oldest first.
    pub requests_in_flight: Vec<InFlight>,
    /// The worker's memory (proportional set size, else resident set size) as the master last sampled it,
    /// in bytes; 0 before the first sample.
    pub memory_bytes: u64,
    /// When the worker was forked (monotonic nanoseconds).
    pub started_ns: u64,
    /// Client connections it holds open.
    pub connections: u64,
}

/// A request in flight, as recorded in the scoreboard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// Monotonic nanoseconds when the request started.
    pub started_ns: u64,
    /// HTTP method (truncated).
    pub method: String,
    /// Request path without the query (truncated).
    pub path: String,
    /// The application's label, typically the request id (truncated).
    pub label: String,
}

impl Slot {
    /// Index of this slot.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Master, before fork: prepare the slot for a new worker of `generation`, booting, stamped now.
    pub fn prepare(&self, generation: u64, now_ns: u64) {
        for w in self.words {
            w.store(0, Ordering::Relaxed);
        }
        self.words[GENERATION].store(generation, Ordering::Relaxed);
        self.words[HEARTBEAT].store(now_ns, Ordering::Relaxed);
        self.words[STARTED].store(now_ns, Ordering::Relaxed);
        self.words[STATE].store(SlotState::Booting.word(), Ordering::Release);
    }

    /// Master: mark the slot free after its worker was reaped.
    pub fn release(&self) {
        self.words[STATE].store(SlotState::Free.word(), Ordering::Release);
        self.words[PID].store(0, Ordering::Release);
    }

    /// Worker or master: record the worker's pid.
    pub fn set_pid(&self, pid: i32) {
        self.words[PID].store(pid as u32 as u64, Ordering::Release);
    }

    /// Worker: change state.
    pub fn set_state(&self, state: SlotState) {
        self.words[STATE].store(state.word(), Ordering::Release);
    }

    /// Worker: current state.
    pub fn state(&self) -> SlotState {
        SlotState::from_word(self.words[STATE].load(Ordering::Acquire))
    }

    /// Master: the worker's memory, as just sampled.
    pub fn set_memory(&self, bytes: u64) {
        self.words[MEMORY].store(bytes, Ordering::Relaxed);
    }

    /// Worker: stamp the heartbeat.
    pub fn heartbeat(&self, now_ns: u64) {
        self.words[HEARTBEAT].store(now_ns, Ordering::Release);
    }

    /// Worker: publish gauge `i` (for example the size of its connection pool); readers sum the gauges
    /// of live workers.
    pub fn set_gauge(&self, i: usize, value: u64) {
        self.words[GAUGES + i].store(value, Ordering::Relaxed);
    }

    /// Gauge `i` of this slot.
    pub fn gauge(&self, i: usize) -> u64 {
        self.words[GAUGES + i].load(Ordering::Relaxed)
    }

    /// Requests completed so far.
    pub fn requests(&self) -> u64 {
        self.words[REQUESTS].load(Ordering::Relaxed)
    }

    /// Client connections this worker holds open.
    pub fn connections(&self) -> u64 {
        self.words[CONNECTIONS].load(Ordering::Relaxed)
    }

    /// Worker: a client connection was accepted. The returned guard records its end when dropped.
    pub fn connection_opened(&self) -> ConnectionGuard {
        self.words[CONNECTIONS].fetch_add(1, Ordering::Relaxed);
        ConnectionGuard { slot: *self }
    }

    /// Worker: a request starts. The returned guard records its end when dropped (also on panic).
    pub fn request_started(&self, method: &str, path: &str, label: &str, now_ns: u64) -> RequestGuard {
        self.words[IN_FLIGHT].fetch_add(1, Ordering::Relaxed);
        let entry = (0..ENTRIES).find(|&e| {
            self.entry(e)[ENTRY_STARTED].compare_exchange(0, now_ns, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        });
        if let Some(e) = entry {
            let words = self.entry(e);
            words[ENTRY_SEQ].fetch_add(1, Ordering::AcqRel);
            // Packed on the stack: recording a request allocates nothing.
            let mut text = [0u8; TEXT_WORDS * 8];
            let mut len = 0;
            for (part, max) in [(method, METHOD_MAX), (path, PATH_MAX), (label, LABEL_MAX)] {
                len += pack(&mut text[len..len + max], part);
                len += 1; // the NUL that ends the field
            }
            // Only the words holding the fields: a reader stops at the third NUL, whatever follows it.
            for (i, chunk) in text[..len.next_multiple_of(8).min(text.len())].chunks_exact(8).enumerate() {
                words[2 + i].store(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), Ordering::Relaxed);
            }
            words[ENTRY_SEQ].fetch_add(1, Ordering::Release);
        }
        RequestGuard { slot: *self, entry }
    }

    /// Worker, before it exits: why its application could not boot (cut to fit), for the master to report
    /// when it reaps it (a reload that this failure aborts names it).
    pub fn set_boot_error(&self, error: &str) {
        let mut text = [0u8; BOOT_ERROR_WORDS * 8];
        pack(&mut text[..BOOT_ERROR_WORDS * 8 - 1], error);
        for (i, chunk) in text.chunks_exact(8).enumerate() {
            self.words[BOOT_ERROR + i].store(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), Ordering::Relaxed);
        }
    }

    /// Master: the boot error its worker left, if any (the slot keeps it until it is prepared again).
    pub fn boot_error(&self) -> Option<String> {
        if self.words[BOOT_ERROR].load(Ordering::Relaxed) == 0 {
            return None;
        }
        let bytes: Vec<u8> = self.words[BOOT_ERROR..BOOT_ERROR + BOOT_ERROR_WORDS]
            .iter()
            .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
            .take_while(|&b| b != 0)
            .collect();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn entry(&self, e: usize) -> &'static [AtomicU64] {
        let start = HEADER_WORDS + e * ENTRY_WORDS;
        &self.words[start..start + ENTRY_WORDS]
    }

    /// Master: read the slot.
    pub fn view(&self) -> SlotView {
        let mut requests_in_flight: Vec<InFlight> = (0..ENTRIES).filter_map(|e| self.read_entry(e)).collect();
        requests_in_flight.sort_by_key(|r| r.started_ns);
        SlotView {
            pid: self.words[PID].load(Ordering::Acquire) as u32 as i32,
            generation: self.words[GENERATION].load(Ordering::Relaxed),
            state: SlotState::from_word(self.words[STATE].load(Ordering::Acquire)),
            heartbeat_ns: self.words[HEARTBEAT].load(Ordering::Acquire),
            requests: self.words[REQUESTS].load(Ordering::Relaxed),
            in_flight: self.words[IN_FLIGHT].load(Ordering::Relaxed),
            requests_in_flight,
            memory_bytes: self.words[MEMORY].load(Ordering::Relaxed),
            started_ns: self.words[STARTED].load(Ordering::Relaxed),
            connections: self.words[CONNECTIONS].load(Ordering::Relaxed),
        }
    }

    fn read_entry(&self, e: usize) -> Option<InFlight> {
        let words = self.entry(e);
        let seq = words[ENTRY_SEQ].load(Ordering::Acquire);
        let started_ns = words[ENTRY_STARTED].load(Ordering::Acquire);
        if seq % 2 == 1 || started_ns == 0 {
            return None;
        }
        let bytes: Vec<u8> = words[2..].iter().flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes()).collect();
        std::sync::atomic::fence(Ordering::Acquire);
        if words[ENTRY_SEQ].load(Ordering::Relaxed) != seq {
            return None;
        }
        let mut parts = bytes.split(|&b| b == 0).map(|p| String::from_utf8_lossy(p).into_owned());
        Some(InFlight {
            started_ns,
            method: parts.next().unwrap_or_default(),
            path: parts.next().unwrap_or_default(),
            label: parts.next().unwrap_or_default(),
        })
    }
}

/// Marks the end of a connection in the scoreboard when dropped.
pub struct ConnectionGuard {
    slot: Slot,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.slot.words[CONNECTIONS].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Marks the end of a request in the scoreboard when dropped.
pub struct RequestGuard {
    slot: Slot,
    entry: Option<usize>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Some(e) = self.entry {
            self.slot.entry(e)[ENTRY_STARTED].store(0, Ordering::Release);
        }
        self.slot.words[IN_FLIGHT].fetch_sub(1, Ordering::Relaxed);
        self.slot.words[REQUESTS].fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies as much of `s` as fits in `out` (cut on a character boundary), dropping NULs (the field
/// separator); returns the bytes written.
fn pack(out: &mut [u8], s: &str) -> usize {
    let kept = crate::cut_at(s, out.len()).0.as_bytes();
    if !kept.contains(&0) {
        out[..kept.len()].copy_from_slice(kept);
        return kept.len();
    }
    let mut len = 0;
    for c in s.chars().filter(|&c| c != '\0') {
        if len + c.len_utf8() > out.len() {
            break;
        }
        len += c.encode_utf8(&mut out[len..]).len();
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_records_state_heartbeat_and_in_flight_requests() {
        let board = Scoreboard::new(2).unwrap();
        let slot = board.slot(1);
        slot.prepare(7, 100);
        slot.set_pid(4242);
        let view = slot.view();
        assert_eq!((view.pid, view.generation, view.state, view.heartbeat_ns), (4242, 7, SlotState::Booting, 100));

        slot.set_state(SlotState::Ready);
        slot.heartbeat(200);
        let a = slot.request_started("GET", "/debug/block", "req-1", 150);
        let b = slot.request_started("POST", "/api/items", "req-2", 120);
        let view = slot.view();
        assert_eq!(view.state, SlotState::Ready);
        assert_eq!(view.heartbeat_ns, 200);
        assert_eq!(view.in_flight, 2);
        let names: Vec<_> = view.requests_in_flight.iter().map(|r| (r.method.as_str(), r.label.as_str())).collect();
        assert_eq!(names, [("POST", "req-2"), ("GET", "req-1")], "oldest first");
        drop(a);
        drop(b);
        let view = slot.view();
        assert_eq!((view.in_flight, view.requests, view.requests_in_flight.len()), (0, 2, 0));
        assert_eq!(board.slot(0).view().state, SlotState::Free, "other slots untouched");
    }

    #[test]
    fn more_requests_than_entries_are_counted_but_not_recorded() {
        let board = Scoreboard::new(1).unwrap();
        let slot = board.slot(0);
        let guards: Vec<_> =
            (0..ENTRIES + 2).map(|i| slot.request_started("GET", "/", &i.to_string(), 1 + i as u64)).collect();
        let view = slot.view();
        assert_eq!(view.in_flight, (ENTRIES + 2) as u64);
        assert_eq!(view.requests_in_flight.len(), ENTRIES);
        drop(guards);
        assert_eq!(slot.view().in_flight, 0);
    }

    #[test]
    fn long_fields_are_truncated_on_char_boundaries() {
        let board = Scoreboard::new(1).unwrap();
        let slot = board.slot(0);
        let path = "/é".repeat(100);
        let label = "x".repeat(500);
        let _g = slot.request_started("GET", &path, &label, 5);
        let r = &slot.view().requests_in_flight[0];
        assert!(r.path.len() <= PATH_MAX && r.path.starts_with("/é/é"));
        assert_eq!(r.label.len(), LABEL_MAX);
    }

    #[test]
    fn a_shorter_entry_overwrites_a_longer_one_and_nuls_are_dropped() {
        let board = Scoreboard::new(1).unwrap();
        let slot = board.slot(0);
        drop(slot.request_started("DELETE", &format!("/api/items/{}", "x".repeat(80)), &"y".repeat(100), 5));
        let _g = slot.request_started("GET", "/a\0b", "id\0", 6);
        let r = &slot.view().requests_in_flight[0];
        assert_eq!((r.method.as_str(), r.path.as_str(), r.label.as_str()), ("GET", "/ab", "id"));
    }

    #[test]
    fn a_boot_error_is_kept_until_the_slot_is_prepared_again() {
        let board = Scoreboard::new(2).unwrap();
        let slot = board.slot(1);
        slot.prepare(1, 5);
        assert_eq!(slot.boot_error(), None);
        slot.set_boot_error(&format!("database unreachable: {}", "é".repeat(200)));
        let error = slot.boot_error().unwrap();
        assert!(error.starts_with("database unreachable: é") && error.len() < BOOT_ERROR_WORDS * 8, "{error}");
        slot.release();
        assert_eq!(slot.boot_error().as_deref(), Some(error.as_str()), "still there once the worker is reaped");
        slot.prepare(2, 6);
        assert_eq!(slot.boot_error(), None);
        assert_eq!(board.slot(0).boot_error(), None);
    }

    #[test]
    fn peers_are_the_other_ready_workers_with_a_fresh_heartbeat() {
        let board = Scoreboard::new(4).unwrap();
        let guards: Vec<_> = [(SlotState::Ready, 100, 3), (SlotState::Ready, 100, 5), (SlotState::Ready, 10, 7)]
            .into_iter()
            .enumerate()
            .map(|(i, (state, beat, conns))| {
                let slot = board.slot(i);
                slot.prepare(1, beat);
                slot.set_state(state);
                (0..conns).map(|_| slot.connection_opened()).collect::<Vec<_>>()
            })
            .collect();
        board.slot(3).prepare(2, 100); // booting: not accepting yet
        let peers: Vec<u64> = board.peer_connections(0, 50).collect();
        assert_eq!(peers, [5], "not itself, not the silent one, not the booting one");
        assert_eq!(board.slot(1).connections(), 5);
        drop(guards);
        assert_eq!(board.slot(1).connections(), 0, "closing connections counts them down");
    }
}
