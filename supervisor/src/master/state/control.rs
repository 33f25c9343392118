//! Commands from the control socket (`supervisor ctl`): what each one does to the master, and when a client
//! that waits for the outcome is answered.
//!
//! A command makes the same decision as its signal (reload as HUP, upgrade as USR2, stop as TERM or QUIT,
//! reopen-logs as USR1), plus two that no signal expresses: `scale N` sets the worker count, and `recycle`
//! replaces every serving worker, one at a time, each replacement ready before its predecessor drains. A
//! client may wait for the outcome: the state remembers it (a [`Waiter`]) until the outcome is known or the
//! client's deadline passes, and answers it exactly once with an [`Action::Reply`]. The executor reads the
//! commands off the socket, writes the replies and renders the status; it decides nothing.

use super::*;

/// A control client, as the executor numbers them.
pub type ClientId = u64;

/// The longest a client may wait for an outcome.
pub const MAX_WAIT: Nanos = 24 * 3600 * SEC;

/// What a control client asks for. `wait`: answer once the outcome is known, waiting at most this long;
/// `None`: answer at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// The server's state (answered with [`Reply::Status`], which the executor renders).
    Status,
    /// Reload, as HUP; the outcome is the new generation serving, or the reload aborted.
    Reload {
        /// How long to wait for the outcome.
        wait: Option<Nanos>,
    },
    /// Binary upgrade, as USR2; the outcome is the new master taking over, or failing. Not waiting, the
    /// answer comes once the new master runs.
    Upgrade {
        /// How long to wait for the outcome.
        wait: Option<Nanos>,
    },
    /// Keep this many workers (TTIN and TTOU add and remove one).
    Scale {
        /// The new count.
        workers: usize,
    },
    /// Replace every serving worker of the current generation, one at a time, each replacement ready before
    /// its predecessor drains; the outcome is all of them replaced.
    Recycle {
        /// How long to wait for the outcome.
        wait: Option<Nanos>,
    },
    /// Stop: gracefully as TERM, or fast as QUIT; the outcome is the master's exit.
    Stop {
        /// A fast stop.
        fast: bool,
        /// How long to wait for the outcome.
        wait: Option<Nanos>,
    },
    /// Reopen the log file, as USR1 (answered once done).
    ReopenLogs,
}

/// The answer to a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// It was done, or started when the client does not wait: what happened.
    Done(String),
    /// It was refused, failed, or did not finish in time: why.
    Failed(String),
    /// Answer with the server's status (the executor renders it).
    Status,
    /// A binary upgrade completed: the new master took over.
    Upgraded {
        /// The new master's pid.
        new_master: i32,
    },
}

/// What became of a binary upgrade, as the executor saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpgradeNews {
    /// The new master runs (just started, or started by an earlier request).
    Started {
        /// Its pid.
        pid: i32,
    },
    /// It could not be started, or it exited before it took over.
    Failed {
        /// Why.
        reason: String,
    },
    /// It took over (the pidfile and the control socket are its own now); its TERM follows.
    TookOver {
        /// Its pid.
        pid: i32,
    },
}

/// Where a binary upgrade is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradeStage {
    /// The new master is being started.
    Starting,
    /// The new master boots its workers.
    Booting {
        /// Its pid.
        pid: i32,
    },
    /// The new master took over; this one stops.
    TookOver {
        /// Its pid.
        pid: i32,
    },
}

/// A client waiting for an outcome.
#[derive(Clone, Debug)]
pub(super) struct Waiter {
    pub client: ClientId,
    /// When it is answered that the outcome is not known yet.
    pub deadline: Nanos,
    pub awaited: Awaited,
}

/// The outcome a client waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Awaited {
    /// The reload that runs as this generation: complete, or aborted (also before it started).
    Reload { generation: u64 },
    /// The new master of a binary upgrade running, or failing to start.
    UpgradeStarted,
    /// The new master taking over, or failing.
    Upgrade,
    /// These workers (by spawn serial) all replaced (or gone).
    Recycle { serials: Vec<u64> },
    /// The master's exit.
    Exit,
    /// The log file reopened.
    Reopen,
}

/// A reload in progress, as `ctl status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReloadProgress {
    /// The generation it boots.
    pub generation: u64,
    /// The configuration is being read (no worker forked yet).
    pub loading: bool,
    /// Its workers ready so far.
    pub ready: usize,
    /// Its workers wanted.
    pub wanted: usize,
    /// Another reload follows this one (a HUP or a command came during it).
    pub another_queued: bool,
}

/// A live worker, as `ctl status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerStatus {
    /// Its pid.
    pub pid: i32,
    /// Its scoreboard slot.
    pub slot: usize,
    /// Its generation.
    pub generation: u64,
    /// Where it is in its life.
    pub life: Life,
}

