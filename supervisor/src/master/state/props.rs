//! Property tests: random sequences of events against the invariants written in ARCHITECTURE.md.
//!
//! A small simulated world plays the processes: workers that boot or not, hang, crash with any status,
//! write garbage into their slot, ask to be recycled, drain on SIGTERM (or not), die on SIGKILL; forks that
//! fail for a while; configuration reloads that succeed or are rejected; operator signals and control commands
//! at any moment, from clients that wait for the outcome or hang up; new masters of binary upgrades that take
//! over or fail.
//! Time passes the way the executor lets it: in steps no longer than [`State::sleep_for`]. After every step
//! the safety invariants are checked; after the sequence, a settle phase (forks succeed, workers boot and
//! obey) checks that the master gets back to its target, or stops within its deadline, and that every
//! client got its answer.

use std::collections::{BTreeMap, BTreeSet};

use nix::sys::signal::Signal;
use proptest::prelude::*;

use super::testing::*;
use super::*;
use crate::scoreboard::SlotState;

#[derive(Clone, Debug)]
enum Op {
    /// A signal reaches the master.
    Signal(Sig),
    /// Time passes.
    Advance(Nanos),
    /// The executor wakes up this much later than the state asked: poll rounds up to the millisecond, a busy
    /// machine schedules the master late, a stopped master is continued.
    Late(Nanos),
    /// The k-th booting worker is ready.
    Ready(usize),
    /// The k-th serving worker reaches max_requests.
    Recycle(usize),
    /// The executor samples memory: the k-th live worker's is over the limit (true) or not.
    Memory(usize, bool),
    /// The k-th live worker exits; the kernel counted an OOM kill just before (true) or not.
    Exit(usize, ExitHow, bool),
    /// The k-th live worker is killed from outside, and a signal reaches the master between the fork of its
    /// replacement and the fork's result.
    Race(usize, Sig),
    /// The k-th live worker that was told to drain finishes.
    Drain(usize),
    /// The k-th live worker hangs: no heartbeat, no reaction to signals but SIGKILL.
    Hang(usize),
    /// The k-th live worker writes this heartbeat word.
    Stamp(usize, u64),
    /// Forks succeed (true) or fail.
    Forks(bool),
    /// What the next reload reads: a policy, or a rejected file.
    Config(Option<Policy>),
    /// A control client sends a command.
    Control(Command),
    /// The k-th client waiting for an outcome hangs up.
    HangUp(usize),
    /// The new master of a binary upgrade in progress takes over (true; its TERM follows) or exits.
    NewMaster(bool),
}

/// A memory limit the [`Op::Memory`] samples cross.
const LIMIT: u64 = 64 << 20;

fn policy() -> impl Strategy<Value = Policy> {
    let lifetime = prop_oneof![Just((0, 0)), (5u64..=20, 0u64..=5).prop_map(|(l, j)| (l * SEC, j * SEC))];
    (1usize..=3, 2u64..=4, 0u64..=4, 1u64..=6, any::<bool>(), lifetime).prop_map(
        |(workers, timeout, graceful, boot, memory, (max_lifetime, lifetime_jitter))| Policy {
            workers,
            timeout: timeout * SEC,
            heartbeat: (timeout * SEC / 4).min(SEC),
            graceful_timeout: graceful * SEC,
            boot_timeout: boot * SEC,
            max_memory: if memory { LIMIT } else { 0 },
            max_lifetime,
            lifetime_jitter,
        },
    )
}

