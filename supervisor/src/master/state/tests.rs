//! Example-based tests of the master's policy, one scenario each.

use nix::sys::signal::Signal;

use super::testing::*;
use super::*;
use crate::scoreboard::SlotState;

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
    assert_eq!(spawns(&h.exit(pids[0], ExitHow::Code(3))), 0, "not respawned");
    let actions = h.exit(pids[1], ExitHow::Code(3));
    assert_eq!(actions, [Action::Exit(EXIT_NO_WORKER)]);
}

#[test]
fn failed_forks_at_startup_are_retried_until_boot_timeout_then_exit_3() {
    let mut h = Harness::new(POLICY);
    h.forks_fail = true;
    h.handle(Event::Tick);
    assert!(h.pids().is_empty());
    assert_eq!(h.exit, None, "a failed fork is retried, not fatal at once");
    let sleep = h.state.sleep_for(h.now);
    assert!(sleep > 0 && sleep <= MAX_FORK_RETRY, "the retry is scheduled: {sleep}");
    // Forks succeed again: both initial workers start.
    h.forks_fail = false;
    h.advance(sleep);
    assert_eq!(h.pids().len(), 2);
    h.all_ready();
    assert_eq!(h.state.phase(), Phase::Running);

    let mut h = Harness::new(POLICY);
    h.forks_fail = true;
    h.handle(Event::Tick);
    while h.exit.is_none() && h.now < 10 * SEC {
        let sleep = h.state.sleep_for(h.now);
        h.advance(sleep.max(MS));
    }
    assert_eq!(h.exit, Some(EXIT_NO_WORKER));
    assert!(h.now >= SEC + POLICY.boot_timeout, "gave up only at boot_timeout: {}", h.now);
}

#[test]
fn a_fork_retry_left_over_at_the_startup_deadline_is_not_a_busy_loop() {
    let mut h = Harness::new(POLICY);
    h.fail_next_forks = 1;
    h.handle(Event::Tick);
    assert_eq!(h.pids().len(), 1, "one worker booting, one fork to retry");
    // The master wakes up late, past the startup deadline, with the retry that was due before it unmade.
    h.forks_fail = true;
    h.advance(POLICY.boot_timeout + MS / 2);
    assert_eq!(h.exit, None, "a worker is still booting");
    assert!(h.state.sleep_for(h.now) > 0, "a retry that may no longer happen keeps the master awake");
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
    h.exit(victim, ExitHow::Code(1));
    assert_eq!(h.pids().len(), 2, "replacement spawned in the same turn");
    assert!(!h.pids().contains(&victim));
}

#[test]
fn early_deaths_back_off_exponentially() {
    let mut h = Harness::running();
    let mut delays = Vec::new();
    for _ in 0..5 {
        let victim = *h.pids().last().unwrap();
        h.exit(victim, ExitHow::Code(1));
        let started = h.now;
        while h.pids().len() < 2 {
            h.beat();
            h.advance(100 * MS);
        }
        delays.push((h.now - started) / MS);
        h.all_ready();
    }
    assert_eq!(delays, [0, 500, 1000, 2000, 4000]);
    assert_eq!(backoff(40), MAX_BACKOFF);
}

#[test]
fn a_crash_loop_boots_one_worker_at_a_time() {
    let mut h = Harness::running();
    let pids = h.pids();
    h.exit(pids[0], ExitHow::Code(1));
    h.exit(pids[1], ExitHow::Code(1));
    // The first death is replaced at once; in the loop that follows, the next spawn waits for the
    // outcome of the one booting.
    for _ in 0..40 {
        h.run_for(500 * MS, 100 * MS);
        h.reap_killed();
        let booting = h.pids().iter().filter(|p| h.life(**p) == Life::Booting).count();
        assert!(booting <= 1, "one canary at a time");
    }
    assert!(h.state.spawner.crashes() > 2, "the canaries kept failing to boot");
    while h.serving().len() < 2 && h.now < 200 * SEC {
        h.all_ready();
        h.run_for(500 * MS, 100 * MS);
    }
    assert_eq!(h.serving().len(), 2, "the count is restored once workers boot");
}

#[test]
fn ready_workers_killed_from_outside_are_replaced_at_once_however_often() {
    let mut h = Harness::running();
    for round in 0..20 {
        let victim = h.pids()[round % 2];
        h.now += 300 * MS;
        h.beat();
        let actions = h.exit(victim, SIGKILL);
        assert_eq!(spawns(&actions), 1, "round {round}: replaced in the same turn");
        h.all_ready();
    }
    assert_eq!(h.serving().len(), 2);
}