impl State {
    /// Decides what a control command does; answers at once, or remembers the client until the outcome.
    pub(super) fn on_control(&mut self, client: ClientId, command: Command, now: Nanos, actions: &mut Vec<Action>) {
        let stopping = matches!(self.phase, Phase::Stopping | Phase::Quitting { .. });
        let until = |wait: Nanos| now.saturating_add(wait.min(MAX_WAIT));
        let reply = match command {
            Command::Status => Some(Reply::Status),
            Command::Stop { fast, wait } => {
                self.on_signal(if fast { Sig::Quit } else { Sig::Term }, now, actions);
                match wait {
                    Some(wait) => self.wait_for(client, until(wait), Awaited::Exit),
                    None if stopping && !fast => Some(Reply::Done("already stopping".into())),
                    None if fast => Some(Reply::Done("fast stop started".into())),
                    None => Some(Reply::Done("graceful stop started".into())),
                }
            }
            _ if stopping => Some(Reply::Failed("the server is stopping".into())),
            Command::Reload { wait } => {
                // The reload this command asks for runs as the next generation number: now, or once the one
                // in progress (or startup) ends.
                let generation = self.next_generation;
                let queued = self.phase == Phase::Starting || self.reload.is_some();
                self.on_signal(Sig::Hup, now, actions);
                match wait {
                    Some(wait) => self.wait_for(client, until(wait), Awaited::Reload { generation }),
                    None if queued => Some(Reply::Done(format!(
                        "reload queued: it runs as generation {generation} once the current reload or startup ends"
                    ))),
                    None => Some(Reply::Done(format!("reload started: generation {generation}"))),
                }
            }
            Command::Upgrade { wait } => {
                self.on_signal(Sig::Usr2, now, actions);
                match (self.phase, wait) {
                    (Phase::Running, Some(wait)) => self.wait_for(client, until(wait), Awaited::Upgrade),
                    (Phase::Running, None) => self.wait_for(client, until(MAX_WAIT), Awaited::UpgradeStarted),
                    _ => Some(Reply::Failed("binary upgrade requested during startup: refused".into())),
                }
            }
            Command::Scale { workers } => {
                let max = crate::Settings::MAX_WORKERS.min(self.slots / 2).max(1);
                if workers == 0 || workers > max {
                    Some(Reply::Failed(format!("the worker count must be between 1 and {max}, got {workers}")))
                } else {
                    let previous = std::mem::replace(&mut self.desired, workers);
                    tracing::info!(workers, previous, "worker count set");
                    Some(Reply::Done(format!("worker count set to {workers} (was {previous})")))
                }
            }
            Command::Recycle { .. } if self.phase == Phase::Starting => {
                Some(Reply::Failed("the server is starting: no worker to recycle yet".into()))
            }
            Command::Recycle { wait } => {
                let current = self.current;
                let mut serials = Vec::new();
                for w in self.workers.iter_mut().filter(|w| w.generation == current && w.ready()) {
                    w.recycle(Recycle::Operator);
                    serials.push(w.serial);
                }
                let n = serials.len();
                tracing::info!(workers = n, "recycle requested: replacing the serving workers one at a time");
                match wait {
                    _ if n == 0 => Some(Reply::Done("no serving worker to recycle".into())),
                    Some(wait) => self.wait_for(client, until(wait), Awaited::Recycle { serials }),
                    None => Some(Reply::Done(format!("recycling {n} workers, one at a time"))),
                }
            }
            Command::ReopenLogs => {
                self.on_signal(Sig::Usr1, now, actions);
                self.wait_for(client, until(MAX_WAIT), Awaited::Reopen)
            }
        };
        if let Some(reply) = reply {
            actions.push(Action::Reply { client, reply });
        }
    }

    fn wait_for(&mut self, client: ClientId, deadline: Nanos, awaited: Awaited) -> Option<Reply> {
        self.waiters.push(Waiter { client, deadline, awaited });
        None
    }

    /// A binary upgrade moved on.
    pub(super) fn on_upgrade(&mut self, news: UpgradeNews, actions: &mut Vec<Action>) {
        match news {
            UpgradeNews::Started { pid } => {
                self.upgrade = Some(UpgradeStage::Booting { pid });
                self.answer(actions, |a| {
                    (*a == Awaited::UpgradeStarted)
                        .then(|| Reply::Done(format!("binary upgrade started: new master {pid}")))
                });
            }
            UpgradeNews::Failed { reason } => {
                self.upgrade = None;
                self.answer(actions, |a| {
                    matches!(a, Awaited::UpgradeStarted | Awaited::Upgrade)
                        .then(|| Reply::Failed(format!("binary upgrade failed: {reason}")))
                });
            }
            UpgradeNews::TookOver { pid } => {
                tracing::info!(new_master = pid, "binary upgrade: the new master took over");
                self.upgrade = Some(UpgradeStage::TookOver { pid });
                self.answer(actions, |a| {
                    matches!(a, Awaited::UpgradeStarted | Awaited::Upgrade)
                        .then_some(Reply::Upgraded { new_master: pid })
                });
            }
        }
    }

    /// The log file was reopened (`Ok`: what was done), or could not be.
    pub(super) fn on_reopened(&mut self, result: Result<String, String>, actions: &mut Vec<Action>) {
        self.answer(actions, |a| {
            (*a == Awaited::Reopen).then(|| match &result {
                Ok(done) => Reply::Done(done.clone()),
                Err(error) => Reply::Failed(error.clone()),
            })
        });
    }

