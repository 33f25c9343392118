//! Where rendered lines go: a bounded buffer per process, written out in batches, so that the code that logs
//! never waits for the log consumer.
//!
//! Logging appends the line to the buffer (a lock held for a copy); a line that does not fit is dropped and
//! counted. The buffer is written
//! - in a worker (and in the single-process mode), by a writer thread started after fork: it takes the
//!   whole buffer at once and writes it with blocking writes, so a stalled pipe or a slow disk blocks only
//!   that thread;
//! - in the master, which must stay single-threaded to fork safely, by whoever logs, without ever blocking:
//!   through a descriptor of its own opened non-blocking on the same pipe, FIFO or terminal (a new open file
//!   description, so the flag does not reach the workers' standard output); on a socket with
//!   `MSG_DONTWAIT`; when no descriptor of its own can be opened, through standard output made non-blocking
//!   for the duration of each write (a worker's writer thread waits out the `EAGAIN` this may cause it); a
//!   regular file is written directly, since it never waits for a reader. What the output does not take
//!   waits in the buffer; the master's loop polls the output and writes the rest when it is writable.
//!
//! Every write(2) holds whole lines and at most [`LINE_MAX`] bytes (`PIPE_BUF`), so that the lines of
//! several processes sharing one pipe never interleave. (On a stream socket the kernel may take part of a
//! non-blocking send; the master then sends the rest of that line first, next time.) Once lines were dropped and a write succeeds again,
//! one line says how many were dropped and since when. Lines that could not be written (the reader is gone,
//! the disk is full) count as dropped too, and so do lines still unwritten when an exiting process gives up
//! waiting for its output.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::LINE_MAX;

/// How long the writer thread lets lines gather after the first one arrives: under load one write(2)
/// carries many lines, and logging wakes the writer at most this often.
const BATCH_WINDOW: Duration = Duration::from_millis(1);
/// How long a blocked writer thread sleeps between two attempts when it finds standard output made
/// non-blocking by someone else (the master, for the duration of one of its writes).
const RETRY_POLL: Duration = Duration::from_millis(100);

/// One process's log output.
pub(super) struct Output {
    state: Mutex<State>,
    /// Wakes the writer thread: lines arrived, or a flush or a reopen is asked for.
    wake: Condvar,
    /// Wakes a flush waiting for the writer thread to finish a batch.
    written: Condvar,
    /// Lines the writer thread has taken from the buffer and not written yet.
    in_flight: AtomicU64,
    /// Their bytes, which count against the capacity: a process never holds more unwritten bytes than it.
    in_flight_bytes: AtomicUsize,
    /// Set when an exiting process stops waiting: the writer thread writes nothing more.
    abandoned: AtomicBool,
    /// Where lines go instead of standard output (tests).
    dest: OnceLock<Arc<OwnedFd>>,
}

struct State {
    buf: Buffer,
    dropped: Dropped,
    mode: Mode,
    /// The writer thread waits for lines; the first line logged wakes it.
    writer_waiting: bool,
    /// An exiting process waits for the buffer to be written: no batch window, and tell it after each batch.
    flush_asked: bool,
    /// A reopen of the log file for the writer thread to do.
    reopen: Option<PathBuf>,
}

/// Whole lines waiting to be written, oldest first.
struct Buffer {
    bytes: Vec<u8>,
    /// The number of lines in `bytes`.
    lines: u64,
    /// The most bytes it holds; a line that would go beyond is dropped.
    capacity: usize,
}

/// Lines dropped since the last report, and when the first of them was (since the Unix epoch).
struct Dropped {
    count: u64,
    since: Option<Duration>,
    /// Lines this process dropped in all.
    total: u64,
}

impl Dropped {
    fn add(&mut self, n: u64) {
        self.count += n;
        self.total += n;
        self.since.get_or_insert_with(super::now);
        super::count_dropped(n);
    }

    /// Appends the line reporting the dropped lines to `buf` (beyond its capacity, which only bounds logged
    /// lines), and starts counting afresh.
    fn report_into(&mut self, buf: &mut Buffer) {
        let mut line = String::new();
        super::render_dropped(&mut line, self.count, self.since.unwrap_or_default());
        buf.bytes.extend_from_slice(line.as_bytes());
        buf.lines += 1;
        self.count = 0;
        self.since = None;
    }
}

