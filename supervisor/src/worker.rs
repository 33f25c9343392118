//! The worker runtime: what runs in a worker process after fork (and in single-process mode).
//!
//! It builds the tokio runtime, registers the worker's signals, boots the application, stamps the
//! heartbeat, and serves HTTP/1.1 on the inherited listeners with keep-alive and header timeouts. On SIGTERM
//! it stops accepting (after taking what is already in the backlog), lets in-flight requests, streamed
//! responses and upgraded connections finish for at most `graceful_timeout`, closes idle keep-alive
//! connections and exits 0; on SIGINT or SIGQUIT it exits at once.
//!
//! What a connection and a request hold in the scoreboard lives as long as they do: the connection's count
//! is held by its socket ([`TrackedStream`]), which an HTTP/1.1 upgrade hands on to the application, so an
//! upgraded connection (WebSocket) still counts towards `max_connections` and is waited for on drain; a
//! request's in-flight entry is held by its response body ([`TrackedBody`]), so a streamed response still
//! shows in the scoreboard, and the wait for the next request head starts only once the body has been
//! written.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, watch};

use crate::scoreboard::{ConnectionGuard, RequestGuard, Scoreboard, Slot, SlotState};
use crate::service::{BoxError, BoxFuture, Connections, HttpService, LabelFn, Refusal, Request};
use crate::{Limits, Settings, balance, sys};

use crate::exit::{WORKER_BOOT_FAILED as EXIT_BOOT_FAILED, WORKER_SETUP_FAILED as EXIT_SETUP_FAILED};

/// An application as the master holds it for one generation: what a forked worker boots and serves. The
/// master never calls it; each worker does, once, on its own runtime.
pub(crate) trait Boot: Send + Sync {
    /// Boots the application and serves it until the worker stops; returns the exit code.
    fn boot_and_serve<'a>(&'a self, worker: Worker<'a>) -> Pin<Box<dyn Future<Output = i32> + 'a>>;
}

/// What every worker does around the service, the same for every generation.
#[derive(Clone)]
pub(crate) struct Hooks {
    /// Labels a request for the scoreboard; `None`: its `X-Request-ID`.
    pub label: Option<LabelFn>,
    /// Refused requests go to the service (with the [`Refusal`] in their extensions) instead of being
    /// answered by the worker.
    pub service_answers_refusals: bool,
}

/// Everything a worker needs, handed over by the master at fork.
pub(crate) struct WorkerStart {
    pub board: Scoreboard,
    pub slot: Slot,
    pub generation: u64,
    pub settings: Arc<Settings>,
    pub listeners: Vec<std::net::TcpListener>,
    pub app: Arc<dyn Boot>,
    pub master_pid: i32,
    /// Written to once the worker is ready, to wake the master.
    pub ready_fd: Option<Arc<OwnedFd>>,
}

/// A worker about to boot its application: handed to [`Boot::boot_and_serve`], which boots the service and
/// passes both to [`boot_and_serve`].
pub(crate) struct Worker<'a> {
    listeners: Vec<std::net::TcpListener>,
    serving: Serving<'a>,
    signals: StopSignals,
}

/// Whose turn it is to take the next connection (see [`balance`]).
enum Turn {
    /// This worker's.
    Mine,
    /// A sibling's, for a few milliseconds: this worker holds more than its share.
    Defer,
    /// A sibling's, for as long as one is accepting: this worker spent its request budget.
    Yield,
    /// Nobody's here until one of this worker's connections closes: it holds `max_connections`.
    Full,
}

/// How a worker's serving ended.
enum Stop {
    Graceful,
    Immediate,
}

/// Set once this process starts draining; see [`crate::draining`].
static DRAINING: LazyLock<watch::Sender<bool>> = LazyLock::new(|| watch::Sender::new(false));

/// Resolves once the worker this runs in starts a graceful stop (SIGTERM: a stop of the server, a reload, a
/// recycle, a scale-down), at once if it has started already. From then on the worker accepts no new
/// connection, and what is still open after `graceful_timeout` is closed: a long-lived response (server-sent
/// events) or an upgraded connection (WebSocket) can end itself cleanly before that, for example with a
/// last event or a WebSocket close frame. Outside a worker it never resolves.
pub async fn draining() {
    let mut rx = DRAINING.subscribe();
    let _ = rx.wait_for(|draining| *draining).await;
}