fn command() -> impl Strategy<Value = Command> {
    let wait = || proptest::option::weighted(0.7, (1u64..60).prop_map(|s| s * SEC));
    prop_oneof![
        2 => Just(Command::Status),
        6 => wait().prop_map(|wait| Command::Reload { wait }),
        2 => wait().prop_map(|wait| Command::Upgrade { wait }),
        4 => (0usize..6).prop_map(|workers| Command::Scale { workers }),
        4 => wait().prop_map(|wait| Command::Recycle { wait }),
        1 => (any::<bool>(), wait()).prop_map(|(fast, wait)| Command::Stop { fast, wait }),
        1 => Just(Command::ReopenLogs),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let how = prop_oneof![
        Just(ExitHow::Code(0)),
        Just(ExitHow::Code(1)),
        Just(ExitHow::Code(3)),
        Just(ExitHow::Code(70)),
        Just(ExitHow::Signal(Signal::SIGKILL as i32)),
        Just(ExitHow::Signal(Signal::SIGSEGV as i32)),
        Just(ExitHow::Signal(Signal::SIGTERM as i32)),
    ];
    let sig = prop_oneof![
        8 => Just(Sig::Hup),
        4 => Just(Sig::Ttin),
        4 => Just(Sig::Ttou),
        1 => Just(Sig::Term),
        1 => Just(Sig::Int),
        1 => Just(Sig::Quit),
        1 => Just(Sig::Usr1),
        1 => Just(Sig::Usr2),
    ];
    let word = prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()];
    prop_oneof![
        6 => sig.clone().prop_map(Op::Signal),
        20 => (1u64..3_000).prop_map(|ms| Op::Advance(ms * MS)),
        4 => prop_oneof![1u64..2 * MS, 1u64..6 * SEC].prop_map(Op::Late),
        12 => (0usize..8).prop_map(Op::Ready),
        3 => (0usize..8).prop_map(Op::Recycle),
        3 => (0usize..8, any::<bool>()).prop_map(|(k, over)| Op::Memory(k, over)),
        8 => (0usize..8, how, prop_oneof![4 => Just(false), 1 => Just(true)]).prop_map(|(k, how, oom)| Op::Exit(k, how, oom)),
        2 => (0usize..8, sig).prop_map(|(k, sig)| Op::Race(k, sig)),
        4 => (0usize..8).prop_map(Op::Drain),
        2 => (0usize..8).prop_map(Op::Hang),
        1 => (0usize..8, word).prop_map(|(k, w)| Op::Stamp(k, w)),
        4 => any::<bool>().prop_map(Op::Forks),
        2 => proptest::option::weighted(0.8, policy()).prop_map(Op::Config),
        6 => command().prop_map(Op::Control),
        1 => (0usize..8).prop_map(Op::HangUp),
        1 => any::<bool>().prop_map(Op::NewMaster),
    ]
}

/// A command as it was sent: what the master looked like then.
struct Asked {
    command: Command,
    /// The generation the next reload runs as.
    next_generation: u64,
    /// The serving workers of that generation.
    serving: Vec<i32>,
}

/// The simulated processes around the master.
struct World {
    h: Harness,
    hung: BTreeSet<i32>,
    /// The latest time the master may exit, once a stop or quit began.
    exit_by: Option<Nanos>,
    /// Every command sent, by client.
    asked: BTreeMap<ClientId, Asked>,
    answered: BTreeSet<ClientId>,
    /// Clients that hung up.
    gone: BTreeSet<ClientId>,
    /// The new master that took over, if one did.
    took_over: Option<i32>,
}

impl World {
    /// The master's first turn at `start` (the monotonic clock counts from the machine's boot), in which the
    /// first `failed_forks` forks fail.
    fn new(failed_forks: usize, start: Nanos) -> World {
        let mut w = World {
            h: Harness::new(POLICY),
            hung: BTreeSet::new(),
            exit_by: None,
            asked: BTreeMap::new(),
            answered: BTreeSet::new(),
            gone: BTreeSet::new(),
            took_over: None,
        };
        w.h.fail_next_forks = failed_forks;
        w.h.now = start;
        w.handle(Event::Tick);
        w
    }

    /// Spawned and not yet exited.
    fn alive(&self) -> Vec<i32> {
        self.h.slots.keys().copied().filter(|p| !self.h.exited.contains(p)).collect()
    }

    fn nth(&self, k: usize, pred: impl Fn(&World, i32) -> bool) -> Option<i32> {
        let candidates: Vec<i32> = self.alive().into_iter().filter(|p| pred(self, *p)).collect();
        (!candidates.is_empty()).then(|| candidates[k % candidates.len()])
    }

    fn slot_state(&self, pid: i32) -> SlotState {
        self.h.board.view(self.h.slot_of(pid)).state
    }