/// Who writes the buffer.
enum Mode {
    /// No writer thread (the master): whoever logs writes, through `Target`, without blocking.
    Inline(Target),
    /// The writer thread writes; logging only copies the line.
    Thread,
}

/// How the master writes to its output without blocking.
enum Target {
    /// A non-blocking descriptor of its own on the same pipe, FIFO or terminal.
    Own(Arc<OwnedFd>),
    /// Standard output is a socket: `send` with `MSG_DONTWAIT` (which may take part of a chunk).
    Socket,
    /// Standard output made non-blocking for each write, then restored.
    Toggled,
    /// A regular file (or standard output is closed): plain writes.
    Plain,
}

/// A descriptor the master polls for writability while lines wait for its output.
pub(crate) enum Stalled {
    Fd(Arc<OwnedFd>),
    Stdout(std::io::Stdout),
}

impl AsFd for Stalled {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stalled::Fd(fd) => fd.as_fd(),
            Stalled::Stdout(out) => out.as_fd(),
        }
    }
}

impl Output {
    pub(super) const fn new() -> Output {
        Output {
            state: Mutex::new(State {
                buf: Buffer { bytes: Vec::new(), lines: 0, capacity: 0 },
                dropped: Dropped { count: 0, since: None, total: 0 },
                mode: Mode::Inline(Target::Plain),
                writer_waiting: false,
                flush_asked: false,
                reopen: None,
            }),
            wake: Condvar::new(),
            written: Condvar::new(),
            in_flight: AtomicU64::new(0),
            in_flight_bytes: AtomicUsize::new(0),
            abandoned: AtomicBool::new(false),
            dest: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Calls `f` with the output's descriptor: standard output, unless a test chose another.
    fn with_fd<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R) -> R {
        match self.dest.get() {
            Some(fd) => f(fd.as_fd()),
            None => f(std::io::stdout().as_fd()),
        }
    }

    /// Sets the buffer size, and how to write without a writer thread.
    pub(super) fn configure(&self, capacity: usize) {
        let target = self.with_fd(Target::detect);
        let mut state = self.lock();
        state.buf.capacity = capacity;
        let have = state.buf.bytes.len();
        state.buf.bytes.reserve_exact(capacity.saturating_sub(have));
        state.mode = Mode::Inline(target);
    }

    /// In a freshly forked worker: the lines still in the buffer belong to the master, which writes them;
    /// so does the report of what the master dropped. The master's own descriptor is closed.
    pub(super) fn forget_inherited(&self) {
        let mut state = self.lock();
        state.buf.bytes.clear();
        state.buf.lines = 0;
        state.dropped = Dropped { count: 0, since: None, total: 0 };
        state.mode = Mode::Inline(Target::Plain);
    }

    /// Starts the writer thread. If it cannot start, lines keep being written inline, without blocking.
    pub(super) fn start_writer_thread(&'static self) -> std::io::Result<()> {
        let capacity = {
            let mut state = self.lock();
            state.mode = Mode::Thread;
            state.buf.capacity
        };
        let started = std::thread::Builder::new().name("log-writer".into()).spawn(move || self.writer(capacity));
        if let Err(error) = started {
            let target = self.with_fd(Target::detect);
            let mut state = self.lock();
            state.mode = Mode::Inline(target);
            self.flush_inline(&mut state);
            return Err(error);
        }
        Ok(())
    }

    /// Appends a line (which ends with a newline), or drops and counts it when the buffer is full.
    pub(super) fn push(&self, line: &[u8]) {
        let mut state = self.lock();
        let State { buf, dropped, mode, writer_waiting, .. } = &mut *state;
        let full = buf.bytes.len() + self.in_flight_bytes.load(Ordering::Acquire) + line.len() > buf.capacity;
        // Once an exiting process stopped waiting for its writer thread, nothing more will be written by it.
        let abandoned = matches!(mode, Mode::Thread) && self.abandoned.load(Ordering::Acquire);
        if full || abandoned {
            dropped.add(1);
            return;
        }
        buf.bytes.extend_from_slice(line);
        buf.lines += 1;
        if let Mode::Thread = mode {
            if *writer_waiting {
                *writer_waiting = false;
                self.wake.notify_one();
            }
        } else {
            self.flush_inline(&mut state);
        }
    }

    /// Without a writer thread: the descriptor to poll while lines wait for the output to take them.
    pub(super) fn stalled(&self) -> Option<Stalled> {
        let state = self.lock();
        let Mode::Inline(target) = &state.mode else { return None };
        if state.buf.bytes.is_empty() {
            return None;
        }
        match target {
            Target::Own(fd) => Some(Stalled::Fd(fd.clone())),
            Target::Socket | Target::Toggled => Some(match self.dest.get() {
                Some(fd) => Stalled::Fd(fd.clone()),
                None => Stalled::Stdout(std::io::stdout()),
            }),
            Target::Plain => None,
        }
    }

    /// Without a writer thread: writes what waits, as far as the output takes it without blocking.
    pub(super) fn retry(&self) {
        let mut state = self.lock();
        self.flush_inline(&mut state);
    }

    /// Points standard output at `path` again. The writer thread does it between two batches; without one,
    /// it is done at once.
    pub(super) fn reopen(&self, path: &Path) -> std::io::Result<()> {
        let mut state = self.lock();
        if let Mode::Thread = state.mode {
            state.reopen = Some(path.to_path_buf());
            self.wake.notify_one();
            return Ok(());
        }
        super::point_stdout_at(path)?;
        state.mode = Mode::Inline(self.with_fd(Target::detect));
        self.flush_inline(&mut state);
        Ok(())
    }

    /// Waits at most `within` for the buffer to be written. What is still unwritten then is counted as
    /// dropped and never written (but for the one write the writer thread may be blocked in).
    pub(super) fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut state = self.lock();
        if let Mode::Thread = state.mode {
            state.flush_asked = true;
            self.wake.notify_one();
            while !state.buf.bytes.is_empty() || self.in_flight.load(Ordering::Acquire) > 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = self.written.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
            }
            state.flush_asked = false;
        } else {
            loop {
                self.flush_inline(&mut state);
                let left = deadline.saturating_duration_since(Instant::now());
                if state.buf.bytes.is_empty() || left.is_zero() {
                    break;
                }
                let Mode::Inline(target) = &state.mode else { break };
                let wait = PollTimeout::try_from(left.as_millis().max(1) as u64).unwrap_or(PollTimeout::MAX);
                let _ = match target {
                    Target::Own(fd) => nix::poll::poll(&mut [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)], wait),
                    _ => self.with_fd(|fd| nix::poll::poll(&mut [PollFd::new(fd, PollFlags::POLLOUT)], wait)),
                };
            }
        }
        self.abandoned.store(true, Ordering::Release);
        let lost = state.buf.lines + self.in_flight.swap(0, Ordering::AcqRel);
        if lost > 0 {
            state.dropped.add(lost);
        }
        state.buf.bytes.clear();
        state.buf.lines = 0;
    }

    /// Writes the buffer without blocking (no writer thread). What the output does not take stays; a write
    /// that fails drops its lines. Once everything went out after lines were dropped, adds the report.
    fn flush_inline(&self, state: &mut State) {
        let State { buf, dropped, mode, .. } = state;
        let Mode::Inline(target) = mode else { return };
        let mut wrote = false;
        loop {
            let mut off = 0;
            while off < buf.bytes.len() {
                let rest = &buf.bytes[off..];
                let (len, lines) = next_chunk(rest);
                match self.with_fd(|fd| target.write(fd, &rest[..len])) {
                    Ok(n) => {
                        wrote = true;
                        buf.lines -= if n == len { lines } else { newlines(&rest[..n]) };
                        off += n;
                    }
                    Err(Errno::EINTR) => {}
                    Err(Errno::EAGAIN) => break,
                    Err(_) => {
                        buf.lines -= lines;
                        off += len;
                        dropped.add(lines);
                    }
                }
            }
            buf.bytes.drain(..off);
            if !(buf.bytes.is_empty() && wrote && dropped.count > 0) {
                return;
            }
            dropped.report_into(buf);
            wrote = false;
        }
    }

    /// The writer thread: waits for lines, lets more gather for [`BATCH_WINDOW`], takes the whole buffer
    /// and writes it, whole lines of at most [`LINE_MAX`] bytes per write(2).
    fn writer(&self, capacity: usize) {
        // Signals are for the worker's runtime; this thread may sit in a blocking write for long.
        let _ = crate::sys::block_all_signals();
        let mut batch = Vec::with_capacity(capacity);
        loop {
            let mut state = self.lock();
            while state.buf.bytes.is_empty() && state.reopen.is_none() {
                state.writer_waiting = true;
                state = self.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
                state.writer_waiting = false;
            }
            if let Some(path) = state.reopen.take() {
                drop(state);
                if let Err(error) = super::point_stdout_at(&path) {
                    tracing::error!(error = %error, path = %path.display(), "cannot reopen the log file");
                }
                continue;
            }
            if !state.flush_asked {
                state = self.wake.wait_timeout(state, BATCH_WINDOW).unwrap_or_else(PoisonError::into_inner).0;
            }
            std::mem::swap(&mut state.buf.bytes, &mut batch);
            self.in_flight.store(std::mem::take(&mut state.buf.lines), Ordering::Release);
            self.in_flight_bytes.store(batch.len(), Ordering::Release);
            drop(state);
            let failed = self.write_batch(&batch);
            self.in_flight_bytes.store(0, Ordering::Release);
            batch.clear();
            let mut state = self.lock();
            let State { buf, dropped, .. } = &mut *state;
            if failed > 0 {
                dropped.add(failed);
            } else if dropped.count > 0 {
                dropped.report_into(buf);
            }
            if state.flush_asked {
                self.written.notify_all();
            }
        }
    }

    /// Writes a batch with blocking writes, one chunk of whole lines at a time; returns the number of lines
    /// that could not be written. Stops once an exiting process gave up waiting for it.
    fn write_batch(&self, batch: &[u8]) -> u64 {
        let mut failed = 0;
        let mut off = 0;
        while off < batch.len() && !self.abandoned.load(Ordering::Acquire) {
            let (len, lines) = next_chunk(&batch[off..]);
            let mut chunk = &batch[off..off + len];
            while !chunk.is_empty() {
                match self.with_fd(|fd| nix::unistd::write(fd, chunk)) {
                    Ok(n) => chunk = &chunk[n..],
                    Err(Errno::EINTR) => {}
                    Err(Errno::EAGAIN) => {
                        let wait = PollTimeout::try_from(RETRY_POLL.as_millis() as u64).unwrap_or(PollTimeout::MAX);
                        let _ = self.with_fd(|fd| nix::poll::poll(&mut [PollFd::new(fd, PollFlags::POLLOUT)], wait));
                    }
                    Err(_) => {
                        failed += lines;
                        break;
                    }
                }
            }
            let _ = self.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(lines)));
            self.in_flight_bytes.fetch_sub(len, Ordering::AcqRel);
            off += len;
        }
        failed
    }

    /// Lines this process dropped in all.
    #[cfg(test)]
    fn dropped_total(&self) -> u64 {
        self.lock().dropped.total
    }
}