/// Runs a forked worker to completion and returns its exit code. Signals are blocked on entry (the master
/// blocks them around fork) and unblocked once the runtime's handlers are registered.
pub(crate) fn run(start: WorkerStart) -> i32 {
    crate::logging::enter_worker(start.slot.index(), start.generation);
    start.slot.set_pid(std::process::id() as i32);
    crate::stats::install(start.board, start.slot.index());
    let setup = || -> std::io::Result<()> {
        // USR1 is not ignored: the worker reopens its log file on it (registered with the runtime below).
        for sig in [Signal::SIGHUP, Signal::SIGUSR2, Signal::SIGTTIN, Signal::SIGTTOU, Signal::SIGWINCH] {
            sys::set_plain_disposition(sig, true)?;
        }
        sys::set_plain_disposition(Signal::SIGCHLD, false)?;
        sys::die_with_parent(start.master_pid)
    };
    if let Err(error) = setup() {
        tracing::error!(error = %error, "worker setup failed");
        return EXIT_SETUP_FAILED;
    }
    let runtime = match build_runtime(start.settings.threads) {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(error = %error, "worker could not build its runtime");
            return EXIT_SETUP_FAILED;
        }
    };
    let code = runtime.block_on(serve_worker(start));
    // Connections still open after a drain belong to a client that ignored `Connection: close`, or outlived
    // `graceful_timeout`; do not wait.
    runtime.shutdown_background();
    code
}

fn build_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
}

async fn serve_worker(start: WorkerStart) -> i32 {
    let (signals, reopen) = match StopSignals::register().and_then(|s| Ok((s, reopen_logs_on_usr1()?))) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(error = %error, "worker could not register its signal handlers");
            return EXIT_SETUP_FAILED;
        }
    };
    tokio::spawn(reopen);
    if let Err(error) = sys::set_signal_mask(&nix::sys::signal::SigSet::empty()) {
        tracing::error!(error = %error, "worker could not unblock signals");
        return EXIT_SETUP_FAILED;
    }
    let slot = start.slot;
    let master = start.master_pid;
    tokio::spawn(heartbeat(slot, start.settings.heartbeat_interval(), Some(master)));

    let limit = request_limit(&start.settings);
    let serving =
        Serving { board: start.board, slot, settings: &start.settings, limit, master_pipe: start.ready_fd.clone() };
    start.app.boot_and_serve(Worker { listeners: start.listeners, serving, signals }).await
}

/// How a booted application is served in this process.
struct Serving<'a> {
    board: Scoreboard,
    slot: Slot,
    settings: &'a Settings,
    /// Request budget (0: unlimited).
    limit: u64,
    /// Poked when ready and when the request budget is spent, to wake the master; `None` in a single
    /// process, which then enforces `graceful_timeout` on its drain itself.
    master_pipe: Option<Arc<OwnedFd>>,
}

/// Boots the application (`boot`), marks the slot ready, and serves it until stopped; returns the exit code.
pub(crate) async fn boot_and_serve<C: Connections>(
    boot: impl Future<Output = Result<C, crate::BootError>>,
    worker: Worker<'_>,
    hooks: &Hooks,
) -> i32 {
    let Worker { listeners, serving, signals } = worker;
    let service = match boot.await {
        Ok(service) => service,
        Err(error) => {
            tracing::error!(error = %error, "worker failed to boot");
            serving.slot.set_boot_error(&error.to_string());
            return EXIT_BOOT_FAILED;
        }
    };
    let listeners = match adopt(listeners) {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(error = %error, "worker could not adopt the listeners");
            return EXIT_SETUP_FAILED;
        }
    };
    serving.slot.set_state(SlotState::Ready);
    if let Some(fd) = &serving.master_pipe {
        sys::poke_fd(fd.as_raw_fd());
    }
    tracing::info!(bind = ?serving.settings.bind, threads = serving.settings.threads, "worker accepting connections");
    if let Stop::Immediate = serve(listeners, service, serving, signals, hooks).await {
        tracing::info!("worker exiting at once");
    }
    0
}

