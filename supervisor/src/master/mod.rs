//! The master process: a single-threaded loop that performs what [`state::State`] decides.
//!
//! One loop turn (cf. nginx and gunicorn): sleep in `poll` on the signal self-pipe, the workers' ready pipe
//! and the control socket, at most until the next deadline the state knows of (never more than 1 s); reap
//! every exited child; handle the signals received, in arrival order per kind, then the control commands;
//! then tick (read the scoreboard: readiness, heartbeats, boot and drain deadlines; restore the worker
//! count). The master never starts a thread or a tokio runtime, so forking it is always sound.

mod control;
mod sample;
pub mod state;
mod upgrade;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus};

use self::control::ControlSocket;
use self::state::{Action, Board, Event, ExitHow, Phase, Policy, Reply, Sig, State, UpgradeNews};
use crate::listen::Listeners;
use crate::scoreboard::{Scoreboard, SlotView};
use crate::worker::{self, Boot, WorkerStart};
use crate::{MasterError, Settings, sys, systemd};

/// Re-reads the configuration for a reload (HUP): the new settings and the application to run with them.
/// Called in the master; it must not start threads or a runtime.
pub(crate) type Reloader = Box<dyn FnMut() -> Result<(Settings, Arc<dyn Boot>), String>>;

/// What the master tells of the program it runs (`ctl status`).
pub(crate) struct Identity {
    /// The program's version (`Server::version`).
    pub version: String,
    /// The configuration file it was started with.
    pub config: Option<PathBuf>,
}

impl Board for Scoreboard {
    fn view(&self, slot: usize) -> SlotView {
        self.slot(slot).view()
    }

    fn boot_error(&self, slot: usize) -> Option<String> {
        self.slot(slot).boot_error()
    }
}

const MASTER_SIGNALS: [Signal; 9] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCHLD,
];

/// Runs the master until it stops, returning the process exit code (0 stopped, 3 no worker could boot).
pub(crate) fn run(
    settings: Settings,
    app: Arc<dyn Boot>,
    reloader: Reloader,
    identity: Identity,
) -> Result<i32, MasterError> {
    let (upgrade_from, activated) = match upgrade::predecessor().map_err(MasterError::Inherit)? {
        Some((pid, listeners)) => (Some(pid), Some(listeners)),
        None => (None, systemd::activated_listeners().map_err(MasterError::Inherit)?),
    };
    let inherited = activated.is_some();
    let listeners = match activated {
        Some(listeners) => {
            let addrs: Vec<SocketAddr> = listeners.iter().map(|(a, _)| *a).collect();
            tracing::info!(listeners = ?addrs, "using the listeners passed by socket activation; `bind` is ignored");
            listeners
        }
        None => settings.bind.iter().copied().zip(crate::listen::bind_all(&settings.bind, settings.backlog)?).collect(),
    };
    let board = Scoreboard::new(crate::scoreboard::SLOTS).map_err(MasterError::Scoreboard)?;
    let signals = sys::SignalPipe::install(&MASTER_SIGNALS).map_err(MasterError::Signals)?;
    let (ready_read, ready_write) = sys::pipe().map_err(MasterError::Signals)?;
    // A new master of a binary upgrade binds `<control_socket>.2` and writes `<pidfile>.2` until it takes
    // over. The control socket is removed when the master is dropped, also on the way out of an error here.
    let control = match &settings.control_socket {
        Some(path) => Some(
            ControlSocket::open(path, upgrade_from.is_some())
                .map_err(|source| MasterError::ControlSocket { path: path.clone(), source })?,
        ),
        None => None,
    };
    let pidfile = settings.pidfile.clone();
    if let Some(path) = &pidfile {
        let path = if upgrade_from.is_some() { upgrade::pending_path(path) } else { path.clone() };
        write_pidfile(&path).map_err(|source| MasterError::Pidfile { path: path.clone(), source })?;
    }
    tracing::info!(
        pid = std::process::id(),
        bind = ?settings.bind,
        workers = settings.workers,
        "master started"
    );
    let mut master = Master {
        state: State::new(Policy::of(&settings), board.len()),
        board,
        signals: Some(signals),
        ready_read: Some(ready_read),
        ready_write: Arc::new(ready_write),
        generations: BTreeMap::from([(1, Generation { settings: Arc::new(settings), app, listeners })]),
        reloader,
        pid: std::process::id() as i32,
        inherited,
        notifier: systemd::Notifier::from_env(),
        told: Told::default(),
        next_watchdog: 0,
        upgrade: upgrade::Upgrade::new(upgrade_from, pidfile.clone()),
        start_time: sys::unix_now(),
        started: sys::monotonic_ns(),
        oom: sample::OomWatch::new(),
        next_sample: 0,
        control,
        control_revents: Vec::new(),
        identity,
    };
    let code = master.run();
    if let Some(control) = &mut master.control {
        control.flush_all();
    }
    drop(master);
    if let Some(path) = &pidfile {
        remove_pidfile(path);
    }
    tracing::info!(code, "master exiting");
    crate::logging::flush_before_exit();
    Ok(code)
}

