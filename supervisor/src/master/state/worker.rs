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

/// Logs an event about a worker (as [`worker_event`]) with `fields`, then what its scoreboard slot `view`
/// says it was serving at `now`: the number in flight, the oldest request's method, path, id and age, and all
/// of them (`requests`).
macro_rules! worker_requests_event {
    ($level:ident, $w:expr, $view:expr, $now:expr, { $($fields:tt)* }, $msg:literal) => {{
        let (view, now): (&SlotView, Nanos) = ($view, $now);
        let oldest = view.requests_in_flight.first();
        worker_event!(
            $level,
            $w,
            $($fields)*
            in_flight = view.in_flight,
            request_method = oldest.map(|r| r.method.as_str()),
            request_path = oldest.map(|r| r.path.as_str()),
            request_id = oldest.map(|r| r.label.as_str()),
            request_age_ms = oldest.map(|r| now.saturating_sub(r.started_ns) / MS),
            requests = describe(&view.requests_in_flight, now),
            $msg
        )
    }};
}

/// Where a worker is in its life. Every transition is a master decision except `Booting -> Ready` (read
/// from the scoreboard) and the exit (reaped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// Forked; the application is booting.
    Booting,
    /// Accepting and serving. `recycle`: it is to be replaced (it reached `max_requests`, its memory or
    /// its age limit); it keeps serving until the replacement is ready, so capacity
    /// never dips and a replacement that cannot be spawned costs nothing but the delay.
    Ready {
        /// Why it waits for a replacement, if it does.
        recycle: Option<Recycle>,
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

impl Life {
    /// The state `supervisor ctl status` shows, and why the worker is in it (recycling, retiring, killed).
    pub fn describe(self) -> (&'static str, Option<&'static str>) {
        match self {
            Life::Booting => ("booting", None),
            Life::Ready { recycle: None } => ("ready", None),
            Life::Ready { recycle: Some(why) } => ("recycling", Some(why.as_str())),
            Life::Retiring { reason, .. } => ("retiring", Some(reason.as_str())),
            Life::Killed { reason } => ("killed", Some(reason.as_str())),
        }
    }
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

/// Why a serving worker is replaced: a new worker is started, and once it is ready the old one drains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recycle {
    /// It served `max_requests` (plus its jitter); the worker itself asks.
    Requests,
    /// Its memory stayed above `max_worker_memory`.
    Memory,
    /// It lived `max_worker_lifetime` (plus its jitter).
    Lifetime,
    /// An operator asked for every serving worker to be replaced (`supervisor ctl recycle`).
    Operator,
}

impl Recycle {
    fn restart(self) -> RestartReason {
        match self {
            Recycle::Requests => RestartReason::RecycleRequests,
            Recycle::Memory => RestartReason::RecycleMemory,
            Recycle::Lifetime => RestartReason::RecycleLifetime,
            Recycle::Operator => RestartReason::RecycleOperator,
        }
    }

    /// Name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        self.restart().as_str()
    }
}

/// Why a worker was asked to drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetireReason {
    /// TTOU.
    Scale,
    /// Replaced by a newer generation.
    Reload,
    /// Recycled, and its replacement is ready.
    Recycle(Recycle),
    /// Graceful stop of the whole server.
    Stop,
}