/// Serves the application in this process, without a master: the listeners are bound here, and the process
/// stops gracefully on SIGTERM and at once on SIGINT/SIGQUIT. Used for debugging and as a benchmark baseline.
pub(crate) fn serve_in_process(settings: &Settings, app: Arc<dyn Boot>) -> Result<i32, crate::MasterError> {
    let listeners = crate::listen::bind_all(&settings.bind, settings.backlog)?;
    crate::logging::start_writer();
    let board = Scoreboard::new(1).map_err(crate::MasterError::Scoreboard)?;
    let slot = board.slot(0);
    slot.prepare(0, sys::monotonic_ns());
    slot.set_pid(std::process::id() as i32);
    board.publish(&crate::scoreboard::MasterCounters { start_time: sys::unix_now(), ..Default::default() });
    crate::stats::install(board, 0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.threads.max(1))
        .enable_all()
        .build()
        .map_err(crate::MasterError::Runtime)?;
    let settings = settings.clone();
    let code = runtime.block_on(async move {
        let (signals, reopen) = match StopSignals::register().and_then(|s| Ok((s, reopen_logs_on_usr1()?))) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(error = %error, "could not register signal handlers");
                return EXIT_SETUP_FAILED;
            }
        };
        tokio::spawn(reopen);
        let serving = Serving { board, slot, settings: &settings, limit: 0, master_pipe: None };
        app.boot_and_serve(Worker { listeners, serving, signals }).await
    });
    runtime.shutdown_background();
    Ok(code)
}

fn adopt(listeners: Vec<std::net::TcpListener>) -> std::io::Result<Vec<TcpListener>> {
    listeners
        .into_iter()
        .map(|l| {
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)
        })
        .collect()
}

struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn register() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    async fn wait(&mut self) -> Stop {
        tokio::select! {
            _ = self.term.recv() => Stop::Graceful,
            _ = self.int.recv() => Stop::Immediate,
            _ = self.quit.recv() => Stop::Immediate,
        }
    }
}

/// The per-worker request budget: `max_requests` plus a random share of the jitter, or 0 for no limit.
fn request_limit(settings: &Settings) -> u64 {
    if settings.max_requests == 0 {
        return 0;
    }
    // Jitter only needs to differ between workers, not to be unpredictable.
    let seed = sys::monotonic_ns() ^ (u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    settings.max_requests.saturating_add(seed % settings.max_requests_jitter.saturating_add(1))
}

/// SIGUSR1 (sent by the master after a log rotation): reopen the log file. The handler is registered
/// before the returned task first runs, so that a USR1 arriving right after the signal mask is lifted is
/// not lost.
fn reopen_logs_on_usr1() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut usr1 = signal(SignalKind::user_defined1())?;
    Ok(async move {
        while usr1.recv().await.is_some() {
            if let Err(error) = crate::logging::reopen() {
                tracing::error!(error = %error, "cannot reopen the log file");
            }
        }
    })
}

/// Stamps the heartbeat until the runtime stops. When the master is gone (the parent changed), exits: the
/// death signal requested at fork normally does this first.
async fn heartbeat(slot: Slot, every: Duration, master: Option<i32>) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        slot.heartbeat(sys::monotonic_ns());
        if let Some(master) = master
            && nix::unistd::getppid().as_raw() != master
        {
            tracing::error!("master is gone: exiting");
            crate::logging::flush_before_exit();
            std::process::exit(crate::exit::WORKER_ORPHANED);
        }
    }
}

