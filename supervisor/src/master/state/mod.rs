//! The master's decisions, as a pure state machine.
//!
//! [`State::handle`] takes one [`Event`] (a signal, a reaped child, a spawn result, a reloaded
//! configuration, or a periodic tick) with the current monotonic time and a view of the scoreboard, and
//! returns the [`Action`]s to perform. It never forks, signals or sleeps; the executor in `master::run`
//! does that. Every policy of the process model lives here and is tested without processes, by examples
//! (`tests.rs`) and by properties over random event sequences (`props.rs`, invariants in ARCHITECTURE.md):
//!
//! - `worker.rs`: one worker's lifecycle ([`Life`]), why it is retired or killed, what its exit means;
//! - `spawn.rs`: when a fork may happen (failed-fork retry, crash-loop backoff, replacement rate limit);
//! - `control.rs`: the control socket's commands, and when a client waiting for an outcome is answered;
//! - this file: the master's phase, worker count, timeouts, stop and quit, reloads and recycling.

mod control;
mod spawn;
pub(crate) mod worker;

#[cfg(test)]
mod props;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use nix::sys::signal::Signal;

use self::control::{Awaited, Waiter};
pub use self::control::{ClientId, Command, MAX_WAIT, Reply, UpgradeNews, UpgradeStage};
#[cfg(test)]
use self::spawn::{MAX_BACKOFF, MAX_FORK_RETRY, RESPAWN_INTERVAL, backoff};
use self::spawn::{Purpose, Spawner};
pub use self::worker::{KillReason, Life, Recycle, RetireReason};
use self::worker::{Observed, Worker, worker_event};
#[cfg(test)]
use crate::scoreboard::RestartReason;

/// Monotonic nanoseconds.
pub type Nanos = u64;

const MS: Nanos = 1_000_000;
const SEC: Nanos = 1_000 * MS;
/// A worker that dies within this long of becoming ready counts towards the crash-loop backoff.
pub const MIN_UPTIME: Nanos = 5 * SEC;
/// How long a fast stop waits for workers to exit by themselves before SIGKILL.
pub const QUIT_GRACE: Nanos = 500 * MS;
/// The master wakes at least this often.
pub const MAX_SLEEP: Nanos = SEC;
/// Samples in a row a worker's memory must stay above `max_worker_memory` before it is recycled: one
/// sample over the limit may be a short peak the allocator gives back.
pub const MEMORY_SAMPLES: u32 = 3;

use crate::exit::{NO_WORKER as EXIT_NO_WORKER, OK as EXIT_OK};

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

impl std::fmt::Display for ExitHow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitHow::Code(code) => write!(f, "exit code {code}"),
            ExitHow::Signal(signal) => write!(f, "signal {signal}"),
        }
    }
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
    /// A worker whose memory stays above this many bytes for [`MEMORY_SAMPLES`] samples in a row is
    /// recycled (0: never).
    pub max_memory: u64,
    /// A worker this old (plus its share of `lifetime_jitter`) is recycled (0: never).
    pub max_lifetime: Nanos,
    /// Random extra lifetime in `[0, lifetime_jitter]` per worker, so workers do not recycle together.
    pub lifetime_jitter: Nanos,
}

impl Policy {
    /// The policy of a [`crate::Settings`].
    pub fn of(settings: &crate::Settings) -> Policy {
        let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Policy {
            // 0 asks for a single process, which a running master cannot become: one worker.
            workers: settings.workers.max(1),
            timeout: nanos(settings.timeout),
            heartbeat: nanos(settings.heartbeat_interval()),
            graceful_timeout: nanos(settings.graceful_timeout),
            boot_timeout: nanos(settings.boot_timeout),
            max_memory: settings.max_worker_memory,
            max_lifetime: nanos(settings.max_worker_lifetime),
            lifetime_jitter: nanos(settings.max_worker_lifetime_jitter),
        }
    }

    /// When a worker spawned at `spawned` with spawn serial `serial` has lived its lifetime, if it has one.
    /// The jitter is a hash of the serial: different for every worker, the same on every call.
    pub fn end_of_life(&self, spawned: Nanos, serial: u64) -> Option<Nanos> {
        (self.max_lifetime > 0).then(|| {
            let mut x = serial.wrapping_add(0x9E37_79B9_7F4A_7C15);
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^= x >> 31;
            spawned.saturating_add(self.max_lifetime).saturating_add(x % self.lifetime_jitter.saturating_add(1))
        })
    }

