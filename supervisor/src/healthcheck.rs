//! `supervisor healthcheck [URL]`: a dependency-free HTTP probe for container health checks (images without
//! curl). Exit 0 iff the response status is 2xx within the deadline.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(3);

/// Probes `url` (`http://HOST[:PORT][/PATH]`) and returns the exit code.
pub fn probe(url: &str) -> u8 {
    match status(url) {
        Ok(code) if (200..300).contains(&code) => 0,
        Ok(code) => {
            eprintln!("healthcheck: {url} answered {code}");
            1
        }
        Err(error) => {
            eprintln!("healthcheck: {url}: {error}");
            1
        }
    }
}

fn status(url: &str) -> Result<u16, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs are supported")?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let with_port =
        if authority.rsplit_once(':').is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty()) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
    let addr = with_port.to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or("no address")?;
    let mut stream = TcpStream::connect_timeout(&addr, DEADLINE).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(DEADLINE)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(DEADLINE)).map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: supervisor-healthcheck\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = [0u8; 32];
    let mut n = 0;
    while n < 12 {
        let read = stream.read(&mut head[n..]).map_err(|e| e.to_string())?;
        if read == 0 {
            break;
        }
        n += read;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("not an HTTP response: {line:?}"))
}