    fn told(&self, pid: i32, signal: Signal) -> bool {
        self.h.signals.get(&pid).is_some_and(|s| s.contains(&signal))
    }

    /// Handles an event and checks the safety invariants around it.
    fn handle(&mut self, event: Event) {
        if self.h.exit.is_some() {
            return;
        }
        let serving_before = self.h.serving().len();
        let actions = self.h.handle(event);
        self.check_retirements(&actions, serving_before);
        self.check_replies(&actions);
        self.check();
    }

    /// Every client is answered once, unless it hung up, and only with what happened: a reload reported
    /// done switched generations, a recycle reported done left none of the workers it was asked to replace
    /// serving, a stop reported done exited, an upgrade reported done was taken over. When the master exits,
    /// nobody is left waiting.
    fn check_replies(&mut self, actions: &[Action]) {
        let s = &self.h.state;
        for action in actions {
            let Action::Reply { client, reply } = action else { continue };
            let asked = self.asked.get(client).expect("a reply to a client that asked nothing");
            assert!(!self.gone.contains(client), "a reply to client {client}, which hung up");
            assert!(self.answered.insert(*client), "client {client} answered twice");
            match (&asked.command, reply) {
                (Command::Status, reply) => assert_eq!(reply, &Reply::Status),
                (_, Reply::Status) => panic!("a status for {:?}", asked.command),
                // The reload asked for runs as the next generation: done once it serves, and only then.
                (Command::Reload { wait: Some(_) }, Reply::Done(_)) => {
                    assert_eq!(s.current, asked.next_generation, "a reload reported done, but not the one asked")
                }
                (Command::Reload { wait: Some(_) }, Reply::Failed(_)) => {
                    assert!(s.current < asked.next_generation, "a reload reported failed, but it completed")
                }
                (Command::Recycle { wait: Some(_) }, reply) => {
                    let serving = |pid: &i32| s.workers.iter().any(|w| w.pid == *pid && w.active());
                    match reply {
                        Reply::Done(what) if what.starts_with("recycled") => {
                            assert!(!asked.serving.iter().any(serving), "recycle reported done, a worker still serves")
                        }
                        Reply::Failed(why) if why.starts_with("timed out") => {
                            assert!(asked.serving.iter().any(serving), "recycle timed out, but it was done")
                        }
                        _ => {}
                    }
                }
                (Command::Stop { wait: Some(_), .. }, Reply::Done(_)) => {
                    assert!(self.h.exit.is_some(), "a stop reported done before the exit")
                }
                (_, Reply::Upgraded { new_master }) => assert_eq!(Some(*new_master), self.took_over),
                _ => {}
            }
        }
        if self.h.exit.is_some() {
            for client in self.asked.keys() {
                assert!(self.answered.contains(client) || self.gone.contains(client), "client {client} left waiting");
            }
        }
    }

    /// A retirement for max_requests never lowers the serving count; one for a reload happens only once
    /// the new generation is complete.
    fn check_retirements(&self, actions: &[Action], serving_before: usize) {
        for (pid, signal) in kills(actions) {
            let Some(w) = self.h.state.workers.iter().find(|w| w.pid == pid) else { continue };
            match (signal, w.life) {
                (Signal::SIGTERM, Life::Retiring { reason: RetireReason::Recycle(_), .. }) => {
                    assert!(self.h.serving().len() >= serving_before, "recycling lowered the serving count");
                }
                (Signal::SIGTERM, Life::Retiring { reason: RetireReason::Reload, .. }) => {
                    assert!(self.h.serving().len() >= self.h.state.desired, "old generation retired too early");
                }
                _ => {}
            }
        }
    }