#[test]
fn replacements_are_rate_limited_beyond_a_burst() {
    let mut h = Harness::running();
    // Every worker dies at once, again and again, without waiting: one burst, then one per interval.
    let mut spawned = 0;
    for _ in 0..5 {
        for pid in h.pids() {
            spawned += spawns(&h.exit(pid, SIGKILL));
        }
        h.all_ready();
    }
    assert_eq!(spawned, 2, "a burst of one per worker");
    let sleep = h.state.sleep_for(h.now);
    assert!((1..=RESPAWN_INTERVAL).contains(&sleep), "the next one is scheduled: {sleep}");
}

#[test]
fn heartbeat_silence_beyond_timeout_kills_never_before() {
    let mut h = Harness::running();
    let pid = h.pids()[0];
    let other = h.pids()[1];
    let last_beat = h.now;
    h.board.set(h.slot_of(pid), pid, SlotState::Ready, last_beat);
    h.handle(Event::Tick);
    // The sleep the master asks for ends just after the deadline.
    let sleep = h.state.sleep_for(h.now);
    assert!(sleep <= POLICY.timeout + POLICY.heartbeat + MS);
    // The worker may have hung just before it would have stamped again: at `timeout` it is not yet
    // `timeout` since it stopped.
    h.now = last_beat + POLICY.timeout + MS;
    h.board.set(h.slot_of(other), other, SlotState::Ready, h.now);
    assert!(kills(&h.handle(Event::Tick)).is_empty(), "past the timeout but within one interval: not yet");
    h.now = last_beat + POLICY.timeout + POLICY.heartbeat;
    h.board.set(h.slot_of(other), other, SlotState::Ready, h.now);
    assert!(kills(&h.handle(Event::Tick)).is_empty(), "exactly at the limit: not yet");
    h.now += MS;
    assert_eq!(kills(&h.handle(Event::Tick)), [(pid, Signal::SIGKILL)]);
    h.exit(pid, SIGKILL);
    assert_eq!(h.pids().len(), 2, "replaced");
}

#[test]
fn a_heartbeat_in_the_future_neither_postpones_a_timeout_nor_overflows() {
    let mut h = Harness::running();
    let pid = h.pids()[0];
    let slot = h.slot_of(pid);
    h.board.set(slot, pid, SlotState::Ready, u64::MAX);
    h.handle(Event::Tick);
    let stamped = h.now;
    let sleep = h.state.sleep_for(h.now);
    assert!(sleep > 0 && sleep <= MAX_SLEEP);
    // The worker writes nothing more (hung): it is killed once the silence, counted from when the bogus
    // stamp was seen, exceeds the limit.
    let mut killed_at = None;
    while killed_at.is_none() && h.now < stamped + 10 * SEC {
        let other = h.pids()[1];
        h.board.set(h.slot_of(other), other, SlotState::Ready, h.now);
        if kills(&h.advance(100 * MS)).contains(&(pid, Signal::SIGKILL)) {
            killed_at = Some(h.now);
        }
    }
    let killed_at = killed_at.expect("killed");
    assert!(killed_at > stamped + POLICY.silence_limit() && killed_at <= stamped + POLICY.silence_limit() + 200 * MS);
}

#[test]
fn a_slot_claiming_another_pid_is_ignored_and_its_worker_still_times_out() {
    let mut h = Harness::running();
    let pid = h.pids()[0];
    h.board.set(h.slot_of(pid), 4242, SlotState::Ready, h.now + 100 * SEC);
    let mut killed = false;
    for _ in 0..40 {
        let other = h.pids()[1];
        h.board.set(h.slot_of(other), other, SlotState::Ready, h.now);
        killed |= kills(&h.advance(100 * MS)).contains(&(pid, Signal::SIGKILL));
    }
    assert!(killed);
}

#[test]
fn term_drains_then_kills_stragglers_at_the_deadline_and_exits_0() {
    let mut h = Harness::running();
    let pids = h.pids();
    let actions = h.handle(Event::Signal(Sig::Term));
    assert!(actions.contains(&Action::CloseListeners));
    assert_eq!(kills(&actions), pids.iter().map(|&p| (p, Signal::SIGTERM)).collect::<Vec<_>>());
    h.exit(pids[0], ExitHow::Code(0));
    assert_eq!(h.pids(), [pids[1]], "no respawn while stopping");
    h.beat();
    assert!(kills(&h.advance(2 * SEC)).is_empty());
    h.beat();
    assert_eq!(kills(&h.advance(SEC + MS)), [(pids[1], Signal::SIGKILL)]);
    assert_eq!(h.exit(pids[1], SIGKILL), [Action::Exit(EXIT_OK)]);
}