impl RetireReason {
    /// Name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self.restart() {
            Some(reason) => reason.as_str(),
            None => "stop",
        }
    }

    fn restart(self) -> Option<RestartReason> {
        match self {
            RetireReason::Scale => Some(RestartReason::ScaleDown),
            RetireReason::Reload => Some(RestartReason::Reload),
            RetireReason::Recycle(recycle) => Some(recycle.restart()),
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
    /// The spawn serial of the worker booting to replace this one (see [`Recycle`]).
    pub replacement: Option<u64>,
    /// Memory samples in a row above `max_worker_memory`.
    pub over_memory: u32,
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
            over_memory: 0,
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

    /// Waits for a replacement (see [`Recycle`]).
    pub fn recycling(&self) -> bool {
        matches!(self.life, Life::Ready { recycle: Some(_) })
    }

    /// Marks a serving worker for replacement, unless it already is; returns whether it was marked.
    pub fn recycle(&mut self, why: Recycle) -> bool {
        match self.life {
            Life::Ready { recycle: None } => {
                self.life = Life::Ready { recycle: Some(why) };
                true
            }
            _ => false,
        }
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
                self.life = Life::Ready { recycle: None };
                self.ready_at = Some(now);
                Observed::Ready
            }
            (Life::Ready { recycle: None }, SlotState::Retiring) => {
                self.life = Life::Ready { recycle: Some(Recycle::Requests) };
                Observed::Recycle
            }
            _ => Observed::Nothing,
        }
    }

    /// Why it died, as counted (`worker_restarts_total{reason}`) and logged; `None` for workers stopped
    /// with the server or an aborted reload. `oom`: the kernel's OOM-kill count went up since it was last
    /// read, so a SIGKILL nobody here sent was most likely the OOM killer's.
    pub fn restart_reason(&self, how: ExitHow, oom: bool) -> Option<RestartReason> {
        match self.life {
            Life::Killed { reason: KillReason::Timeout } => Some(RestartReason::Timeout),
            Life::Killed { reason: KillReason::BootTimeout } => Some(RestartReason::BootFailure),
            Life::Killed { reason: KillReason::Quit | KillReason::ReloadAborted } => None,
            Life::Killed { reason: KillReason::DrainDeadline(r) } => r.restart(),
            _ if how.is_outside_kill() && oom => Some(RestartReason::OomKill),
            Life::Retiring { reason: r, .. } => r.restart(),
            Life::Booting | Life::Ready { .. } if how.is_outside_kill() => Some(RestartReason::Killed),
            Life::Booting => Some(RestartReason::BootFailure),
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

    /// Logs its exit in one line: why it died (`reason`, the restart counter's name, or what stopped it
    /// when it is not counted), how (exit code or signal), and the requests it was serving when it died,
    /// as its scoreboard slot still holds them.
    pub fn log_exit(&self, how: ExitHow, reason: Option<RestartReason>, view: &SlotView, now: Nanos) {
        let (code, signal) = match how {
            ExitHow::Code(c) => (Some(c), None),
            ExitHow::Signal(s) => (None, Some(s)),
        };
        let uptime_ms = now.saturating_sub(self.spawned) / MS;
        macro_rules! died {
            ($level:ident, $reason:expr, $msg:literal) => {
                worker_requests_event!($level, self, view, now, { reason = $reason, code, signal, uptime_ms, }, $msg)
            };
        }
        let named = reason.map(RestartReason::as_str);
        match (self.life, reason) {
            (Life::Killed { reason: KillReason::Quit }, _) => {
                worker_event!(info, self, code, signal, "worker stopped: fast stop")
            }
            (Life::Killed { reason: killed }, _) => worker_event!(
                warn,
                self,
                reason = named.unwrap_or(killed.as_str()),
                cause = killed.as_str(),
                code,
                signal,
                "worker killed by the supervisor"
            ),
            (_, Some(RestartReason::OomKill)) => died!(error, "oom_kill", "worker killed by the kernel's OOM killer"),
            (Life::Retiring { reason: retired, .. }, _) if how == ExitHow::Code(0) => {
                worker_event!(info, self, reason = retired.as_str(), uptime_ms, "worker exited after draining")
            }
            (Life::Retiring { reason: retired, .. }, _) => {
                died!(warn, retired.as_str(), "worker died while draining")
            }
            (_, Some(RestartReason::Killed)) => {
                died!(error, "killed", "worker killed by SIGKILL not sent by the supervisor")
            }
            (Life::Booting, _) => died!(error, "boot_failure", "worker failed to boot"),
            (_, Some(RestartReason::Exit)) => died!(warn, "exit", "worker exited on its own"),
            _ => died!(error, named.unwrap_or("crash"), "worker exited unexpectedly"),
        }
    }

    /// Logs a heartbeat timeout with what the scoreboard says the worker was doing.
    pub fn log_timeout(&self, view: &SlotView, now: Nanos, timeout: Nanos) {
        worker_requests_event!(
            error,
            self,
            view,
            now,
            { reason = "timeout", silence_ms = now.saturating_sub(self.beat) / MS, timeout_ms = timeout / MS, },
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
