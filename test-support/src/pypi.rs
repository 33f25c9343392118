//! Python tools from PyPI that tests run against the server (schemathesis, openapi-spec-validator), never from
//! the system's Python: every version pinned in a requirements file of the repository, installed with pip into
//! a virtual environment under `${XDG_CACHE_HOME:-~/.cache}/prefork-server/`, once, and again only when that
//! file changes.
//!
//! The environment is built in place and marked complete last (a copy of the requirements file), so an
//! installation cut short is redone by the next run; a lock file keeps two test processes from building it at
//! once.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::run_within;
use crate::provision;

/// How long creating the environment, and then installing into it, may take (pip downloads everything the
/// first time).
const STEP_LIMIT: Duration = Duration::from_secs(300);

/// A virtual environment holding exactly the pinned requirements.
pub struct Venv {
    dir: PathBuf,
}

impl Venv {
    /// The environment `name`, with exactly what `requirements` pins; installs it first when it is missing,
    /// incomplete or was built from other pins. Panics with pip's output if that fails.
    pub fn provide(name: &str, requirements: &Path) -> Venv {
        let wanted =
            fs::read_to_string(requirements).unwrap_or_else(|e| panic!("reading {}: {e}", requirements.display()));
        let cache = cache_dir();
        fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("creating {}: {e}", cache.display()));
        let lock_path = cache.join(format!("{name}.lock"));
        let file = File::create(&lock_path).unwrap_or_else(|e| panic!("creating {}: {e}", lock_path.display()));
        // Held until this function returns; the lock goes with the process, however it ends.
        let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .unwrap_or_else(|(_, e)| panic!("locking {}: {e}", lock_path.display()));
        let venv = Venv { dir: cache.join(name) };
        let marker = venv.dir.join("requirements.txt");
        if fs::read_to_string(&marker).is_ok_and(|installed| installed == wanted) {
            return venv;
        }
        if let Err(e) = venv.build(requirements) {
            let _ = fs::remove_dir_all(&venv.dir);
            panic!("installing {} into {}: {e}", requirements.display(), venv.dir.display());
        }
        fs::write(&marker, wanted).unwrap_or_else(|e| panic!("writing {}: {e}", marker.display()));
        venv
    }

    /// A program the environment installed (`bin/NAME`).
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    fn build(&self, requirements: &Path) -> Result<(), String> {
        let _ = fs::remove_dir_all(&self.dir);
        let log = std::env::temp_dir().join(format!("prefork-server-pip-{}.log", std::process::id()));
        let _ = fs::remove_file(&log);
        // Written to the terminal directly: the test harness would hold back `eprintln!` until the test ends.
        let note = format!("test-support: installing {} into {}\n", requirements.display(), self.dir.display());
        let _ = std::io::Write::write_all(&mut std::io::stderr(), note.as_bytes());
        let python = &provision::tools().python3;
        let steps: [(&str, Command); 2] = [
            ("python3 -m venv", {
                let mut cmd = Command::new(python);
                cmd.args(["-m", "venv"]).arg(&self.dir);
                cmd
            }),
            ("pip install", {
                let mut cmd = Command::new(self.program("pip"));
                cmd.args(["install", "--quiet", "--disable-pip-version-check", "--no-input", "-r"]).arg(requirements);
                cmd
            }),
        ];
        for (what, mut cmd) in steps {
            let (status, _) = run_within(&mut cmd, STEP_LIMIT, &log)?;
            if !status.success() {
                let output = fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = output.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
                return Err(format!("{what} failed ({status}):\n{}", tail.join("\n")));
            }
        }
        let _ = fs::remove_file(&log);
        Ok(())
    }
}

/// `${XDG_CACHE_HOME:-~/.cache}/prefork-server`.
fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"));
    base.join("prefork-server")
}
