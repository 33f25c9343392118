//! A harness that drives the state machine the way the executor does, with a scoreboard written by hand,
//! made-up pids, and forks and configuration reloads that succeed or fail on demand.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use nix::sys::signal::Signal;

use super::*;
use crate::scoreboard::{SlotState, SlotView};

/// A scoreboard the tests write by hand: slots, and the boot errors workers left in them.
#[derive(Default)]
pub struct FakeBoard(pub RefCell<HashMap<usize, SlotView>>, pub RefCell<HashMap<usize, String>>);

impl FakeBoard {
    /// Writes a slot's pid, state and heartbeat, keeping what else it holds.
    pub fn set(&self, slot: usize, pid: i32, state: SlotState, heartbeat_ns: Nanos) {
        let mut slots = self.0.borrow_mut();
        let view = slots.entry(slot).or_insert_with(empty);
        (view.pid, view.state, view.heartbeat_ns) = (pid, state, heartbeat_ns);
    }

    /// A slot prepared for a new worker, as the executor does before it forks.
    pub fn prepare(&self, slot: usize, pid: i32, now: Nanos) {
        self.0.borrow_mut().insert(slot, SlotView { pid, state: SlotState::Booting, heartbeat_ns: now, ..empty() });
        self.1.borrow_mut().remove(&slot);
    }

    /// A worker that cannot boot leaves its error.
    pub fn set_boot_error(&self, slot: usize, error: &str) {
        self.1.borrow_mut().insert(slot, error.to_string());
    }

    /// A worker's memory, as the executor samples it.
    pub fn set_memory(&self, slot: usize, bytes: u64) {
        self.0.borrow_mut().entry(slot).or_insert_with(empty).memory_bytes = bytes;
    }
}

fn empty() -> SlotView {
    SlotView {
        pid: 0,
        generation: 0,
        state: SlotState::Booting,
        heartbeat_ns: 0,
        requests: 0,
        in_flight: 0,
        requests_in_flight: vec![],
        memory_bytes: 0,
        started_ns: 0,
        connections: 0,
    }
}

impl Board for FakeBoard {
    fn view(&self, slot: usize) -> SlotView {
        self.0.borrow().get(&slot).cloned().unwrap_or_else(empty)
    }

    fn boot_error(&self, slot: usize) -> Option<String> {
        self.1.borrow().get(&slot).cloned()
    }
}

pub const POLICY: Policy = Policy {
    workers: 2,
    timeout: 2 * SEC,
    heartbeat: SEC / 2,
    graceful_timeout: 3 * SEC,
    boot_timeout: 5 * SEC,
    max_memory: 0,
    max_lifetime: 0,
    lifetime_jitter: 0,
};

/// Drives a state machine, performing spawns with made-up pids.
pub struct Harness {
    pub state: State,
    pub board: FakeBoard,
    pub next_pid: i32,
    pub now: Nanos,
    /// Whether forks fail (as at a pids cgroup limit).
    pub forks_fail: bool,
    /// How many of the next forks fail, whatever `forks_fail` says.
    pub fail_next_forks: usize,
    /// What the next configuration reload yields.
    pub config: Result<Policy, String>,
    /// Signals sent to each pid, in order.
    pub signals: BTreeMap<i32, Vec<Signal>>,
    /// Slot of each pid ever spawned.
    pub slots: BTreeMap<i32, usize>,
    /// The exit code, once the master exits.
    pub exit: Option<i32>,
    /// Pids that exited.
    pub exited: std::collections::BTreeSet<i32>,
    /// A spawn was asked for after a failed one in the same turn (a busy loop).
    pub spawn_after_failure: bool,
    /// An event to deliver between the next spawn and its result (a race the executor avoids; the state
    /// must not depend on it).
    pub interject: Option<Event>,
    /// Whether the next binary upgrade's new master cannot be started.
    pub upgrade_fails: bool,
    /// Every reply to a control client, in order.
    pub replies: Vec<(ClientId, Reply)>,
}

impl Harness {
    pub fn new(policy: Policy) -> Harness {
        Harness {
            state: State::new(policy, crate::scoreboard::SLOTS),
            board: FakeBoard::default(),
            next_pid: 100,
            now: SEC,
            forks_fail: false,
            fail_next_forks: 0,
            config: Ok(POLICY),
            signals: BTreeMap::new(),
            slots: BTreeMap::new(),
            exit: None,
            exited: Default::default(),
            spawn_after_failure: false,
            interject: None,
            upgrade_fails: false,
            replies: Vec::new(),
        }
    }

    /// Startup done: every initial worker ready.
    pub fn running() -> Harness {
        let mut h = Harness::new(POLICY);
        h.handle(Event::Tick);
        h.all_ready();
        assert_eq!(h.state.phase(), Phase::Running);
        h
    }