    /// A client hung up: nobody waits for its outcome any more.
    pub(super) fn client_gone(&mut self, client: ClientId) {
        self.waiters.retain(|w| w.client != client);
    }

    /// Answers every waiter for which `pick` has a reply, and forgets it.
    pub(super) fn answer(&mut self, actions: &mut Vec<Action>, mut pick: impl FnMut(&Awaited) -> Option<Reply>) {
        self.waiters.retain(|w| match pick(&w.awaited) {
            Some(reply) => {
                actions.push(Action::Reply { client: w.client, reply });
                false
            }
            None => true,
        });
    }

    /// Answers the clients whose recycle is done, and those whose deadline has come.
    pub(super) fn check_waiters(&mut self, now: Nanos, actions: &mut Vec<Action>) {
        let workers = &self.workers;
        let replaced = |serials: &[u64]| !workers.iter().any(|w| w.active() && serials.contains(&w.serial));
        let done: Vec<usize> = (self.waiters.iter().enumerate())
            .filter(|(_, w)| matches!(&w.awaited, Awaited::Recycle { serials } if replaced(serials)))
            .map(|(i, _)| i)
            .collect();
        for i in done.into_iter().rev() {
            let w = self.waiters.remove(i);
            let Awaited::Recycle { serials } = &w.awaited else { unreachable!("a recycle") };
            let reply = Reply::Done(format!("recycled {} workers", serials.len()));
            actions.push(Action::Reply { client: w.client, reply });
        }
        let late: Vec<Waiter> = self.waiters.iter().filter(|w| now >= w.deadline).cloned().collect();
        if late.is_empty() {
            return;
        }
        self.waiters.retain(|w| now < w.deadline);
        for w in late {
            let reply = Reply::Failed(format!("timed out: {}", self.progress(&w.awaited)));
            actions.push(Action::Reply { client: w.client, reply });
        }
    }

    /// Where an awaited outcome stands, for a client whose deadline came first.
    fn progress(&self, awaited: &Awaited) -> String {
        match awaited {
            Awaited::Reload { generation } => match self.reload_progress() {
                Some(r) if r.generation == *generation && r.loading => {
                    format!("the reload of generation {generation} is reading the configuration")
                }
                Some(r) if r.generation == *generation => format!(
                    "the reload of generation {generation} is still booting: {} of {} workers ready",
                    r.ready, r.wanted
                ),
                _ => format!("the reload of generation {generation} has not started: another one is in progress"),
            },
            Awaited::Upgrade | Awaited::UpgradeStarted => match self.upgrade {
                Some(UpgradeStage::Booting { pid }) => format!("the new master {pid} has not taken over yet"),
                _ => "the binary upgrade has not started".to_string(),
            },
            Awaited::Recycle { serials } => {
                let left = self.workers.iter().filter(|w| w.active() && serials.contains(&w.serial)).count();
                format!("{left} of {} workers still wait for their replacement", serials.len())
            }
            Awaited::Exit => format!("still stopping: {} workers left", self.workers.len()),
            Awaited::Reopen => "the log file was not reopened".to_string(),
        }
    }

    /// A stop began: nothing but the exit will happen now.
    pub(super) fn fail_waiters_on_stop(&mut self, actions: &mut Vec<Action>) {
        self.answer(actions, |a| (*a != Awaited::Exit).then(|| Reply::Failed("the server is stopping".into())));
    }

    /// Exits with `code`, answering every client still waiting.
    pub(super) fn exit(&mut self, code: i32, actions: &mut Vec<Action>) {
        self.answer(actions, |a| {
            Some(match a {
                Awaited::Exit => Reply::Done(format!("stopped (exit code {code})")),
                _ => Reply::Failed(format!("the master exited (exit code {code})")),
            })
        });
        actions.push(Action::Exit(code));
    }

    /// The worker count the current generation is kept at.
    pub fn desired(&self) -> usize {
        self.desired
    }

    /// The reload in progress, if any.
    pub fn reload_progress(&self) -> Option<ReloadProgress> {
        let reload = self.reload?;
        let generation = reload.generation;
        Some(ReloadProgress {
            generation,
            loading: reload.deadline.is_none(),
            ready: self.workers.iter().filter(|w| w.generation == generation && w.ready()).count(),
            wanted: self.policies.get(&generation).map_or(0, |p| p.workers),
            another_queued: self.reload_again,
        })
    }

    /// Whether a reload will run once startup ends (a HUP or a command came during it).
    pub fn reload_queued(&self) -> bool {
        self.reload_again
    }

    /// The binary upgrade in progress, if any.
    pub fn upgrade_stage(&self) -> Option<UpgradeStage> {
        self.upgrade
    }

    /// Every live worker, in spawn order.
    pub fn worker_status(&self) -> Vec<WorkerStatus> {
        (self.workers.iter())
            .map(|w| WorkerStatus { pid: w.pid, slot: w.slot, generation: w.generation, life: w.life })
            .collect()
    }
}
