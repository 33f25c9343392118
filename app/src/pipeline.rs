//! The request pipeline around every handler, in order:
//!
//! 1. `label` (called by the worker just before the request reaches the service): assign the request id,
//!    which the supervisor records in the scoreboard so a hung request can be named.
//! 2. `handle`, in the `request` span carrying the id: answer CORS preflights; route; run the handler
//!    under the per-request deadline (504) with panics caught (500); render errors in the contract.
//! 3. On the way out, still in the span: CORS headers and `X-Request-ID` on every response, and one
//!    `access` log line.
//!
//! Work that only the access log needs (the path, user agent and client address) is done only when access
//! logs are on.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Body as _;
use hyper::header::{HeaderMap, HeaderValue, ORIGIN, USER_AGENT};
use hyper::{Method, Uri};
use tracing::Instrument;

use crate::config::{Config, TrustedProxies};
use crate::cors::Cors;
use crate::db::Db;
use crate::error::ApiError;
use crate::handler::Reply;
use crate::http::{Request, Response};
use crate::metrics::{self, Metrics};
use crate::readiness::Readiness;
use crate::request_id::{self, RequestId};
use crate::routes::{self, Matched};
use crate::state::State;
use supervisor::{BootError, Label};

/// The application as every worker serves it: the state its handlers share, and for each connection a
/// tower service ([`Connection`]) that knows the client's address.
#[derive(Clone)]
pub struct App {
    state: Arc<State>,
}

/// The app's service for one connection: the worker's state and the client's address. The worker clones it
/// for each request, labels the request with it, then calls it: the clone keeps the request id it chose.
#[derive(Clone)]
pub struct Connection {
    state: Arc<State>,
    peer: SocketAddr,
    /// The request id [`supervisor::HttpService::label`] chose for the request about to be called.
    id: Option<RequestId>,
}

impl supervisor::Connections for App {
    type Service = Connection;

    fn service(&self, peer: SocketAddr) -> Connection {
        Connection { state: self.state.clone(), peer, id: None }
    }
}

impl App {
    /// Builds the app in a worker, after fork, on the worker's runtime: the lazy database pool, readiness,
    /// CORS. `metrics` is where it counts: [`Metrics::shared`], allocated once before the server starts, so
    /// that every worker and every generation count into the same memory.
    pub async fn boot(config: Config, metrics: Metrics) -> Result<App, BootError> {
        // Request ids drawn in this process must not follow a sequence another process also holds.
        request_id::reseed();
        if !config.debug_boot_delay.is_zero() {
            tracing::info!(delay_ms = config.debug_boot_delay.as_millis() as u64, "boot delayed (debug_boot_delay)");
            tokio::time::sleep(config.debug_boot_delay).await;
        }
        if let Some(path) = &config.debug_fail_boot_file
            && path.exists()
        {
            return Err(BootError(format!("boot refused: debug_fail_boot_file {} exists", path.display())));
        }
        let db = Db::new(&config.database).map_err(BootError)?;
        tracing::info!(database = db.configured(), pool_size = config.database.pool_size, env = %config.env, "app booted");
        tokio::spawn(publish_pool_status(db.clone()));
        let state = State {
            metrics,
            cors: Cors::new(&config.cors_origins, config.cors_allow_credentials, &routes::cors_methods()),
            readiness: Readiness::new(db.clone(), config.database.readiness_timeout),
            db,
            config,
        };
        Ok(App { state: Arc::new(state) })
    }
}

impl supervisor::HttpService for Connection {
    type ResBody = Full<Bytes>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// The request id: the client's `X-Request-ID` when valid, else a new one. The worker records it in
    /// its scoreboard, so a hung request can be named by the id its client will look for.
    fn label(&mut self, req: &Request) -> Label {
        let id = RequestId::from_headers(req.headers());
        let label = Label::new(id.as_str());
        self.id = Some(id);
        label
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let id = self.id.take().unwrap_or_else(|| RequestId::from_headers(req.headers()));
        Box::pin(Infallibly { inner: handle(self.state.clone(), req, self.peer, id) })
    }
}

