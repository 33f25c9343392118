//! The master's decisions, as a pure state machine.
//!
//! [`State::handle`] takes one [`Event`] (a signal, a reaped child, a spawn result, or a periodic tick) with
//! the current monotonic time and a view of the scoreboard, and returns the [`Action`]s to perform. It never
//! forks, signals or sleeps; the executor in `master::run` does that. Every policy of the process model
//! (worker count, heartbeat timeouts, boot timeouts, crash backoff, graceful and fast stop, scaling,
//! reloads, recycling) lives here and is unit-tested without processes.

use std::collections::BTreeMap;

use nix::sys::signal::Signal;

use crate::scoreboard::{InFlight, SlotState, SlotView};

/// Monotonic nanoseconds.
pub type Nanos = u64;

const MS: Nanos = 1_000_000;
const SEC: Nanos = 1_000 * MS;
/// A worker that dies within this long of becoming ready counts towards the crash-loop backoff.
pub const MIN_UPTIME: Nanos = 5 * SEC;
/// Upper bound of the crash-loop backoff.
pub const MAX_BACKOFF: Nanos = 30 * SEC;
/// How long a fast stop waits for workers to exit by themselves before SIGKILL.
pub const QUIT_GRACE: Nanos = 500 * MS;
/// The master wakes at least this often.
pub const MAX_SLEEP: Nanos = SEC;

/// Exit code: clean stop.
pub const EXIT_OK: i32 = 0;
/// Exit code: no worker could boot at startup.
pub const EXIT_NO_WORKER: i32 = 3;

/// Signals the master acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sig {
    /// Graceful stop.
    Term,
    /// Fast stop.
    Int,
    /// Fast stop.
    Quit,
    /// Reload.
    Hup,
    /// One more worker.
    Ttin,
    /// One fewer worker.
    Ttou,
    /// Reopen log files.
    Usr1,
    /// Binary upgrade.
    Usr2,
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitHow {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

/// The timing and sizing policy of one generation of workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Workers to keep running.
    pub workers: usize,
    /// Heartbeat silence after which a ready worker is killed (plus one `heartbeat` interval, see
    /// [`Policy::silence_limit`]).
    pub timeout: Nanos,
    /// How often a worker stamps its heartbeat.
    pub heartbeat: Nanos,
    /// Drain time granted to a retiring worker, and to all workers on a graceful stop.
    pub graceful_timeout: Nanos,
    /// Time a new worker has to become ready.
    pub boot_timeout: Nanos,
}

impl Policy {
    /// The policy of a [`crate::Settings`].
    pub fn of(settings: &crate::Settings) -> Policy {
        Policy {
            workers: settings.workers,
            timeout: settings.timeout.as_nanos() as Nanos,
            heartbeat: settings.heartbeat_interval().as_nanos() as Nanos,
            graceful_timeout: settings.graceful_timeout.as_nanos() as Nanos,
            boot_timeout: settings.boot_timeout.as_nanos() as Nanos,
        }
    }

    /// The heartbeat silence beyond which a ready worker is killed. A worker that hangs has last stamped up
    /// to one interval earlier, so allowing `timeout` plus that interval kills it between `timeout` and
    /// `timeout + interval` after it really stopped: never early.
    pub fn silence_limit(&self) -> Nanos {
        self.timeout + self.heartbeat
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A signal reached the master.
    Signal(Sig),
    /// A child was reaped.
    Exited {
        /// Its pid.
        pid: i32,
        /// How it ended.
        how: ExitHow,
    },
    /// A [`Action::Spawn`] succeeded.
    Spawned {
        /// The slot it was asked for.
        slot: usize,
        /// The new worker's pid.
        pid: i32,
    },
    /// A [`Action::Spawn`] failed (fork error).
    SpawnFailed {
        /// The slot it was asked for.
        slot: usize,
    },
    /// The configuration was re-read after [`Action::LoadConfig`]: the new generation's policy, or why the
    /// file was rejected.
    ConfigLoaded(Result<Policy, String>),
    /// Periodic check of the scoreboard (every loop turn).
    Tick,
}

/// What the executor must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Fork a worker of `generation` into `slot` and report [`Event::Spawned`] or [`Event::SpawnFailed`].
    Spawn {
        /// Scoreboard slot for the new worker.
        slot: usize,
        /// Generation whose settings it runs with.
        generation: u64,
    },
    /// Send a signal to a worker.
    Kill {
        /// Target pid.
        pid: i32,
        /// Signal to send.
        signal: Signal,
    },
    /// Re-read the configuration and report [`Event::ConfigLoaded`]; on success, keep the new settings
    /// under `generation`.
    LoadConfig {
        /// The generation number the new settings will run as.
        generation: u64,
    },
    /// Forget the settings of a generation that has no worker left.
    DropGeneration(u64),
    /// Start the binary on disk as a new master inheriting the listeners (USR2).
    Upgrade,
    /// Reopen the log file and tell every worker to do the same (USR1).
    ReopenLogs,
    /// Close the master's copies of the listening sockets (a stop has begun).
    CloseListeners,
    /// Exit the master with this code.
    Exit(i32),
}

/// Read access to the scoreboard, so that tests can feed a fake one.
pub trait Board {
    /// The current content of a slot.
    fn view(&self, slot: usize) -> SlotView;
}

/// Why the supervisor killed a worker (used to name the exit when it is reaped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillReason {
    /// Heartbeat silence exceeded `timeout`.
    Timeout,
    /// Not ready within `boot_timeout`.
    BootTimeout,
    /// Still draining at the end of its drain deadline.
    DrainDeadline,
    /// Fast stop.
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
            KillReason::DrainDeadline => "drain_deadline",
            KillReason::Quit => "quit",
            KillReason::ReloadAborted => "reload_aborted",
        }
    }
}

