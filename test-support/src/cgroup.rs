//! A pids cgroup for fault injection: once its limit equals its current count, every `fork` of a process
//! in it fails with EAGAIN, as on a host or container at its pids limit.
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
