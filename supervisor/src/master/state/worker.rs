//! One worker as the master sees it: its lifecycle as a single enum, the reasons it can be retired or
//! killed, and the fields every log line about it carries.

use nix::sys::signal::Signal;

use super::{ExitHow, MIN_UPTIME, MS, Nanos};
use crate::scoreboard::{InFlight, RestartReason, SlotView};

/// Logs an event about a worker with its identifying fields (`worker_pid`, `slot`, `generation`) first.
macro_rules! worker_event {
    ($level:ident, $w:expr, $($rest:tt)+) => {{
        let w: &$crate::master::state::worker::Worker = $w;
        tracing::$level!(worker_pid = w.pid, slot = w.slot, generation = w.generation, $($rest)+)
    }};
}
pub(crate) use worker_event;

/// Where a worker is in its life. Every transition is a master decision except `Booting -> Ready` (read
/// from the scoreboard) and the exit (reaped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// Forked; the application is booting.
    Booting,
    /// Accepting and serving. `recycle`: it reached `max_requests` and waits for a replacement; it keeps
    /// serving until the replacement is ready, so capacity never dips and a replacement that cannot be
    /// spawned costs nothing but the delay.
    Ready {
        /// Asked for a replacement.
        recycle: bool,
    },
    /// Told to drain (SIGTERM): why, and when it is killed if still alive.
    Retiring {
        /// Why.
        reason: RetireReason,
        /// When it is SIGKILLed if still alive.
        deadline: Nanos,
    },
    /// Told to exit by the supervisor: SIGKILL, or SIGQUIT on a fast stop.
    Killed {
        /// Why.
        reason: KillReason,
    },
}

/// Why the supervisor killed a worker (used to name the exit when it is reaped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillReason {
    /// Heartbeat silence exceeded `timeout`.
    Timeout,
    /// Not ready within `boot_timeout`.
    BootTimeout,
    /// Still draining at its drain deadline; it was retiring for this reason.
    DrainDeadline(RetireReason),
    /// Fast stop (SIGQUIT, then SIGKILL at the deadline).
    Quit,
    /// Part of a reload that was aborted.
    ReloadAborted,
}

impl KillReason {
    /// Name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            KillReason::Timeout => "timeout",
            KillReason::BootTimeout => "boot_timeout",
            KillReason::DrainDeadline(_) => "drain_deadline",
            KillReason::Quit => "quit",
            KillReason::ReloadAborted => "reload_aborted",
        }
    }
}

/// Why a worker was asked to drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetireReason {
    /// TTOU.
    Scale,
    /// Replaced by a newer generation.
    Reload,
    /// Reached max_requests and its replacement is ready.
    MaxRequests,
    /// Graceful stop of the whole server.
    Stop,
}

impl RetireReason {
    /// Name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RetireReason::Scale => "scale",
            RetireReason::Reload => "reload",
            RetireReason::MaxRequests => "max_requests",
            RetireReason::Stop => "stop",
        }
    }

    fn restart(self) -> Option<RestartReason> {
        match self {
            RetireReason::Scale => Some(RestartReason::Scale),
            RetireReason::Reload => Some(RestartReason::Reload),
            RetireReason::MaxRequests => Some(RestartReason::MaxRequests),
            RetireReason::Stop => None,
        }
    }
}

/// A live worker.
#[derive(Clone, Debug)]
pub struct Worker {
    pub pid: i32,
    pub slot: usize,
    pub generation: u64,
    /// Unique per spawn (slots are reused), so that a link to a replacement can never point at a stranger.
    pub serial: u64,
    pub spawned: Nanos,
    pub life: Life,
    /// When the master first saw it ready (history: kept after it starts retiring).
    pub ready_at: Option<Nanos>,
    /// The last heartbeat as the master believes it: the worker's stamp, clamped to when it was read, so a
    /// stamp in the future can never postpone a timeout.
    pub beat: Nanos,
    /// The raw stamp last read, to notice that the worker wrote a new one.
    pub raw_beat: u64,
    /// The spawn serial of the worker booting to replace this one (`max_requests`).
    pub replacement: Option<u64>,
}

impl Worker {
    pub fn new(pid: i32, slot: usize, generation: u64, serial: u64, spawned: Nanos) -> Worker {
        Worker {
            pid,
            slot,
            generation,
            serial,
            spawned,
            life: Life::Booting,
            ready_at: None,
            beat: spawned,
            raw_beat: 0,
            replacement: None,
        }
    }

    /// Moves it to `life`. A worker told to stop no longer waits for a replacement.
    pub fn set_life(&mut self, life: Life) {
        self.life = life;
        if !self.ready() {
            self.replacement = None;
        }
    }

    /// Not told to stop: booting or serving.
    pub fn active(&self) -> bool {
        matches!(self.life, Life::Booting | Life::Ready { .. })
    }

    /// Accepting connections.
    pub fn ready(&self) -> bool {
        matches!(self.life, Life::Ready { .. })
    }

    /// Reached max_requests and waits for a replacement.
    pub fn recycling(&self) -> bool {
        self.life == Life::Ready { recycle: true }
    }