/// What the workers of one generation run with.
struct Generation {
    settings: Arc<Settings>,
    app: Arc<dyn Boot>,
    /// The master's copies of this generation's listening sockets, duplicated into each of its workers.
    /// Dropped with the generation, or when a stop begins.
    listeners: Listeners,
}

struct Master {
    /// The policy.
    state: State,
    board: Scoreboard,
    /// Taken (uninstalled) in a forked child.
    signals: Option<sys::SignalPipe>,
    /// Workers poke this pipe when ready so the master notices at once; taken (closed) in a child.
    ready_read: Option<OwnedFd>,
    ready_write: Arc<OwnedFd>,
    /// Settings, application and listeners of each live generation.
    generations: BTreeMap<u64, Generation>,
    reloader: Reloader,
    pid: i32,
    /// The listeners came from the service manager: reloads keep them whatever `bind` says.
    inherited: bool,
    /// The service manager's notification socket, if any.
    notifier: Option<systemd::Notifier>,
    /// What the service manager was last told.
    told: Told,
    /// When the next watchdog keep-alive is due (monotonic ns).
    next_watchdog: u64,
    /// Binary upgrade: the master we replace, or the one replacing us.
    upgrade: upgrade::Upgrade,
    /// Unix time this master started, for `process_start_time_seconds`.
    start_time: u64,
    /// The kernel's OOM-kill counters.
    oom: sample::OomWatch,
    /// When the workers' memory is next sampled (monotonic ns).
    next_sample: u64,
    /// When this master started (monotonic ns), for its uptime.
    started: u64,
    /// The control socket, unless turned off; taken (closed) in a child.
    control: Option<ControlSocket>,
    /// What the last poll reported for the control socket's descriptors.
    control_revents: Vec<PollFlags>,
    identity: Identity,
}

/// The last state reported to the service manager.
#[derive(Default, PartialEq, Eq, Clone, Copy)]
enum Told {
    #[default]
    Starting,
    Ready,
    Reloading,
    Stopping,
}

impl Master {
    fn run(&mut self) -> i32 {
        let mut events = VecDeque::from([Event::Tick]);
        loop {
            while let Some(event) = events.pop_front() {
                let actions = self.state.handle(event, sys::monotonic_ns(), &self.board);
                // The results of these actions (spawns, a loaded configuration) are handled before any other
                // event, so that the state never acts on a signal while a fork it asked for is unreported.
                let mut results = Vec::new();
                for action in actions {
                    if let Some(code) = self.perform(action, &mut results) {
                        return code;
                    }
                }
                for event in results.into_iter().rev() {
                    events.push_front(event);
                }
            }
            let mut counters = self.state.counters().clone();
            counters.start_time = self.start_time;
            self.board.publish(&counters);
            self.notify();
            if self.state.settled() && self.upgrade.replacing() {
                if let Some(control) = &mut self.control {
                    control.take_over();
                }
                self.upgrade.take_over();
            }
            self.wait();
            self.oom.refresh(sys::monotonic_ns());
            events.extend(self.reap());
            // Before the signals: the new master takes over before it sends us TERM.
            if let Some(pid) = self.upgrade.took_over(|| self.control.as_ref().is_some_and(ControlSocket::replaced)) {
                events.push_back(Event::Upgrade(UpgradeNews::TookOver { pid }));
            }
            events.extend(self.signals().into_iter().map(Event::Signal));
            if let Some(control) = &mut self.control {
                events.extend(control.turn(&std::mem::take(&mut self.control_revents), sys::monotonic_ns()));
            }
            events.extend(self.sample());
            events.push_back(Event::Tick);
        }
    }

