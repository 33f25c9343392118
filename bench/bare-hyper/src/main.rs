//! What a Rust user would write instead of this project, for `bench/run.sh` to compare with: one process,
//! a multi-thread tokio runtime, hyper's HTTP/1.1 server with keep-alive, and one answer to every request,
//! byte for byte what the app answers to `GET /healthz` (status, header names and lengths, body), without
//! the work behind it: no routing, request id, span, metrics, scoreboard, deadline or access log.
//!
//!     bare-hyper ADDRESS [THREADS]     # e.g. bare-hyper 127.0.0.1:8000 2 (default: 2 threads)
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The body of `GET /healthz`.
const BODY: &[u8] = br#"{"status":"ok"}"#;
/// A request id of the length the app generates (a UUID), fixed.
const REQUEST_ID: &str = "00000000-0000-7000-8000-000000000000";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(addr), threads) = (args.next(), args.next()) else {
        eprintln!("usage: bare-hyper ADDRESS [THREADS]");
        return ExitCode::from(2);
    };
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        eprintln!("bare-hyper: not an address: {addr}");
        return ExitCode::from(2);
    };
    let Ok(threads) = threads.as_deref().unwrap_or("2").parse::<usize>() else {
        eprintln!("bare-hyper: THREADS must be a number");
        return ExitCode::from(2);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build();
    // SIGINT ends it (a shell ignores SIGINT in the commands it starts in the background: a handler overrides
    // that, as the supervisor's do).
    let run = |rt: tokio::runtime::Runtime| {
        rt.block_on(async {
            tokio::select! {
                served = serve(addr) => served,
                stopped = tokio::signal::ctrl_c() => stopped,
            }
        })
    };
    match runtime.and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bare-hyper: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        // A failed accept (a client gone before it was taken, out of descriptors) costs that client only.
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(healthz)).await;
        });
    }
}

async fn healthz(_: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(HeaderName::from_static("x-request-id"), HeaderValue::from_static(REQUEST_ID));
    Ok(response)
}
