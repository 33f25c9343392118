//! The seam between the supervisor and the service it runs.
//!
//! A worker serves any [`tower_service::Service`] that takes a [`Request`] and answers an
//! `http::Response<B>` whose body `B` is any [`hyper::body::Body`] of [`Bytes`] ([`HttpService`]): an axum
//! `Router`, a tower middleware stack, a hyper `service_fn` (through [`from_hyper`]). What the boot function
//! returns is a source of such services, one per connection ([`Connections`]): a service that is cloned for
//! each connection (the client's address in every request's extensions), or [`per_connection`], a function
//! that makes the service of each connection knowing its client's address. Bodies stream both ways, and a service
//! may take over the connection with an HTTP/1.1 upgrade (`hyper::upgrade::on`, for WebSocket). The worker
//! runtime owns everything around the service: accepting, HTTP/1.1 with keep-alive and head timeouts, the
//! request-head limits, the scoreboard, draining.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;

/// A request as a worker hands it to the service. Its extensions hold the client's address
/// ([`PeerAddr`]), and, when the service answers refused requests itself (see
/// [`crate::Server::answer_refusals`]), the [`Refusal`].
pub type Request = hyper::Request<hyper::body::Incoming>;
/// The error a service or a body may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The address of the TCP client (the proxy, behind a proxy), in the extensions of every request to a
/// service cloned for each connection (see [`Connections`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// A tower service a worker can serve: over [`Request`]s, answering responses with any body of [`Bytes`].
/// Implemented for every such [`tower_service::Service`] that is `Clone + Send`. A type of your own may
/// implement it directly instead, to label its requests itself: the worker clones the service for every
/// request and calls [`HttpService::label`] then [`HttpService::call`] on the same clone, which can keep
/// what the label took to compute (this repository's app keeps the request id it chose).
pub trait HttpService: Clone + Send + 'static {
    /// The response body.
    type ResBody: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static;
    /// The error the service fails with (hyper closes the connection).
    type Error: Into<BoxError>;
    /// The response to come.
    type Future: Future<Output = Result<hyper::Response<Self::ResBody>, Self::Error>> + Send + 'static;
    /// As [`tower_service::Service::poll_ready`].
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>>;
    /// As [`tower_service::Service::call`].
    fn call(&mut self, req: Request) -> Self::Future;
    /// The request's label in the scoreboard, called just before [`HttpService::call`] (unless the server has
    /// a label hook, [`crate::Server::label`]). Default: [`Label::of_request_id`].
    fn label(&mut self, req: &Request) -> Label {
        Label::of_request_id(req)
    }
}

impl<S, B> HttpService for S
where
    S: tower_service::Service<Request, Response = hyper::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
{
    type ResBody = B;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        tower_service::Service::poll_ready(self, cx)
    }

    fn call(&mut self, req: Request) -> S::Future {
        tower_service::Service::call(self, req)
    }
}

/// What a booted worker serves: the service each connection's requests go to.
///
/// Any [`HttpService`] is one (`Sync` too, as an axum `Router` is): it is cloned for each connection, and
/// puts the client's address in every request's extensions ([`PeerAddr`]). [`per_connection`] makes each
/// connection's service with a function of the client's address instead, which costs nothing per request.
pub trait Connections: Send + Sync + 'static {
    /// The service of one connection, cloned for each of its requests.
    type Service: HttpService;
    /// The service of a new connection from `peer`.
    fn service(&self, peer: SocketAddr) -> Self::Service;
}

impl<S: HttpService + Sync> Connections for S {
    type Service = WithPeer<S>;

    fn service(&self, peer: SocketAddr) -> WithPeer<S> {
        WithPeer { inner: self.clone(), peer }
    }
}

/// A service that puts its connection's client address in every request's extensions ([`PeerAddr`]).
#[derive(Clone)]
pub struct WithPeer<S> {
    inner: S,
    peer: SocketAddr,
}

impl<S: HttpService> HttpService for WithPeer<S> {
    type ResBody = S::ResBody;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> S::Future {
        req.extensions_mut().insert(PeerAddr(self.peer));
        self.inner.call(req)
    }

    fn label(&mut self, req: &Request) -> Label {
        self.inner.label(req)
    }
}

/// Each connection's service made by `make` from the client's address, once per connection: for a
/// service that wants the address without looking it up in every request.
pub fn per_connection<F, S>(make: F) -> PerConnection<F>
where
    F: Fn(SocketAddr) -> S + Send + Sync + 'static,
    S: HttpService,
{
    PerConnection(make)
}

/// See [`per_connection`].
pub struct PerConnection<F>(F);

impl<F, S> Connections for PerConnection<F>
where
    F: Fn(SocketAddr) -> S + Send + Sync + 'static,
    S: HttpService,
{
    type Service = S;

    fn service(&self, peer: SocketAddr) -> S {
        (self.0)(peer)
    }
}

/// A request's label in the scoreboard: text of at most [`Label::CAPACITY`] bytes, kept inline, so that
/// labelling a request allocates nothing. While a request is in flight (its response streaming included),
/// the worker records its method, path and label in its scoreboard slot, so that the master can name it
/// when the worker stops answering or dies. See [`crate::Server::label`].
#[derive(Clone, Copy)]
pub struct Label {
    len: u8,
    bytes: [u8; Label::CAPACITY],
}