impl Target {
    /// How to write to `fd` without blocking.
    fn detect(fd: BorrowedFd<'_>) -> Target {
        use nix::sys::stat::SFlag;
        let Ok(stat) = nix::sys::stat::fstat(fd) else { return Target::Plain };
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFIFO || kind == SFlag::S_IFCHR {
            use std::os::unix::fs::OpenOptionsExt;
            // Opening the descriptor's /proc link opens the pipe (or terminal) anew: a description of our
            // own. It fails without a reader (ENXIO) or on a pipe another user created (EACCES).
            let own = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            return match own {
                Ok(file) => Target::Own(Arc::new(file.into())),
                Err(_) => Target::Toggled,
            };
        }
        if kind == SFlag::S_IFSOCK { Target::Socket } else { Target::Plain }
    }

    /// Writes without blocking (except to a regular file).
    fn write(&self, fd: BorrowedFd<'_>, bytes: &[u8]) -> nix::Result<usize> {
        use nix::fcntl::{FcntlArg, OFlag};
        match self {
            Target::Own(own) => nix::unistd::write(own, bytes),
            Target::Socket => nix::sys::socket::send(
                fd.as_raw_fd(),
                bytes,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            ),
            Target::Toggled => {
                let flags = OFlag::from_bits_truncate(nix::fcntl::fcntl(fd, FcntlArg::F_GETFL)?);
                if flags.contains(OFlag::O_NONBLOCK) {
                    return nix::unistd::write(fd, bytes);
                }
                nix::fcntl::fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
                let written = nix::unistd::write(fd, bytes);
                let _ = nix::fcntl::fcntl(fd, FcntlArg::F_SETFL(flags));
                written
            }
            Target::Plain => nix::unistd::write(fd, bytes),
        }
    }
}

