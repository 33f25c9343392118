//! Background clients that keep a server busy while a test changes it (reloads, kills, upgrades).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::conn::Conn;

/// What a [`Load`] saw.
#[derive(Debug, Default)]
pub struct LoadStats {
    pub ok: u64,
    /// Requests that got no response, or a non-200 one, with what happened.
    pub failures: Vec<String>,
}

/// Background clients hammering `GET path` until stopped: `keepalive` threads reusing their connection
/// (reconnecting after a `Connection: close` response, as HTTP/1.1 requires) and `fresh` threads opening a
/// new connection per request. Bounded: each thread stops by itself after `MAX_PER_THREAD` requests.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<LoadStats>>,
}

impl Load {
    pub fn start(addr: SocketAddr, path: &str, keepalive: usize, fresh: usize) -> Load {
        const MAX_PER_THREAD: u64 = 200_000;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..keepalive + fresh {
            let stop = stop.clone();
            let path = path.to_string();
            let reuse = i < keepalive;
            threads.push(std::thread::spawn(move || {
                let mut stats = LoadStats::default();
                let mut conn: Option<Conn> = None;
                for n in 0..MAX_PER_THREAD {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if conn.is_none() {
                        match Conn::open(addr) {
                            Ok(c) => conn = Some(c),
                            Err(e) => {
                                stats.failures.push(format!("connect: {e}"));
                                continue;
                            }
                        }
                    }
                    let c = conn.as_mut().expect("just opened");
                    let headers: &[&str] = if reuse { &[] } else { &["Connection: close"] };
                    match c.send("GET", &path, headers, b"") {
                        Ok(r) if r.status == 200 => {
                            stats.ok += 1;
                            if !reuse || r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                                conn = None;
                            }
                        }
                        Ok(r) => {
                            stats.failures.push(format!("request {n}: status {} {}", r.status, r.text()));
                            conn = None;
                        }
                        Err(e) => {
                            stats.failures.push(format!("request {n}: {e}"));
                            conn = None;
                        }
                    }
                }
                stats
            }));
        }
        Load { stop, threads }
    }

    /// Stops the clients and sums their results.
    pub fn finish(self) -> LoadStats {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadStats::default();
        for t in self.threads {
            let s = t.join().expect("load thread");
            total.ok += s.ok;
            total.failures.extend(s.failures);
        }
        total
    }
}