/// Why a worker left, for the restart counters (`supervisor_worker_restarts_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartReason {
    /// Exited with code 0 on its own.
    Exit,
    /// Exited with an error code, or died of a signal other than an outside SIGKILL.
    Crash,
    /// Killed by a SIGKILL the supervisor did not send (possibly the OOM killer).
    Killed,
    /// Heartbeat timeout.
    Timeout,
    /// Not ready within boot_timeout.
    BootTimeout,
    /// Exited before it was ready.
    BootFailed,
    /// Recycled after max_requests.
    MaxRequests,
    /// Replaced by a new generation.
    Reload,
    /// Retired by TTOU.
    Scale,
}

impl RestartReason {
    /// Every reason, in counter order.
    pub const ALL: [RestartReason; 9] = [
        RestartReason::Exit,
        RestartReason::Crash,
        RestartReason::Killed,
        RestartReason::Timeout,
        RestartReason::BootTimeout,
        RestartReason::BootFailed,
        RestartReason::MaxRequests,
        RestartReason::Reload,
        RestartReason::Scale,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Exit => "exit",
            RestartReason::Crash => "crash",
            RestartReason::Killed => "killed",
            RestartReason::Timeout => "timeout",
            RestartReason::BootTimeout => "boot_timeout",
            RestartReason::BootFailed => "boot_failed",
            RestartReason::MaxRequests => "max_requests",
            RestartReason::Reload => "reload",
            RestartReason::Scale => "scale",
        }
    }

    fn index(self) -> usize {
        RestartReason::ALL.iter().position(|r| *r == self).expect("listed")
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
}

/// The master's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Initial workers are booting; none has been ready yet.
    Starting,
    /// Serving.
    Running,
    /// Graceful stop: waiting for workers to drain until `deadline`.
    Stopping {
        /// When stragglers are killed.
        deadline: Nanos,
        /// Whether they were.
        killed: bool,
    },
    /// Fast stop: workers were told to exit at once; SIGKILL at `deadline`.
    Quitting {
        /// When survivors are killed.
        deadline: Nanos,
        /// The code to exit with.
        code: i32,
    },
}

#[derive(Clone, Debug)]
struct Worker {
    pid: i32,
    slot: usize,
    generation: u64,
    spawned: Nanos,
    ready: Option<Nanos>,
    /// Asked to drain: why, and when it is killed if still alive.
    retire: Option<(RetireReason, Nanos)>,
    /// Killed by the supervisor, and why.
    kill: Option<KillReason>,
    /// Asked for a replacement (max_requests).
    wants_replacement: bool,
    /// A replacement for this worker is booting in this slot.
    replaced_by: Option<usize>,
}

impl Worker {
    fn active(&self) -> bool {
        self.retire.is_none() && self.kill.is_none()
    }
}

/// A reload in progress: the new generation boots beside the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reload {
    generation: u64,
    /// Until the config is loaded, the reload has no deadline yet.
    deadline: Option<Nanos>,
}

/// The master's state.
pub struct State {
    phase: Phase,
    /// The generation that serves (and whose count is maintained).
    current: u64,
    /// Policies of live generations.
    policies: BTreeMap<u64, Policy>,
    /// Worker count of the current generation (changed by TTIN/TTOU).
    desired: usize,
    workers: Vec<Worker>,
    /// Slots reserved by a Spawn not yet reported.
    pending: Vec<(usize, u64, Nanos)>,
    slots: usize,
    /// Consecutive early deaths, for the crash-loop backoff.
    failures: u32,
    last_failure: Nanos,
    next_spawn: Nanos,
    reload: Option<Reload>,
    /// A HUP arrived during a reload: run one more when it ends.
    reload_again: bool,
    next_generation: u64,
    /// Whether any worker has ever been ready.
    ever_ready: bool,
    /// Whether the initial workers were spawned.
    initial_spawned: bool,
    /// Restart and reload counters, published in the scoreboard for /metrics.
    counters: crate::scoreboard::MasterCounters,
}

impl State {
    /// A master about to spawn its first generation. `slots` is the scoreboard size.
    pub fn new(policy: Policy, slots: usize) -> State {
        State {
            phase: Phase::Starting,
            current: 1,
            policies: BTreeMap::from([(1, policy)]),
            desired: policy.workers,
            workers: Vec::new(),
            pending: Vec::new(),
            slots,
            failures: 0,
            last_failure: 0,
            next_spawn: 0,
            reload: None,
            reload_again: false,
            next_generation: 2,
            ever_ready: false,
            initial_spawned: false,
            counters: Default::default(),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The serving generation.
    pub fn generation(&self) -> u64 {
        self.current
    }

    /// Pids of live workers with their generation, in spawn order.
    pub fn workers(&self) -> Vec<(i32, u64)> {
        self.workers.iter().map(|w| (w.pid, w.generation)).collect()
    }

    /// Whether every worker of the serving generation is ready and the count is complete (startup done,
    /// reload done): what a service manager is told as READY.
    pub fn settled(&self) -> bool {
        self.reload.is_none()
            && self.pending.is_empty()
            && self.workers.iter().filter(|w| w.generation == self.current && w.active() && w.ready.is_some()).count()
                >= self.desired
    }

    /// Restart and reload counters so far.
    pub fn counters(&self) -> &crate::scoreboard::MasterCounters {
        &self.counters
    }

    /// Whether a reload is in progress.
    pub fn reloading(&self) -> bool {
        self.reload.is_some()
    }

    /// Handles one event.
    pub fn handle(&mut self, event: Event, now: Nanos, board: &dyn Board) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Signal(sig) => self.on_signal(sig, now, &mut actions),
            Event::Exited { pid, how } => self.on_exit(pid, how, now, &mut actions),
            Event::Spawned { slot, pid } => self.on_spawned(slot, pid),
            Event::SpawnFailed { slot } => {
                self.pending.retain(|p| p.0 != slot);
                self.note_failure(now);
            }
            Event::ConfigLoaded(result) => self.on_config(result, now),
            Event::Tick => {}
        }
        self.tick(now, board, &mut actions);
        actions
    }

