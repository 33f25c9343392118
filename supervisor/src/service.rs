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
    /// Answers one request. `peer` is the address of the TCP client (the proxy, behind a proxy).
    /// A panic in the returned future costs the connection, never the worker; applications that want to
    /// answer panics in their own error format should catch them.
    ///
    /// A request that exceeds the worker's limits carries a [`Refusal`] in its extensions: the application
    /// answers it (414 or 431 in its own error format) without handling the request.
    fn call(&self, req: Request, peer: SocketAddr) -> Call;
}

/// A request the application took: its label, and the response to come.
pub struct Call {
    /// A short label for the request, typically the id the application assigned it. While the request is in
    /// flight, the runtime records the method, path and this label in the worker's scoreboard slot, so that
    /// the master can name the request if the worker stops answering.
    pub label: Label,
    /// The response.
    pub response: BoxFuture<Response>,
}

/// A request's label: text of at most [`Label::CAPACITY`] bytes, kept inline, so that labelling a request
/// allocates nothing.
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
}

impl std::fmt::Debug for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
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
