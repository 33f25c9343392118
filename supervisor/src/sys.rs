//! The supervisor's only `unsafe` code: fork, shared memory, signal dispositions and raw file descriptors.
//!
//! Everything here is exposed as safe functions whose preconditions are checked at run time where they can be
//! (for example, [`fork`] refuses to run in a multi-threaded process).
#![allow(unsafe_code)]

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};

/// Nanoseconds on `CLOCK_MONOTONIC`. The clock is system-wide, so stamps written by a worker can be compared
/// with the master's reading.
pub fn monotonic_ns() -> u64 {
    let ts =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Maps `words` zeroed 64-bit words of anonymous memory shared with every process forked afterwards.
/// The mapping is never unmapped: it lives as long as the process, and children inherit it.
pub fn shared_words(words: usize) -> io::Result<&'static [AtomicU64]> {
    let len = NonZeroUsize::new(words * std::mem::size_of::<AtomicU64>()).ok_or(io::ErrorKind::InvalidInput)?;
    let prot = nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE;
    // SAFETY: we ask for a fresh anonymous mapping at an address of the kernel's choosing, so it cannot alias
    // any existing Rust object.
    let ptr = unsafe { nix::sys::mman::mmap_anonymous(None, len, prot, nix::sys::mman::MapFlags::MAP_SHARED) }?;
    // SAFETY: the mapping is `len` bytes, page-aligned (so aligned for AtomicU64), zero-filled by the kernel
    // (and zero is a valid AtomicU64), and never unmapped, so a `'static` shared slice over it is sound. Other
    // processes only ever access it through the same atomic type.
    Ok(unsafe { std::slice::from_raw_parts(ptr.as_ptr().cast::<AtomicU64>(), words) })
}

/// Number of threads of this process, from `/proc/self/task`.
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// The outcome of [`fork`] as seen by the calling process.
pub enum Forked {
    /// We are the parent; the child has this pid.
    Parent(i32),
    /// We are the new child.
    Child,
}

/// Forks the process without exec. Refuses to run when the process has more than one thread, because only
/// the calling thread survives in the child and locks held by others would never be released.
pub fn fork() -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!("refusing to fork a process with {threads} threads")));
    }
    // SAFETY: the process is single-threaded (checked just above), so the child inherits a consistent
    // address space: no other thread can hold a lock (allocator, stdio, signal registry) at this moment.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child.as_raw())),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Blocks every signal for the calling thread and returns the previous mask.
pub fn block_all_signals() -> io::Result<SigSet> {
    let mut old = SigSet::empty();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut old))?;
    Ok(old)
}

/// Restores a signal mask returned by [`block_all_signals`].
pub fn set_signal_mask(mask: &SigSet) -> io::Result<()> {
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(mask), None)?;
    Ok(())
}

/// Sets the disposition of signals that nothing in this process handles through the signal registry.
/// Used by workers after fork for the master-only signals (ignored) and SIGCHLD (default).
pub fn set_plain_disposition(signal: Signal, ignore: bool) -> io::Result<()> {
    let handler = if ignore { SigHandler::SigIgn } else { SigHandler::SigDfl };
    // SAFETY: callers only pass signals for which no handler of the signal-hook registry remains registered
    // in this process (the worker unregisters the master's handlers first), so no registered action is
    // silently bypassed.
    unsafe { nix::sys::signal::signal(signal, handler) }?;
    Ok(())
}

/// Asks the kernel to SIGKILL this process when the thread that forked it exits, then checks the parent is
/// still `expected_parent` (it may have died before the request was made).
pub fn die_with_parent(expected_parent: i32) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if nix::unistd::getppid().as_raw() != expected_parent {
        return Err(io::Error::other("the master exited before the worker started"));
    }
    Ok(())
}

/// A non-blocking pipe, both ends close-on-exec: `(read, write)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    Ok((r, w))
}