    /// How long the executor may sleep before the next [`Event::Tick`] is due.
    pub fn sleep_for(&self, now: Nanos, board: &dyn Board) -> Nanos {
        let mut due = now + MAX_SLEEP;
        let mut at = |t: Nanos| due = due.min(t.max(now));
        for w in &self.workers {
            let policy = self.policy(w.generation);
            match (w.ready, w.kill) {
                (_, Some(_)) => {}
                (None, None) => at(w.spawned + policy.boot_timeout + MS),
                (Some(_), None) => at(board.view(w.slot).heartbeat_ns + policy.silence_limit() + MS),
            }
            if let Some((_, deadline)) = w.retire {
                at(deadline);
            }
        }
        match self.phase {
            Phase::Stopping { deadline, killed: false } | Phase::Quitting { deadline, .. } => at(deadline),
            _ => {}
        }
        if let Some(Reload { deadline: Some(deadline), .. }) = self.reload {
            at(deadline);
        }
        if self.missing() > 0 {
            at(self.next_spawn);
        }
        due - now
    }

    fn policy(&self, generation: u64) -> Policy {
        self.policies.get(&generation).or_else(|| self.policies.get(&self.current)).copied().expect("current policy")
    }

    fn on_signal(&mut self, sig: Sig, now: Nanos, actions: &mut Vec<Action>) {
        match (sig, self.phase) {
            (Sig::Term, Phase::Starting | Phase::Running) => {
                let graceful = self.policy(self.current).graceful_timeout;
                tracing::info!(workers = self.workers.len(), graceful_timeout_ms = graceful / MS, "graceful stop");
                self.phase = Phase::Stopping { deadline: now + graceful, killed: false };
                self.abandon_reload("stopping", actions);
                actions.push(Action::CloseListeners);
                for w in &mut self.workers {
                    if w.retire.is_none() && w.kill.is_none() {
                        w.retire = Some((RetireReason::Stop, now + graceful));
                        actions.push(Action::Kill { pid: w.pid, signal: Signal::SIGTERM });
                    }
                }
            }
            (Sig::Int | Sig::Quit, Phase::Quitting { .. }) | (Sig::Term, _) => {}
            (Sig::Int | Sig::Quit, _) => {
                tracing::info!(signal = ?sig, workers = self.workers.len(), "fast stop");
                self.quit(EXIT_OK, now, actions);
            }
            (_, Phase::Stopping { .. } | Phase::Quitting { .. }) => {
                tracing::info!(signal = ?sig, "signal ignored while stopping");
            }
            (Sig::Ttin, _) => {
                if self.desired < crate::Settings::MAX_WORKERS {
                    self.desired += 1;
                }
                tracing::info!(workers = self.desired, "worker count increased");
            }
            (Sig::Ttou, _) => {
                if self.desired <= 1 {
                    tracing::info!(workers = self.desired, "worker count already at its minimum of 1");
                    return;
                }
                self.desired -= 1;
                tracing::info!(workers = self.desired, "worker count decreased");
                self.trim(now, actions);
            }
            (Sig::Hup, Phase::Starting) => {
                tracing::info!("reload requested during startup: will reload once the workers are ready");
                self.reload_again = true;
            }
            (Sig::Hup, Phase::Running) => {
                if self.reload.is_some() {
                    tracing::info!(
                        generation = self.reload.map(|r| r.generation),
                        "reload already in progress: another will follow"
                    );
                    self.reload_again = true;
                } else {
                    self.start_reload(actions);
                }
            }
            (Sig::Usr1, _) => actions.push(Action::ReopenLogs),
            (Sig::Usr2, Phase::Running) => actions.push(Action::Upgrade),
            (Sig::Usr2, _) => tracing::warn!("binary upgrade requested during startup: ignored"),
        }
    }

    fn start_reload(&mut self, actions: &mut Vec<Action>) {
        let generation = self.next_generation;
        self.next_generation += 1;
        tracing::info!(generation, "reload started: reading the configuration");
        self.reload = Some(Reload { generation, deadline: None });
        actions.push(Action::LoadConfig { generation });
    }

    fn on_config(&mut self, result: Result<Policy, String>, now: Nanos) {
        let Some(reload) = self.reload else { return };
        match result {
            Err(error) => {
                tracing::error!(generation = reload.generation, error = %error, "reload aborted: configuration rejected, keeping the running workers");
                self.reload = None;
                self.counters.reloads_aborted += 1;
            }
            Ok(policy) => {
                tracing::info!(
                    generation = reload.generation,
                    workers = policy.workers,
                    "reload: booting the new generation"
                );
                self.policies.insert(reload.generation, policy);
                self.reload = Some(Reload { generation: reload.generation, deadline: Some(now + policy.boot_timeout) });
            }
        }
    }

    fn abandon_reload(&mut self, why: &str, actions: &mut Vec<Action>) {
        if let Some(reload) = self.reload.take() {
            tracing::warn!(generation = reload.generation, reason = why, "reload aborted");
            self.counters.reloads_aborted += 1;
            for w in self.workers.iter_mut().filter(|w| w.generation == reload.generation && w.kill.is_none()) {
                w.kill = Some(KillReason::ReloadAborted);
                actions.push(Action::Kill { pid: w.pid, signal: Signal::SIGKILL });
            }
            self.pending.retain(|p| p.1 != reload.generation);
            self.policies.remove(&reload.generation);
            actions.push(Action::DropGeneration(reload.generation));
        }
        self.reload_again = false;
    }

    fn quit(&mut self, code: i32, now: Nanos, actions: &mut Vec<Action>) {
        self.reload = None;
        self.reload_again = false;
        self.phase = Phase::Quitting { deadline: now + QUIT_GRACE, code };
        actions.push(Action::CloseListeners);
        for w in &self.workers {
            if w.kill.is_none() {
                actions.push(Action::Kill { pid: w.pid, signal: Signal::SIGQUIT });
            }
        }
    }