    /// The heartbeat silence beyond which a ready worker is killed. A worker that hangs has last stamped up
    /// to one interval earlier, so allowing `timeout` plus that interval kills it between `timeout` and
    /// `timeout + interval` after it really stopped: never early.
    pub fn silence_limit(&self) -> Nanos {
        self.timeout.saturating_add(self.heartbeat)
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
        /// The kernel counted an OOM kill since the master last looked: a SIGKILL the master did not send
        /// was most likely the OOM killer's.
        oom: bool,
    },
    /// A [`Action::Spawn`] succeeded.
    Spawned {
        /// The slot it was asked for.
        slot: usize,
        /// The new worker's pid.
        pid: i32,
    },
    /// A [`Action::Spawn`] failed (fork error, or the generation's listeners could not be duplicated).
    SpawnFailed {
        /// The slot it was asked for.
        slot: usize,
        /// Why.
        error: String,
    },
    /// The configuration was re-read after [`Action::LoadConfig`]: the new generation's policy, or why the
    /// file was rejected.
    ConfigLoaded {
        /// The generation it was loaded for.
        generation: u64,
        /// The policy, or why the configuration was rejected.
        result: Result<Policy, String>,
    },
    /// The executor wrote every worker's memory into the scoreboard (at most once a second).
    Sampled,
    /// A control client's command.
    Control {
        /// Who asks (the reply goes back to it).
        client: ClientId,
        /// What it asks for.
        command: Command,
    },
    /// A control client hung up, or was dropped: nobody waits for its outcome any more.
    ClientGone(ClientId),
    /// What became of a binary upgrade: the result of [`Action::Upgrade`], or later news of the new master.
    Upgrade(UpgradeNews),
    /// The result of [`Action::ReopenLogs`]: what was done, or why it failed.
    LogsReopened(Result<String, String>),
    /// Periodic check of the scoreboard (every loop turn).
    Tick,
}

/// What the executor must do, in order. The results of `Spawn`, `LoadConfig`, `Upgrade` and `ReopenLogs` must
/// be handled before any other event.
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
    /// Start the binary on disk as a new master inheriting the listeners (USR2), and report
    /// [`Event::Upgrade`].
    Upgrade,
    /// Reopen the log file and tell every worker to do the same (USR1), and report [`Event::LogsReopened`].
    ReopenLogs,
    /// Answer a control client.
    Reply {
        /// To whom.
        client: ClientId,
        /// What.
        reply: Reply,
    },
    /// Close the master's copies of the listening sockets (a stop has begun).
    CloseListeners,
    /// Exit the master with this code.
    Exit(i32),
}

/// Read access to the scoreboard, so that tests can feed a fake one.
pub trait Board {
    /// The current content of a slot.
    fn view(&self, slot: usize) -> crate::scoreboard::SlotView;
    /// The error a worker that could not boot left in its slot, if any.
    fn boot_error(&self, slot: usize) -> Option<String>;
}

/// The master's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Initial workers are booting; none has been ready yet.
    Starting,
    /// Serving.
    Running,
    /// Graceful stop: every worker is retiring with its own drain deadline; exit once none is left.
    Stopping,
    /// Fast stop: workers were told to exit at once; SIGKILL at `deadline`.
    Quitting {
        /// When survivors are killed.
        deadline: Nanos,
        /// The code to exit with.
        code: i32,
        /// Whether the survivors were sent SIGKILL.
        escalated: bool,
    },
}

/// A spawn asked for and not reported yet.
#[derive(Clone, Copy, Debug)]
struct Pending {
    slot: usize,
    generation: u64,
    serial: u64,
    at: Nanos,
}

/// A reload in progress: the new generation boots beside the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reload {
    generation: u64,
    /// Until the config is loaded, the reload has no deadline yet.
    deadline: Option<Nanos>,
}

/// The master's state.
#[derive(Debug)]
pub struct State {
    phase: Phase,
    /// The generation that serves (and whose count is maintained).
    current: u64,
    /// Policies of live generations.
    policies: BTreeMap<u64, Policy>,
    /// Worker count of the current generation (changed by TTIN/TTOU).
    desired: usize,
    workers: Vec<Worker>,
    pending: Vec<Pending>,
    slots: usize,
    spawner: Spawner,
    next_serial: u64,
    reload: Option<Reload>,
    /// A HUP arrived during a reload or startup: run one more when it ends.
    reload_again: bool,
    next_generation: u64,
    /// Whether any worker has ever been ready.
    ever_ready: bool,
    /// Startup: initial workers not forked yet (forks that failed are retried until `boot_timeout`).
    unforked: usize,
    /// Startup: when the master gives up forking the initial workers.
    startup_deadline: Option<Nanos>,
    /// Restart and reload counters, published in the scoreboard for /metrics.
    counters: crate::scoreboard::MasterCounters,
    /// Control clients waiting for an outcome.
    waiters: Vec<Waiter>,
    /// A binary upgrade in progress.
    upgrade: Option<UpgradeStage>,
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
            spawner: Spawner::default(),
            next_serial: 1,
            reload: None,
            reload_again: false,
            next_generation: 2,
            ever_ready: false,
            unforked: policy.workers,
            startup_deadline: None,
            counters: Default::default(),
            waiters: Vec::new(),
            upgrade: None,
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

