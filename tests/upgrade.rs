//! Binary upgrade (USR2) end to end: a new master takes over the listening socket under load; a broken new
//! binary leaves the old master serving.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use test_support::*;

/// A copy of the binary that the test can replace on disk, like a deploy does.
fn copy_binary(dir: &Path) -> PathBuf {
    let path = dir.join("supervisor");
    std::fs::copy(binary!(), &path).unwrap();
    path
}

/// Replaces the file at `path` with `contents` (a new inode, as a package manager or `cp` + `mv` does).
fn replace_file(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Kills a process and its children by pid when dropped (the new master is not the test's child).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for child in children(self.0) {
            signal(child, libc::SIGKILL);
        }
        signal(self.0, libc::SIGKILL);
    }
}

fn start(bin: &Path, top: &str) -> Server {
    let port = free_port();
    let config = config_with(port, top, "");
    let bin = bin.to_path_buf();
    let server = Server::launch(port, &config, &[], |path| {
        let mut cmd = Command::new(&bin);
        cmd.arg("--config").arg(path);
        cmd
    });
    server.wait_workers_ready(2);
    server
}

// USR2 under load: no failed request, same socket, the old master exits, pidfile handed over.
#[test]
fn usr2_hands_the_socket_to_a_new_master_under_load() {
    let dir = TempDir::new("upgrade");
    let bin = copy_binary(dir.path());
    let pidfile = dir.join("supervisor.pid");
    let mut server = start(&bin, &format!("pidfile = {:?}", pidfile.display().to_string()));
    let old_master = server.pid;
    let inode = listening_inodes(old_master, server.port);
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap().trim(), old_master.to_string());
    // A deploy puts the new binary in place (here: the same build, as a new file).
    replace_file(&bin, &std::fs::read(binary!()).unwrap());

    let load = Load::start(server.addr(), "/healthz", 16, 4);
    server.signal(libc::SIGUSR2);
    let started = server.wait_log(Duration::from_secs(10), "the new master started", |l| {
        field(l, "msg") == "binary upgrade: new master started"
    });
    let new_master = started["new_master"].as_i64().unwrap() as i32;
    let _cleanup = KillOnDrop(new_master);
    assert_eq!(server.wait_exit(Duration::from_secs(20)).code(), Some(0), "the old master drains and exits");
    let stats = load.finish();
    assert!(
        stats.failures.is_empty(),
        "{} failures: {:?}",
        stats.failures.len(),
        &stats.failures[..stats.failures.len().min(5)]
    );
    assert!(stats.ok > 0);
    assert!(alive(new_master));
    assert_eq!(listening_inodes(new_master, server.port), inode, "the new master serves the same socket");
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap().trim(), new_master.to_string(), "pidfile handed over");
    assert!(!Path::new(&format!("{}.2", pidfile.display())).exists());
    wait_for(Duration::from_secs(5), "the new master's workers", || (children(new_master).len() == 2).then_some(()));
    assert_eq!(get(server.addr(), "/healthz").unwrap().status, 200);
}

// a new binary that fails to start leaves the old master serving, and says why.
#[test]
fn a_broken_new_binary_leaves_the_old_master_serving() {
    let dir = TempDir::new("upgrade-broken");
    let bin = copy_binary(dir.path());
    let server = start(&bin, "");
    let workers = server.workers();
    replace_file(&bin, b"#!/bin/sh\necho 'this build is broken' >&2\nexit 1\n");
    server.signal(libc::SIGUSR2);
    let failed = server.wait_log(Duration::from_secs(10), "the upgrade failure", |l| {
        field(l, "msg") == "binary upgrade failed: the new master exited; still serving"
    });
    assert_eq!(failed["code"].as_i64(), Some(1));
    assert_eq!(get(server.addr(), "/healthz").unwrap().status, 200);
    assert_eq!(server.workers(), workers);
    assert!(alive(server.pid));
}

// `ctl upgrade --wait` answers once the new master took over (then it answers on the same socket), or says
// why the upgrade failed.
#[test]
fn ctl_upgrade_waits_for_the_new_master_to_take_over_or_says_why_not() {
    let dir = TempDir::new("upgrade-ctl");
    let bin = copy_binary(dir.path());
    let mut server = start(&bin, "");
    replace_file(&bin, &std::fs::read(binary!()).unwrap());
    let out = server.ctl(binary!(), &["upgrade", "--wait", "--timeout", "60"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let new_master: i32 = stdout
        .strip_prefix("binary upgrade complete: new master ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    let _cleanup = KillOnDrop(new_master);
    assert_ne!(new_master, server.pid);
    assert_eq!(server.wait_exit(Duration::from_secs(20)).code(), Some(0), "the old master drains and exits");
    let status = String::from_utf8_lossy(&server.ctl(binary!(), &["status", "--json"]).stdout).into_owned();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["pid"].as_i64(), Some(new_master as i64), "the new master answers on the same socket");
    assert!(!Path::new(&format!("{}.2", server.dir.join("supervisor.ctl").display())).exists());

    let dir = TempDir::new("upgrade-ctl-broken");
    let bin = copy_binary(dir.path());
    let server = start(&bin, "");
    replace_file(&bin, b"#!/bin/sh\nexit 2\n");
    let out = server.ctl(binary!(), &["upgrade", "--wait", "--timeout", "60"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("binary upgrade failed") && stderr.contains("exit code 2"), "{stderr}");
    assert!(alive(server.pid));
    assert_eq!(get(server.addr(), "/healthz").unwrap().status, 200);
}
