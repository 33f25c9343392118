//! An axum application run under the supervisor: plain text, server-sent events and a WebSocket echo.
//!
//! ```sh
//! cargo run --release --example axum -- --config conf/examples.toml
//! curl localhost:8000/                    # text
//! curl -N localhost:8000/events           # 5 events, 200 ms apart (?n=COUNT for more)
//! websocat ws://localhost:8000/ws         # echoes text frames
//! kill -HUP <master pid>                  # new workers, switched when ready; no request lost
//! ```
//!
//! Everything the supervisor offers comes with `Server::main`: `--config`, the environment, flags,
//! `check`, `healthcheck`, signals, logging, heartbeats, request limits and `max_connections`.

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::Query;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use futures_util::Stream;
use serde::Deserialize;

fn main() -> ExitCode {
    // The boot function runs in every worker after fork: build pools, clients and state here, not before.
    supervisor::Server::new(|| async { Ok(router()) }).version(env!("CARGO_PKG_VERSION")).main()
}

fn router() -> Router {
    Router::new()
        .route("/", get(|| async { "hello from a worker\n" }))
        .route("/events", get(events))
        .route("/ws", get(echo))
        .route("/stall", get(stall))
}

#[derive(Deserialize)]
struct Count {
    n: Option<u32>,
}

/// `n` events (5 by default), 200 ms apart, each saying when it was sent (Unix milliseconds). The worker
/// sends each one as it is produced; the stream counts as a request in flight until it ends.
async fn events(Query(count): Query<Count>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let n = count.n.unwrap_or(5);
    let stream = futures_util::stream::unfold(0, move |i| async move {
        if i >= n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let sent_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Some((Ok(Event::default().data(format!("{{\"n\":{i},\"sent_ms\":{sent_ms}}}"))), i + 1))
    });
    Sse::new(stream)
}

/// A WebSocket that sends every text frame back. When the worker starts a graceful stop (a reload, a
/// scale-down, SIGTERM), it says goodbye with a close frame.
async fn echo(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        loop {
            tokio::select! {
                message = socket.recv() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if socket.send(Message::Text(text)).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                () = supervisor::draining() => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
            }
        }
    })
}

#[derive(Deserialize)]
struct Secs {
    secs: Option<u64>,
}

/// What not to do: block the worker's runtime (here for `secs` seconds, 1 by default). Its heartbeat stops,
/// and past `timeout` the master kills the worker, names this request and starts another.
async fn stall(Query(secs): Query<Secs>) -> &'static str {
    std::thread::sleep(Duration::from_secs(secs.secs.unwrap_or(1)));
    "stalled\n"
}
