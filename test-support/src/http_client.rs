//! A tiny blocking HTTP/1.1 client for tests: one request per connection (`Connection: close`) to a base URL
//! (`http://host:port`), over std's `TcpStream`; the responses are parsed whole (chunked bodies, HEAD). A
//! connection the test keeps open is a [`crate::Conn`].

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Connect and read deadlines of one request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`raw_exchange`] waits for a server to finish answering and close.
const RAW_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lowercase, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| v.as_str()).collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): status {} {:?}", self.status, self.text()))
    }
}

/// `http://host:port` -> socket address.
fn address(base: &str) -> SocketAddr {
    let authority = base.strip_prefix("http://").unwrap_or(base).trim_end_matches('/');
    authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("not an http://host:port base URL: {base:?}"))
}

/// Sends one request. `headers` are added as given; `Host`, `Connection: close` and `Content-Length` (when a
/// body is given) are added unless present.
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<HttpResponse> {
    let addr = address(base);
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has("host") {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    if let Some(body) = body
        && !has("content-length")
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    // The server may answer (413) and close before it read everything: a failed write is not the answer.
    let _ = stream.write_all(&bytes);
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A reset after a complete response (server closed with unread request bytes) still has the answer.
        Err(e) if !raw.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => return Err(e),
    }
    parse(&raw, method.eq_ignore_ascii_case("HEAD"))
}

/// Writes `bytes` as they are on a fresh connection and returns all the server sends until it closes the
/// connection (or [`RAW_READ_TIMEOUT`] passes): for requests no client would send, and answers a parser
/// refuses.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream =
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(RAW_READ_TIMEOUT)).expect("setting the read timeout");
    stream.write_all(bytes).unwrap_or_else(|e| panic!("writing to {addr}: {e}"));
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    raw
}

/// Parses a complete response; `head` responses have no body whatever their headers say.
pub fn parse(raw: &[u8], head_request: bool) -> io::Result<HttpResponse> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {:?}", String::from_utf8_lossy(raw)));
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if head_request {
        Vec::new()
    } else if chunked {
        dechunk(rest).ok_or_else(|| bad("bad chunked body"))?
    } else if let Some(len) = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()) {
        rest.get(..len).ok_or_else(|| bad("body shorter than Content-Length"))?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// `GET path`, panicking on transport errors.
pub fn get(base: &str, path: &str) -> HttpResponse {
    request(base, "GET", path, &[], None).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `GET path` with extra headers, panicking on transport errors.
pub fn get_with(base: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    request(base, "GET", path, headers, None).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `POST path` with a JSON body, panicking on transport errors.
pub fn post_json(base: &str, path: &str, body: &serde_json::Value) -> HttpResponse {
    let bytes = serde_json::to_vec(body).expect("serialising a request body");
    request(base, "POST", path, &[("Content-Type", "application/json")], Some(&bytes))
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// Any method with raw headers and body, panicking on transport errors.
pub fn send(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> HttpResponse {
    request(base, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}
