//! What the workspace's tests share: temporary directories, free ports, polling against deadlines, process
//! helpers, the real `supervisor` binary under test with its JSON log captured, two HTTP/1.1 clients, the
//! app's contract checks, and the real programs the end-to-end tests start (a throwaway PostgreSQL, nginx).
//!
//! A dev-dependency of the other crates and nothing else: the server never links it. Real parts, no mocks:
//! every process a helper starts is stopped by its pid when its handle is dropped, every port is picked free,
//! and every wait polls against a deadline. The programs a test cannot build itself come from Debian packages;
//! [`provision`] installs them once per run where it can (root, with apt-get) and otherwise stops the test
//! with the command to run.
//!
//! - [`server`]: [`Server`] (the binary under test; [`binary!`] names it), its captured output ([`Lines`]),
//!   test configurations, its one-shot commands ([`migrate`], [`run_binary`]); [`load`]: [`Load`],
//!   background clients.
//! - [`http_client`]: one request per connection to a base URL, for the app's contract ([`app_checks`], whose
//!   requests are checked against the API description the server serves, [`openapi`]); [`conn`]: [`Conn`], a
//!   connection the test holds (keep-alive, raw header lines, I/O errors as values).
//! - [`process`]: processes and sockets from /proc, signals by pid; [`cgroup`]: a pids cgroup that makes
//!   forks fail, a memory cgroup that gets a process OOM-killed.
//! - [`pg`]: a throwaway PostgreSQL; [`nginx`]: the shipped edge configuration on Debian's nginx; [`pypi`]:
//!   pinned Python tools from PyPI in a virtual environment of their own.
#![forbid(unsafe_code)]

pub mod app_checks;
pub mod cgroup;
pub mod conn;
pub mod http_client;
pub mod load;
pub mod nginx;
pub mod openapi;
pub mod pg;
pub mod process;
pub mod provision;
pub mod pypi;
pub mod server;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use conn::{Conn, Response, get, request};
pub use load::{Load, LoadStats};
pub use process::{alive, children, cpu_time, established_to, listening_inodes, signal, socket_fds, stat};
pub use server::{
    Lines, Server, base_config, config_with, example_binary, field, migrate, min_ready_after_startup, run_binary,
    ts_seconds,
};

/// The path of the `supervisor` binary under test, for the root package's integration tests.
///
/// A macro rather than a function: cargo tells only the integration tests of the package that builds the
/// binary where it is, through `CARGO_BIN_EXE_supervisor` while it compiles them, so the path must be read
/// where the test is compiled, not in this crate.
#[macro_export]
macro_rules! binary {
    () => {
        env!("CARGO_BIN_EXE_supervisor")
    };
}

/// How often [`wait_for`] looks again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Calls `f` every `every` until it returns `Some`, or until `timeout` has passed (then `None`). `f` runs at
/// least once, also with a zero timeout.
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(every.min(deadline - now));
    }
}

/// Polls `cond` every [`POLL_INTERVAL`] until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, cond: impl FnMut() -> Option<T>) -> T {
    poll(timeout, POLL_INTERVAL, cond).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// A directory of its own under the system's temporary directory, removed with everything in it on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new, empty directory; `tag` goes into its name, to tell whose it is.
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "e2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        // A directory left by an earlier process with the same pid (killed before its drop ran) is stale.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding a free port").port()
}

/// The workspace's root directory (where `conf/`, `docs/` and `migrations/` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate lives in the workspace").to_path_buf()
}
