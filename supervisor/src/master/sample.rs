//! What the master reads about its workers from the kernel: their memory, sampled at most once a second,
//! and the kernel's count of OOM kills, which tells a SIGKILL of the OOM killer from one sent by hand.
//!
//! Memory is the proportional set size (`Pss` of `/proc/PID/smaps_rollup`): a forked worker shares the
//! pages it inherited from the master, and PSS charges each process its share of them instead of all of
//! them, as the resident set size does. Where `smaps_rollup` cannot be read (kernels before 4.14), the
//! resident set size of `/proc/PID/statm`.
//!
//! OOM kills are counted by the kernel system-wide (`oom_kill` in `/proc/vmstat`) and per memory cgroup
//! (`oom_kill` in `memory.events` on cgroup v2, in `memory.oom_control` on v1). The master reads these
//! counters every loop turn, and the cgroup of every worker when it samples its memory; an increase seen
//! within [`OOM_WINDOW`] before a worker's unexplained SIGKILL names the OOM killer as its cause. (On a host
//! where other processes are OOM-killed at the same moment, a worker killed by hand then can be mistaken
//! for one of them; the reverse mistake needs a counter the kernel did not raise, which it always does.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::state::Nanos;

/// How long after an OOM kill was counted a worker's SIGKILL is still put down to it: the kernel raises
/// the count before the victim has finished exiting, and the master may look in between.
pub const OOM_WINDOW: Nanos = 2_000_000_000;
/// How often the master samples its workers' memory.
pub const SAMPLE_EVERY: Nanos = 1_000_000_000;

/// The memory of process `pid` in bytes: its PSS, else its RSS; `None` when it cannot be read (it is gone).
pub fn memory_of(pid: i32) -> Option<u64> {
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        return kib_field(&text, "Pss:").map(|kib| kib * 1024);
    }
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |n| n as u64)
}

/// The value of a `Name:   123 kB` line.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The kernel's OOM-kill counters the master watches, and when one last went up.
#[derive(Debug, Default)]
pub struct OomWatch {
    /// Each counter's file (with the name of its `oom_kill` line) and its last value.
    counters: BTreeMap<PathBuf, u64>,
    /// When a counter was last seen higher than before.
    last_increase: Option<Nanos>,
}

impl OomWatch {
    /// Watches the system-wide counter and the master's own memory cgroup.
    pub fn new() -> OomWatch {
        let mut watch = OomWatch::default();
        watch.watch(PathBuf::from("/proc/vmstat"));
        if let Some(own) = memory_cgroup_counter(std::process::id() as i32) {
            watch.watch(own);
        }
        watch
    }

    /// Also watches the memory cgroup `pid` is in (a worker moved into a cgroup of its own).
    pub fn watch_cgroup_of(&mut self, pid: i32) {
        if let Some(path) = memory_cgroup_counter(pid) {
            self.watch(path);
        }
    }

    fn watch(&mut self, path: PathBuf) {
        if !self.counters.contains_key(&path)
            && let Some(count) = oom_kills(&path)
        {
            self.counters.insert(path, count);
        }
    }

    /// Reads every counter again at `now`; remembers when one went up.
    pub fn refresh(&mut self, now: Nanos) {
        for (path, last) in &mut self.counters {
            if let Some(count) = oom_kills(path) {
                if count > *last {
                    self.last_increase = Some(now);
                }
                *last = count;
            }
        }
    }

    /// Whether an OOM kill was counted within [`OOM_WINDOW`] of `now`.
    pub fn recent(&self, now: Nanos) -> bool {
        self.last_increase.is_some_and(|at| now.saturating_sub(at) <= OOM_WINDOW)
    }
}

/// The `oom_kill` count in a counter file (`/proc/vmstat`, `memory.events`, `memory.oom_control`).
fn oom_kills(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|v| v.trim().parse().ok())
}

/// The file counting OOM kills in the memory cgroup of `pid`: `memory.events` (v2) or
/// `memory.oom_control` (v1), if it exists.
fn memory_cgroup_counter(pid: i32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        let candidate = if controllers.is_empty() {
            Path::new("/sys/fs/cgroup").join(path).join("memory.events")
        } else if controllers.split(',').any(|c| c == "memory") {
            Path::new("/sys/fs/cgroup/memory").join(path).join("memory.oom_control")
        } else {
            continue;
        };
        if candidate.exists() {
            return Some(candidate);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_memory_and_counters_are_readable() {
        let own = memory_of(std::process::id() as i32).expect("this process's memory");
        assert!(own > 1024 * 1024, "{own} bytes");
        assert_eq!(memory_of(i32::MAX), None);
        assert!(oom_kills(Path::new("/proc/vmstat")).is_some(), "/proc/vmstat counts OOM kills");
        assert_eq!(kib_field("Rss: 10 kB\nPss:     7 kB\n", "Pss:"), Some(7));
    }

    #[test]
    fn an_increase_is_recent_for_a_window() {
        let dir = std::env::temp_dir().join(format!("oomwatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("memory.events");
        std::fs::write(&file, "low 0\noom 1\noom_kill 1\n").unwrap();
        let mut watch = OomWatch::default();
        watch.watch(file.clone());
        watch.refresh(10);
        assert!(!watch.recent(10), "no increase yet");
        std::fs::write(&file, "low 0\noom 2\noom_kill 2\n").unwrap();
        watch.refresh(20);
        assert!(watch.recent(20) && watch.recent(20 + OOM_WINDOW));
        assert!(!watch.recent(21 + OOM_WINDOW), "an old kill says nothing");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
