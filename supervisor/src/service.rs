//! The seam between the supervisor and the application it serves.
//!
//! The worker runtime knows how to accept connections, speak HTTP/1.1 with timeouts and drain; it does not
//! know what a route is. An application hands it a [`Service`] once the worker has booted.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;

/// The body of every response: fully buffered. The app's responses are small JSON documents or text.
pub type Body = http_body_util::Full<Bytes>;
/// A request as the runtime hands it to the application.
pub type Request = hyper::Request<hyper::body::Incoming>;
/// A response as the application hands it back.
pub type Response = hyper::Response<Body>;
/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// An HTTP application served by every worker.
pub trait Service: Send + Sync + 'static {
    /// Called first for every request. The application may amend the request (for example to attach the
    /// request id it assigned) and returns a short label for it. The runtime records the method, path and this
    /// label in the worker's scoreboard slot while the request is in flight, so that the master can name the
    /// request if the worker stops answering.
    fn label(&self, _req: &mut Request) -> Option<String> {
        None
    }

    /// Answers one request. `peer` is the address of the TCP client (the proxy, behind a proxy).
    /// A panic in the returned future costs the connection, never the worker; applications that want to
    /// answer panics in their own error format should catch them.
    ///
    /// A request that exceeds the worker's limits carries a [`Refusal`] in its extensions: the application
    /// answers it (414 or 431 in its own error format) without handling the request.
    fn call(&self, req: Request, peer: SocketAddr) -> BoxFuture<Response>;
}

/// Why the worker refuses a request it could parse (gunicorn's `limit_request_*`). Heads beyond what the
/// parser accepts at all are refused by hyper itself (431, connection closed) and never reach the service.
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

/// Builds the application inside a freshly forked worker, on the worker's tokio runtime.
///
/// The master never calls [`WorkerApp::boot`]: it only holds the value so that every worker it forks can.
/// Anything that starts threads or touches tokio belongs in `boot`, never in the constructor.
pub trait WorkerApp: Send + Sync + 'static {
    /// Initialises the application. The worker is marked ready once this returns `Ok`.
    fn boot(&self) -> BoxFuture<Result<std::sync::Arc<dyn Service>, BootError>>;
}