    /// Retire the oldest active workers of the current generation beyond the desired count.
    fn trim(&mut self, now: Nanos, actions: &mut Vec<Action>) {
        let graceful = self.policy(self.current).graceful_timeout;
        let current = self.current;
        let mut surplus = self.count_active(current).saturating_sub(self.desired);
        for w in self.workers.iter_mut().filter(|w| w.generation == current) {
            if surplus == 0 {
                break;
            }
            if w.active() {
                tracing::info!(
                    worker_pid = w.pid,
                    slot = w.slot,
                    generation = w.generation,
                    "worker retiring: scale down"
                );
                w.retire = Some((RetireReason::Scale, now + graceful));
                actions.push(Action::Kill { pid: w.pid, signal: Signal::SIGTERM });
                surplus -= 1;
            }
        }
    }

    fn count_active(&self, generation: u64) -> usize {
        self.workers.iter().filter(|w| w.generation == generation && w.active()).count()
            + self.pending.iter().filter(|p| p.1 == generation).count()
    }

    /// Workers of the current generation still to spawn (0 while stopping).
    fn missing(&self) -> usize {
        match self.phase {
            Phase::Running => self.desired.saturating_sub(self.count_active(self.current)),
            _ => 0,
        }
    }

    fn on_spawned(&mut self, slot: usize, pid: i32) {
        if let Some(i) = self.pending.iter().position(|p| p.0 == slot) {
            let (slot, generation, spawned) = self.pending.remove(i);
            tracing::info!(worker_pid = pid, slot, generation, "worker spawned");
            self.workers.push(Worker {
                pid,
                slot,
                generation,
                spawned,
                ready: None,
                retire: None,
                kill: None,
                wants_replacement: false,
                replaced_by: None,
            });
        }
    }

    fn note_failure(&mut self, now: Nanos) {
        self.failures += 1;
        self.last_failure = now;
        let delay = backoff(self.failures);
        self.next_spawn = now + delay;
        if delay > 0 {
            tracing::warn!(
                failures = self.failures,
                backoff_ms = delay / MS,
                "workers keep dying early: backing off before the next spawn"
            );
        }
    }

