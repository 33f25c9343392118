//! The programs the end-to-end tests run but cannot build: nginx, promtool, openssl, python3 and the
//! PostgreSQL server binaries, all from Debian packages.
//!
//! The first fixture that needs one of them looks for all of them, once per test process ([`tools`]). When
//! some are missing and this process can install them (root, with apt-get), it installs every missing
//! package at once: one `apt-get update`, one `apt-get install`, under a lock file so that two test processes
//! never run apt together, waiting while something else holds apt's own locks. The later test processes of
//! the run then find everything in place. Otherwise the test stops at once with one message that names the
//! packages and the command to run: a missing program is never a skipped test, nor a panic deep inside one.
//!
//! Overrides: `NGINX_BIN` (the nginx binary) and `PG_BIN` (the directory holding initdb, postgres,
//! pg_isready and psql). An override that points nowhere is reported, never "fixed" by installing a package.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::poll;
use crate::process::is_root;

/// Where the programs are.
#[derive(Debug)]
pub struct Tools {
    pub nginx: PathBuf,
    pub promtool: PathBuf,
    pub openssl: PathBuf,
    pub python3: PathBuf,
    /// The directory holding [`PG_PROGRAMS`].
    pub pg_bin: PathBuf,
}

/// The PostgreSQL programs the throwaway server needs.
pub const PG_PROGRAMS: [&str; 4] = ["initdb", "postgres", "pg_isready", "psql"];

/// How long apt may keep us waiting for its locks, held by another installation on this machine.
const APT_LOCK_WAIT: Duration = Duration::from_secs(600);

/// The programs, installing what is missing when this process can. Panics with what to install otherwise.
pub fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    match TOOLS.get_or_init(provide) {
        Ok(tools) => tools,
        Err(message) => panic!("{message}"),
    }
}

/// One program: how to find it, and the Debian package that installs it.
struct Program {
    name: &'static str,
    package: &'static str,
    find: fn() -> Found,
}

/// What looking for a program found.
enum Found {
    At(PathBuf),
    Missing,
    /// An override points at nothing usable; installing a package would not change that.
    Misconfigured(String),
}

/// Every program, in the order of [`Tools`]' fields.
const PROGRAMS: [Program; 5] = [
    Program { name: "nginx", package: "nginx-light", find: find_nginx },
    Program { name: "promtool", package: "prometheus", find: find_promtool },
    Program { name: "openssl", package: "openssl", find: find_openssl },
    Program { name: "python3", package: "python3", find: find_python3 },
    Program { name: "the PostgreSQL server binaries", package: "postgresql-15", find: find_pg_bin },
];

fn provide() -> Result<Tools, String> {
    let found = look();
    let can_install = is_root() && Path::new("/usr/bin/apt-get").is_file();
    if !can_install || !found.iter().any(|(_, f)| matches!(f, Found::Missing)) {
        return assemble(found, can_install);
    }
    install()?;
    assemble(look(), can_install)
}

fn look() -> Vec<(&'static Program, Found)> {
    PROGRAMS.iter().map(|p| (p, (p.find)())).collect()
}

/// The tools if every program was found, else the message that says what to do.
fn assemble(found: Vec<(&'static Program, Found)>, can_install: bool) -> Result<Tools, String> {
    let mut paths = Vec::new();
    let mut missing = Vec::new();
    let mut misconfigured = Vec::new();
    for (program, found) in found {
        match found {
            Found::At(path) => paths.push(path),
            Found::Missing => missing.push(program),
            Found::Misconfigured(why) => misconfigured.push(why),
        }
    }
    if !missing.is_empty() || !misconfigured.is_empty() {
        return Err(unavailable(&missing, &misconfigured, can_install));
    }
    let [nginx, promtool, openssl, python3, pg_bin] = <[PathBuf; 5]>::try_from(paths).expect("one path per program");
    Ok(Tools { nginx, promtool, openssl, python3, pg_bin })
}

/// The message of a run that cannot go on: what is missing and the one command that installs it.
fn unavailable(missing: &[&Program], misconfigured: &[String], can_install: bool) -> String {
    let mut message = String::from("the end-to-end tests cannot run on this machine yet:\n");
    for why in misconfigured {
        message.push_str(&format!("  - {why}\n"));
    }
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
        let packages: Vec<&str> = missing.iter().map(|p| p.package).collect();
        let packages = packages.join(" ");
        message.push_str(&format!("  - not installed: {}\n", names.join(", ")));
        if can_install {
            // Only reached when installing was tried and did not provide everything.
            message.push_str(&format!("apt-get installed {packages}, and they are still missing.\n"));
        } else {
            message.push_str(&format!(
                "Install the Debian packages, then run the tests again:\n\n    \
                 sudo apt-get update && sudo apt-get install -y --no-install-recommends {packages}\n\n\
                 (Run as root on a machine with apt-get, `cargo test` installs them itself.)\n"
            ));
        }
    }
    message
}