    /// Tells the service manager about state changes: READY once every worker of the serving generation
    /// is ready, RELOADING during a reload, STOPPING on stop; and keeps its watchdog fed.
    fn notify(&mut self) {
        let Some(notifier) = &self.notifier else { return };
        let now = sys::monotonic_ns();
        let phase = self.state.phase();
        let told = match phase {
            Phase::Stopping | Phase::Quitting { .. } => Told::Stopping,
            _ if self.state.reloading() => Told::Reloading,
            _ if self.state.settled() => Told::Ready,
            _ => self.told,
        };
        if told != self.told {
            let workers = self.state.workers().len();
            let generation = self.state.generation();
            let message = match told {
                Told::Ready => format!("READY=1\nSTATUS=serving: {workers} workers, generation {generation}"),
                Told::Reloading => format!("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading", now / 1_000),
                Told::Stopping => "STOPPING=1\nSTATUS=stopping".to_string(),
                Told::Starting => String::new(),
            };
            notifier.notify(&message);
            self.told = told;
        }
        if let Some(every) = notifier.watchdog_interval()
            && now >= self.next_watchdog
        {
            notifier.notify("WATCHDOG=1");
            self.next_watchdog = now + every.as_nanos() as u64;
        }
    }

    /// Sleeps until a signal, a worker's ready notice, or the next deadline; meanwhile writes the master's
    /// log lines that wait for the output as soon as it takes them.
    fn wait(&mut self) {
        let now = sys::monotonic_ns();
        let mut sleep_ns = self.state.sleep_for(now).min(self.next_sample.saturating_sub(now).max(1_000_000));
        if self.notifier.as_ref().is_some_and(|n| n.watchdog_interval().is_some()) {
            sleep_ns = sleep_ns.min(self.next_watchdog.saturating_sub(sys::monotonic_ns()));
        }
        if let Some(deadline) = self.control.as_ref().and_then(ControlSocket::next_deadline) {
            sleep_ns = sleep_ns.min(deadline.saturating_sub(now).max(1_000_000));
        }
        let ms = sleep_ns.div_ceil(1_000_000).min(i32::MAX as u64) as i32;
        let (Some(signals), Some(ready)) = (&self.signals, &self.ready_read) else { return };
        let log = crate::logging::stalled_output();
        let mut fds =
            vec![PollFd::new(signals.fd().as_fd(), PollFlags::POLLIN), PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
        if let Some(log) = &log {
            fds.push(PollFd::new(log.as_fd(), PollFlags::POLLOUT));
        }
        let control_at = fds.len();
        if let Some(control) = &self.control {
            fds.extend(control.poll_fds());
        }
        match nix::poll::poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(error) => tracing::error!(error = %error, "poll failed"),
        }
        let revents = fds[control_at..].iter().map(|f| f.revents().unwrap_or(PollFlags::empty())).collect();
        drop(fds);
        self.control_revents = revents;
        sys::drain_fd(ready);
        if log.is_some() {
            crate::logging::retry_stalled();
        }
    }

