//! A client connection the test holds: several requests on one connection (keep-alive), header lines as
//! they go on the wire, and I/O errors as values, for tests about connections and workers that die under
//! them. One-shot requests to a base URL, which the contract checks use, are in [`crate::http_client`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::http_client;

/// Responses are the shared client's type (header names lowercased, lookups case-insensitive).
pub use http_client::HttpResponse as Response;

/// A client connection that can carry several requests (keep-alive).
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: Vec::new() })
    }

    /// Sends a request with the given extra headers (each "Name: value") and body.
    pub fn send(&mut self, method: &str, path: &str, headers: &[&str], body: &[u8]) -> std::io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes)?;
        self.read_response()
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.send("GET", path, &[], b"")
    }

    /// Writes `bytes` as they are, for what [`Conn::send`] cannot build: malformed heads, several pipelined
    /// requests, a body sent after an interim answer. The answers are read with [`Conn::read_response`].
    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    pub fn read_response(&mut self) -> std::io::Result<Response> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let len: usize = head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while self.buf.len() < head_end + 4 + len {
            self.fill()?;
        }
        let raw: Vec<u8> = self.buf.drain(..head_end + 4 + len).collect();
        http_client::parse(&raw, false)
    }

    /// Waits until the server closes this connection (a reset counts) and returns what it sent after the
    /// responses already read; panics if it is still open after `timeout`.
    pub fn read_until_closed(&mut self, timeout: Duration) -> Vec<u8> {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut rest = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return rest,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return rest,
                Err(e) => panic!(
                    "connection not closed within {timeout:?} ({e}); received after the responses: {:?}",
                    String::from_utf8_lossy(&rest)
                ),
            }
        }
    }

    /// Waits until the server closes this connection; returns how long that took.
    pub fn wait_closed(&mut self, timeout: Duration) -> Duration {
        let start = Instant::now();
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut b = [0u8; 64];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return start.elapsed(),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return start.elapsed(),
                Err(e) => panic!("connection not closed within {timeout:?}: {e}"),
            }
        }
    }
}

/// One request on a fresh connection, closed afterwards.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &[u8]) -> std::io::Result<Response> {
    let mut all = vec!["Connection: close"];
    all.extend_from_slice(headers);
    Conn::open(addr)?.send(method, path, &all, body)
}

/// `GET path` on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(addr, "GET", path, &[], b"")
}