/// What the accept loops and the connections of one worker share.
struct Shared {
    board: Scoreboard,
    slot: Slot,
    /// A sibling whose heartbeat is older than this is not counted as accepting (see [`balance`]).
    peer_silence: Duration,
    /// Signalled when one of this worker's connections closes: a deferring accept loop looks again, and a
    /// drain waiting for the last connection.
    closed: Arc<Notify>,
    /// Signalled when the request budget is spent: an accept loop waiting in `accept` looks again whose
    /// turn it is.
    spent: Notify,
    builder: http1::Builder,
    /// How long a connection may wait for a request head (see [`close_on_head_timeout`]).
    head_timeout: Duration,
    /// Request head limits checked before the service sees a request.
    limits: Limits,
    /// Connections this worker holds at most.
    max_connections: u64,
    limit: u64,
    /// Set when the worker starts draining: every response from then on carries `Connection: close`.
    draining: AtomicBool,
    /// Stops the accept loops on drain (they serve what is already queued first).
    stop_accepting: watch::Sender<bool>,
    /// Tells every connection to finish its current exchange and close (hyper's graceful shutdown).
    shutdown: watch::Sender<bool>,
    /// Wakes the master (a worker reached its request limit and needs a replacement).
    master_pipe: Option<Arc<OwnedFd>>,
    hooks: Hooks,
}

impl Shared {
    /// Waits, at most [`balance::MAX_DEFER`], while this worker holds more than its share of the connections
    /// so that a sibling takes the next one.
    async fn wait_turn(&self) {
        let deadline = tokio::time::Instant::now() + balance::MAX_DEFER;
        loop {
            // Registered before the check, so a close right after the check still wakes us.
            let closed = self.closed.notified();
            let recheck = match self.turn() {
                Turn::Mine => return,
                Turn::Defer if tokio::time::Instant::now() >= deadline => return,
                Turn::Defer => balance::RECHECK,
                Turn::Yield | Turn::Full => balance::YIELD_RECHECK,
            };
            tokio::select! {
                _ = closed => {}
                _ = tokio::time::sleep(recheck) => {}
            }
        }
    }

    /// Whose turn it is to take the next connection.
    fn turn(&self) -> Turn {
        if self.slot.connections() >= self.max_connections {
            return Turn::Full;
        }
        let fresh_since = sys::monotonic_ns().saturating_sub(self.peer_silence.as_nanos() as u64);
        let mut peers = self.board.peer_connections(self.slot.index(), fresh_since);
        if self.slot.state() == SlotState::Retiring {
            return if peers.next().is_some() { Turn::Yield } else { Turn::Mine };
        }
        if balance::over_share(self.slot.connections(), peers) { Turn::Defer } else { Turn::Mine }
    }

    /// Called after each request: at the request budget, ask the master for a replacement. The worker keeps
    /// serving its connections, and takes new ones only while no sibling is accepting, until the master
    /// drains it, which it does once the replacement is ready: capacity never dips, and a replacement that
    /// cannot be started (fork failures) costs nothing but a longer life.
    fn check_limit(&self) {
        if self.limit > 0 && self.slot.requests() >= self.limit && self.slot.state() == SlotState::Ready {
            self.slot.set_state(SlotState::Retiring);
            self.spent.notify_waiters();
            tracing::info!(requests = self.slot.requests(), limit = self.limit, "worker reached max_requests");
            if let Some(fd) = &self.master_pipe {
                sys::poke_fd(fd.as_raw_fd());
            }
        }
    }

    /// Waits until this worker holds no connection, upgraded ones included.
    async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            if self.slot.connections() == 0 {
                return;
            }
            closed.await;
        }
    }
}

/// How long a draining worker keeps idle connections open so that requests already on their way (and
/// connections taken from the backlog) are still answered, with `Connection: close`, instead of reset.
fn drain_linger(settings: &Settings) -> Duration {
    settings.keepalive.min(Duration::from_secs(1))
}