    fn signals(&self) -> Vec<Sig> {
        let Some(signals) = &self.signals else { return Vec::new() };
        signals
            .pending()
            .into_iter()
            .filter_map(|s| match s {
                Signal::SIGTERM => Some(Sig::Term),
                Signal::SIGINT => Some(Sig::Int),
                Signal::SIGQUIT => Some(Sig::Quit),
                Signal::SIGHUP => Some(Sig::Hup),
                Signal::SIGTTIN => Some(Sig::Ttin),
                Signal::SIGTTOU => Some(Sig::Ttou),
                Signal::SIGUSR1 => Some(Sig::Usr1),
                Signal::SIGUSR2 => Some(Sig::Usr2),
                _ => None, // SIGCHLD only wakes the loop; reaping happens every turn.
            })
            .collect()
    }

    /// Once a second: writes every worker's memory into its slot (for the state's `max_worker_memory`, the
    /// app's metrics, `ctl status`), and watches its memory cgroup for OOM kills.
    fn sample(&mut self) -> Option<Event> {
        let now = sys::monotonic_ns();
        if now < self.next_sample {
            return None;
        }
        self.next_sample = now + sample::SAMPLE_EVERY;
        for (pid, slot) in self.state.worker_slots() {
            if let Some(bytes) = sample::memory_of(pid) {
                self.board.slot(slot).set_memory(bytes);
            }
            self.oom.watch_cgroup_of(pid);
        }
        Some(Event::Sampled)
    }