    /// Pids of live workers with their scoreboard slot.
    pub fn worker_slots(&self) -> Vec<(i32, usize)> {
        self.workers.iter().map(|w| (w.pid, w.slot)).collect()
    }

    /// Whether every worker of the serving generation is ready and the count is complete (startup done,
    /// reload done): what a service manager is told as READY.
    pub fn settled(&self) -> bool {
        self.reload.is_none()
            && self.pending.is_empty()
            && self.workers.iter().filter(|w| w.generation == self.current && w.ready()).count() >= self.desired
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
            Event::Exited { pid, how, oom } => self.on_exit(pid, how, oom, now, board, &mut actions),
            Event::Spawned { slot, pid } => self.on_spawned(slot, pid, now, &mut actions),
            Event::SpawnFailed { slot, error } => self.on_spawn_failed(slot, &error, now),
            Event::ConfigLoaded { generation, result } => self.on_config(generation, result, now, &mut actions),
            Event::Sampled => self.on_sampled(board),
            Event::Control { client, command } => self.on_control(client, command, now, &mut actions),
            Event::ClientGone(client) => self.client_gone(client),
            Event::Upgrade(news) => self.on_upgrade(news, &mut actions),
            Event::LogsReopened(result) => self.on_reopened(result, &mut actions),
            Event::Tick => {}
        }
        self.tick(now, board, &mut actions);
        actions
    }

    /// How long the executor may sleep before the next [`Event::Tick`] is due.
    pub fn sleep_for(&self, now: Nanos) -> Nanos {
        let mut due = now.saturating_add(MAX_SLEEP);
        let mut at = |t: Nanos| due = due.min(t.max(now));
        for w in &self.workers {
            let policy = self.policy(w.generation);
            let silent = w.beat.saturating_add(policy.silence_limit()).saturating_add(MS);
            match w.life {
                Life::Booting => at(w.spawned.saturating_add(policy.boot_timeout).saturating_add(MS)),
                Life::Ready { recycle } => {
                    at(silent);
                    if let (None, Some(end)) = (recycle, policy.end_of_life(w.spawned, w.serial)) {
                        at(end);
                    }
                }
                Life::Retiring { deadline, .. } => {
                    at(deadline);
                    at(silent);
                }
                Life::Killed { .. } => {}
            }
        }
        if let Phase::Quitting { deadline, escalated: false, .. } = self.phase {
            at(deadline);
        }
        if let Some(Reload { deadline: Some(deadline), .. }) = self.reload {
            at(deadline);
        }
        if let Some(t) = self.next_spawn(now) {
            at(t);
        }
        for w in &self.waiters {
            at(w.deadline);
        }
        due - now
    }

    /// When the next spawn the master is waiting to make may happen, if it waits for one. At startup, the
    /// same condition as [`State::tick_starting`]: no fork once `boot_timeout` has passed.
    fn next_spawn(&self, now: Nanos) -> Option<Nanos> {
        let planned = self.spawner.ready_at(Purpose::Planned, 0);
        let replace = self.spawner.ready_at(Purpose::Replace, self.desired);
        match self.phase {
            Phase::Starting => {
                let owed = self.unforked > self.pending.len();
                (owed && self.startup_deadline.is_none_or(|d| now < d && planned < d)).then_some(planned)
            }
            Phase::Running => {
                let reload_owed = self.reload.is_some_and(|r| {
                    r.deadline.is_some() && self.count(r.generation) < self.policy(r.generation).workers
                });
                if reload_owed {
                    Some(planned)
                } else if self.missing() > 0 && !self.probing() {
                    Some(replace)
                } else if self.recycle_wanted() && self.missing() == 0 {
                    Some(self.spawner.ready_at(Purpose::Recycle, 0))
                } else {
                    None
                }
            }
            Phase::Stopping | Phase::Quitting { .. } => None,
        }
    }

    fn policy(&self, generation: u64) -> Policy {
        policy_of(&self.policies, generation, self.current)
    }

    fn on_signal(&mut self, sig: Sig, now: Nanos, actions: &mut Vec<Action>) {
        match (sig, self.phase) {
            (Sig::Term, Phase::Starting | Phase::Running) => self.stop(now, actions),
            (Sig::Int | Sig::Quit, Phase::Quitting { .. }) | (Sig::Term, _) => {}
            (Sig::Int | Sig::Quit, _) => {
                tracing::info!(signal = ?sig, workers = self.workers.len(), "fast stop");
                self.quit(EXIT_OK, now, actions);
            }
            (_, Phase::Stopping | Phase::Quitting { .. }) => {
                tracing::info!(signal = ?sig, "signal ignored while stopping");
            }
            (Sig::Ttin, _) => {
                self.desired = (self.desired + 1).min(crate::Settings::MAX_WORKERS).min(self.slots / 2).max(1);
                tracing::info!(workers = self.desired, "worker count increased");
            }
            (Sig::Ttou, _) => {
                if self.desired <= 1 {
                    tracing::info!(workers = self.desired, "worker count already at its minimum of 1");
                } else {
                    self.desired -= 1;
                    tracing::info!(workers = self.desired, "worker count decreased");
                }
            }
            (Sig::Hup, Phase::Starting) => {
                tracing::info!("reload requested during startup: will reload once the workers are ready");
                self.reload_again = true;
            }
            (Sig::Hup, Phase::Running) => {
                if let Some(reload) = self.reload {
                    tracing::info!(generation = reload.generation, "reload already in progress: another will follow");
                    self.reload_again = true;
                } else {
                    self.start_reload(actions);
                }
            }
            (Sig::Usr1, _) => actions.push(Action::ReopenLogs),
            (Sig::Usr2, Phase::Running) => {
                self.upgrade.get_or_insert(UpgradeStage::Starting);
                actions.push(Action::Upgrade);
            }
            (Sig::Usr2, _) => tracing::warn!("binary upgrade requested during startup: ignored"),
        }
    }

    /// Graceful stop: every worker drains, stragglers are killed at their deadline.
    fn stop(&mut self, now: Nanos, actions: &mut Vec<Action>) {
        let graceful = self.policy(self.current).graceful_timeout;
        tracing::info!(workers = self.workers.len(), graceful_timeout_ms = graceful / MS, "graceful stop");
        self.phase = Phase::Stopping;
        self.reload_again = false;
        self.abandon_reload("stopping", actions);
        self.fail_waiters_on_stop(actions);
        actions.push(Action::CloseListeners);
        let deadline = now.saturating_add(graceful);
        for w in &mut self.workers {
            stop_worker(w, self.phase, deadline, actions);
        }
    }

    /// Fast stop: every worker exits at once, survivors are killed after [`QUIT_GRACE`].
    fn quit(&mut self, code: i32, now: Nanos, actions: &mut Vec<Action>) {
        self.reload_again = false;
        self.abandon_reload("stopping", actions);
        self.fail_waiters_on_stop(actions);
        self.phase = Phase::Quitting { deadline: now.saturating_add(QUIT_GRACE), code, escalated: false };
        actions.push(Action::CloseListeners);
        for w in &mut self.workers {
            stop_worker(w, self.phase, now, actions);
        }
    }

    fn start_reload(&mut self, actions: &mut Vec<Action>) {
        let generation = self.next_generation;
        self.next_generation += 1;
        tracing::info!(generation, "reload started: reading the configuration");
        self.reload = Some(Reload { generation, deadline: None });
        actions.push(Action::LoadConfig { generation });
    }

    fn on_config(&mut self, generation: u64, result: Result<Policy, String>, now: Nanos, actions: &mut Vec<Action>) {
        if self.reload.is_none_or(|r| r.generation != generation || r.deadline.is_some()) {
            // The reload was abandoned while the configuration was read (a stop began).
            if result.is_ok() {
                actions.push(Action::DropGeneration(generation));
            }
            return;
        }
        match result {
            Err(error) => {
                tracing::error!(generation, error = %error, "reload aborted: configuration rejected, keeping the running workers");
                self.reload = None;
                self.counters.reloads_aborted += 1;
                self.answer(actions, |a| {
                    (*a == Awaited::Reload { generation })
                        .then(|| Reply::Failed(format!("reload aborted: configuration rejected: {error}")))
                });
                if std::mem::take(&mut self.reload_again) {
                    self.start_reload(actions);
                }
            }
            Ok(policy) => {
                tracing::info!(generation, workers = policy.workers, "reload: booting the new generation");
                self.policies.insert(generation, policy);
                self.reload = Some(Reload { generation, deadline: Some(now.saturating_add(policy.boot_timeout)) });
            }
        }
    }

    /// Kills the generation a reload was booting and forgets it; the serving generation is untouched.
    fn abandon_reload(&mut self, why: &str, actions: &mut Vec<Action>) {
        let Some(reload) = self.reload.take() else { return };
        tracing::warn!(generation = reload.generation, reason = why, "reload aborted");
        self.counters.reloads_aborted += 1;
        self.answer(actions, |a| {
            (*a == Awaited::Reload { generation: reload.generation })
                .then(|| Reply::Failed(format!("reload aborted: {why}")))
        });
        for w in self.workers.iter_mut().filter(|w| w.generation == reload.generation) {
            if !matches!(w.life, Life::Killed { .. }) {
                w.set_life(Life::Killed { reason: KillReason::ReloadAborted });
                actions.push(Action::Kill { pid: w.pid, signal: Signal::SIGKILL });
            }
        }
        if self.policies.remove(&reload.generation).is_some() {
            actions.push(Action::DropGeneration(reload.generation));
        }
    }

    fn on_spawned(&mut self, slot: usize, pid: i32, now: Nanos, actions: &mut Vec<Action>) {
        self.spawner.forked();
        let Some(i) = self.pending.iter().position(|p| p.slot == slot) else {
            // Not asked for (or no longer wanted): a process nobody tracks must not live on.
            tracing::error!(worker_pid = pid, slot, "spawned a worker that is not expected: killing it");
            actions.push(Action::Kill { pid, signal: Signal::SIGKILL });
            return;
        };
        let p = self.pending.remove(i);
        if self.phase == Phase::Starting {
            self.unforked = self.unforked.saturating_sub(1);
        }
        let mut w = Worker::new(pid, p.slot, p.generation, p.serial, p.at);
        worker_event!(info, &w, "worker spawned");
        if !self.policies.contains_key(&p.generation) {
            w.set_life(Life::Killed { reason: KillReason::ReloadAborted });
            actions.push(Action::Kill { pid, signal: Signal::SIGKILL });
        }
        // A worker forked just as a stop began is stopped like its siblings.
        let deadline = now.saturating_add(self.policy(self.current).graceful_timeout);
        stop_worker(&mut w, self.phase, deadline, actions);
        debug_assert!(self.workers.iter().all(|o| o.pid != pid), "pid {pid} tracked twice");
        self.workers.push(w);
    }

    fn on_spawn_failed(&mut self, slot: usize, error: &str, now: Nanos) {
        let Some(i) = self.pending.iter().position(|p| p.slot == slot) else { return };
        // A worker this spawn was to replace keeps serving: `recycle` drops the link and asks again.
        let p = self.pending.remove(i);
        let delay = self.spawner.fork_failed(now);
        tracing::error!(
            slot,
            generation = p.generation,
            error = %error,
            retry_in_ms = delay / MS,
            "could not start a worker: will retry"
        );
    }

    fn on_exit(&mut self, pid: i32, how: ExitHow, oom: bool, now: Nanos, board: &dyn Board, actions: &mut Vec<Action>) {
        let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
            tracing::debug!(worker_pid = pid, "reaped a process that was not a worker");
            return;
        };
        let w = self.workers.remove(i);
        let reason = w.restart_reason(how, oom);
        if let Some(reason) = reason {
            self.counters.restarts[reason.index()] += 1;
        }
        // The slot still holds what the worker was serving when it died.
        w.log_exit(how, reason, &board.view(w.slot), now);
        if matches!(self.phase, Phase::Running | Phase::Starting) && w.died_early(how, now) {
            let delay = self.spawner.crashed(now);
            if delay > 0 {
                tracing::warn!(
                    failures = self.spawner.crashes(),
                    backoff_ms = delay / MS,
                    "workers keep dying early: backing off before the next spawn"
                );
            }
        }
        if let Some(reload) = self.reload
            && w.generation == reload.generation
            && w.life != (Life::Killed { reason: KillReason::ReloadAborted })
        {
            // A worker that could not boot left its error in its slot: the reload's outcome names it.
            let why = match board.boot_error(w.slot) {
                Some(error) if w.life == Life::Booting => {
                    format!("a worker of the new generation died before the switch: {error}")
                }
                _ => format!("a worker of the new generation died before the switch ({how})"),
            };
            self.abandon_reload(&why, actions);
        }
        let gone = !self.workers.iter().any(|o| o.generation == w.generation)
            && !self.pending.iter().any(|p| p.generation == w.generation);
        if gone
            && w.generation != self.current
            && self.reload.is_none_or(|r| r.generation != w.generation)
            && self.policies.remove(&w.generation).is_some()
        {
            actions.push(Action::DropGeneration(w.generation));
        }
    }

    fn tick(&mut self, now: Nanos, board: &dyn Board, actions: &mut Vec<Action>) {
        self.observe(now, board);
        self.enforce_deadlines(now, board, actions);
        self.decide(now, actions);
        // Again, for a deadline set by a decision of this turn (a drain of zero seconds).
        self.enforce_deadlines(now, board, actions);
        self.check_waiters(now, actions);
    }

    fn decide(&mut self, now: Nanos, actions: &mut Vec<Action>) {
        match self.phase {
            Phase::Starting => self.tick_starting(now, actions),
            Phase::Running => self.tick_running(now, actions),
            Phase::Stopping => {
                if self.workers.is_empty() && self.pending.is_empty() {
                    tracing::info!("all workers stopped: exiting");
                    self.exit(EXIT_OK, actions);
                }
            }
            Phase::Quitting { deadline, code, escalated } => {
                if self.workers.is_empty() && self.pending.is_empty() {
                    self.exit(code, actions);
                } else if !escalated && now >= deadline {
                    self.phase = Phase::Quitting { deadline, code, escalated: true };
                    for w in &self.workers {
                        if w.life == (Life::Killed { reason: KillReason::Quit }) {
                            actions.push(Action::Kill { pid: w.pid, signal: Signal::SIGKILL });
                        }
                    }
                }
            }
        }
    }

    fn tick_starting(&mut self, now: Nanos, actions: &mut Vec<Action>) {
        let deadline = *self.startup_deadline.get_or_insert(now.saturating_add(self.policy(self.current).boot_timeout));
        if self.ever_ready {
            self.phase = Phase::Running;
            tracing::info!(generation = self.current, "server ready");
            if std::mem::take(&mut self.reload_again) {
                self.start_reload(actions);
            }
            return self.tick_running(now, actions);
        }
        let owed = self.unforked.saturating_sub(self.pending.len());
        if now < deadline && now >= self.spawner.ready_at(Purpose::Planned, 0) {
            for _ in 0..owed {
                self.spawn(self.current, Purpose::Planned, now, actions);
            }
        }
        // Workers that fail during startup are not replaced: the failure is most likely deterministic
        // (configuration, code), and an operator is watching. Forks that fail are retried until
        // `boot_timeout`.
        if self.workers.is_empty() && self.pending.is_empty() && (self.unforked == 0 || now >= deadline) {
            tracing::error!(
                code = EXIT_NO_WORKER,
                never_forked = self.unforked,
                "no worker could boot: stopping (see the worker's error above)"
            );
            self.exit(EXIT_NO_WORKER, actions);
        }
    }

    fn tick_running(&mut self, now: Nanos, actions: &mut Vec<Action>) {
        for w in &self.workers {
            if let (true, Some(ready_at)) = (w.ready(), w.ready_at) {
                self.spawner.settle(w.spawned, ready_at, now);
            }
        }
        self.end_lives(now);
        self.progress_reload(now, actions);
        self.trim(now, actions);
        self.restore(now, actions);
        self.recycle(now, actions);
    }

    /// Reads the scoreboard: heartbeats, readiness and recycling requests.
    fn observe(&mut self, now: Nanos, board: &dyn Board) {
        for w in &mut self.workers {
            if let Life::Killed { .. } = w.life {
                continue;
            }
            let view = board.view(w.slot);
            match w.observe(&view, now) {
                Observed::Ready => {
                    self.ever_ready = true;
                    worker_event!(info, w, boot_ms = now.saturating_sub(w.spawned) / MS, "worker ready");
                }
                Observed::Recycle => worker_event!(
                    info,
                    w,
                    requests = view.requests,
                    "worker reached max_requests: asks for a replacement"
                ),
                Observed::Nothing => {}
            }
        }
    }

    /// Kills workers past their boot, heartbeat or drain deadline.
    fn enforce_deadlines(&mut self, now: Nanos, board: &dyn Board, actions: &mut Vec<Action>) {
        for w in &mut self.workers {
            let policy = policy_of(&self.policies, w.generation, self.current);
            let kill = match w.life {
                Life::Booting if now.saturating_sub(w.spawned) > policy.boot_timeout => {
                    worker_event!(
                        error,
                        w,
                        boot_timeout_ms = policy.boot_timeout / MS,
                        reason = "boot_timeout",
                        "worker not ready within boot_timeout: killing it"
                    );
                    Some(KillReason::BootTimeout)
                }
                Life::Ready { .. } | Life::Retiring { .. } if now.saturating_sub(w.beat) > policy.silence_limit() => {
                    w.log_timeout(&board.view(w.slot), now, policy.timeout);
                    Some(KillReason::Timeout)
                }
                Life::Retiring { reason, deadline } if now >= deadline => {
                    w.log_straggler(&board.view(w.slot), now);
                    Some(KillReason::DrainDeadline(reason))
                }
                _ => None,
            };
            if let Some(reason) = kill {
                w.set_life(Life::Killed { reason });
                actions.push(Action::Kill { pid: w.pid, signal: Signal::SIGKILL });
            }
        }
    }

    /// Whether this spawn serial belongs to a worker still booting or serving (or about to be forked).
    fn live_serial(&self, serial: u64) -> Option<&Worker> {
        self.workers.iter().find(|w| w.serial == serial && w.active())
    }

    /// A recycling worker whose replacement is on its way: it does not count towards its generation.
    fn leaving(&self, w: &Worker) -> bool {
        w.recycling()
            && w.replacement
                .is_some_and(|s| self.pending.iter().any(|p| p.serial == s) || self.live_serial(s).is_some())
    }

    /// Workers of `generation` that will be serving once booted: active ones not on their way out, and
    /// spawns in flight.
    fn count(&self, generation: u64) -> usize {
        self.workers.iter().filter(|w| w.generation == generation && w.active() && !self.leaving(w)).count()
            + self.pending.iter().filter(|p| p.generation == generation).count()
    }

    /// Workers of the current generation still to spawn (0 unless running).
    fn missing(&self) -> usize {
        match self.phase {
            Phase::Running => self.desired.saturating_sub(self.count(self.current)),
            _ => 0,
        }
    }

    /// Spawns what the current generation lacks. In a crash loop, one worker at a time: the next only once
    /// the previous one has booted or died.
    fn restore(&mut self, now: Nanos, actions: &mut Vec<Action>) {
        let missing = self.missing();
        if missing == 0 {
            return;
        }
        let n = match (self.spawner.in_crash_loop(), self.probing()) {
            (false, _) => missing,
            (true, false) => 1,
            (true, true) => 0,
        };
        let current = self.current;
        for _ in 0..n {
            if now < self.spawner.ready_at(Purpose::Replace, self.desired) {
                break;
            }
            self.spawn(current, Purpose::Replace, now, actions);
        }
    }

    /// In a crash loop, a worker of the current generation is booting: the next spawn waits for its outcome.
    fn probing(&self) -> bool {
        self.spawner.in_crash_loop()
            && (self.pending.iter().any(|p| p.generation == self.current)
                || self.workers.iter().any(|w| w.generation == self.current && w.life == Life::Booting))
    }

    /// Retires the current generation's surplus (after TTOU): first workers that asked to be recycled,
    /// then booting ones, then the oldest.
    fn trim(&mut self, now: Nanos, actions: &mut Vec<Action>) {
        let current = self.current;
        let graceful = self.policy(current).graceful_timeout;
        while self.count(current) > self.desired {
            let candidates =
                |w: &&Worker| w.generation == current && w.active() && !self.leaving(w) && w.replacement.is_none();
            let victim = (self.workers.iter().filter(candidates).find(|w| w.recycling()))
                .or_else(|| self.workers.iter().filter(candidates).rfind(|w| w.life == Life::Booting))
                .or_else(|| self.workers.iter().find(candidates))
                .map(|w| w.pid);
            let Some(victim) = victim else { break };
            let w = self.workers.iter_mut().find(|w| w.pid == victim).expect("just found");
            worker_event!(info, w, "worker retiring: scale down");
            retire(w, RetireReason::Scale, now.saturating_add(graceful), actions);
        }
    }

    /// Moves a reload forward: spawn the new generation, switch once it is ready, abort at its deadline.
    fn progress_reload(&mut self, now: Nanos, actions: &mut Vec<Action>) {
        let Some(Reload { generation, deadline: Some(deadline) }) = self.reload else {
            // A reload aborted by a worker's death leaves the one asked for during it to start now.
            if self.reload.is_none() && std::mem::take(&mut self.reload_again) {
                self.start_reload(actions);
            }
            return;
        };
        let policy = self.policy(generation);
        let ready = self.workers.iter().filter(|w| w.generation == generation && w.ready()).count();
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
            self.answer(actions, |a| {
                (*a == Awaited::Reload { generation }).then(|| {
                    Reply::Done(format!(
                        "reload complete: generation {generation} serving with {} workers",
                        policy.workers
                    ))
                })
            });
            for w in &mut self.workers {
                if w.generation != generation && w.active() {
                    worker_event!(info, w, "worker retiring: replaced by a new generation");
                    let graceful = policy_of(&self.policies, w.generation, generation).graceful_timeout;
                    retire(w, RetireReason::Reload, now.saturating_add(graceful), actions);
                }
            }
        } else if now >= deadline {
            self.abandon_reload("the new generation was not ready within boot_timeout", actions);
        } else {
            let owed = policy.workers.saturating_sub(self.count(generation));
            for _ in 0..owed {
                if now < self.spawner.ready_at(Purpose::Planned, 0) {
                    break;
                }
                self.spawn(generation, Purpose::Planned, now, actions);
            }
            return;
        }
        if std::mem::take(&mut self.reload_again) {
            self.start_reload(actions);
        }
    }

    /// Memory samples: a serving worker of the current generation above its generation's `max_memory` for
    /// [`MEMORY_SAMPLES`] samples in a row is marked for recycling.
    fn on_sampled(&mut self, board: &dyn Board) {
        for w in self.workers.iter_mut().filter(|w| w.generation == self.current) {
            let limit = policy_of(&self.policies, w.generation, self.current).max_memory;
            let view = board.view(w.slot);
            if limit == 0 || view.pid != w.pid || view.memory_bytes <= limit {
                w.over_memory = 0;
                continue;
            }
            w.over_memory += 1;
            if w.over_memory >= MEMORY_SAMPLES && w.recycle(Recycle::Memory) {
                worker_event!(
                    info,
                    w,
                    memory_mib = view.memory_bytes >> 20,
                    max_worker_memory_mib = limit >> 20,
                    samples = w.over_memory,
                    "worker over max_worker_memory: asks for a replacement"
                );
            }
        }
    }

    /// A serving worker of the current generation that lived its lifetime is marked for recycling.
    fn end_lives(&mut self, now: Nanos) {
        for w in self.workers.iter_mut().filter(|w| w.generation == self.current) {
            let policy = policy_of(&self.policies, w.generation, self.current);
            if policy.end_of_life(w.spawned, w.serial).is_some_and(|end| now >= end) && w.recycle(Recycle::Lifetime) {
                worker_event!(
                    info,
                    w,
                    age_ms = now.saturating_sub(w.spawned) / MS,
                    max_worker_lifetime_ms = policy.max_lifetime / MS,
                    "worker reached max_worker_lifetime: asks for a replacement"
                );
            }
        }
    }

    /// A recycling worker of the current generation with no replacement yet, while none is on its way.
    fn recycle_wanted(&self) -> bool {
        self.reload.is_none()
            && !self.workers.iter().any(|w| w.replacement.is_some())
            && self.workers.iter().any(|w| w.generation == self.current && w.recycling())
    }

    /// max_requests: one worker at a time gets a replacement; once it is ready, the old one drains.
    fn recycle(&mut self, now: Nanos, actions: &mut Vec<Action>) {
        // Links to replacements that are gone (failed to boot, killed, retired) are dropped: the worker
        // keeps serving and asks again.
        let links: Vec<(usize, Option<bool>)> = (self.workers.iter().enumerate())
            .filter_map(|(i, w)| {
                let s = w.replacement?;
                let state = if self.pending.iter().any(|p| p.serial == s) {
                    Some(false)
                } else {
                    self.live_serial(s).map(Worker::ready)
                };
                Some((i, state))
            })
            .collect();
        let graceful = self.policy(self.current).graceful_timeout;
        for (i, state) in links {
            let w = &mut self.workers[i];
            match state {
                None => w.replacement = None,
                Some(true) if w.recycling() => {
                    let Life::Ready { recycle: Some(why) } = w.life else { unreachable!("recycling") };
                    worker_event!(info, w, reason = why.as_str(), "worker retiring: its replacement is ready");
                    w.replacement = None;
                    retire(w, RetireReason::Recycle(why), now.saturating_add(graceful), actions);
                }
                Some(true) => w.replacement = None,
                Some(false) => {}
            }
        }
        if !self.recycle_wanted() || self.missing() > 0 || now < self.spawner.ready_at(Purpose::Recycle, 0) {
            return;
        }
        let current = self.current;
        let Some(i) = self.workers.iter().position(|w| w.generation == current && w.recycling()) else { return };
        if let Some(serial) = self.spawn(current, Purpose::Recycle, now, actions) {
            self.workers[i].replacement = Some(serial);
        }
    }

    /// Asks for a worker of `generation` in a free slot; returns its spawn serial.
    fn spawn(&mut self, generation: u64, purpose: Purpose, now: Nanos, actions: &mut Vec<Action>) -> Option<u64> {
        let used = |s: &usize| self.workers.iter().any(|w| w.slot == *s) || self.pending.iter().any(|p| p.slot == *s);
        let Some(slot) = (0..self.slots).find(|s| !used(s)) else {
            let delay = self.spawner.fork_failed(now);
            tracing::error!(slots = self.slots, retry_in_ms = delay / MS, "no free scoreboard slot: not spawning");
            return None;
        };
        let serial = self.next_serial;
        self.next_serial += 1;
        self.pending.push(Pending { slot, generation, serial, at: now });
        self.spawner.issued(purpose, now);
        actions.push(Action::Spawn { slot, generation });
        Some(serial)
    }
}