/// Installs the packages of the programs still missing, holding the lock file while it checks and installs.
fn install() -> Result<(), String> {
    let lock_path = std::env::temp_dir().join("prefork-server-test-packages.lock");
    let file = File::create(&lock_path).map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    // Blocks while another test process installs; the lock goes with the process, however it ends.
    let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock {}: {e}", lock_path.display()))?;
    // That other process may have installed them meanwhile.
    let packages: Vec<&str> =
        look().iter().filter(|(_, f)| matches!(f, Found::Missing)).map(|(p, _)| p.package).collect();
    if packages.is_empty() {
        return Ok(());
    }
    // Written to the terminal directly: the test harness would hold back `eprintln!` until the test ends.
    let note = format!("test-support: installing {} with apt-get for the end-to-end tests\n", packages.join(" "));
    let _ = std::io::stderr().write_all(note.as_bytes());
    apt_get(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&packages);
    apt_get(&install)
}

/// Runs apt-get non-interactively, waiting (up to [`APT_LOCK_WAIT`]) while another process holds its locks.
fn apt_get(args: &[&str]) -> Result<(), String> {
    let timeout = format!("DPkg::Lock::Timeout={}", APT_LOCK_WAIT.as_secs());
    let run = || {
        Command::new("apt-get")
            .args(["-o", &timeout])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
    };
    // `DPkg::Lock::Timeout` makes apt wait for dpkg's lock, but `apt-get update` fails at once when the
    // package lists are locked: try again every second.
    let locked = |o: &Output| !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Could not get lock");
    let output = poll(APT_LOCK_WAIT, Duration::from_secs(1), || Some(run()).filter(|r| !r.as_ref().is_ok_and(locked)))
        .unwrap_or_else(run)
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let tail: Vec<&str> = text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
    Err(format!(
        "the end-to-end tests need Debian packages, and `apt-get {}` failed ({}):\n{}",
        args.join(" "),
        output.status,
        tail.join("\n")
    ))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A program on `PATH`, or in /usr/bin where a reduced `PATH` leaves it out.
fn on_path(name: &str) -> Found {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .map_or(Found::Missing, Found::At)
}

fn find_promtool() -> Found {
    on_path("promtool")
}

fn find_openssl() -> Found {
    on_path("openssl")
}

fn find_python3() -> Found {
    on_path("python3")
}

/// The path in the environment variable `var`, if it is set: found when `usable`, else reported, with
/// `wanted` saying what it should name.
fn from_env(var: &str, usable: impl Fn(&Path) -> bool, wanted: &str) -> Option<Found> {
    let path = PathBuf::from(std::env::var_os(var)?);
    Some(if usable(&path) {
        Found::At(path)
    } else {
        Found::Misconfigured(format!("{var}={} is not {wanted} (unset it to use Debian's)", path.display()))
    })
}

/// `$NGINX_BIN`, else Debian's nginx with the `mime.types` the edge configuration includes.
fn find_nginx() -> Found {
    if let Some(found) = from_env("NGINX_BIN", is_executable, "an executable file") {
        return found;
    }
    let bin = PathBuf::from("/usr/sbin/nginx");
    if is_executable(&bin) && Path::new("/etc/nginx/mime.types").is_file() { Found::At(bin) } else { Found::Missing }
}

/// `$PG_BIN`, else `/usr/lib/postgresql/15/bin`, else the newest `/usr/lib/postgresql/*/bin` with every program.
fn find_pg_bin() -> Found {
    let complete = |dir: &Path| PG_PROGRAMS.iter().all(|p| is_executable(&dir.join(p)));
    let wanted = format!("a directory holding {}", PG_PROGRAMS.join(", "));
    if let Some(found) = from_env("PG_BIN", complete, &wanted) {
        return found;
    }
    let mut candidates = vec![PathBuf::from("/usr/lib/postgresql/15/bin")];
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        let mut others: Vec<(u32, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .collect();
        others.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
        candidates.extend(others.into_iter().map(|(_, p)| p));
    }
    candidates.into_iter().find(|dir| complete(dir)).map_or(Found::Missing, Found::At)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_cannot_install_is_told_the_one_command_that_does() {
        let missing = [&PROGRAMS[0], &PROGRAMS[1]];
        let message = unavailable(&missing, &[], false);
        assert!(message.contains("not installed: nginx, promtool"), "{message}");
        assert!(
            message.contains(
                "sudo apt-get update && sudo apt-get install -y --no-install-recommends nginx-light prometheus\n"
            ),
            "{message}"
        );
    }

    #[test]
    fn a_wrong_override_is_named_and_no_package_is_suggested_for_it() {
        let message = unavailable(&[], &["PG_BIN=/nowhere does not hold initdb".to_owned()], false);
        assert!(message.contains("PG_BIN=/nowhere"), "{message}");
        assert!(!message.contains("apt-get"), "{message}");
    }
}