    /// Reaps every exited child without blocking.
    fn reap(&mut self) -> Vec<Event> {
        let oom = self.oom.recent(sys::monotonic_ns());
        let mut out = Vec::new();
        loop {
            let (pid, how) = match nix::sys::wait::waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), ExitHow::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), ExitHow::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            match self.upgrade.reaped(pid, how) {
                Some(reason) => out.push(Event::Upgrade(UpgradeNews::Failed { reason })),
                None => out.push(Event::Exited { pid, how, oom }),
            }
        }
        for event in &out {
            if let Event::Exited { pid, .. } = event
                && let Some(slot) = (0..self.board.len()).find(|&s| self.board.slot(s).view().pid == *pid)
            {
                self.board.slot(slot).release();
            }
        }
        out
    }

    /// Performs one action, adding what it reports to `results`; returns the exit code when the master
    /// must stop.
    fn perform(&mut self, action: Action, results: &mut Vec<Event>) -> Option<i32> {
        match action {
            Action::Spawn { slot, generation } => results.push(match self.spawn(slot, generation) {
                Ok(pid) => Event::Spawned { slot, pid },
                Err(error) => Event::SpawnFailed { slot, error: error.to_string() },
            }),
            Action::Kill { pid, signal } => {
                if let Err(error) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
                    && error != nix::errno::Errno::ESRCH
                {
                    tracing::error!(pid, signal = ?signal, error = %error, "could not signal a worker");
                }
            }
            Action::LoadConfig { generation } => {
                let loaded = (self.reloader)().and_then(|(settings, app)| {
                    let listeners = self.listeners_for(&settings)?;
                    let policy = Policy::of(&settings);
                    self.generations.insert(generation, Generation { settings: Arc::new(settings), app, listeners });
                    Ok(policy)
                });
                results.push(Event::ConfigLoaded { generation, result: loaded });
            }
            Action::DropGeneration(generation) => {
                self.generations.remove(&generation);
            }
            Action::ReopenLogs => results.push(Event::LogsReopened(match crate::logging::reopen() {
                Ok(true) => {
                    tracing::info!(workers = self.state.workers().len(), "log file reopened; telling the workers");
                    for (pid, _) in self.state.workers() {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGUSR1);
                    }
                    Ok("log file reopened, and the workers told to reopen theirs".to_string())
                }
                Ok(false) => {
                    tracing::info!("log reopen requested: logging to stdout, nothing to reopen");
                    Ok("logging to standard output: nothing to reopen".to_string())
                }
                Err(error) => {
                    tracing::error!(error = %error, "cannot reopen the log file; still writing to the old one");
                    Err(format!("cannot reopen the log file (still writing to the old one): {error}"))
                }
            })),
            Action::Upgrade => {
                let listeners = self.generations.get(&self.state.generation()).map_or(&[][..], |g| &g.listeners[..]);
                results.push(Event::Upgrade(match self.upgrade.start(listeners) {
                    Ok(pid) => UpgradeNews::Started { pid },
                    Err(reason) => UpgradeNews::Failed { reason },
                }));
            }
            Action::Reply { client, reply } => {
                let answer = match reply {
                    Reply::Status => serde_json::json!({ "ok": true, "status": self.status() }),
                    reply => control::render(&reply),
                };
                if let Some(control) = &mut self.control {
                    control.reply(client, answer, sys::monotonic_ns());
                }
            }
            Action::CloseListeners => {
                for generation in self.generations.values_mut() {
                    generation.listeners.clear();
                }
            }
            Action::Exit(code) => return Some(code),
        }
        None
    }

    /// Listeners for a reloaded configuration: the serving generation's sockets where the address is
    /// unchanged (binding it again would fail), new sockets for new addresses, opened before the switch.
    fn listeners_for(&self, settings: &Settings) -> Result<Listeners, String> {
        let current = &self.generations.get(&self.state.generation()).ok_or("no serving generation")?.listeners;
        if self.inherited {
            return current.iter().map(|(a, l)| l.try_clone().map(|l| (*a, l)).map_err(|e| e.to_string())).collect();
        }
        settings
            .bind
            .iter()
            .map(|&addr| {
                let listener = match current.iter().find(|(a, _)| *a == addr) {
                    Some((_, l)) => l.try_clone().map_err(|e| format!("cannot reuse the socket of {addr}: {e}"))?,
                    None => {
                        crate::listen::bind(addr, settings.backlog).map_err(|e| format!("cannot bind {addr}: {e}"))?
                    }
                };
                Ok((addr, listener))
            })
            .collect()
    }

    /// Forks a worker into `slot`. In the child this never returns.
    fn spawn(&mut self, slot: usize, generation: u64) -> std::io::Result<i32> {
        let spec = self.generations.get(&generation).ok_or_else(|| std::io::Error::other("unknown generation"))?;
        let (settings, app) = (spec.settings.clone(), spec.app.clone());
        let listeners = spec.listeners.iter().map(|(_, l)| l.try_clone()).collect::<std::io::Result<Vec<_>>>()?;
        let board_slot = self.board.slot(slot);
        board_slot.prepare(generation, sys::monotonic_ns());
        // Block every signal across fork: the child must not run the master's handlers before it has
        // replaced them, and it unblocks them once its own are registered.
        let mask = sys::block_all_signals()?;
        match sys::fork() {
            Err(error) => {
                let _ = sys::set_signal_mask(&mask);
                Err(error)
            }
            Ok(sys::Forked::Parent(pid)) => {
                let _ = sys::set_signal_mask(&mask);
                board_slot.set_pid(pid);
                Ok(pid)
            }
            Ok(sys::Forked::Child) => {
                if let Some(signals) = self.signals.take() {
                    signals.uninstall();
                }
                drop(self.ready_read.take());
                drop(self.control.take());
                // The child keeps only its own duplicates of its generation's listeners, so that closing
                // them on drain really stops it accepting.
                self.generations.clear();
                let start = WorkerStart {
                    board: self.board,
                    slot: board_slot,
                    generation,
                    settings,
                    listeners,
                    app,
                    master_pid: self.pid,
                    ready_fd: Some(self.ready_write.clone()),
                };
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker::run(start)))
                    .unwrap_or_else(|_| {
                        tracing::error!("worker panicked outside a request");
                        crate::exit::WORKER_PANICKED
                    });
                crate::logging::flush_before_exit();
                std::process::exit(code);
            }
        }
    }
}

pub(crate) fn write_pidfile(path: &PathBuf) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path)
}

/// Removes the pidfile if it still names this process (a newer master may own it now).
fn remove_pidfile(path: &PathBuf) {
    if std::fs::read_to_string(path).is_ok_and(|s| s.trim() == std::process::id().to_string()) {
        let _ = std::fs::remove_file(path);
    }
}