impl Label {
    /// The longest label kept, in bytes.
    pub const CAPACITY: usize = 128;
    /// No label.
    pub const NONE: Label = Label { len: 0, bytes: [0; Label::CAPACITY] };

    /// `text`, cut to [`Label::CAPACITY`] bytes on a character boundary.
    pub fn new(text: &str) -> Label {
        let (kept, _) = crate::cut_at(text, Label::CAPACITY);
        let mut label = Label::NONE;
        label.bytes[..kept.len()].copy_from_slice(kept.as_bytes());
        label.len = kept.len() as u8;
        label
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).expect("cut on a character boundary")
    }

    /// The default label of a request: its `X-Request-ID` header, if it is printable ASCII.
    pub fn of_request_id(req: &Request) -> Label {
        match req.headers().get("x-request-id").and_then(|v| v.to_str().ok()) {
            Some(id) if id.bytes().all(|b| b.is_ascii_graphic()) => Label::new(id),
            _ => Label::NONE,
        }
    }
}

impl std::fmt::Debug for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// Why the worker refuses a request it could parse: gunicorn's `limit_request_*`, and the `Host` rules of
/// RFC 9112 section 3.2. Heads beyond what the parser accepts at all are refused by hyper itself (431,
/// connection closed) and never reach the service. The worker answers a refused request itself
/// ([`Refusal::response`]) and closes the connection, unless the service answers refusals in its own format
/// ([`crate::Server::answer_refusals`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request line is longer than `limit` bytes (414).
    RequestLineTooLong {
        /// `limit_request_line`.
        limit: usize,
    },
    /// More than `limit` header fields (431).
    TooManyHeaderFields {
        /// `limit_request_fields`.
        limit: usize,
    },
    /// A header field (name and value) longer than `limit` bytes (431).
    HeaderFieldTooLarge {
        /// `limit_request_field_size`.
        limit: usize,
    },
    /// An HTTP/1.1 request without a `Host` header (400).
    MissingHost,
    /// More than one `Host` header (400).
    DuplicateHost,
    /// A `Host` value that is not `host[:port]` (400).
    InvalidHost,
}

impl Refusal {
    /// The status it is answered with.
    pub fn status(self) -> hyper::StatusCode {
        use hyper::StatusCode;
        match self {
            Refusal::RequestLineTooLong { .. } => StatusCode::URI_TOO_LONG,
            Refusal::TooManyHeaderFields { .. } | Refusal::HeaderFieldTooLarge { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Refusal::MissingHost | Refusal::DuplicateHost | Refusal::InvalidHost => StatusCode::BAD_REQUEST,
        }
    }

    /// What is wrong, in a sentence for the client.
    pub fn message(self) -> String {
        match self {
            Refusal::RequestLineTooLong { limit } => format!("the request line is longer than {limit} bytes"),
            Refusal::TooManyHeaderFields { limit } => format!("more than {limit} header fields"),
            Refusal::HeaderFieldTooLarge { limit } => format!("a header field is longer than {limit} bytes"),
            Refusal::MissingHost => "an HTTP/1.1 request must have a Host header".into(),
            Refusal::DuplicateHost => "a request must have exactly one Host header".into(),
            Refusal::InvalidHost => "the Host header is not a valid host[:port]".into(),
        }
    }

    /// The worker's own answer: the status, and the message as plain text.
    pub fn response(self) -> hyper::Response<Full<Bytes>> {
        let mut response = hyper::Response::new(Full::new(Bytes::from(self.message() + "\n")));
        *response.status_mut() = self.status();
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
        response
    }
}

/// Why a worker could not boot. The message is logged by the worker and reported by the master.
#[derive(Debug)]
pub struct BootError(pub String);

impl std::fmt::Display for BootError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BootError {}

impl From<String> for BootError {
    fn from(message: String) -> Self {
        BootError(message)
    }
}

impl From<&str> for BootError {
    fn from(message: &str) -> Self {
        BootError(message.to_owned())
    }
}

/// What labels a request for the scoreboard (see [`crate::Server::label`]).
pub(crate) type LabelFn = Arc<dyn Fn(&mut Request) -> Label + Send + Sync>;

/// A hyper service (`hyper::service::service_fn`, or any [`hyper::service::Service`]) as a tower service,
/// so a worker can serve it.
pub fn from_hyper<S>(service: S) -> FromHyper<S> {
    FromHyper(Arc::new(service))
}

/// See [`from_hyper`].
pub struct FromHyper<S>(Arc<S>);

impl<S> Clone for FromHyper<S> {
    fn clone(&self) -> Self {
        FromHyper(self.0.clone())
    }
}

impl<S: hyper::service::Service<Request>> tower_service::Service<Request> for FromHyper<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        self.0.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_cut_on_character_boundaries() {
        assert_eq!(Label::new("req-1").as_str(), "req-1");
        assert_eq!(Label::NONE.as_str(), "");
        assert_eq!(Label::new(&"x".repeat(200)).as_str(), "x".repeat(Label::CAPACITY));
        let cut = Label::new(&format!("{}é", "x".repeat(Label::CAPACITY - 1)));
        assert_eq!(cut.as_str(), "x".repeat(Label::CAPACITY - 1));
    }
}