pin_project_lite::pin_project! {
    /// A future that cannot fail, as one that returns `Ok`. No state of its own (an async block would add
    /// some), so that the boxed future of a request is no larger than the request's own.
    struct Infallibly<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for Infallibly<F> {
    type Output = Result<F::Output, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map(Ok)
    }
}

/// What the way out needs to know about a request, taken before the request goes to its handler.
struct Taken {
    started: Instant,
    method: Method,
    origin: Option<HeaderValue>,
    /// The metrics label (route index) and template.
    label: usize,
    template: &'static str,
    /// Only when access logs are on; boxed, so that it takes no room in the request's future otherwise.
    access: Option<Box<AccessInfo>>,
}

/// What the access line says about a request beyond its outcome.
struct AccessInfo {
    uri: Uri,
    user_agent: Option<HeaderValue>,
    client: IpAddr,
}

/// The request's future. What needs no waiting is done before it is built, so that it holds only what
/// lives across the handler's await: it is moved into a box of its own for every request (and an async fn
/// would hold its arguments twice).
fn handle(state: Arc<State>, req: Request, peer: SocketAddr, id: RequestId) -> impl Future<Output = Response> {
    let matched = routes::resolve(req.uri().path(), routes::debug_enabled(&state));
    let (label, template) =
        matched.as_ref().map_or((routes::ROUTES.len(), routes::UNMATCHED), |m| (m.index, m.route.template));
    let taken = Taken {
        started: Instant::now(),
        method: req.method().clone(),
        origin: req.headers().get(ORIGIN).cloned(),
        label,
        template,
        access: state.config.access_log.then(|| {
            Box::new(AccessInfo {
                uri: req.uri().clone(),
                user_agent: req.headers().get(USER_AGENT).cloned(),
                client: client_addr(peer.ip(), req.headers(), &state.config.forwarded_allow_ips),
            })
        }),
    };
    // Recorded as text, not through `Display`: the span keeps a copy, with no formatting machinery. The
    // whole future runs in it, entered once for each time it is polled.
    let span = tracing::info_span!("request", request_id = id.as_str());
    async move {
        let response = match answer(&state, req, matched.as_ref(), &id) {
            Answer::Now(response) => response,
            Answer::Later(reply) => finish(&state, reply, &id).await,
        };
        on_the_way_out(&state, response, taken, id)
    }
    .instrument(span)
}

/// After the handler: metrics, CORS headers, the access line and `X-Request-ID`.
fn on_the_way_out(state: &State, mut response: Response, taken: Taken, id: RequestId) -> Response {
    let Taken { started, method, origin, label, template, access } = taken;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state.metrics.record(&method, label, status, elapsed);
    state.cors.apply(origin.as_ref(), response.headers_mut());

    if let Some(access) = access {
        let AccessInfo { uri, user_agent, client } = *access;
        let bytes = if method == Method::HEAD { 0 } else { response.body().size_hint().exact().unwrap_or(0) };
        let duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
        let user_agent = user_agent.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes()));
        tracing::info!(
            target: "access",
            method = %method,
            path = uri.path(),
            route = template,
            status,
            duration_ms,
            bytes,
            request_id = %id,
            client = %client,
            user_agent = user_agent.as_deref().unwrap_or(""),
            "request"
        );
    }
    response.headers_mut().insert(request_id::HEADER, id.into_header_value());
    response
}

/// Publishes this worker's pool status every second, for `/metrics` to sum over workers.
async fn publish_pool_status(db: Db) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        ticker.tick().await;
        if let Some(status) = db.status() {
            supervisor::stats::set_gauge(metrics::GAUGE_POOL_SIZE, status.size as u64);
            supervisor::stats::set_gauge(metrics::GAUGE_POOL_AVAILABLE, status.available as u64);
            supervisor::stats::set_gauge(metrics::GAUGE_POOL_WAITING, status.waiting as u64);
        }
    }
}

/// How a request is answered: at once (a refused head, a CORS preflight, no route, a method the route does
/// not answer), or by a handler whose reply is still to come.
enum Answer<'a> {
    Now(Response),
    Later(Reply<'a>),
}

