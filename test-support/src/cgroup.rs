//! cgroups for fault injection: a pids cgroup makes forks fail ([`PidsCgroup`]), a memory cgroup gets a
//! process OOM-killed ([`MemoryCgroup`]). A pids cgroup: once its limit equals its current count, every
//! `fork` of a process in it fails with EAGAIN, as on a host or container at its pids limit.
//!
//! cgroup v1 mounts the controller at `/sys/fs/cgroup/pids`; cgroup v2 has one hierarchy at
//! `/sys/fs/cgroup`, where `+pids` must be enabled in the parent's `cgroup.subtree_control`. Both need root.

use std::path::PathBuf;

/// A pids cgroup of its own, removed on drop (its processes are moved back to the parent first).
pub struct PidsCgroup {
    dir: PathBuf,
    parent: PathBuf,
}

impl PidsCgroup {
    /// Creates a new group, or says why this machine or user cannot.
    pub fn new(tag: &str) -> Result<PidsCgroup, String> {
        if !crate::process::is_root() {
            return Err("a pids cgroup needs root".into());
        }
        let v1 = PathBuf::from("/sys/fs/cgroup/pids");
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let parent = if v1.join("cgroup.procs").exists() {
            v1
        } else if std::fs::read_to_string(v2.join("cgroup.controllers")).is_ok_and(|c| c.contains("pids")) {
            std::fs::write(v2.join("cgroup.subtree_control"), "+pids").map_err(|e| format!("enable +pids: {e}"))?;
            v2
        } else {
            return Err("no pids controller at /sys/fs/cgroup/pids (v1) or in /sys/fs/cgroup (v2)".into());
        };
        let dir = parent.join(format!("e2e-{tag}-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        Ok(PidsCgroup { dir, parent })
    }

    /// Moves a process (all its threads) into the group; its later children are born in it.
    pub fn add(&self, pid: i32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("move a process into the cgroup");
    }

    /// From now on, no process in the group can fork.
    pub fn block_forks(&self) {
        let current = std::fs::read_to_string(self.dir.join("pids.current")).expect("pids.current");
        std::fs::write(self.dir.join("pids.max"), current.trim()).expect("set pids.max");
    }

    /// Forks succeed again.
    pub fn allow_forks(&self) {
        std::fs::write(self.dir.join("pids.max"), "max").expect("lift pids.max");
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("pids.max"), "max");
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.parent.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A memory cgroup for fault injection: a process moved into it with a limit below what it will allocate is
/// killed by the kernel's OOM killer, as a container at its memory limit is. cgroup v1 does not move a
/// process's existing charges with it, so a limit far below its size still lets it in: its next
/// allocations fail, and the OOM killer takes it.
///
/// cgroup v1 mounts the controller at `/sys/fs/cgroup/memory`; cgroup v2 has one hierarchy at
/// `/sys/fs/cgroup`, where `+memory` must be enabled in the parent's `cgroup.subtree_control`. Both need root.
pub struct MemoryCgroup {
    dir: PathBuf,
    parent: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    /// Creates a new group limited to `limit_bytes`, or says why this machine or user cannot.
    pub fn new(tag: &str, limit_bytes: u64) -> Result<MemoryCgroup, String> {
        if !crate::process::is_root() {
            return Err("a memory cgroup needs root".into());
        }
        let v1 = PathBuf::from("/sys/fs/cgroup/memory");
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let (parent, is_v2) = if v1.join("cgroup.procs").exists() {
            (v1, false)
        } else if std::fs::read_to_string(v2.join("cgroup.controllers")).is_ok_and(|c| c.contains("memory")) {
            std::fs::write(v2.join("cgroup.subtree_control"), "+memory").map_err(|e| format!("enable +memory: {e}"))?;
            (v2, true)
        } else {
            return Err("no memory controller at /sys/fs/cgroup/memory (v1) or in /sys/fs/cgroup (v2)".into());
        };
        let dir = parent.join(format!("e2e-{tag}-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let cg = MemoryCgroup { dir, parent, v2: is_v2 };
        let limit_file = if is_v2 { "memory.max" } else { "memory.limit_in_bytes" };
        std::fs::write(cg.dir.join(limit_file), limit_bytes.to_string())
            .map_err(|e| format!("set {limit_file}: {e}"))?;
        if is_v2 {
            // Without swap, the limit is the limit.
            let _ = std::fs::write(cg.dir.join("memory.swap.max"), "0");
        }
        Ok(cg)
    }

    /// Moves a process (all its threads) into the group.
    pub fn add(&self, pid: i32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("move a process into the cgroup");
    }

    /// How many processes of the group the OOM killer has killed.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 { "memory.events" } else { "memory.oom_control" };
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.parent.join("cgroup.procs"), pid);
            }
        }
        // A group whose last process was just killed may still be busy for a moment.
        crate::poll(std::time::Duration::from_secs(5), crate::POLL_INTERVAL, || std::fs::remove_dir(&self.dir).ok());
    }
}