    /// Handles an event as the executor does: the results of spawns and configuration loads are handled
    /// right after the actions that asked for them. Returns every action, spawns included.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut queue = std::collections::VecDeque::from([event]);
        let mut out = Vec::new();
        let mut failed = false;
        let mut turns = 0;
        while let Some(event) = queue.pop_front() {
            turns += 1;
            assert!(turns < 1_000, "the results of one event keep asking for more: a busy loop");
            failed |= matches!(event, Event::SpawnFailed { .. });
            let mut results = Vec::new();
            for action in self.state.handle(event, self.now, &self.board) {
                self.spawn_after_failure |= failed && matches!(action, Action::Spawn { .. });
                match &action {
                    Action::Spawn { slot, .. } if self.forks_fail || self.fail_next_forks > 0 => {
                        self.fail_next_forks = self.fail_next_forks.saturating_sub(1);
                        results.push(Event::SpawnFailed { slot: *slot, error: "EAGAIN".into() })
                    }
                    Action::Spawn { slot, .. } => {
                        results.extend(self.interject.take());
                        self.next_pid += 1;
                        self.board.prepare(*slot, self.next_pid, self.now);
                        self.slots.insert(self.next_pid, *slot);
                        results.push(Event::Spawned { slot: *slot, pid: self.next_pid });
                    }
                    Action::LoadConfig { generation } => {
                        results.push(Event::ConfigLoaded { generation: *generation, result: self.config.clone() })
                    }
                    Action::Kill { pid, signal } => self.signals.entry(*pid).or_default().push(*signal),
                    Action::Exit(code) => self.exit = Some(*code),
                    Action::Upgrade if self.upgrade_fails => {
                        results.push(Event::Upgrade(UpgradeNews::Failed { reason: "cannot start".into() }))
                    }
                    Action::Upgrade => results.push(Event::Upgrade(UpgradeNews::Started { pid: NEW_MASTER })),
                    Action::ReopenLogs => results.push(Event::LogsReopened(Ok("log file reopened".into()))),
                    Action::Reply { client, reply } => self.replies.push((*client, reply.clone())),
                    _ => {}
                }
                out.push(action);
            }
            for event in results.into_iter().rev() {
                queue.push_front(event);
            }
        }
        out
    }

    pub fn advance(&mut self, by: Nanos) -> Vec<Action> {
        self.now += by;
        self.handle(Event::Tick)
    }

    pub fn pids(&self) -> Vec<i32> {
        self.state.workers().into_iter().map(|(pid, _)| pid).collect()
    }

    pub fn slot_of(&self, pid: i32) -> usize {
        self.slots[&pid]
    }

    pub fn life(&self, pid: i32) -> Life {
        self.state.workers.iter().find(|w| w.pid == pid).expect("tracked").life
    }

    /// Pids of workers of the serving generation that accept connections.
    pub fn serving(&self) -> Vec<i32> {
        let current = self.state.generation();
        self.state.workers.iter().filter(|w| w.generation == current && w.ready()).map(|w| w.pid).collect()
    }

    /// Writes a worker's slot state, keeping its heartbeat.
    pub fn set_state(&mut self, pid: i32, state: SlotState) {
        let slot = self.slot_of(pid);
        let beat = self.board.view(slot).heartbeat_ns;
        self.board.set(slot, pid, state, beat);
    }

    /// Every booting worker reports ready with a fresh heartbeat.
    pub fn all_ready(&mut self) {
        for pid in self.pids() {
            if self.life(pid) == Life::Booting {
                let slot = self.slot_of(pid);
                self.board.set(slot, pid, SlotState::Ready, self.now);
            }
        }
        self.handle(Event::Tick);
    }

    /// Every live worker stamps its heartbeat now.
    pub fn beat(&mut self) {
        for pid in self.pids() {
            let slot = self.slot_of(pid);
            let state = self.board.view(slot).state;
            self.board.set(slot, pid, state, self.now);
        }
    }

    /// Lets `total` pass in steps of `step`, every live worker stamping its heartbeat before each step.
    /// Returns every action.
    pub fn run_for(&mut self, total: Nanos, step: Nanos) -> Vec<Action> {
        let mut actions = Vec::new();
        let end = self.now + total;
        while self.now < end {
            self.beat();
            actions.extend(self.advance(step.min(end - self.now)));
        }
        actions
    }

    /// Reaps every tracked worker that was sent SIGKILL.
    pub fn reap_killed(&mut self) {
        for pid in self.pids() {
            if self.signals.get(&pid).is_some_and(|s| s.contains(&Signal::SIGKILL)) {
                self.exit(pid, SIGKILL);
            }
        }
    }

    pub fn exit(&mut self, pid: i32, how: ExitHow) -> Vec<Action> {
        self.exited.insert(pid);
        self.handle(Event::Exited { pid, how, oom: false })
    }
}

pub fn kills(actions: &[Action]) -> Vec<(i32, Signal)> {
    actions
        .iter()
        .filter_map(|a| if let Action::Kill { pid, signal } = a { Some((*pid, *signal)) } else { None })
        .collect()
}

pub fn spawns(actions: &[Action]) -> usize {
    actions.iter().filter(|a| matches!(a, Action::Spawn { .. })).count()
}

pub const SIGKILL: ExitHow = ExitHow::Signal(Signal::SIGKILL as i32);

/// The pid a binary upgrade's new master gets.
pub const NEW_MASTER: i32 = 99;

impl Harness {
    /// Sends a control command from `client` and returns the replies it caused (to any client).
    pub fn control(&mut self, client: ClientId, command: Command) -> Vec<(ClientId, Reply)> {
        let before = self.replies.len();
        self.handle(Event::Control { client, command });
        self.replies[before..].to_vec()
    }

    /// The reply `client` got, if any.
    pub fn reply_to(&self, client: ClientId) -> Option<&Reply> {
        self.replies.iter().find(|(c, _)| *c == client).map(|(_, r)| r)
    }
}