/// Everything up to the handler, without waiting: the handler is called, not awaited.
fn answer<'a>(state: &'a State, req: Request, matched: Option<&'a Matched>, id: &RequestId) -> Answer<'a> {
    if let Some(refusal) = req.extensions().get::<supervisor::Refusal>() {
        return Answer::Now(ApiError::refused(*refusal).to_response(id.as_str()));
    }
    if Cors::is_preflight(req.method(), req.headers()) {
        return Answer::Now(state.cors.preflight(req.headers()));
    }
    let Some(matched) = matched else {
        return Answer::Now(ApiError::not_found().to_response(id.as_str()));
    };
    match routes::dispatch(state, matched, req) {
        Ok(reply) => Answer::Later(reply),
        Err(error) => Answer::Now(error.to_response(id.as_str())),
    }
}

/// A handler's reply, awaited under the request deadline (504) with panics caught (500).
async fn finish(state: &State, reply: Reply<'_>, id: &RequestId) -> Response {
    let deadline = state.config.request_timeout;
    let outcome = tokio::time::timeout(deadline, CatchUnwind(reply)).await;
    let error = match outcome {
        Ok(Ok(Ok(response))) => return response,
        Ok(Ok(Err(error))) => error,
        Ok(Err(panic)) => {
            tracing::error!(panic = panic_message(panic.as_ref()), "handler panicked");
            ApiError::internal()
        }
        Err(_) => {
            tracing::warn!(timeout_ms = deadline.as_millis() as u64, "request deadline exceeded");
            ApiError::timeout()
        }
    };
    error.to_response(id.as_str())
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string panic payload>")
}

/// A future that turns a panic while polling its inner future into `Err(payload)`, so one bad request costs
/// a 500 instead of the connection. Unwind safety: a handler that panics is dropped right away; the state it
/// shares (pool, readiness cache) is behind locks that do not poison. The inner future is `Unpin` (a
/// handler's boxed reply), so it is polled in place.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = Pin::new(&mut self.0);
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// The client address for the access log: the peer, or, when the peer is a trusted proxy, the nearest
/// untrusted address in `X-Forwarded-For` (read right to left: each trusted hop vouches for the one before
/// it). An entry that is not an address stops the walk, since nothing before it can be trusted.
pub(crate) fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.contains(ip);
    let peer = peer.to_canonical();
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else { break };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<SocketAddr>().ok().map(|s| s.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_trusted_only_from_allowed_peers() {
        let trusted = TrustedProxies::default();
        // Untrusted peer: the header is ignored.
        assert_eq!(client_addr(ip("203.0.113.9"), &xff(&["198.51.100.1"]), &trusted), ip("203.0.113.9"));
        // Trusted peer: the nearest untrusted hop.
        assert_eq!(client_addr(ip("127.0.0.1"), &xff(&["198.51.100.1"]), &trusted), ip("198.51.100.1"));
        assert_eq!(
            client_addr(ip("127.0.0.1"), &xff(&["6.6.6.6, 198.51.100.1, 127.0.0.1"]), &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(client_addr(ip("127.0.0.1"), &xff(&["6.6.6.6", "198.51.100.1"]), &trusted), ip("198.51.100.1"));
        // IPv4-mapped peers count as their IPv4 address.
        assert_eq!(client_addr(ip("::ffff:127.0.0.1"), &xff(&["198.51.100.1"]), &trusted), ip("198.51.100.1"));
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(client_addr(ip("127.0.0.1"), &xff(&["6.6.6.6, garbage"]), &trusted), ip("127.0.0.1"));
        // No header: the peer.
        assert_eq!(client_addr(ip("::1"), &HeaderMap::new(), &trusted), ip("::1"));
        assert_eq!(client_addr(ip("127.0.0.1"), &xff(&["[2001:db8::1]:443"]), &trusted), ip("2001:db8::1"));
    }

    #[test]
    fn panics_become_errors() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let caught = rt.block_on(CatchUnwind(Box::pin(async { panic!("boom {}", 1) })));
        let payload = caught.unwrap_err();
        assert_eq!(panic_message(payload.as_ref()), "boom 1");
        assert_eq!(rt.block_on(CatchUnwind(Box::pin(async { 7 }))).ok(), Some(7));
    }
}
