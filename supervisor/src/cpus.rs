//! How many CPUs this process may really use: the smaller of its affinity mask and its cgroup CPU quota.
//! (A container limited to 2 CPUs on a 64-core host must not start 64 workers' worth of work.)

use std::path::Path;

/// Where the CPU count came from, for the startup log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuSource {
    /// The scheduler affinity mask (`sched_getaffinity`).
    Affinity,
    /// The cgroup v2 `cpu.max` quota.
    CgroupV2,
    /// The cgroup v1 `cpu.cfs_quota_us` quota.
    CgroupV1,
}

impl CpuSource {
    /// Name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuSource::Affinity => "affinity",
            CpuSource::CgroupV2 => "cgroup cpu.max",
            CpuSource::CgroupV1 => "cgroup cpu.cfs_quota_us",
        }
    }
}

/// Usable CPUs (at least 1) and what limited them.
pub fn usable_cpus() -> (usize, CpuSource) {
    let affinity = affinity_cpus().unwrap_or(1);
    match cgroup_quota(Path::new("/sys/fs/cgroup")) {
        Some((quota, source)) if quota < affinity => (quota, source),
        _ => (affinity, CpuSource::Affinity),
    }
}

fn affinity_cpus() -> Option<usize> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    let n = (0..nix::sched::CpuSet::count()).filter(|&i| set.is_set(i).unwrap_or(false)).count();
    (n > 0).then_some(n)
}

/// The CPU quota of the cgroup mounted at `root`, rounded up to whole CPUs.
fn cgroup_quota(root: &Path) -> Option<(usize, CpuSource)> {
    if let Ok(text) = std::fs::read_to_string(root.join("cpu.max")) {
        return parse_quota(text.split_whitespace().next()?, text.split_whitespace().nth(1)?)
            .map(|n| (n, CpuSource::CgroupV2));
    }
    let quota = std::fs::read_to_string(root.join("cpu/cpu.cfs_quota_us")).ok()?;
    let period = std::fs::read_to_string(root.join("cpu/cpu.cfs_period_us")).ok()?;
    parse_quota(quota.trim(), period.trim()).map(|n| (n, CpuSource::CgroupV1))
}

fn parse_quota(quota: &str, period: &str) -> Option<usize> {
    let quota: i64 = quota.parse().ok()?; // "max" (v2) fails here: no quota
    let period: i64 = period.parse().ok()?;
    (quota > 0 && period > 0).then(|| ((quota + period - 1) / period).max(1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_round_up_and_max_means_none() {
        assert_eq!(parse_quota("150000", "100000"), Some(2));
        assert_eq!(parse_quota("50000", "100000"), Some(1));
        assert_eq!(parse_quota("max", "100000"), None);
        assert_eq!(parse_quota("-1", "100000"), None);
    }

    #[test]
    fn reads_cgroup_v2_and_v1_layouts() {
        let dir = std::env::temp_dir().join(format!("cpus-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("cpu")).unwrap();
        std::fs::write(dir.join("cpu/cpu.cfs_quota_us"), "300000\n").unwrap();
        std::fs::write(dir.join("cpu/cpu.cfs_period_us"), "100000\n").unwrap();
        assert_eq!(cgroup_quota(&dir), Some((3, CpuSource::CgroupV1)));
        std::fs::write(dir.join("cpu.max"), "200000 100000\n").unwrap();
        assert_eq!(cgroup_quota(&dir), Some((2, CpuSource::CgroupV2)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