async fn serve<C: Connections>(
    listeners: Vec<TcpListener>,
    service: C,
    serving: Serving<'_>,
    mut signals: StopSignals,
    hooks: &Hooks,
) -> Stop {
    let Serving { board, slot, settings, limit, master_pipe } = serving;
    // Without a master to kill it at its drain deadline, a single process stops waiting by itself.
    let alone = master_pipe.is_none();
    let mut builder = http1::Builder::new();
    // No timer in hyper: its header read timeout arms and drops a boxed timer for every request. The
    // same deadline is kept per connection instead (`close_on_head_timeout`).
    builder.header_read_timeout(None).keep_alive(!settings.keepalive.is_zero());
    if let Some(bytes) = settings.limits.head_bytes() {
        builder.max_header_size(bytes);
    }
    // hyper's own cap is 100 fields, kept on the stack; a higher limit needs hyper to allocate them.
    if settings.limits.request_fields > 100 {
        builder.max_headers(settings.limits.request_fields);
    }
    let (stop_accepting, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        board,
        slot,
        peer_silence: 2 * settings.heartbeat_interval(),
        closed: Arc::new(Notify::new()),
        spent: Notify::new(),
        builder,
        head_timeout: settings.header_timeout(),
        limits: settings.limits,
        max_connections: settings.max_connections as u64,
        limit,
        draining: AtomicBool::new(false),
        stop_accepting,
        shutdown: watch::Sender::new(false),
        master_pipe,
        hooks: hooks.clone(),
    });
    let service = Arc::new(service);
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, shared.clone(), service.clone(), stop_rx.clone())))
        .collect();
    let stop = signals.wait().await;
    if let Stop::Immediate = stop {
        return stop;
    }
    slot.set_state(SlotState::Draining);
    shared.draining.store(true, Ordering::Relaxed);
    DRAINING.send_replace(true);
    tracing::info!(in_flight = slot.view().in_flight, "worker draining");
    let _ = shared.stop_accepting.send(true);
    for l in loops {
        let _ = l.await;
    }
    // Closing an idle keep-alive connection races with a request the client may be sending on it. Busy
    // connections close themselves after their next response (`Connection: close`); only what stays idle
    // through the linger is closed by the graceful shutdown. Responses still streaming and upgraded
    // connections are waited for: the master kills the worker at its drain deadline (`graceful_timeout`),
    // naming what was still in flight, and the kernel closes what it held.
    let drained = async {
        if slot.connections() > 0 {
            tokio::time::sleep(drain_linger(settings)).await;
        }
        shared.shutdown.send_replace(true);
        shared.all_closed().await
    };
    let deadline = async {
        if alone { tokio::time::sleep(settings.graceful_timeout).await } else { std::future::pending().await }
    };
    // A second TERM, or INT/QUIT, while draining ends the wait.
    tokio::select! {
        _ = drained => tracing::info!("worker drained"),
        _ = deadline => tracing::warn!(
            connections = slot.connections(),
            in_flight = slot.view().in_flight,
            "graceful_timeout reached: closing the connections still open"
        ),
        _ = signals.wait() => tracing::warn!("worker stopped before its connections drained"),
    }
    Stop::Graceful
}

async fn accept_loop<C: Connections>(
    listener: TcpListener,
    shared: Arc<Shared>,
    service: Arc<C>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            // `accept` is cancellation-safe: a connection not taken yet stays queued for whoever's turn it is.
            _ = shared.spent.notified() => continue,
            accepted = async { shared.wait_turn().await; listener.accept().await } => match accepted {
                Ok((stream, peer)) => spawn_connection(stream, peer, &shared, service.as_ref()),
                Err(error) => accept_failed(error).await,
            },
        }
    }
    // On drain, serve what the kernel already queued before letting go of the socket, so that a stop resets
    // as few waiting clients as possible.
    let Ok(listener) = listener.into_std() else { return };
    while let Ok((stream, peer)) = listener.accept() {
        if stream.set_nonblocking(true).is_ok()
            && let Ok(stream) = TcpStream::from_std(stream)
        {
            spawn_connection(stream, peer, &shared, service.as_ref());
        }
    }
}