    /// The safety invariants, after every step.
    fn check(&self) {
        let s = &self.h.state;
        if self.h.exit.is_some() {
            return;
        }
        // No busy loop: nothing is left due at this instant, and a failed spawn is not retried in the same
        // turn.
        assert!(s.sleep_for(self.h.now) > 0, "a deadline is due now but nothing was done at {}: {s:#?}", self.h.now);
        assert!(!self.h.spawn_after_failure, "a failed spawn was retried in the same turn");
        // Every spawn is reported before the next event.
        assert!(s.pending.is_empty());
        // No pid or slot tracked twice; every live process is tracked, nothing dead is.
        let pids: BTreeSet<i32> = s.workers.iter().map(|w| w.pid).collect();
        let slots: BTreeSet<usize> = s.workers.iter().map(|w| w.slot).collect();
        assert_eq!(pids.len(), s.workers.len(), "a pid tracked twice");
        assert_eq!(slots.len(), s.workers.len(), "a slot used twice");
        assert_eq!(pids, self.alive().into_iter().collect(), "tracked workers differ from live processes");
        // Every generation with a worker not killed yet has its policy.
        assert!(s.policies.contains_key(&s.current));
        for w in s.workers.iter().filter(|w| !matches!(w.life, Life::Killed { .. })) {
            assert!(s.policies.contains_key(&w.generation), "generation {} without a policy", w.generation);
        }
        // At most one replacement on its way, and only for a worker that asked.
        assert!(s.workers.iter().filter(|w| w.replacement.is_some()).count() <= 1);
        for w in &s.workers {
            assert!(w.replacement.is_none() || w.recycling(), "{:?} holds a replacement", w.life);
        }
        // Once a stop began, every worker has been told.
        match s.phase {
            Phase::Stopping => {
                for w in &s.workers {
                    assert!(!w.active(), "worker {} not told to stop", w.pid);
                    assert!(self.told(w.pid, Signal::SIGTERM) || self.told(w.pid, Signal::SIGKILL));
                }
            }
            Phase::Quitting { .. } => {
                for w in &s.workers {
                    assert!(matches!(w.life, Life::Killed { .. }), "worker {} not told to quit", w.pid);
                    assert!(self.told(w.pid, Signal::SIGQUIT) || self.told(w.pid, Signal::SIGKILL));
                }
            }
            _ => {}
        }
        assert!(s.desired >= 1);
    }

    /// Lets `total` pass the way the executor does: it sleeps at most what the state asks, processes that
    /// were sent SIGKILL die, the others stamp their heartbeat, then the master ticks.
    fn advance(&mut self, total: Nanos) {
        let end = self.h.now + total;
        while self.h.now < end && self.h.exit.is_none() {
            self.step(self.h.state.sleep_for(self.h.now).min(end - self.h.now));
        }
    }

    /// One sleep of the executor, `by` long, then one turn of the master.
    fn step(&mut self, by: Nanos) {
        self.h.now += by;
        for pid in self.alive() {
            if self.told(pid, Signal::SIGKILL) {
                self.exit(pid, ExitHow::Signal(Signal::SIGKILL as i32));
            } else if self.told(pid, Signal::SIGQUIT) && !self.hung.contains(&pid) {
                self.exit(pid, ExitHow::Code(0));
            }
        }
        for pid in self.alive() {
            if !self.hung.contains(&pid) {
                let (slot, state) = (self.h.slot_of(pid), self.slot_state(pid));
                self.h.board.set(slot, pid, state, self.h.now);
            }
        }
        self.handle(Event::Tick);
    }

    fn exit(&mut self, pid: i32, how: ExitHow) {
        self.exit_oom(pid, how, false);
    }

    fn exit_oom(&mut self, pid: i32, how: ExitHow, oom: bool) {
        if self.h.exit.is_none() && !self.h.exited.contains(&pid) {
            let serving_before = self.h.serving().len();
            let crashes_before = self.h.state.spawner.crashes();
            let oom_before = self.h.state.counters().restarts[RestartReason::OomKill.index()];
            let outside_kill = how.is_outside_kill() && !self.told(pid, Signal::SIGKILL);
            let unstopped = self.h.state.workers.iter().any(|w| w.pid == pid && !matches!(w.life, Life::Killed { .. }));
            self.h.exited.insert(pid);
            let actions = self.h.handle(Event::Exited { pid, how, oom });
            self.check_replies(&actions);
            // A worker killed from outside (an operator, the OOM killer) is replaced at once: it never feeds the
            // crash-loop backoff.
            if outside_kill {
                assert!(self.h.state.spawner.crashes() <= crashes_before, "an outside kill counted as a crash");
            }
            if outside_kill && oom && unstopped {
                let counted = self.h.state.counters().restarts[RestartReason::OomKill.index()];
                assert!(counted > oom_before, "an OOM kill not counted as one");
            }
            self.check_retirements(&actions, serving_before);
            self.check();
        }
    }