/// The first chunk of `buf` to write: as many whole lines as fit in [`LINE_MAX`] bytes, and at least one (a
/// longer line, which the renderer never makes, goes out alone). Returns its length and number of lines.
fn next_chunk(buf: &[u8]) -> (usize, u64) {
    let (mut end, mut lines) = (0, 0);
    while end < buf.len() {
        let line_end = buf[end..].iter().position(|&b| b == b'\n').map_or(buf.len(), |i| end + i + 1);
        if lines > 0 && line_end > LINE_MAX {
            break;
        }
        end = line_end;
        lines += 1;
    }
    (end, lines)
}

fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// An output writing to a fresh pipe with `capacity` bytes of buffer, and the pipe's read end.
    fn piped(capacity: usize) -> (&'static Output, std::fs::File) {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let output: &'static Output = Box::leak(Box::new(Output::new()));
        let _ = output.dest.set(Arc::new(write));
        output.configure(capacity);
        (output, std::fs::File::from(read))
    }

    fn line(i: usize, len: usize) -> Vec<u8> {
        let mut l = format!("{{\"n\":{i},\"pad\":\"").into_bytes();
        l.resize(len - 3, b'x');
        l.extend_from_slice(b"\"}\n");
        l
    }

    /// Reads what is in the pipe now, without waiting for more.
    fn read_available(pipe: &mut std::fs::File) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0; 1 << 16];
        loop {
            let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
            if nix::poll::poll(&mut fds, PollTimeout::from(200u8)).unwrap() == 0 {
                return out;
            }
            let n = pipe.read(&mut buf).unwrap();
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn chunks_are_whole_lines_of_at_most_pipe_buf_bytes() {
        let mut buf = Vec::new();
        for i in 0..40 {
            buf.extend(line(i, 100 + i * 37));
        }
        let mut off = 0;
        let mut total = 0;
        while off < buf.len() {
            let (len, lines) = next_chunk(&buf[off..]);
            assert!(len <= LINE_MAX && buf[off + len - 1] == b'\n', "chunk of {len} bytes");
            assert_eq!(newlines(&buf[off..off + len]), lines);
            total += lines;
            off += len;
        }
        assert_eq!(total, 40);
        let long = line(0, LINE_MAX + 10);
        assert_eq!(next_chunk(&long), (long.len(), 1), "an over-long line goes out alone");
    }

    #[test]
    fn the_writer_thread_writes_every_line_in_order() {
        let (output, mut pipe) = piped(1 << 20);
        output.start_writer_thread().unwrap();
        let lines: Vec<Vec<u8>> = (0..500).map(|i| line(i, 80 + i % 300)).collect();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let want: usize = (0..500).map(|i| 80 + i % 300).sum();
            let mut buf = vec![0; 1 << 16];
            while got.len() < want {
                let n = pipe.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        for l in &lines {
            output.push(l);
        }
        output.flush(Duration::from_secs(5));
        assert_eq!(reader.join().unwrap(), lines.concat());
        assert_eq!(output.dropped_total(), 0);
    }

    /// The pipe holds 64 KiB, the buffer 32 KiB: a reader that does not read makes the rest drop, nothing
    /// blocks, and once it reads, the lines that were kept arrive, then one report with the dropped count.
    fn stall_then_drain(output: &'static Output, mut pipe: std::fs::File) {
        let pipe_size = nix::fcntl::fcntl(&pipe, nix::fcntl::FcntlArg::F_GETPIPE_SZ).unwrap() as usize;
        let lines: Vec<Vec<u8>> = (0..1000).map(|i| line(i, 200)).collect();
        let start = Instant::now();
        for l in &lines {
            output.push(l);
        }
        assert!(start.elapsed() < Duration::from_secs(5), "logging did not wait for the reader");
        let dropped = output.dropped_total();
        assert!(dropped > 0 && dropped < 1000, "{dropped}");
        // Read until the report arrives; in between, do what the master's loop does when its poll says the
        // output is writable (nothing, with a writer thread).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut text = Vec::new();
        while !String::from_utf8_lossy(&text).contains("\"dropped\":") {
            assert!(Instant::now() < deadline, "no report: {}", String::from_utf8_lossy(&text));
            text.extend(read_available(&mut pipe));
            output.retry();
        }
        let text = String::from_utf8(text).unwrap();
        let got: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let (report, kept) = got.split_last().unwrap();
        assert_eq!(report["dropped"], dropped, "{report}");
        assert!(report["since"].is_string());
        assert_eq!(kept.len() as u64 + dropped, 1000);
        assert!(
            kept.len() * 200 <= pipe_size + 32 * 1024,
            "{} kept: the buffer bounds the batch in write too",
            kept.len()
        );
        let numbers: Vec<u64> = kept.iter().map(|l| l["n"].as_u64().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "kept lines in order");
        assert_eq!(numbers[0], 0, "the first lines are kept, later ones dropped");
    }

    #[test]
    fn a_stalled_reader_makes_the_writer_thread_drop_and_then_report() {
        let (output, pipe) = piped(32 * 1024);
        output.start_writer_thread().unwrap();
        stall_then_drain(output, pipe);
    }

    #[test]
    fn a_stalled_reader_makes_inline_writes_drop_and_then_report() {
        let (output, pipe) = piped(32 * 1024);
        assert!(matches!(output.lock().mode, Mode::Inline(Target::Own(_))), "a descriptor of its own");
        let flags = nix::fcntl::fcntl(output.dest.get().unwrap(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & libc::O_NONBLOCK, 0, "the shared descriptor stays blocking");
        stall_then_drain(output, pipe);
        assert!(output.stalled().is_none(), "nothing waits once written");
    }

    #[test]
    fn an_exit_flush_gives_up_at_its_deadline_and_counts_what_is_lost() {
        let (output, mut pipe) = piped(1 << 20);
        output.start_writer_thread().unwrap();
        for i in 0..1000 {
            output.push(&line(i, 200));
        }
        let start = Instant::now();
        output.flush(Duration::from_millis(300));
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(5), "{waited:?}");
        // What is logged after the exit flush (a runtime thread still running) is dropped and counted.
        let before = output.dropped_total();
        for i in 0..5 {
            output.push(&line(i, 200));
        }
        assert_eq!(output.dropped_total(), before + 5, "lines logged after the exit flush are counted");
        // Reading lets the writer thread finish the write it is blocked in (at most one chunk of 20 lines,
        // counted as lost already), and nothing after it.
        let written = newlines(&read_available(&mut pipe));
        let accounted = written + output.dropped_total();
        assert!((1005..=1005 + (LINE_MAX / 200) as u64).contains(&accounted), "{written} written, {accounted}");
    }

    #[test]
    fn a_gone_reader_counts_lines_as_dropped_without_a_report() {
        let (output, pipe) = piped(1 << 20);
        drop(pipe);
        output.start_writer_thread().unwrap();
        for i in 0..10 {
            output.push(&line(i, 100));
        }
        output.flush(Duration::from_secs(5));
        assert_eq!(output.dropped_total(), 10);
        assert!(output.lock().buf.bytes.is_empty(), "no report queued for an output that takes nothing");
    }
}