/// Whether a parsed request breaks the head limits or the `Host` rules, and which.
pub(crate) fn refusal<B>(limits: &Limits, req: &hyper::Request<B>) -> Option<Refusal> {
    if limits.request_line > 0 {
        // The target as received: what the URI prints (origin, absolute, authority or asterisk form).
        let uri = req.uri();
        let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
            + uri.authority().map_or(0, |a| a.as_str().len())
            + uri.path().len()
            + uri.query().map_or(0, |q| q.len() + 1);
        // "METHOD SP target SP HTTP/1.1"
        let line = req.method().as_str().len() + 1 + target + 1 + 8;
        if line > limits.request_line {
            return Some(Refusal::RequestLineTooLong { limit: limits.request_line });
        }
    }
    if req.headers().len() > limits.request_fields {
        return Some(Refusal::TooManyHeaderFields { limit: limits.request_fields });
    }
    // One pass over the fields: their sizes, and the Host fields.
    let mut hosts = (0, None);
    for (name, value) in req.headers() {
        if limits.request_field_size > 0 && name.as_str().len() + 2 + value.len() > limits.request_field_size {
            return Some(Refusal::HeaderFieldTooLarge { limit: limits.request_field_size });
        }
        if name == hyper::header::HOST {
            hosts = (hosts.0 + 1, Some(value));
        }
    }
    crate::host::check(req.version(), hosts.0, hosts.1)
}