/// Reads and discards everything available on a non-blocking fd.
pub fn drain_fd(fd: &OwnedFd) {
    let mut buf = [0u8; 256];
    while let Ok(n) = nix::unistd::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// Writes one byte to a non-blocking fd, ignoring a full pipe (the reader only needs to be woken).
pub fn poke_fd(fd: RawFd) {
    let byte = [1u8];
    // SAFETY: writing from a valid local buffer; an invalid or closed fd only yields an error, which is
    // ignored because the write is a wake-up hint.
    unsafe { libc::write(fd, byte.as_ptr().cast(), 1) };
}

static SIGNAL_COUNTS: [AtomicUsize; 65] = [const { AtomicUsize::new(0) }; 65];

/// The master's signal handling: each handled signal increments a counter and wakes the loop through a
/// self-pipe. The handler does nothing else.
pub struct SignalPipe {
    read: OwnedFd,
    write: OwnedFd,
    ids: Vec<signal_hook::SigId>,
    signals: Vec<Signal>,
}

impl SignalPipe {
    /// Installs the handlers. Call once, from the single-threaded master.
    pub fn install(signals: &[Signal]) -> io::Result<SignalPipe> {
        let (read, write) = pipe()?;
        let wfd = write.as_raw_fd();
        let mut ids = Vec::new();
        for &signal in signals {
            let n = signal as usize;
            let action = move || {
                // Only async-signal-safe operations: an atomic increment and write(2). errno is saved and
                // restored by the signal registry's handler.
                SIGNAL_COUNTS[n].fetch_add(1, Ordering::SeqCst);
                poke_fd(wfd);
            };
            // SAFETY: the action only performs async-signal-safe operations (see above).
            ids.push(unsafe { signal_hook::low_level::register(signal as i32, action) }?);
        }
        Ok(SignalPipe { read, write, ids, signals: signals.to_vec() })
    }

    /// The fd to poll for readability.
    pub fn fd(&self) -> &OwnedFd {
        &self.read
    }

    /// Empties the pipe and returns the signals received since the last call, once per delivery, in the
    /// order they were installed.
    pub fn pending(&self) -> Vec<Signal> {
        drain_fd(&self.read);
        let mut out = Vec::new();
        for &signal in &self.signals {
            let n = SIGNAL_COUNTS[signal as usize].swap(0, Ordering::SeqCst);
            out.extend(std::iter::repeat_n(signal, n));
        }
        out
    }

    /// In a freshly forked child: unregisters the handlers and closes both pipe ends, so that nothing the
    /// child opens later can receive the master's wake-ups.
    pub fn uninstall(self) {
        for id in self.ids {
            signal_hook::low_level::unregister(id);
        }
        drop(self.read);
        drop(self.write);
    }
}

/// Takes ownership of an inherited listening socket fd (systemd socket activation or a binary upgrade),
/// after checking that the fd is open and is a listening socket. Sets close-on-exec and non-blocking.
pub fn inherited_listener(fd: RawFd) -> io::Result<std::net::TcpListener> {
    if fd < 3 {
        return Err(io::Error::other(format!("fd {fd} cannot be a listener")));
    }
    // SAFETY: the borrow lives only for the F_GETFD probe, which fails cleanly with EBADF on a closed fd.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_GETFD)
        .map_err(|e| io::Error::other(format!("fd {fd}: {e}")))?;
    // SAFETY: the fd is open (checked above) and the activation protocol hands it to this process to own;
    // the caller takes each fd number once, and nothing else in the process refers to it.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let socket = socket2::Socket::from(owned);
    if !socket.is_listener()? {
        return Err(io::Error::other(format!("fd {fd} is not a listening socket")));
    }
    socket.set_cloexec(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Removes variables from the environment (the activation protocol's, so that children do not see them).
pub fn remove_env(names: &[&str]) -> io::Result<()> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!("refusing to change the environment with {threads} threads")));
    }
    for name in names {
        // SAFETY: the process is single-threaded (checked above), so no other thread can be reading the
        // environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
    Ok(())
}
