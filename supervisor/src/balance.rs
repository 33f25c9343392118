//! Spreading client connections over the workers.
//!
//! Every worker waits on the same listening sockets and the kernel wakes all of them for a new connection;
//! the worker that happens to run first takes everything queued. When a client opens many keep-alive
//! connections at once (a load balancer's upstream pool, a load generator), one worker can end up holding
//! nearly all of them while its siblings idle, and each worker serves its connections on its own runtime:
//! the tail latency of the crowded worker grows. So a worker that already holds clearly more than its share
//! of the open connections lets its siblings take the next one (in the spirit of nginx's `accept_mutex`).
//! It defers for a few milliseconds at most, then accepts anyway, so a sibling that is slow to run can delay
//! a connection but never strand it.
//!
//! A deferring worker looks again every millisecond and whenever one of its own connections closes. The
//! second matters with short connections (`keepalive = 0`, clients sending `Connection: close`): the
//! workers' counts change on every request, two workers can each find themselves over their share in
//! turn, and waiting for the next timer tick to notice that the share moved back would leave nobody
//! accepting for a millisecond at a time (measured: half the throughput).

use std::time::Duration;

/// Connections a worker may hold beyond an even share before it defers to its siblings.
pub(crate) const SLACK: u64 = 2;
/// The longest a worker over its share waits for a sibling to take the queued connections.
pub(crate) const MAX_DEFER: Duration = Duration::from_millis(10);
/// How often a deferring worker looks again.
pub(crate) const RECHECK: Duration = Duration::from_millis(1);
/// How often a worker that spent its request budget, and leaves new connections to its accepting siblings
/// until it is replaced, looks again whether one still is.
pub(crate) const YIELD_RECHECK: Duration = Duration::from_millis(20);

/// True when a worker holding `mine` connections holds more than an even share plus [`SLACK`] of all the
/// connections held by itself and its accepting `peers`.
pub(crate) fn over_share(mine: u64, peers: impl IntoIterator<Item = u64>) -> bool {
    let (workers, total) = peers.into_iter().fold((1, mine), |(n, total), c| (n + 1, total + c));
    // mine > total / workers + SLACK, without the rounding of an integer division.
    mine * workers > total + SLACK * workers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_worker_never_defers() {
        assert!(!over_share(10_000, []));
    }

    #[test]
    fn a_worker_defers_only_beyond_an_even_share_plus_the_slack() {
        // 2 workers, 64 connections: an even split is 32 each.
        assert!(!over_share(34, [30]), "within the slack");
        assert!(over_share(35, [29]));
        // A burst: the first worker takes a few, then leaves the next ones to its idle sibling.
        assert!(!over_share(4, [0]));
        assert!(over_share(5, [0]));
        // Small numbers never trigger it.
        assert!(!over_share(2, [0, 0, 0]));
        assert!(over_share(3, [0, 0, 0]));
        // The worker with the fewest connections never defers, so someone always accepts.
        assert!(!over_share(0, [100, 100]));
        assert!(!over_share(10, [10, 10, 10]));
    }
}
