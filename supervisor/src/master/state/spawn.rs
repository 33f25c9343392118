//! When the master may fork: the retry delay after a failed fork, the crash-loop backoff, and the rate limit
//! on replacements. Together they make sure no failure, inside or outside the application, turns the master
//! into a busy loop or a fork bomb, while a worker killed from outside is replaced at once.

use super::{MIN_UPTIME, MS, Nanos, SEC};

/// Upper bound of the crash-loop backoff.
pub const MAX_BACKOFF: Nanos = 30 * SEC;
/// Upper bound of the delay before a failed fork is retried.
pub const MAX_FORK_RETRY: Nanos = SEC;
/// Replacements beyond a burst of one per worker are spaced at least this far apart.
pub const RESPAWN_INTERVAL: Nanos = 100 * MS;

/// What a spawn is for, which decides the limits it is subject to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Asked for by the operator (startup, reload): only a failed fork delays it.
    Planned,
    /// Restores the worker count: also subject to the crash-loop backoff and the rate limit.
    Replace,
    /// Replaces a worker that spent its `max_requests`: subject to the crash-loop backoff (its replacement
    /// may fail to boot), not to the rate limit (recycling is as frequent as the operator configured it).
    Recycle,
}

/// The spawn policy's memory.
#[derive(Clone, Debug, Default)]
pub struct Spawner {
    /// Consecutive early deaths (see `Worker::died_early`).
    crashes: u32,
    /// When the last one happened.
    last_crash: Nanos,
    /// Consecutive failed forks.
    fork_failures: u32,
    /// No fork of any kind before this.
    fork_retry_at: Nanos,
    /// No replacement before this.
    crash_retry_at: Nanos,
    /// Rate limit of replacements (a generic cell rate algorithm): when the next one would be due if they
    /// were evenly spaced.
    due: Nanos,
}

impl Spawner {
    /// The earliest time a spawn for `purpose` may be issued; `burst` replacements may go at once.
    pub fn ready_at(&self, purpose: Purpose, burst: usize) -> Nanos {
        match purpose {
            Purpose::Planned => self.fork_retry_at,
            Purpose::Recycle => self.fork_retry_at.max(self.crash_retry_at),
            Purpose::Replace => {
                let rate = self.due.saturating_sub((burst.max(1) as u64 - 1).saturating_mul(RESPAWN_INTERVAL));
                self.fork_retry_at.max(self.crash_retry_at).max(rate)
            }
        }
    }

    /// Records that a spawn was issued at `now`.
    pub fn issued(&mut self, purpose: Purpose, now: Nanos) {
        if purpose == Purpose::Replace {
            self.due = self.due.max(now).saturating_add(RESPAWN_INTERVAL);
        }
    }

    /// A fork succeeded.
    pub fn forked(&mut self) {
        self.fork_failures = 0;
    }

    /// A fork failed at `now`: no fork before the returned delay has passed.
    pub fn fork_failed(&mut self, now: Nanos) -> Nanos {
        self.fork_failures = self.fork_failures.saturating_add(1);
        let delay = fork_retry_delay(self.fork_failures);
        self.fork_retry_at = now.saturating_add(delay);
        delay
    }

    /// A worker died early at `now`: no replacement before the returned delay has passed.
    pub fn crashed(&mut self, now: Nanos) -> Nanos {
        self.crashes = self.crashes.saturating_add(1);
        self.last_crash = now;
        let delay = backoff(self.crashes);
        self.crash_retry_at = now.saturating_add(delay);
        delay
    }

    /// Consecutive early deaths so far.
    pub fn crashes(&self) -> u32 {
        self.crashes
    }

    /// More than one early death in a row: replacements are being backed off.
    pub fn in_crash_loop(&self) -> bool {
        self.crashes > 1
    }

    /// Ends a crash loop once a worker spawned after the last early death has been ready for
    /// [`MIN_UPTIME`].
    pub fn settle(&mut self, spawned: Nanos, ready_at: Nanos, now: Nanos) {
        if self.crashes > 0 && spawned > self.last_crash && now.saturating_sub(ready_at) >= MIN_UPTIME {
            self.crashes = 0;
        }
    }
}

/// Delay before the next replacement after `crashes` consecutive early deaths: none for the first, then
/// 0.5 s doubling up to [`MAX_BACKOFF`].
pub fn backoff(crashes: u32) -> Nanos {
    if crashes <= 1 {
        return 0;
    }
    (500 * MS).saturating_mul(1 << (crashes - 2).min(16)).min(MAX_BACKOFF)
}

/// Delay before retrying after `failures` consecutive failed forks: 50 ms doubling up to
/// [`MAX_FORK_RETRY`], so forks are tried again soon after they can succeed, and never in a busy loop.
pub fn fork_retry_delay(failures: u32) -> Nanos {
    (50 * MS).saturating_mul(1 << failures.saturating_sub(1).min(16)).min(MAX_FORK_RETRY)
}