async fn accept_failed(error: std::io::Error) {
    tracing::warn!(error = %error, "accept failed");
    // Out of file descriptors or memory: give in-flight requests a moment to release some.
    if matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn_connection<C: Connections>(stream: TcpStream, peer: SocketAddr, shared: &Arc<Shared>, connections: &C) {
    let _ = stream.set_nodelay(true);
    let stream = TrackedStream { stream, open: Some(shared.slot.connection_opened()), closed: shared.closed.clone() };
    let ctx = shared.clone();
    let service = connections.service(peer);
    let waiting = Arc::new(HeadWait::new());
    let wait = waiting.clone();
    let handler = hyper::service::service_fn(move |mut req: Request| {
        wait.head_arrived();
        let refusal = refusal(&ctx.limits, &req);
        let mut service = service.clone();
        let label = match &ctx.hooks.label {
            Some(label) => label(&mut req),
            None => service.label(&req),
        };
        let guard =
            ctx.slot.request_started(req.method().as_str(), req.uri().path(), label.as_str(), sys::monotonic_ns());
        let call = match refusal {
            Some(refusal) if !ctx.hooks.service_answers_refusals => {
                Call::Answered { response: Some(refusal.response()) }
            }
            refused => {
                if let Some(refusal) = refused {
                    req.extensions_mut().insert(refusal);
                }
                Call::start(service, req)
            }
        };
        // Like gunicorn, a refused request ends its connection: what follows it may not be framed as the
        // client meant.
        Reply {
            call,
            done: Some(Done { guard: Some(guard), wait: wait.clone(), shared: ctx.clone() }),
            close: refusal.is_some(),
        }
    });
    let connection = shared.builder.serve_connection(TokioIo::new(stream), handler).with_upgrades();
    let head_timeout = shared.head_timeout;
    let mut shutdown = shared.shutdown.subscribe();
    tokio::spawn(async move {
        let mut connection = std::pin::pin!(connection);
        let mut shutting_down = false;
        loop {
            tokio::select! {
                biased;
                ended = connection.as_mut() => {
                    if let Err(error) = ended {
                        tracing::debug!(error = %error, peer = %peer, "connection ended with an error");
                    }
                    break;
                }
                () = close_on_head_timeout(&waiting, head_timeout) => {
                    tracing::debug!(peer = %peer, "connection closed: no request head within the header timeout");
                    break;
                }
                _ = shutdown.wait_for(|s| *s), if !shutting_down => {
                    shutting_down = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    });
}

/// Why a service or a response body failed. hyper logs it and closes the connection.
#[derive(Debug)]
struct Failed(BoxError);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Failed {}

pin_project_lite::pin_project! {
    /// A request's response to come: the worker's own answer, or the service's.
    #[project = CallProj]
    enum Call<S: HttpService> {
        /// Refused by the worker, answered at once.
        Answered { response: Option<hyper::Response<Full<Bytes>>> },
        /// Called: the service's future.
        Started { #[pin] future: S::Future },
        /// The service was not ready at once: waits for it, then calls it.
        Waiting { future: BoxFuture<Result<hyper::Response<S::ResBody>, BoxError>> },
        /// The service failed before it was called.
        Failed { error: Option<BoxError> },
    }
}

impl<S: HttpService> Call<S> {
    /// Calls `service` with `req` at once when it is ready, as nearly every service always is: the request
    /// is handed over here rather than kept in a future until it is first polled.
    fn start(mut service: S, req: Request) -> Call<S> {
        match service.poll_ready(&mut Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(Ok(())) => Call::Started { future: service.call(req) },
            Poll::Ready(Err(error)) => Call::Failed { error: Some(error.into()) },
            Poll::Pending => Call::Waiting {
                future: Box::pin(async move {
                    std::future::poll_fn(|cx| service.poll_ready(cx)).await.map_err(Into::into)?;
                    service.call(req).await.map_err(Into::into)
                }),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// What hyper awaits for a request: the response, its body wrapped to end the exchange when written,
    /// with `Connection: close` when the request was refused or the worker drains.
    struct Reply<S: HttpService> {
        #[pin]
        call: Call<S>,
        done: Option<Done>,
        close: bool,
    }
}

impl<S: HttpService> Future for Reply<S> {
    type Output = Result<hyper::Response<TrackedBody<Either<S::ResBody, Full<Bytes>>>>, Failed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.call.project() {
            CallProj::Answered { response } => response.take().expect("polled after completion").map(Either::Right),
            CallProj::Started { future } => match std::task::ready!(future.poll(cx)) {
                Ok(response) => response.map(Either::Left),
                Err(error) => return Poll::Ready(Err(Failed(error.into()))),
            },
            CallProj::Waiting { future } => match std::task::ready!(future.as_mut().poll(cx)) {
                Ok(response) => response.map(Either::Left),
                Err(error) => return Poll::Ready(Err(Failed(error))),
            },
            CallProj::Failed { error } => {
                return Poll::Ready(Err(Failed(error.take().expect("polled after completion"))));
            }
        };
        let done = this.done.take().expect("polled after completion");
        if *this.close || done.shared.draining.load(Ordering::Relaxed) {
            response.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response.map(|body| TrackedBody { body, done: Some(done) })))
    }
}

/// A client connection's socket. It holds the connection's place in the scoreboard, wherever it goes: an
/// HTTP/1.1 upgrade hands it to the application, and the connection counts until the application drops it.
struct TrackedStream {
    stream: TcpStream,
    open: Option<ConnectionGuard>,
    closed: Arc<Notify>,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        // The count first, then the wake-up: whoever wakes must see the connection gone.
        drop(self.open.take());
        self.closed.notify_waiters();
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The end of a request's exchange, when its response body has been sent (or dropped): the in-flight entry
/// is released, the connection starts waiting for the next head, and the request budget is checked.
struct Done {
    guard: Option<RequestGuard>,
    wait: Arc<HeadWait>,
    shared: Arc<Shared>,
}

impl Drop for Done {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.wait.answered();
        self.shared.check_limit();
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request's exchange ([`Done`]) once it has yielded its last frame or
    /// is dropped.
    struct TrackedBody<B> {
        #[pin]
        body: B,
        done: Option<Done>,
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = Failed;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Failed>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let Poll::Ready(None) = polled {
            drop(this.done.take());
        }
        polled.map(|frame| frame.map(|f| f.map_err(|e| Failed(e.into()))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Since when a connection has been waiting for its next request head (monotonic nanoseconds), or
/// [`HeadWait::ANSWERING`] while a request is being answered.
struct HeadWait(AtomicU64);

impl HeadWait {
    const ANSWERING: u64 = 0;

    /// A new connection: waiting for its first request head from now.
    fn new() -> HeadWait {
        HeadWait(AtomicU64::new(sys::monotonic_ns()))
    }

    fn head_arrived(&self) {
        self.0.store(HeadWait::ANSWERING, Ordering::Relaxed);
    }

    /// The response body is out: waiting for the next request head from now.
    fn answered(&self) {
        self.0.store(sys::monotonic_ns(), Ordering::Relaxed);
    }

    /// When the wait for a head that began then must end, or `None` while a request is being answered.
    fn deadline_ns(&self, timeout: Duration) -> Option<u64> {
        let since = self.0.load(Ordering::Relaxed);
        (since != HeadWait::ANSWERING).then(|| since.saturating_add(timeout.as_nanos() as u64))
    }
}

/// Returns once the connection has waited `timeout` for a request head: a keep-alive connection idle for
/// `keepalive`, or a client that never finishes its headers (slowloris). The connection's task then drops
/// the connection, as hyper does when its own header read timeout fires. One timer per connection, moved
/// only when it fires, instead of hyper's, which is armed and dropped again for every request. The wait
/// starts when the response body has been handed over to the last frame ([`TrackedBody`]), so a response
/// that streams for longer than `timeout` is never cut.
async fn close_on_head_timeout(wait: &HeadWait, timeout: Duration) {
    let mut sleep = std::pin::pin!(tokio::time::sleep(timeout));
    loop {
        sleep.as_mut().await;
        let now = sys::monotonic_ns();
        let next = match wait.deadline_ns(timeout) {
            Some(deadline) if deadline <= now => return,
            Some(deadline) => deadline - now,
            // Answering: the earliest the next wait can end.
            None => timeout.as_nanos() as u64,
        };
        sleep.as_mut().reset(tokio::time::Instant::now() + Duration::from_nanos(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, headers: &[(&str, &str)]) -> hyper::Request<()> {
        let mut req = hyper::Request::builder().uri(target);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn refusals_follow_the_limits_then_the_host_rules() {
        let limits = Limits { request_line: 40, request_fields: 3, request_field_size: 30 };
        let host = ("host", "example.com");
        // "GET " + target + " HTTP/1.1": 13 bytes around the target.
        assert_eq!(refusal(&limits, &request(&format!("/{}", "a".repeat(26)), &[host])), None);
        assert_eq!(
            refusal(&limits, &request(&format!("/{}", "a".repeat(27)), &[host])),
            Some(Refusal::RequestLineTooLong { limit: 40 })
        );
        let four = [host, ("a", "1"), ("b", "2"), ("c", "3")];
        assert_eq!(refusal(&limits, &request("/", &four)), Some(Refusal::TooManyHeaderFields { limit: 3 }));
        let long = ("x-long", "v".repeat(23));
        assert_eq!(refusal(&limits, &request("/", &[host, (long.0, &long.1[..22])])), None);
        assert_eq!(
            refusal(&limits, &request("/", &[host, (long.0, &long.1)])),
            Some(Refusal::HeaderFieldTooLarge { limit: 30 })
        );
        assert_eq!(refusal(&limits, &request("/", &[])), Some(Refusal::MissingHost));
        assert_eq!(refusal(&limits, &request("/", &[host, host])), Some(Refusal::DuplicateHost));
        assert_eq!(refusal(&limits, &request("/", &[("host", "a b")])), Some(Refusal::InvalidHost));
        // An authority-form target (CONNECT's) counts whole: found by the request_head fuzz target.
        assert_eq!(
            refusal(&limits, &request(&"a".repeat(40), &[host])),
            Some(Refusal::RequestLineTooLong { limit: 40 })
        );
        let unlimited = Limits { request_line: 0, request_fields: 100, request_field_size: 0 };
        assert_eq!(refusal(&unlimited, &request(&format!("/{}", "a".repeat(9000)), &[host])), None);
    }

    #[test]
    fn a_connection_waits_for_a_head_only_between_requests() {
        let timeout = Duration::from_secs(2);
        let before = sys::monotonic_ns();
        let wait = HeadWait::new();
        let first = wait.deadline_ns(timeout).expect("a new connection waits for its first head");
        assert!(first >= before + 2_000_000_000);
        wait.head_arrived();
        assert_eq!(wait.deadline_ns(timeout), None, "no deadline while a request is answered");
        wait.answered();
        assert!(wait.deadline_ns(timeout).expect("waiting for the next head") >= first);
    }
}