    /// When `sig` begins a stop, the latest time the master may exit.
    fn note_stop(&mut self, sig: Sig) {
        let now = self.h.now;
        let graceful = self.h.state.policies.values().map(|p| p.graceful_timeout).max().unwrap_or(0);
        let bound = match (sig, self.h.state.phase) {
            (Sig::Term, Phase::Starting | Phase::Running) => Some(now + graceful + 2 * MAX_SLEEP),
            (Sig::Int | Sig::Quit, Phase::Starting | Phase::Running | Phase::Stopping) => {
                Some(now + QUIT_GRACE + 2 * MAX_SLEEP)
            }
            _ => None,
        };
        if let Some(bound) = bound {
            self.exit_by = Some(self.exit_by.map_or(bound, |b| b.min(bound)));
        }
    }

    fn set_state(&mut self, pid: i32, state: SlotState) {
        self.h.set_state(pid, state);
        self.handle(Event::Tick);
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Signal(sig) => {
                self.note_stop(sig);
                self.handle(Event::Signal(sig));
            }
            Op::Advance(d) => self.advance(d),
            Op::Late(by) => {
                if self.h.exit.is_none() {
                    // A deadline already set moves with the lost time: the master cannot act while asleep.
                    self.exit_by = self.exit_by.map(|b| b + by);
                    self.step(self.h.state.sleep_for(self.h.now).saturating_add(by));
                }
            }
            Op::Ready(k) => {
                if let Some(pid) = self.nth(k, |w, p| w.slot_state(p) == SlotState::Booting && !w.hung.contains(&p)) {
                    self.set_state(pid, SlotState::Ready);
                }
            }
            Op::Recycle(k) => {
                if let Some(pid) = self.nth(k, |w, p| w.slot_state(p) == SlotState::Ready && !w.hung.contains(&p)) {
                    self.set_state(pid, SlotState::Retiring);
                }
            }
            Op::Exit(k, how, oom) => {
                if let Some(pid) = self.nth(k, |_, _| true) {
                    self.exit_oom(pid, how, oom);
                }
            }
            Op::Memory(k, over) => {
                if let Some(pid) = self.nth(k, |_, _| true) {
                    self.h.board.set_memory(self.h.slot_of(pid), if over { 2 * LIMIT } else { LIMIT / 2 });
                }
                self.handle(Event::Sampled);
            }
            Op::Race(k, sig) => {
                if let Some(pid) = self.nth(k, |_, _| true) {
                    self.note_stop(sig);
                    self.h.interject = Some(Event::Signal(sig));
                    self.exit(pid, ExitHow::Signal(Signal::SIGKILL as i32));
                    if let Some(event) = self.h.interject.take() {
                        self.handle(event);
                    }
                }
            }
            Op::Drain(k) => {
                if let Some(pid) = self.nth(k, |w, p| w.told(p, Signal::SIGTERM) && !w.hung.contains(&p)) {
                    self.exit(pid, ExitHow::Code(0));
                }
            }
            Op::Hang(k) => {
                if let Some(pid) = self.nth(k, |_, _| true) {
                    self.hung.insert(pid);
                }
            }
            Op::Stamp(k, word) => {
                if let Some(pid) = self.nth(k, |_, _| true) {
                    let (slot, state) = (self.h.slot_of(pid), self.slot_state(pid));
                    self.h.board.set(slot, pid, state, word);
                    self.handle(Event::Tick);
                }
            }
            Op::Forks(ok) => self.h.forks_fail = !ok,
            Op::Config(policy) => self.h.config = policy.ok_or_else(|| "rejected".to_string()),
            Op::Control(ref command) => {
                if self.h.exit.is_none() {
                    let client = self.asked.len() as ClientId + 1;
                    let s = &self.h.state;
                    let serving = self.h.serving();
                    let asked = Asked { command: command.clone(), next_generation: s.next_generation, serving };
                    self.asked.insert(client, asked);
                    if let Command::Stop { fast, .. } = command {
                        self.note_stop(if *fast { Sig::Quit } else { Sig::Term });
                    }
                    self.handle(Event::Control { client, command: command.clone() });
                }
            }
            Op::HangUp(k) => {
                let waiting: Vec<ClientId> = self.h.state.waiters.iter().map(|w| w.client).collect();
                if !waiting.is_empty() {
                    let client = waiting[k % waiting.len()];
                    self.gone.insert(client);
                    self.handle(Event::ClientGone(client));
                }
            }
            Op::NewMaster(takes_over) => {
                if let Some(UpgradeStage::Booting { pid }) = self.h.state.upgrade_stage() {
                    if takes_over {
                        self.took_over = Some(pid);
                        self.handle(Event::Upgrade(UpgradeNews::TookOver { pid }));
                        self.note_stop(Sig::Term);
                        self.handle(Event::Signal(Sig::Term));
                    } else {
                        self.handle(Event::Upgrade(UpgradeNews::Failed { reason: "exited".into() }));
                    }
                }
            }
        }
        if let (Some(_), Some(bound)) = (self.h.exit, self.exit_by) {
            assert!(self.h.now <= bound, "exited at {} ms, after its deadline {} ms", self.h.now / MS, bound / MS);
        }
    }

    /// Faults end: forks succeed, every worker boots, drains when told, and nothing hangs any more. The
    /// master must get back to its target count with no reload pending, or finish its stop in time.
    fn settle(&mut self) {
        self.h.forks_fail = false;
        self.h.config = Ok(POLICY);
        let give_up = self.h.now + 3 * MAX_BACKOFF + 60 * SEC;
        while self.h.exit.is_none() && self.h.now < give_up {
            for pid in self.alive() {
                if self.told(pid, Signal::SIGTERM) && !self.hung.contains(&pid) {
                    self.exit(pid, ExitHow::Code(0));
                } else if self.h.exit.is_none()
                    && self.slot_state(pid) == SlotState::Booting
                    && !self.hung.contains(&pid)
                    && !self.told(pid, Signal::SIGKILL)
                {
                    self.set_state(pid, SlotState::Ready);
                }
            }
            self.advance(SEC);
            if self.h.exit.is_none() && self.settled() {
                for client in self.asked.keys() {
                    let answered = self.answered.contains(client) || self.gone.contains(client);
                    assert!(answered, "client {client} never answered");
                }
                return;
            }
        }
        match (self.h.exit, self.exit_by) {
            (Some(_), Some(bound)) => assert!(self.h.now <= bound, "stop overran its deadline"),
            (Some(code), None) => {
                assert_eq!(code, EXIT_NO_WORKER, "exited without being asked");
                assert!(!self.h.state.ever_ready, "exit 3 after a worker was ready");
            }
            (None, _) => panic!(
                "not back to {} serving workers after the faults ended: phase {:?}, serving {:?}, reloading {}, \
                 waiting clients {:?}",
                self.h.state.desired,
                self.h.state.phase,
                self.h.serving(),
                self.h.state.reloading(),
                self.h.state.waiters
            ),
        }
    }

    fn settled(&self) -> bool {
        let s = &self.h.state;
        s.phase == Phase::Running
            && !s.reloading()
            && !s.reload_again
            && s.waiters.is_empty()
            && self.h.serving().len() == s.desired
            && s.workers.iter().all(|w| w.generation == s.current && w.life == (Life::Ready { recycle: None }))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, max_shrink_iters: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn the_master_recovers_from_any_sequence_of_faults(
        failed_forks in prop_oneof![3 => Just(0usize), 1 => 1usize..=2],
        start in prop_oneof![Just(SEC), Just(40 * 86_400 * SEC)],
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut world = World::new(failed_forks, start);
        for op in &ops {
            world.apply(op);
        }
        world.settle();
    }
}
