//! A bare hyper `service_fn` run under the supervisor.
//!
//! ```sh
//! cargo run --release --example hyper -- --config conf/examples.toml
//! curl localhost:8000/
//! ```

use std::convert::Infallible;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};

async fn hello(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from(format!("hello from a worker: {} {}\n", req.method(), req.uri().path())))))
}

fn main() -> ExitCode {
    supervisor::Server::new(|| async { Ok(supervisor::from_hyper(hyper::service::service_fn(hello))) })
        .version(env!("CARGO_PKG_VERSION"))
        .main()
}