#[test]
fn a_worker_forked_as_a_stop_begins_is_stopped_too() {
    // The race: a worker dies, its replacement is forked, and the stop arrives before the fork's result.
    let race = |stop: Sig| {
        let mut h = Harness::running();
        let board = FakeBoard::default();
        let victim = h.pids()[0];
        let actions = h.state.handle(Event::Exited { pid: victim, how: SIGKILL, oom: false }, h.now, &board);
        let Some(&Action::Spawn { slot, .. }) = actions.iter().find(|a| matches!(a, Action::Spawn { .. })) else {
            panic!("a replacement: {actions:?}")
        };
        h.state.handle(Event::Signal(stop), h.now, &board);
        let told = kills(&h.state.handle(Event::Spawned { slot, pid: 999 }, h.now, &board));
        (h, told)
    };
    let (mut h, told) = race(Sig::Term);
    assert_eq!(told, [(999, Signal::SIGTERM)]);
    for pid in h.pids() {
        h.exit(pid, ExitHow::Code(0));
    }
    assert_eq!(h.exit, Some(EXIT_OK), "nothing left to wait for");
    assert_eq!(race(Sig::Int).1, [(999, Signal::SIGQUIT)], "the same during a fast stop");
}

#[test]
fn an_unexpected_spawn_is_killed() {
    let mut h = Harness::running();
    let actions = h.handle(Event::Spawned { slot: 77, pid: 4321 });
    assert_eq!(kills(&actions), [(4321, Signal::SIGKILL)]);
    assert!(!h.pids().contains(&4321));
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
fn term_is_handled_while_forks_keep_failing() {
    let mut h = Harness::running();
    h.forks_fail = true;
    h.exit(h.pids()[0], SIGKILL);
    let forks = spawns(&h.run_for(3 * SEC, 100 * MS));
    assert!((3..=12).contains(&forks), "retried with growing delays, not in a loop: {forks}");
    let survivor = h.pids()[0];
    assert_eq!(kills(&h.handle(Event::Signal(Sig::Term))), [(survivor, Signal::SIGTERM)]);
    assert_eq!(h.exit(survivor, ExitHow::Code(0)), [Action::Exit(EXIT_OK)]);
}

#[test]
fn ttin_adds_and_ttou_retires_the_oldest_but_never_below_one() {
    let mut h = Harness::running();
    h.handle(Event::Signal(Sig::Ttin));
    assert_eq!(h.pids().len(), 3);
    h.all_ready();
    let oldest = h.pids()[0];
    assert_eq!(kills(&h.handle(Event::Signal(Sig::Ttou))), [(oldest, Signal::SIGTERM)]);
    h.exit(oldest, ExitHow::Code(0));
    assert_eq!(h.pids().len(), 2, "not replaced");
    h.handle(Event::Signal(Sig::Ttou));
    assert!(kills(&h.handle(Event::Signal(Sig::Ttou))).is_empty(), "already at 1");
    assert_eq!(h.state.desired, 1);
}

#[test]
fn ttou_retires_a_booting_worker_before_a_serving_one() {
    let mut h = Harness::running();
    h.handle(Event::Signal(Sig::Ttin));
    let booting = *h.pids().last().unwrap();
    assert_eq!(kills(&h.handle(Event::Signal(Sig::Ttou))), [(booting, Signal::SIGTERM)]);
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
fn recycling_replaces_one_worker_at_a_time_and_retires_it_once_the_replacement_is_ready() {
    let mut h = Harness::running();
    let [a, b] = h.pids()[..] else { panic!() };
    h.set_state(a, SlotState::Retiring);
    h.set_state(b, SlotState::Retiring);
    let actions = h.handle(Event::Tick);
    assert_eq!(spawns(&actions), 1, "one replacement at a time");
    assert!(kills(&actions).is_empty(), "nobody drains before its replacement is ready");
    assert_eq!(h.serving(), [a, b], "both keep serving meanwhile");
    h.all_ready();
    assert_eq!(
        h.life(a),
        Life::Retiring { reason: RetireReason::Recycle(Recycle::Requests), deadline: h.now + 3 * SEC }
    );
    assert_eq!(h.serving().len(), 2);
    h.exit(a, ExitHow::Code(0));
    // Then the second.
    assert_eq!(h.pids().len(), 3, "b's replacement booting");
    h.all_ready();
    assert!(matches!(h.life(b), Life::Retiring { .. }));
    assert_eq!(h.state.counters().restarts[RestartReason::RecycleRequests.index()], 1);
}

#[test]
fn a_recycling_worker_whose_replacement_cannot_start_keeps_serving_and_is_replaced_later() {
    let mut h = Harness::running();
    let a = h.pids()[0];
    h.forks_fail = true;
    h.set_state(a, SlotState::Retiring);
    let actions = h.handle(Event::Tick);
    assert_eq!(spawns(&actions), 1);
    assert!(kills(&actions).is_empty());
    assert_eq!(h.life(a), Life::Ready { recycle: Some(Recycle::Requests) }, "still serving");
    assert!(kills(&h.run_for(2 * SEC, 100 * MS)).is_empty());
    h.forks_fail = false;
    h.run_for(MAX_FORK_RETRY, 100 * MS);
    assert_eq!(h.pids().len(), 3, "the replacement started within one retry delay");
    h.all_ready();
    assert!(matches!(h.life(a), Life::Retiring { reason: RetireReason::Recycle(Recycle::Requests), .. }));
}

#[test]
fn a_replacement_that_dies_while_booting_is_tried_again() {
    let mut h = Harness::running();
    let a = h.pids()[0];
    h.set_state(a, SlotState::Retiring);
    h.handle(Event::Tick);
    let replacement = *h.pids().last().unwrap();
    h.exit(replacement, ExitHow::Code(3));
    assert_eq!(h.life(a), Life::Ready { recycle: Some(Recycle::Requests) });
    h.run_for(SEC, 100 * MS);
    assert_eq!(h.pids().len(), 3, "a new replacement");
    h.all_ready();
    assert!(matches!(h.life(a), Life::Retiring { .. }));
}

#[test]
fn reload_switches_generations_once_the_new_one_is_ready() {
    let mut h = Harness::running();
    let old = h.pids();
    let actions = h.handle(Event::Signal(Sig::Hup));
    assert!(actions.contains(&Action::LoadConfig { generation: 2 }));
    assert_eq!(spawns(&actions), 2);
    assert!(kills(&actions).is_empty(), "the old generation serves until the new one is ready");
    assert!(h.state.reloading());
    h.all_ready();
    assert_eq!(h.state.generation(), 2);
    assert!(!h.state.reloading());
    for pid in &old {
        assert!(matches!(h.life(*pid), Life::Retiring { reason: RetireReason::Reload, .. }));
    }
    for pid in &old {
        h.exit(*pid, ExitHow::Code(0));
    }
    assert_eq!(h.state.counters().reloads_ok, 1);
    assert!(!h.state.policies.contains_key(&1), "the old generation is forgotten");
}

#[test]
fn a_reload_whose_generation_cannot_boot_is_aborted_with_the_old_one_serving() {
    let mut h = Harness::running();
    let old = h.pids();
    h.handle(Event::Signal(Sig::Hup));
    let new: Vec<i32> = h.pids().into_iter().filter(|p| !old.contains(p)).collect();
    assert!(kills(&h.run_for(4 * SEC, 100 * MS)).is_empty());
    let actions = h.run_for(SEC + MS, 100 * MS);
    assert_eq!(kills(&actions), new.iter().map(|&p| (p, Signal::SIGKILL)).collect::<Vec<_>>());
    assert!(!h.state.reloading());
    assert_eq!(h.state.generation(), 1);
    assert_eq!(h.serving(), old);
    assert_eq!(h.state.counters().reloads_aborted, 1);
}

#[test]
fn a_rejected_configuration_aborts_the_reload_and_forks_nothing() {
    let mut h = Harness::running();
    h.config = Err("bad".into());
    let actions = h.handle(Event::Signal(Sig::Hup));
    assert_eq!(spawns(&actions), 0);
    assert!(!h.state.reloading());
    assert_eq!(h.state.counters().reloads_aborted, 1);
}

#[test]
fn a_reload_during_fork_failures_completes_once_forks_succeed_or_aborts_at_its_deadline() {
    let mut h = Harness::running();
    h.forks_fail = true;
    h.handle(Event::Signal(Sig::Hup));
    h.run_for(2 * SEC, 100 * MS);
    h.forks_fail = false;
    h.run_for(MAX_FORK_RETRY, 100 * MS);
    h.all_ready();
    assert_eq!(h.state.generation(), 2, "completed");

    let mut h = Harness::running();
    h.forks_fail = true;
    h.handle(Event::Signal(Sig::Hup));
    while h.state.reloading() && h.now < 20 * SEC {
        h.run_for(100 * MS, 100 * MS);
    }
    assert!(!h.state.reloading());
    assert_eq!(h.state.generation(), 1);
    assert_eq!(h.state.counters().reloads_aborted, 1);
    assert_eq!(h.serving().len(), 2);
}

#[test]
fn hups_during_a_reload_coalesce_into_one_more() {
    let mut h = Harness::running();
    h.handle(Event::Signal(Sig::Hup));
    let mut loads = 0;
    for _ in 0..5 {
        loads += h.handle(Event::Signal(Sig::Hup)).iter().filter(|a| matches!(a, Action::LoadConfig { .. })).count();
    }
    assert_eq!(loads, 0, "no second reload while one runs");
    let actions = {
        let slots: Vec<(i32, usize)> = h.pids().iter().map(|p| (*p, h.slot_of(*p))).collect();
        for (pid, slot) in slots {
            if h.life(pid) == Life::Booting {
                h.board.set(slot, pid, SlotState::Ready, h.now);
            }
        }
        h.handle(Event::Tick)
    };
    assert!(actions.contains(&Action::LoadConfig { generation: 3 }), "exactly one more: {actions:?}");
    h.all_ready();
    assert_eq!(h.state.generation(), 3);
}

#[test]
fn a_hup_during_a_reload_that_a_dying_worker_aborts_is_not_lost() {
    let mut h = Harness::running();
    let old = h.pids();
    h.handle(Event::Signal(Sig::Hup));
    h.handle(Event::Signal(Sig::Hup));
    let new: Vec<i32> = h.pids().into_iter().filter(|p| !old.contains(p)).collect();
    h.exit(new[0], ExitHow::Code(3));
    h.reap_killed();
    assert!(h.state.reloading(), "the HUP that came during the aborted reload runs now");
    h.all_ready();
    assert_eq!(h.state.generation(), 3);
}

#[test]
fn restarts_are_counted_by_reason() {
    let mut h = Harness::running();
    let reason = |h: &Harness, r: RestartReason| h.state.counters().restarts[r.index()];
    let pids = h.pids();
    h.exit(pids[0], SIGKILL);
    assert_eq!(reason(&h, RestartReason::Killed), 1);
    h.exit(pids[1], ExitHow::Code(1));
    assert_eq!(reason(&h, RestartReason::Crash), 1);
    h.all_ready();
    let victim = h.pids()[0];
    let slot = h.slot_of(victim);
    h.now += 10 * SEC;
    h.beat();
    h.board.set(slot, victim, SlotState::Ready, h.now - POLICY.silence_limit() - MS);
    h.handle(Event::Tick);
    h.exit(victim, SIGKILL);
    assert_eq!(reason(&h, RestartReason::Timeout), 1, "our own timeout kill is not an outside kill");
    assert_eq!(reason(&h, RestartReason::Killed), 1);
    h.handle(Event::Signal(Sig::Hup));
    assert_eq!(h.state.counters().reloads_ok, 0);
    h.all_ready();
    assert_eq!(h.state.counters().reloads_ok, 1);
    let retired: Vec<i32> =
        h.state.workers.iter().filter(|w| matches!(w.life, Life::Retiring { .. })).map(|w| w.pid).collect();
    for pid in retired {
        h.exit(pid, ExitHow::Code(0));
    }
    assert_eq!(reason(&h, RestartReason::Reload), 2);
    h.handle(Event::Signal(Sig::Term));
    for pid in h.pids() {
        h.exit(pid, ExitHow::Code(0));
    }
    assert_eq!(h.state.counters().restarts.iter().sum::<u64>(), 5, "a stop is not a restart");
}

#[test]
fn a_kill_the_supervisor_did_not_send_is_not_mistaken_for_a_timeout() {
    let mut h = Harness::running();
    let pid = h.pids()[0];
    h.exit(pid, SIGKILL);
    assert_eq!(h.state.counters().restarts[RestartReason::Killed.index()], 1);
    assert_eq!(h.state.counters().restarts[RestartReason::Timeout.index()], 0);
    assert_eq!(h.pids().len(), 2);
}

#[test]
fn a_worker_over_max_worker_memory_for_three_samples_is_recycled_replacement_first() {
    let mut h = Harness::new(Policy { max_memory: 100 << 20, ..POLICY });
    h.handle(Event::Tick);
    h.all_ready();
    let [a, b] = h.pids()[..] else { panic!() };
    h.board.set_memory(h.slot_of(a), 150 << 20);
    h.board.set_memory(h.slot_of(b), 50 << 20);
    for _ in 0..MEMORY_SAMPLES - 1 {
        assert_eq!(spawns(&h.handle(Event::Sampled)), 0, "a peak is not a reason yet");
    }
    h.board.set_memory(h.slot_of(a), 90 << 20);
    h.handle(Event::Sampled);
    h.board.set_memory(h.slot_of(a), 150 << 20);
    for _ in 0..MEMORY_SAMPLES - 1 {
        h.handle(Event::Sampled);
    }
    assert_eq!(h.life(a), Life::Ready { recycle: None }, "the count restarts below the limit");
    let actions = h.handle(Event::Sampled);
    assert_eq!(h.life(a), Life::Ready { recycle: Some(Recycle::Memory) });
    assert_eq!(spawns(&actions), 1, "its replacement");
    assert!(kills(&actions).is_empty(), "it serves until the replacement is ready");
    h.all_ready();
    assert!(matches!(h.life(a), Life::Retiring { reason: RetireReason::Recycle(Recycle::Memory), .. }));
    assert_eq!(h.life(b), Life::Ready { recycle: None });
    h.exit(a, ExitHow::Code(0));
    assert_eq!(h.state.counters().restarts[RestartReason::RecycleMemory.index()], 1);
}

#[test]
fn workers_past_max_worker_lifetime_are_recycled_one_at_a_time() {
    let mut h = Harness::new(Policy { max_lifetime: 10 * SEC, lifetime_jitter: 2 * SEC, ..POLICY });
    h.handle(Event::Tick);
    h.all_ready();
    let old = h.pids();
    let mut retired = Vec::new();
    let mut most_recycling = 0;
    let end = h.now + 30 * SEC;
    while h.now < end {
        let mut actions = h.run_for(100 * MS, 100 * MS);
        for pid in h.pids() {
            if h.life(pid) == Life::Booting {
                h.board.set(h.slot_of(pid), pid, SlotState::Ready, h.now);
            }
        }
        actions.extend(h.handle(Event::Tick));
        for (pid, signal) in kills(&actions) {
            assert_eq!(signal, Signal::SIGTERM);
            assert!(matches!(h.life(pid), Life::Retiring { reason: RetireReason::Recycle(Recycle::Lifetime), .. }));
            assert!(h.serving().len() >= 2, "capacity never dips");
            retired.push(pid);
            h.exit(pid, ExitHow::Code(0));
        }
        let recycling = h.state.workers.iter().filter(|w| w.replacement.is_some()).count();
        most_recycling = most_recycling.max(recycling);
    }
    assert!(old.iter().all(|p| retired.contains(p)), "both old workers recycled: {retired:?}");
    assert!(most_recycling <= 1, "two recycles at once");
    assert!(h.state.counters().restarts[RestartReason::RecycleLifetime.index()] >= 2);
}

#[test]
fn an_oom_kill_is_named_and_replaced_at_once() {
    let mut h = Harness::running();
    let victim = h.pids()[0];
    for _ in 0..3 {
        let victim = h.pids()[0];
        h.exited.insert(victim);
        let actions = h.handle(Event::Exited { pid: victim, how: SIGKILL, oom: true });
        assert_eq!(spawns(&actions), 1, "replaced at once, never backed off");
        h.all_ready();
        h.run_for(RESPAWN_INTERVAL, RESPAWN_INTERVAL);
    }
    assert!(!h.pids().contains(&victim));
    assert_eq!(h.state.counters().restarts[RestartReason::OomKill.index()], 3);
    assert_eq!(h.state.counters().restarts[RestartReason::Killed.index()], 0);
    assert_eq!(h.state.spawner.crashes(), 0, "not a crash loop");
}

// Control commands (`supervisor ctl`).

fn failed(reply: Option<&Reply>) -> String {
    match reply {
        Some(Reply::Failed(why)) => why.clone(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn done(reply: Option<&Reply>) -> String {
    match reply {
        Some(Reply::Done(what)) => what.clone(),
        other => panic!("expected success, got {other:?}"),
    }
}

#[test]
fn reload_wait_is_answered_once_the_new_generation_serves() {
    let mut h = Harness::running();
    assert_eq!(h.control(1, Command::Reload { wait: Some(60 * SEC) }), []);
    assert!(h.state.reloading());
    h.run_for(SEC, 100 * MS);
    assert_eq!(h.reply_to(1), None, "not before the switch");
    h.all_ready();
    assert_eq!(h.state.generation(), 2);
    assert!(done(h.reply_to(1)).contains("generation 2 serving"));
    assert_eq!(h.replies.len(), 1, "answered once");

    // Not waiting: answered at once.
    let replies = h.control(2, Command::Reload { wait: None });
    assert_eq!(replies, [(2, Reply::Done("reload started: generation 3".into()))]);
}

#[test]
fn reload_wait_on_a_rejected_configuration_names_the_error_and_forks_nothing() {
    let mut h = Harness::running();
    h.config = Err("invalid configuration: `timeout` (from file x.toml): must be between 1 and 86400".into());
    let before = h.pids();
    h.control(1, Command::Reload { wait: Some(60 * SEC) });
    let why = failed(h.reply_to(1));
    assert!(why.starts_with("reload aborted: configuration rejected") && why.contains("`timeout`"), "{why}");
    assert_eq!(h.pids(), before);
    assert_eq!(h.state.generation(), 1);
}

#[test]
fn reload_wait_when_a_new_worker_cannot_boot_names_its_error() {
    let mut h = Harness::running();
    let old = h.pids();
    h.control(1, Command::Reload { wait: Some(60 * SEC) });
    let new: Vec<i32> = h.pids().into_iter().filter(|p| !old.contains(p)).collect();
    h.board.set_boot_error(h.slot_of(new[0]), "boot refused: the database is unreachable");
    h.exit(new[0], ExitHow::Code(3));
    let why = failed(h.reply_to(1));
    assert!(why.contains("died before the switch: boot refused: the database is unreachable"), "{why}");
    assert_eq!(h.serving(), old, "the old generation serves");

    // Without a boot error (a crash), the exit is named.
    h.reap_killed();
    h.control(2, Command::Reload { wait: Some(60 * SEC) });
    let new: Vec<i32> = h.pids().into_iter().filter(|p| !old.contains(p)).collect();
    h.exit(new[0], ExitHow::Signal(Signal::SIGSEGV as i32));
    assert!(failed(h.reply_to(2)).contains("(signal 11)"), "{:?}", h.reply_to(2));
}

#[test]
fn reload_wait_times_out_with_where_the_reload_stands() {
    let mut h = Harness::running();
    h.control(1, Command::Reload { wait: Some(2 * SEC) });
    h.run_for(2 * SEC, 100 * MS);
    let why = failed(h.reply_to(1));
    assert!(why.contains("timed out") && why.contains("0 of 2 workers ready"), "{why}");
    assert!(h.state.reloading(), "the reload itself goes on until boot_timeout");
}

#[test]
fn a_reload_asked_for_during_a_reload_waits_for_the_next_one() {
    let mut h = Harness::running();
    h.handle(Event::Signal(Sig::Hup));
    h.control(1, Command::Reload { wait: Some(60 * SEC) });
    h.all_ready();
    assert_eq!(h.state.generation(), 2);
    assert_eq!(h.reply_to(1), None, "generation 2 read the file before the request");
    assert!(h.state.reloading());
    h.all_ready();
    assert!(done(h.reply_to(1)).contains("generation 3"));
}

#[test]
fn a_reload_asked_for_during_a_reload_that_aborts_still_runs() {
    let mut h = Harness::running();
    let old = h.pids();
    h.handle(Event::Signal(Sig::Hup));
    h.control(1, Command::Reload { wait: Some(60 * SEC) });
    let new: Vec<i32> = h.pids().into_iter().filter(|p| !old.contains(p)).collect();
    h.exit(new[0], ExitHow::Code(3));
    h.reap_killed();
    assert!(h.state.reloading(), "the queued reload starts");
    h.all_ready();
    assert!(done(h.reply_to(1)).contains("generation 3"));
}

#[test]
fn recycle_replaces_every_serving_worker_one_at_a_time_replacement_first() {
    let mut h = Harness::running();
    let old = h.pids();
    h.control(1, Command::Recycle { wait: Some(60 * SEC) });
    for pid in &old {
        assert_eq!(h.life(*pid), Life::Ready { recycle: Some(Recycle::Operator) });
    }
    let mut rounds = 0;
    while h.reply_to(1).is_none() && rounds < 10 {
        rounds += 1;
        let booting = h.pids().iter().filter(|p| h.life(**p) == Life::Booting).count();
        assert!(booting <= 1, "one replacement at a time");
        assert!(h.serving().len() >= 2, "capacity never dips");
        h.all_ready();
        for pid in h.pids() {
            if matches!(h.life(pid), Life::Retiring { .. }) {
                h.exit(pid, ExitHow::Code(0));
            }
        }
        h.run_for(200 * MS, 100 * MS);
    }
    assert_eq!(done(h.reply_to(1)), "recycled 2 workers");
    assert!(h.pids().iter().all(|p| !old.contains(p)));
    assert_eq!(h.state.counters().restarts[RestartReason::RecycleOperator.index()], 2);
}

#[test]
fn scale_sets_the_worker_count_within_bounds() {
    let mut h = Harness::running();
    assert!(done(h.control(1, Command::Scale { workers: 4 }).first().map(|r| &r.1)).contains("set to 4 (was 2)"));
    h.run_for(SEC, 100 * MS);
    assert_eq!(h.pids().len(), 4);
    assert!(failed(h.control(2, Command::Scale { workers: 0 }).first().map(|r| &r.1)).contains("between 1 and"));
    assert!(failed(h.control(3, Command::Scale { workers: 10_000 }).first().map(|r| &r.1)).contains("between 1 and"));
    h.all_ready();
    let actions = h.handle(Event::Control { client: 4, command: Command::Scale { workers: 1 } });
    assert_eq!(kills(&actions).len(), 3, "three retire");
    assert_eq!(h.state.desired(), 1);
}

#[test]
fn stop_wait_is_answered_as_the_master_exits() {
    let mut h = Harness::running();
    let actions = h.handle(Event::Control { client: 1, command: Command::Stop { fast: false, wait: Some(60 * SEC) } });
    assert!(kills(&actions).iter().all(|(_, s)| *s == Signal::SIGTERM) && kills(&actions).len() == 2);
    assert_eq!(h.control(2, Command::Stop { fast: false, wait: None }), [(2, Reply::Done("already stopping".into()))]);
    assert_eq!(failed(h.control(3, Command::Recycle { wait: None }).first().map(|r| &r.1)), "the server is stopping");
    for pid in h.pids() {
        h.exit(pid, ExitHow::Code(0));
    }
    assert_eq!(h.exit, Some(0));
    assert_eq!(done(h.reply_to(1)), "stopped (exit code 0)");

    let mut h = Harness::running();
    h.control(1, Command::Reload { wait: Some(60 * SEC) });
    h.control(2, Command::Stop { fast: true, wait: Some(60 * SEC) });
    assert_eq!(failed(h.reply_to(1)), "reload aborted: stopping");
    h.advance(QUIT_GRACE);
    h.reap_killed();
    assert_eq!(done(h.reply_to(2)), "stopped (exit code 0)");
}

#[test]
fn upgrade_is_answered_when_the_new_master_runs_takes_over_or_fails() {
    let mut h = Harness::running();
    assert_eq!(
        h.control(1, Command::Upgrade { wait: None }),
        [(1, Reply::Done(format!("binary upgrade started: new master {NEW_MASTER}")))]
    );
    h.control(2, Command::Upgrade { wait: Some(60 * SEC) });
    assert_eq!(h.state.upgrade_stage(), Some(UpgradeStage::Booting { pid: NEW_MASTER }));
    assert_eq!(h.reply_to(2), None);
    h.handle(Event::Upgrade(UpgradeNews::TookOver { pid: NEW_MASTER }));
    assert_eq!(h.reply_to(2), Some(&Reply::Upgraded { new_master: NEW_MASTER }));
    h.handle(Event::Signal(Sig::Term));
    assert_eq!(h.state.phase(), Phase::Stopping);

    let mut h = Harness::running();
    h.control(1, Command::Upgrade { wait: Some(60 * SEC) });
    h.handle(Event::Upgrade(UpgradeNews::Failed { reason: "the new master exited with exit code 3".into() }));
    assert_eq!(failed(h.reply_to(1)), "binary upgrade failed: the new master exited with exit code 3");
    assert_eq!(h.state.upgrade_stage(), None);

    let mut h = Harness::running();
    h.upgrade_fails = true;
    h.control(1, Command::Upgrade { wait: Some(60 * SEC) });
    assert_eq!(failed(h.reply_to(1)), "binary upgrade failed: cannot start");

    let mut h = Harness::new(POLICY);
    h.handle(Event::Tick);
    assert!(failed(h.control(1, Command::Upgrade { wait: None }).first().map(|r| &r.1)).contains("startup"));
}

#[test]
fn a_client_that_hangs_up_is_forgotten_and_status_and_reopen_are_answered_at_once() {
    let mut h = Harness::running();
    h.control(1, Command::Reload { wait: Some(60 * SEC) });
    h.handle(Event::ClientGone(1));
    assert!(h.state.waiters.is_empty());
    h.all_ready();
    assert_eq!(h.replies, [], "nobody to answer");
    assert_eq!(h.control(2, Command::Status), [(2, Reply::Status)]);
    assert_eq!(h.control(3, Command::ReopenLogs), [(3, Reply::Done("log file reopened".into()))]);
}