fn policy_of(policies: &BTreeMap<u64, Policy>, generation: u64, current: u64) -> Policy {
    (policies.get(&generation).or_else(|| policies.get(&current)))
        .or_else(|| policies.values().next_back())
        .copied()
        .expect("the serving generation always has a policy")
}

/// Tells an active worker to drain until `deadline`.
fn retire(w: &mut Worker, reason: RetireReason, deadline: Nanos, actions: &mut Vec<Action>) {
    debug_assert!(w.active());
    w.set_life(Life::Retiring { reason, deadline });
    actions.push(Action::Kill { pid: w.pid, signal: Signal::SIGTERM });
}

/// Applies a stop to one worker: while stopping, it drains until `deadline` at the latest; while quitting,
/// it is told to exit at once (and killed if the quit already escalated).
fn stop_worker(w: &mut Worker, phase: Phase, deadline: Nanos, actions: &mut Vec<Action>) {
    match (phase, w.life) {
        (Phase::Stopping, Life::Booting | Life::Ready { .. }) => retire(w, RetireReason::Stop, deadline, actions),
        (Phase::Stopping, Life::Retiring { reason, deadline: own }) => {
            w.set_life(Life::Retiring { reason, deadline: own.min(deadline) });
        }
        (Phase::Quitting { escalated, .. }, Life::Booting | Life::Ready { .. } | Life::Retiring { .. }) => {
            w.set_life(Life::Killed { reason: KillReason::Quit });
            let signal = if escalated { Signal::SIGKILL } else { Signal::SIGQUIT };
            actions.push(Action::Kill { pid: w.pid, signal });
        }
        _ => {}
    }
}