    fn on_exit(&mut self, pid: i32, how: ExitHow, now: Nanos, actions: &mut Vec<Action>) {
        let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
            tracing::debug!(worker_pid = pid, "reaped a process that was not a worker");
            return;
        };
        let w = self.workers.remove(i);
        let (code, signal) = match how {
            ExitHow::Code(c) => (Some(c), None),
            ExitHow::Signal(s) => (None, Some(s)),
        };
        if let Some(reason) = restart_reason(&w, how) {
            self.counters.restarts[reason.index()] += 1;
        }
        let uptime_ms = (now - w.spawned) / MS;
        let early = w.ready.is_none_or(|r| now - r < MIN_UPTIME);
        match (w.kill, w.retire) {
            (Some(reason), _) => {
                tracing::warn!(
                    worker_pid = pid,
                    slot = w.slot,
                    generation = w.generation,
                    reason = reason.as_str(),
                    code,
                    signal,
                    "worker killed by the supervisor"
                )
            }
            (None, Some((reason, _))) if how == ExitHow::Code(0) => {
                tracing::info!(
                    worker_pid = pid,
                    slot = w.slot,
                    generation = w.generation,
                    reason = reason.as_str(),
                    uptime_ms,
                    "worker exited after draining"
                )
            }
            (None, _) if how == ExitHow::Signal(Signal::SIGKILL as i32) => tracing::error!(
                worker_pid = pid,
                slot = w.slot,
                generation = w.generation,
                uptime_ms,
                reason = "killed",
                "worker killed by SIGKILL not sent by the supervisor (possibly the kernel OOM killer)"
            ),
            (None, None) if w.ready.is_none() => {
                tracing::error!(
                    worker_pid = pid,
                    slot = w.slot,
                    generation = w.generation,
                    code,
                    signal,
                    reason = "boot_failed",
                    "worker failed to boot"
                )
            }
            _ => tracing::error!(
                worker_pid = pid,
                slot = w.slot,
                generation = w.generation,
                code,
                signal,
                uptime_ms,
                reason = "crash",
                "worker exited unexpectedly"
            ),
        }
        // Deaths the supervisor did not ask for, and timeouts, feed the crash-loop backoff when early.
        let asked = w.retire.is_some()
            || matches!(w.kill, Some(KillReason::Quit | KillReason::DrainDeadline | KillReason::ReloadAborted));
        if !asked && matches!(self.phase, Phase::Running | Phase::Starting) {
            if early {
                self.note_failure(now);
            } else {
                self.failures = 0;
            }
        }
        if let Some(reload) = self.reload
            && w.generation == reload.generation
            && w.kill != Some(KillReason::ReloadAborted)
        {
            self.abandon_reload("a worker of the new generation died before the switch", actions);
        }
        for other in &mut self.workers {
            if other.replaced_by.is_some_and(|s| s == w.slot) && w.generation == other.generation {
                other.replaced_by = None;
            }
        }
        if !self.policies.contains_key(&w.generation) || self.workers.iter().any(|o| o.generation == w.generation) {
            return;
        }
        if w.generation != self.current && self.reload.is_none_or(|r| r.generation != w.generation) {
            self.policies.remove(&w.generation);
            actions.push(Action::DropGeneration(w.generation));
        }
    }

    fn tick(&mut self, now: Nanos, board: &dyn Board, actions: &mut Vec<Action>) {
        self.observe(now, board, actions);
        match self.phase {
            Phase::Starting => {
                if self.ever_ready {
                    self.phase = Phase::Running;
                    tracing::info!(generation = self.current, "server ready");
                    if std::mem::take(&mut self.reload_again) {
                        self.start_reload(actions);
                    }
                } else if !self.initial_spawned {
                    for _ in 0..self.desired {
                        self.spawn(self.current, now, actions);
                    }
                    self.initial_spawned = true;
                } else if self.workers.is_empty() && self.pending.is_empty() {
                    // Workers that fail during startup are not replaced: the failure is most likely
                    // deterministic (configuration, code), and an operator is watching.
                    tracing::error!(
                        code = EXIT_NO_WORKER,
                        "no worker could boot: stopping (see the worker's error above)"
                    );
                    actions.push(Action::Exit(EXIT_NO_WORKER));
                }
            }
            Phase::Running => {
                self.progress_reload(now, actions);
                self.recycle(now, actions);
                if now >= self.next_spawn {
                    let n = if self.failures > 0 { self.missing().min(1) } else { self.missing() };
                    for _ in 0..n {
                        self.spawn(self.current, now, actions);
                    }
                }
                if self.failures > 0
                    && self
                        .workers
                        .iter()
                        .any(|w| w.spawned > self.last_failure && w.ready.is_some_and(|r| now - r >= MIN_UPTIME))
                {
                    self.failures = 0;
                }
            }
            Phase::Stopping { deadline, killed } => {
                if self.workers.is_empty() {
                    tracing::info!("all workers stopped: exiting");
                    actions.push(Action::Exit(EXIT_OK));
                } else if !killed && now >= deadline {
                    self.phase = Phase::Stopping { deadline, killed: true };
                    for w in &mut self.workers {
                        if w.kill.is_none() {
                            log_straggler(w, &board.view(w.slot), now);
                            w.kill = Some(KillReason::DrainDeadline);
                            actions.push(Action::Kill { pid: w.pid, signal: Signal::SIGKILL });
                        }
                    }
                }
            }
            Phase::Quitting { deadline, code } => {
                if self.workers.is_empty() {
                    actions.push(Action::Exit(code));
                } else if now >= deadline {
                    for w in &mut self.workers {
                        if w.kill.is_none() {
                            w.kill = Some(KillReason::Quit);
                            actions.push(Action::Kill { pid: w.pid, signal: Signal::SIGKILL });
                        }
                    }
                }
            }
        }
    }

    /// Reads the scoreboard: readiness, heartbeats, boot and drain deadlines, retirement requests.
    fn observe(&mut self, now: Nanos, board: &dyn Board, actions: &mut Vec<Action>) {
        let policies = self.policies.clone();
        for w in &mut self.workers {
            if w.kill.is_some() {
                continue;
            }
            let policy = policies.get(&w.generation).or_else(|| policies.get(&self.current)).copied().expect("policy");
            let view = board.view(w.slot);
            let own = view.pid == w.pid || view.pid == 0;
            if w.ready.is_none() && own && matches!(view.state, SlotState::Ready | SlotState::Retiring) {
                w.ready = Some(now);
                self.ever_ready = true;
                tracing::info!(
                    worker_pid = w.pid,
                    slot = w.slot,
                    generation = w.generation,
                    boot_ms = (now - w.spawned) / MS,
                    "worker ready"
                );
            }
            if own && view.state == SlotState::Retiring && !w.wants_replacement && w.retire.is_none() {
                w.wants_replacement = true;
                tracing::info!(
                    worker_pid = w.pid,
                    slot = w.slot,
                    requests = view.requests,
                    "worker reached max_requests: asks for a replacement"
                );
            }
            match w.ready {
                None if now.saturating_sub(w.spawned) > policy.boot_timeout => {
                    tracing::error!(
                        worker_pid = w.pid,
                        slot = w.slot,
                        generation = w.generation,
                        boot_timeout_ms = policy.boot_timeout / MS,
                        reason = "boot_timeout",
                        "worker not ready within boot_timeout: killing it"
                    );
                    w.kill = Some(KillReason::BootTimeout);
                    actions.push(Action::Kill { pid: w.pid, signal: Signal::SIGKILL });
                }
                Some(_) if own && now.saturating_sub(view.heartbeat_ns) > policy.silence_limit() => {
                    log_timeout(w, &view, now, policy.timeout);
                    w.kill = Some(KillReason::Timeout);
                    actions.push(Action::Kill { pid: w.pid, signal: Signal::SIGKILL });
                }
                _ => {}
            }
            if let Some((_, deadline)) = w.retire
                && now >= deadline
                && w.kill.is_none()
                && !matches!(self.phase, Phase::Stopping { .. })
            {
                log_straggler(w, &view, now);
                w.kill = Some(KillReason::DrainDeadline);
                actions.push(Action::Kill { pid: w.pid, signal: Signal::SIGKILL });
            }
        }
    }

    /// Moves a reload forward: switch once the new generation is ready, abort at its deadline.
    fn progress_reload(&mut self, now: Nanos, actions: &mut Vec<Action>) {
        let Some(Reload { generation, deadline: Some(deadline) }) = self.reload else { return };
        let policy = self.policy(generation);
        let spawned = self.workers.iter().filter(|w| w.generation == generation).count()
            + self.pending.iter().filter(|p| p.1 == generation).count();
        for _ in spawned..policy.workers {
            self.spawn(generation, now, actions);
        }
        let ready =
            self.workers.iter().filter(|w| w.generation == generation && w.ready.is_some() && w.active()).count();
        if ready >= policy.workers {
            let old = self.current;
            tracing::info!(
                generation,
                previous = old,
                workers = policy.workers,
                "reload complete: new generation ready, retiring the previous one"
            );
            self.current = generation;
            self.desired = policy.workers;
            self.reload = None;
            self.counters.reloads_ok += 1;
            for w in &mut self.workers {
                if w.generation != generation && w.active() {
                    tracing::info!(
                        worker_pid = w.pid,
                        slot = w.slot,
                        generation = w.generation,
                        "worker retiring: replaced by a new generation"
                    );
                    let graceful = policies_graceful(&self.policies, w.generation, policy);
                    w.retire = Some((RetireReason::Reload, now + graceful));
                    actions.push(Action::Kill { pid: w.pid, signal: Signal::SIGTERM });
                }
            }
            if std::mem::take(&mut self.reload_again) {
                self.start_reload(actions);
            }
        } else if now >= deadline {
            self.abandon_reload("the new generation was not ready within boot_timeout", actions);
            if std::mem::take(&mut self.reload_again) {
                self.start_reload(actions);
            }
        }
    }

    /// max_requests: one worker at a time gets a replacement; once it is ready, the old one drains.
    fn recycle(&mut self, now: Nanos, actions: &mut Vec<Action>) {
        if self.reload.is_some() {
            return;
        }
        // Finish a replacement whose new worker is ready.
        let ready_slots: Vec<usize> =
            self.workers.iter().filter(|w| w.ready.is_some() && w.active()).map(|w| w.slot).collect();
        let graceful = self.policy(self.current).graceful_timeout;
        for w in &mut self.workers {
            if let Some(slot) = w.replaced_by
                && ready_slots.contains(&slot)
                && w.active()
            {
                tracing::info!(
                    worker_pid = w.pid,
                    slot = w.slot,
                    replacement_slot = slot,
                    "worker retiring: its replacement is ready"
                );
                w.retire = Some((RetireReason::MaxRequests, now + graceful));
                w.replaced_by = None;
                actions.push(Action::Kill { pid: w.pid, signal: Signal::SIGTERM });
            }
        }
        if self.workers.iter().any(|w| w.replaced_by.is_some()) || self.missing() > 0 {
            return;
        }
        let current = self.current;
        if let Some(i) = self.workers.iter().position(|w| w.generation == current && w.wants_replacement && w.active())
            && let Some(slot) = self.spawn(current, now, actions)
        {
            self.workers[i].replaced_by = Some(slot);
        }
    }

    fn spawn(&mut self, generation: u64, now: Nanos, actions: &mut Vec<Action>) -> Option<usize> {
        let used: Vec<usize> = self.workers.iter().map(|w| w.slot).chain(self.pending.iter().map(|p| p.0)).collect();
        let Some(slot) = (0..self.slots).find(|s| !used.contains(s)) else {
            tracing::error!(slots = self.slots, "no free scoreboard slot: not spawning");
            return None;
        };
        self.pending.push((slot, generation, now));
        actions.push(Action::Spawn { slot, generation });
        Some(slot)
    }
}