    /// Takes in what the worker wrote in its slot: heartbeat and readiness. Returns whether it just became
    /// ready, or just asked to be recycled.
    pub fn observe(&mut self, view: &SlotView, now: Nanos) -> Observed {
        // A slot whose pid is another process's (or garbage) says nothing about this worker; the master's
        // last belief stands, so a worker that corrupts its slot still times out.
        if view.pid != self.pid && view.pid != 0 {
            return Observed::Nothing;
        }
        if view.heartbeat_ns != self.raw_beat {
            self.raw_beat = view.heartbeat_ns;
            self.beat = self.beat.max(view.heartbeat_ns.min(now));
        }
        use crate::scoreboard::SlotState;
        match (self.life, view.state) {
            (Life::Booting, SlotState::Ready | SlotState::Retiring) => {
                self.life = Life::Ready { recycle: false };
                self.ready_at = Some(now);
                Observed::Ready
            }
            (Life::Ready { recycle: false }, SlotState::Retiring) => {
                self.life = Life::Ready { recycle: true };
                Observed::Recycle
            }
            _ => Observed::Nothing,
        }
    }

    /// The restart counter its exit belongs to; `None` for workers stopped with the server or an aborted
    /// reload.
    pub fn restart_reason(&self, how: ExitHow) -> Option<RestartReason> {
        match self.life {
            Life::Killed { reason: KillReason::Timeout } => Some(RestartReason::Timeout),
            Life::Killed { reason: KillReason::BootTimeout } => Some(RestartReason::BootTimeout),
            Life::Killed { reason: KillReason::Quit | KillReason::ReloadAborted } => None,
            Life::Killed { reason: KillReason::DrainDeadline(r) } | Life::Retiring { reason: r, .. } => r.restart(),
            Life::Booting | Life::Ready { .. } if how.is_outside_kill() => Some(RestartReason::Killed),
            Life::Booting => Some(RestartReason::BootFailed),
            Life::Ready { .. } if how == ExitHow::Code(0) => Some(RestartReason::Exit),
            Life::Ready { .. } => Some(RestartReason::Crash),
        }
    }

    /// Whether its death is the application's doing and early enough to feed the crash-loop backoff: a
    /// failed boot, or a crash or hang within [`MIN_UPTIME`] of becoming ready. Deaths the supervisor asked
    /// for, clean exits (an outside TERM drains and exits 0) and outside SIGKILLs (the OOM killer, an
    /// operator) do not count: those workers are replaced at once.
    pub fn died_early(&self, how: ExitHow, now: Nanos) -> bool {
        let young = self.ready_at.is_some_and(|r| now.saturating_sub(r) < MIN_UPTIME);
        match self.life {
            Life::Killed { reason: KillReason::BootTimeout } => true,
            Life::Killed { reason: KillReason::Timeout } => young,
            Life::Killed { .. } | Life::Retiring { .. } => false,
            Life::Booting | Life::Ready { .. } if how.is_outside_kill() || how == ExitHow::Code(0) => false,
            Life::Booting => true,
            Life::Ready { .. } => young,
        }
    }

    /// Logs its exit, by what the master knew of it.
    pub fn log_exit(&self, how: ExitHow, now: Nanos) {
        let (code, signal) = match how {
            ExitHow::Code(c) => (Some(c), None),
            ExitHow::Signal(s) => (None, Some(s)),
        };
        let uptime_ms = now.saturating_sub(self.spawned) / MS;
        match self.life {
            Life::Killed { reason: KillReason::Quit } => {
                worker_event!(info, self, code, signal, "worker stopped: fast stop")
            }
            Life::Killed { reason } => {
                worker_event!(warn, self, reason = reason.as_str(), code, signal, "worker killed by the supervisor")
            }
            Life::Retiring { reason, .. } if how == ExitHow::Code(0) => {
                worker_event!(info, self, reason = reason.as_str(), uptime_ms, "worker exited after draining")
            }
            _ if how.is_outside_kill() => worker_event!(
                error,
                self,
                uptime_ms,
                reason = "killed",
                "worker killed by SIGKILL not sent by the supervisor (possibly the kernel OOM killer)"
            ),
            Life::Booting => worker_event!(error, self, code, signal, reason = "boot_failed", "worker failed to boot"),
            _ => worker_event!(error, self, code, signal, uptime_ms, reason = "crash", "worker exited unexpectedly"),
        }
    }

    /// Logs a heartbeat timeout with what the scoreboard says the worker was doing.
    pub fn log_timeout(&self, view: &SlotView, now: Nanos, timeout: Nanos) {
        let oldest = view.requests_in_flight.first();
        worker_event!(
            error,
            self,
            reason = "timeout",
            silence_ms = now.saturating_sub(self.beat) / MS,
            timeout_ms = timeout / MS,
            in_flight = view.in_flight,
            request_method = oldest.map(|r| r.method.as_str()),
            request_path = oldest.map(|r| r.path.as_str()),
            request_id = oldest.map(|r| r.label.as_str()),
            request_age_ms = oldest.map(|r| now.saturating_sub(r.started_ns) / MS),
            requests = describe(&view.requests_in_flight, now),
            "worker timed out: no heartbeat within timeout, killing it"
        );
    }

    /// Logs a worker still busy at its drain deadline.
    pub fn log_straggler(&self, view: &SlotView, now: Nanos) {
        worker_event!(
            warn,
            self,
            in_flight = view.in_flight,
            requests = describe(&view.requests_in_flight, now),
            "worker still busy at its drain deadline: killing it"
        );
    }
}

/// What [`Worker::observe`] noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    Nothing,
    Ready,
    Recycle,
}

impl ExitHow {
    /// Killed by SIGKILL. Called on a worker the supervisor did not kill, this is a kill from outside.
    pub fn is_outside_kill(self) -> bool {
        self == ExitHow::Signal(Signal::SIGKILL as i32)
    }
}

fn describe(requests: &[InFlight], now: Nanos) -> String {
    requests
        .iter()
        .map(|r| format!("{} {} id={} age_ms={}", r.method, r.path, r.label, now.saturating_sub(r.started_ns) / MS))
        .collect::<Vec<_>>()
        .join("; ")
}
