//! Processes and sockets as the kernel shows them in /proc, signals by pid, and commands run to their end
//! within a time limit.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Sends a signal; ignores a process that is already gone.
pub fn signal(pid: i32, sig: i32) {
    let sig = nix::sys::signal::Signal::try_from(sig).expect("a valid signal number");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Stops a child: `sig` by its pid, then SIGKILL if it has not exited within `deadline`; waits for it.
pub fn stop(child: &mut std::process::Child, sig: i32, deadline: Duration) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    signal(child.id() as i32, sig);
    if crate::poll(deadline, crate::POLL_INTERVAL, || child.try_wait().ok().flatten()).is_none() {
        signal(child.id() as i32, libc::SIGKILL);
        let _ = child.wait();
    }
}

/// Runs `cmd` to its end with its stdout and stderr appended to `log`, and returns its exit status and how
/// long it ran. Past `limit` the process is killed by its pid and waited for, and the error says so.
pub fn run_within(cmd: &mut Command, limit: Duration, log: &Path) -> Result<(ExitStatus, Duration), String> {
    let open = || OpenOptions::new().create(true).append(true).open(log);
    let (out, err) = open().and_then(|out| Ok((out, open()?))).map_err(|e| format!("{}: {e}", log.display()))?;
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let finished = crate::poll(limit, Duration::from_millis(50), || child.try_wait().expect("waiting for a child"));
    match finished {
        Some(status) => Ok((status, started.elapsed())),
        None => {
            signal(child.id() as i32, libc::SIGKILL);
            let _ = child.wait();
            Err(format!(
                "{:?} did not finish within {limit:?} and was killed; its output is in {}",
                cmd.get_program(),
                log.display()
            ))
        }
    }
}

/// Whether this process runs as root (some fixtures need it; PostgreSQL refuses it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Live (not zombie) children of `pid`, from /proc.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for entry in entries.flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Some((state, ppid)) = stat(child)
            && ppid == pid
            && state != 'Z'
        {
            out.push(child);
        }
    }
    out.sort();
    out
}

/// The fields of /proc/PID/stat after the command name: the state is the first, the parent pid the second.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces and parentheses.
    let rest = text.get(text.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(String::from).collect())
}

/// Process state letter and parent pid, from /proc/PID/stat.
pub fn stat(pid: i32) -> Option<(char, i32)> {
    let fields = stat_fields(pid)?;
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    Some((state, ppid))
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(s, _)| s != 'Z')
}

/// CPU time a process has used (user + system), from /proc/PID/stat; panics if the process is gone.
pub fn cpu_time(pid: i32) -> Duration {
    let fields = stat_fields(pid).unwrap_or_else(|| panic!("no /proc/{pid}/stat"));
    let ticks: u64 = fields[11..13].iter().map(|f| f.parse::<u64>().expect("utime and stime are numbers")).sum();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// One row of /proc/net/tcp or /proc/net/tcp6.
struct TcpSocket {
    local_port: u16,
    remote_port: u16,
    /// The kernel's state number in hex, as printed: "0A" listening, "01" established.
    state: String,
    inode: u64,
}

/// Every TCP socket of this network namespace, IPv4 and IPv6.
fn tcp_sockets() -> Vec<TcpSocket> {
    let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(String::from).collect::<Vec<_>>())
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some(TcpSocket {
                local_port: port(cols.get(1)?)?,
                remote_port: port(cols.get(2)?)?,
                state: cols.get(3)?.to_string(),
                inode: cols.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// Inodes of the TCP sockets a process has open that are listening on `port`.
pub fn listening_inodes(pid: i32, port: u16) -> Vec<u64> {
    let listening: Vec<u64> =
        tcp_sockets().into_iter().filter(|s| s.local_port == port && s.state == "0A").map(|s| s.inode).collect();
    let mut out: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|t| t.to_string_lossy().strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
                .filter(|i| listening.contains(i))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// Established TCP connections whose remote port is `port` (e.g. a proxy's side of its upstream connections).
pub fn established_to(port: u16) -> usize {
    tcp_sockets().iter().filter(|s| s.remote_port == port && s.state == "01").count()
}

/// Socket descriptors the process has open.
pub fn socket_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| {
        d.flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")))
            .count()
    })
}