/// The restart counter an exit belongs to; `None` for workers stopped with the server or an aborted reload.
fn restart_reason(w: &Worker, how: ExitHow) -> Option<RestartReason> {
    let retired = |r: RetireReason| match r {
        RetireReason::Scale => Some(RestartReason::Scale),
        RetireReason::Reload => Some(RestartReason::Reload),
        RetireReason::MaxRequests => Some(RestartReason::MaxRequests),
        RetireReason::Stop => None,
    };
    match (w.kill, w.retire) {
        (Some(KillReason::Timeout), _) => Some(RestartReason::Timeout),
        (Some(KillReason::BootTimeout), _) => Some(RestartReason::BootTimeout),
        (Some(KillReason::Quit | KillReason::ReloadAborted), _) => None,
        (_, Some((reason, _))) => retired(reason),
        (Some(KillReason::DrainDeadline), None) => None,
        (None, None) if how == ExitHow::Signal(Signal::SIGKILL as i32) => Some(RestartReason::Killed),
        (None, None) if w.ready.is_none() => Some(RestartReason::BootFailed),
        (None, None) if how == ExitHow::Code(0) => Some(RestartReason::Exit),
        (None, None) => Some(RestartReason::Crash),
    }
}

fn policies_graceful(policies: &BTreeMap<u64, Policy>, generation: u64, fallback: Policy) -> Nanos {
    policies.get(&generation).unwrap_or(&fallback).graceful_timeout
}

/// Delay before the next spawn after `failures` consecutive early deaths: none for the first, then 0.5 s
/// doubling up to [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Nanos {
    if failures <= 1 {
        return 0;
    }
    (500 * MS).saturating_mul(1 << (failures - 2).min(16)).min(MAX_BACKOFF)
}

fn describe(requests: &[InFlight], now: Nanos) -> String {
    requests
        .iter()
        .map(|r| format!("{} {} id={} age_ms={}", r.method, r.path, r.label, now.saturating_sub(r.started_ns) / MS))
        .collect::<Vec<_>>()
        .join("; ")
}

