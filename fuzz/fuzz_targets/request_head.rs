//! The worker's refusal of a parsed request head (supervisor/src/worker.rs `refusal`, supervisor/src/host.rs):
//! gunicorn's limits first, in order (request line, number of fields, size of a field), then the Host rules
//! of RFC 9112 section 3.2. Each refusal is checked against the rule it stands for, computed here from the
//! request as received; a request that is not refused breaks none of them.
//!
//! Input: a structured head (arbitrary): method, target, HTTP/1.0 or 1.1, header fields, and the limits.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use supervisor::fuzzing::{Limits, Refusal, host_is_valid, refusal};

#[derive(Arbitrary, Debug)]
struct Head {
    method: String,
    target: String,
    http10: bool,
    fields: Vec<(String, Vec<u8>)>,
    request_line: u16,
    request_fields: u8,
    request_field_size: u16,
}

fuzz_target!(|head: Head| {
    let version = if head.http10 { hyper::Version::HTTP_10 } else { hyper::Version::HTTP_11 };
    let mut builder = hyper::Request::builder().method(head.method.as_str()).uri(head.target.as_str()).version(version);
    for (name, value) in &head.fields {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    // What hyper's parser would not hand over is out of scope.
    let Ok(req) = builder.body(()) else { return };
    let limits = Limits {
        request_line: usize::from(head.request_line),
        request_fields: usize::from(head.request_fields).max(1),
        request_field_size: usize::from(head.request_field_size),
    };
    let got = refusal(&limits, &req);

    // The rules, from the request as received: "METHOD SP target SP HTTP/1.x".
    let line = req.method().as_str().len() + 1 + req.uri().to_string().len() + 1 + 8;
    let line_too_long = limits.request_line > 0 && line > limits.request_line;
    let too_many = req.headers().len() > limits.request_fields;
    let field_too_large = limits.request_field_size > 0
        && req.headers().iter().any(|(n, v)| n.as_str().len() + 2 + v.len() > limits.request_field_size);
    let hosts: Vec<&[u8]> = req.headers().get_all(hyper::header::HOST).iter().map(|v| v.as_bytes()).collect();

    let expected = if line_too_long {
        Some(Refusal::RequestLineTooLong { limit: limits.request_line })
    } else if too_many {
        Some(Refusal::TooManyHeaderFields { limit: limits.request_fields })
    } else if field_too_large {
        Some(Refusal::HeaderFieldTooLarge { limit: limits.request_field_size })
    } else if hosts.is_empty() && version == hyper::Version::HTTP_11 {
        Some(Refusal::MissingHost)
    } else if hosts.len() > 1 {
        Some(Refusal::DuplicateHost)
    } else if hosts.first().is_some_and(|h| !host_is_valid(h)) {
        Some(Refusal::InvalidHost)
    } else {
        None
    };
    assert_eq!(got, expected, "{req:?}");

    // A valid Host value is `host[:port]` of URI characters only: no space, no control, nothing that would
    // end an authority or start userinfo.
    for host in &hosts {
        if host_is_valid(host) {
            assert!(host.iter().all(|b| b.is_ascii_graphic()), "{host:?}");
            assert!(!host.iter().any(|b| matches!(b, b'/' | b'?' | b'#' | b'@' | b'\\')), "{host:?}");
        }
    }
    // And every plain `name[:digits]` is one.
    for host in &hosts {
        let (name, port) = match host.iter().rposition(|b| *b == b':') {
            Some(i) => (&host[..i], &host[i + 1..]),
            None => (&host[..], &b""[..]),
        };
        if name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.')
            && port.iter().all(u8::is_ascii_digit)
        {
            assert!(host_is_valid(host), "{host:?}");
        }
    }
});