fn log_timeout(w: &Worker, view: &SlotView, now: Nanos, timeout: Nanos) {
    let oldest = view.requests_in_flight.first();
    tracing::error!(
        worker_pid = w.pid,
        slot = w.slot,
        generation = w.generation,
        reason = "timeout",
        silence_ms = now.saturating_sub(view.heartbeat_ns) / MS,
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

fn log_straggler(w: &Worker, view: &SlotView, now: Nanos) {
    tracing::warn!(
        worker_pid = w.pid,
        slot = w.slot,
        generation = w.generation,
        in_flight = view.in_flight,
        requests = describe(&view.requests_in_flight, now),
        "worker still busy at its drain deadline: killing it"
    );
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;

    /// A scoreboard the tests write by hand.
    #[derive(Default)]
    struct FakeBoard(RefCell<HashMap<usize, SlotView>>);

    impl FakeBoard {
        fn set(&self, slot: usize, pid: i32, state: SlotState, heartbeat_ns: Nanos) {
            self.0.borrow_mut().insert(
                slot,
                SlotView {
                    pid,
                    generation: 0,
                    state,
                    heartbeat_ns,
                    requests: 0,
                    in_flight: 0,
                    requests_in_flight: vec![],
                },
            );
        }
    }

    impl Board for FakeBoard {
        fn view(&self, slot: usize) -> SlotView {
            self.0.borrow().get(&slot).cloned().unwrap_or(SlotView {
                pid: 0,
                generation: 0,
                state: SlotState::Booting,
                heartbeat_ns: 0,
                requests: 0,
                in_flight: 0,
                requests_in_flight: vec![],
            })
        }
    }

    const POLICY: Policy =
        Policy { workers: 2, timeout: 2 * SEC, heartbeat: SEC / 2, graceful_timeout: 3 * SEC, boot_timeout: 5 * SEC };

    /// Drives a state machine, performing spawns with made-up pids.
    struct Harness {
        state: State,
        board: FakeBoard,
        next_pid: i32,
        now: Nanos,
    }

    impl Harness {
        fn new(policy: Policy) -> Harness {
            Harness { state: State::new(policy, 16), board: FakeBoard::default(), next_pid: 100, now: SEC }
        }

        /// Handles an event and feeds back spawn results; returns the non-spawn actions.
        fn handle(&mut self, event: Event) -> Vec<Action> {
            let mut queue = vec![event];
            let mut out = Vec::new();
            while let Some(event) = queue.pop() {
                for action in self.state.handle(event, self.now, &self.board) {
                    match action {
                        Action::Spawn { slot, .. } => {
                            self.next_pid += 1;
                            self.board.set(slot, self.next_pid, SlotState::Booting, self.now);
                            queue.push(Event::Spawned { slot, pid: self.next_pid });
                        }
                        Action::LoadConfig { .. } => queue.push(Event::ConfigLoaded(Ok(POLICY))),
                        other => out.push(other),
                    }
                }
            }
            out
        }

        fn advance(&mut self, by: Nanos) -> Vec<Action> {
            self.now += by;
            self.handle(Event::Tick)
        }

        fn pids(&self) -> Vec<i32> {
            self.state.workers().into_iter().map(|(pid, _)| pid).collect()
        }

        fn slot_of(&self, pid: i32) -> usize {
            *self.board.0.borrow().iter().find(|(_, v)| v.pid == pid).unwrap().0
        }

        /// Every live worker reports ready with a fresh heartbeat.
        fn all_ready(&mut self) {
            for pid in self.pids() {
                let slot = self.slot_of(pid);
                self.board.set(slot, pid, SlotState::Ready, self.now);
            }
            self.handle(Event::Tick);
        }

        fn beat(&mut self) {
            for pid in self.pids() {
                let slot = self.slot_of(pid);
                let state = self.board.view(slot).state;
                self.board.set(slot, pid, state, self.now);
            }
        }

        fn running() -> Harness {
            let mut h = Harness::new(POLICY);
            h.handle(Event::Tick);
            h.all_ready();
            assert_eq!(h.state.phase(), Phase::Running);
            h
        }
    }

    fn kills(actions: &[Action]) -> Vec<(i32, Signal)> {
        actions
            .iter()
            .filter_map(|a| if let Action::Kill { pid, signal } = a { Some((*pid, *signal)) } else { None })
            .collect()
    }

    #[test]
    fn startup_spawns_the_configured_count_and_runs_once_one_is_ready() {
        let mut h = Harness::new(POLICY);
        h.handle(Event::Tick);
        assert_eq!(h.pids().len(), 2);
        assert_eq!(h.state.phase(), Phase::Starting);
        assert!(!h.state.settled());
        h.all_ready();
        assert_eq!(h.state.phase(), Phase::Running);
        assert!(h.state.settled());
    }

    #[test]
    fn no_worker_booting_at_startup_exits_3() {
        let mut h = Harness::new(POLICY);
        h.handle(Event::Tick);
        let pids = h.pids();
        assert!(h.handle(Event::Exited { pid: pids[0], how: ExitHow::Code(3) }).is_empty(), "not respawned");
        let actions = h.handle(Event::Exited { pid: pids[1], how: ExitHow::Code(3) });
        assert_eq!(actions, [Action::Exit(EXIT_NO_WORKER)]);
    }

    #[test]
    fn boot_timeout_kills_a_worker_that_never_gets_ready() {
        let mut h = Harness::new(POLICY);
        h.handle(Event::Tick);
        assert!(kills(&h.advance(4 * SEC)).is_empty());
        let killed = kills(&h.advance(2 * SEC));
        assert_eq!(killed.len(), 2);
        assert!(killed.iter().all(|k| k.1 == Signal::SIGKILL));
    }

    #[test]
    fn a_dead_worker_is_replaced_at_once_the_first_time() {
        let mut h = Harness::running();
        let victim = h.pids()[0];
        h.now += 10 * SEC;
        h.beat();
        h.handle(Event::Exited { pid: victim, how: ExitHow::Signal(Signal::SIGKILL as i32) });
        assert_eq!(h.pids().len(), 2, "replacement spawned in the same turn");
        assert!(!h.pids().contains(&victim));
    }

    #[test]
    fn early_deaths_back_off_exponentially() {
        let mut h = Harness::running();
        let mut delays = Vec::new();
        for _ in 0..5 {
            let victim = *h.pids().last().unwrap();
            h.handle(Event::Exited { pid: victim, how: ExitHow::Code(1) });
            let started = h.now;
            while h.pids().len() < 2 {
                h.beat();
                h.advance(100 * MS);
            }
            delays.push((h.now - started) / MS);
            let newest = *h.pids().last().unwrap();
            let slot = h.slot_of(newest);
            h.board.set(slot, newest, SlotState::Ready, h.now);
            h.handle(Event::Tick);
        }
        assert_eq!(delays, [0, 500, 1000, 2000, 4000]);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn heartbeat_silence_beyond_timeout_kills_never_before() {
        let mut h = Harness::running();
        let pid = h.pids()[0];
        let slot = h.slot_of(pid);
        let last_beat = h.now;
        h.board.set(slot, pid, SlotState::Ready, last_beat);
        let other = h.pids()[1];
        let other_slot = h.slot_of(other);
        // The sleep the master asks for ends just after the deadline.
        let sleep = h.state.sleep_for(h.now, &h.board);
        assert!(sleep <= POLICY.timeout + POLICY.heartbeat + MS);
        // The worker may have hung just before it would have stamped again: at `timeout` it is not yet
        // `timeout` since it stopped.
        h.now = last_beat + POLICY.timeout + MS;
        h.board.set(other_slot, other, SlotState::Ready, h.now);
        assert!(kills(&h.handle(Event::Tick)).is_empty(), "past the timeout but within one interval: not yet");
        h.now = last_beat + POLICY.timeout + POLICY.heartbeat;
        h.board.set(other_slot, other, SlotState::Ready, h.now);
        assert!(kills(&h.handle(Event::Tick)).is_empty(), "exactly at the limit: not yet");
        h.now += MS;
        assert_eq!(kills(&h.handle(Event::Tick)), [(pid, Signal::SIGKILL)]);
        h.handle(Event::Exited { pid, how: ExitHow::Signal(Signal::SIGKILL as i32) });
        assert_eq!(h.pids().len(), 2, "replaced");
    }

    #[test]
    fn term_drains_then_kills_stragglers_at_the_deadline_and_exits_0() {
        let mut h = Harness::running();
        let pids = h.pids();
        let actions = h.handle(Event::Signal(Sig::Term));
        assert!(actions.contains(&Action::CloseListeners));
        assert_eq!(kills(&actions), pids.iter().map(|&p| (p, Signal::SIGTERM)).collect::<Vec<_>>());
        h.handle(Event::Exited { pid: pids[0], how: ExitHow::Code(0) });
        assert_eq!(h.pids(), [pids[1]], "no respawn while stopping");
        h.beat();
        assert!(kills(&h.advance(2 * SEC)).is_empty());
        h.beat();
        assert_eq!(kills(&h.advance(SEC + MS)), [(pids[1], Signal::SIGKILL)]);
        assert_eq!(h.handle(Event::Exited { pid: pids[1], how: ExitHow::Signal(9) }), [Action::Exit(EXIT_OK)]);
    }

    #[test]
    fn quit_during_graceful_stop_escalates() {
        let mut h = Harness::running();
        let pids = h.pids();
        h.handle(Event::Signal(Sig::Term));
        let actions = h.handle(Event::Signal(Sig::Quit));
        assert_eq!(kills(&actions), pids.iter().map(|&p| (p, Signal::SIGQUIT)).collect::<Vec<_>>());
        assert_eq!(kills(&h.advance(QUIT_GRACE)), pids.iter().map(|&p| (p, Signal::SIGKILL)).collect::<Vec<_>>());
    }

    #[test]
    fn ttin_adds_and_ttou_retires_the_oldest_but_never_below_one() {
        let mut h = Harness::running();
        h.handle(Event::Signal(Sig::Ttin));
        assert_eq!(h.pids().len(), 3);
        h.all_ready();
        let oldest = h.pids()[0];
        assert_eq!(kills(&h.handle(Event::Signal(Sig::Ttou))), [(oldest, Signal::SIGTERM)]);
        h.handle(Event::Exited { pid: oldest, how: ExitHow::Code(0) });
        assert_eq!(h.pids().len(), 2, "not replaced");
        h.handle(Event::Signal(Sig::Ttou));
        assert!(kills(&h.handle(Event::Signal(Sig::Ttou))).is_empty(), "already at 1");
        assert_eq!(h.state.desired, 1);
    }

    #[test]
    fn a_retiring_worker_past_its_drain_deadline_is_killed() {
        let mut h = Harness::running();
        h.handle(Event::Signal(Sig::Ttou));
        let retiring = h.pids()[0];
        h.beat();
        assert!(kills(&h.advance(2 * SEC)).is_empty());
        h.beat();
        assert_eq!(kills(&h.advance(SEC + MS)), [(retiring, Signal::SIGKILL)]);
    }

    #[test]
    fn restarts_are_counted_by_reason() {
        let mut h = Harness::running();
        let reason = |h: &Harness, r: RestartReason| h.state.counters().restarts[r.index()];
        let pids = h.pids();
        h.handle(Event::Exited { pid: pids[0], how: ExitHow::Signal(Signal::SIGKILL as i32) });
        assert_eq!(reason(&h, RestartReason::Killed), 1);
        h.handle(Event::Exited { pid: pids[1], how: ExitHow::Code(1) });
        assert_eq!(reason(&h, RestartReason::Crash), 1);
        h.all_ready();
        let victim = h.pids()[0];
        let slot = h.slot_of(victim);
        h.now += 10 * SEC;
        h.beat();
        h.board.set(slot, victim, SlotState::Ready, h.now - POLICY.silence_limit() - MS);
        h.handle(Event::Tick);
        h.handle(Event::Exited { pid: victim, how: ExitHow::Signal(Signal::SIGKILL as i32) });
        assert_eq!(reason(&h, RestartReason::Timeout), 1, "our own timeout kill is not an outside kill");
        assert_eq!(reason(&h, RestartReason::Killed), 1);
        h.handle(Event::Signal(Sig::Hup));
        assert_eq!(h.state.counters().reloads_ok, 0);
        h.all_ready();
        assert_eq!(h.state.counters().reloads_ok, 1);
        let retired: Vec<i32> = h.state.workers.iter().filter(|w| w.retire.is_some()).map(|w| w.pid).collect();
        for pid in retired {
            h.handle(Event::Exited { pid, how: ExitHow::Code(0) });
        }
        assert_eq!(reason(&h, RestartReason::Reload), 2);
        h.handle(Event::Signal(Sig::Term));
        for pid in h.pids() {
            h.handle(Event::Exited { pid, how: ExitHow::Code(0) });
        }
        assert_eq!(h.state.counters().restarts.iter().sum::<u64>(), 5, "a stop is not a restart");
    }

    #[test]
    fn a_kill_the_supervisor_did_not_send_is_not_mistaken_for_a_timeout() {
        let mut h = Harness::running();
        let pid = h.pids()[0];
        // No kill was recorded, so the exit is reported as an outside SIGKILL (checked by the log line's
        // branch); the worker is replaced.
        h.handle(Event::Exited { pid, how: ExitHow::Signal(Signal::SIGKILL as i32) });
        assert!(h.state.workers.iter().all(|w| w.kill.is_none()));
        assert_eq!(h.pids().len(), 2);
    }
}
