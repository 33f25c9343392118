//! The `Host` rules of RFC 9112, section 3.2: a server MUST answer 400 to an HTTP/1.1 request without a `Host`
//! header, to any request with more than one, and to any request whose `Host` value is not
//! `uri-host [ ":" port ]` (RFC 3986). HTTP/1.0 requests may leave it out. An empty value is valid (a target
//! without an authority).

use hyper::Version;
use hyper::header::HeaderValue;

use crate::service::Refusal;

/// Why a request of `version` with `count` Host fields, the last one `host`, is refused, if it is.
pub(crate) fn check(version: Version, count: usize, host: Option<&HeaderValue>) -> Option<Refusal> {
    match (count, host) {
        (0, _) if version == Version::HTTP_11 => Some(Refusal::MissingHost),
        (0, _) | (_, None) => None,
        (1, Some(host)) if !is_valid(host.as_bytes()) => Some(Refusal::InvalidHost),
        (1, Some(_)) => None,
        _ => Some(Refusal::DuplicateHost),
    }
}

/// Whether `value` is `uri-host [ ":" port ]`: an IP literal in brackets, or a registered name or IPv4
/// address (unreserved characters, sub-delimiters and percent-encodings), then an optional port of digits.
pub fn is_valid(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else { return false };
        let (literal, rest) = value.split_at(end + 1);
        if !is_ip_literal(&literal[1..literal.len() - 1]) {
            return false;
        }
        match rest {
            [] => (&[][..], None),
            [b':', port @ ..] => (&[][..], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    is_reg_name(host) && port.is_none_or(|p| p.iter().all(u8::is_ascii_digit))
}

/// `IPv6address` or `IPvFuture` (the inside of the brackets).
fn is_ip_literal(inside: &[u8]) -> bool {
    if let [b'v' | b'V', rest @ ..] = inside {
        let Some(dot) = rest.iter().position(|&b| b == b'.') else { return false };
        let (version, address) = (&rest[..dot], &rest[dot + 1..]);
        return !version.is_empty()
            && version.iter().all(u8::is_ascii_hexdigit)
            && !address.is_empty()
            && address.iter().all(|&b| is_unreserved(b) || is_sub_delim(b) || b == b':');
    }
    std::str::from_utf8(inside).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
}

/// `reg-name` (which includes IPv4 addresses): unreserved, sub-delims and `%HH`; possibly empty.
fn is_reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' if name.len() > i + 2 && name[i + 1].is_ascii_hexdigit() && name[i + 2].is_ascii_hexdigit() => i += 3,
            b if is_unreserved(b) || is_sub_delim(b) => i += 1,
            _ => return false,
        }
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=')
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HOST, HeaderMap};

    fn refusal(version: Version, hosts: &[&str]) -> Option<Refusal> {
        let mut headers = HeaderMap::new();
        for h in hosts {
            headers.append(HOST, HeaderValue::from_str(h).unwrap());
        }
        check(version, headers.get_all(HOST).iter().count(), headers.get_all(HOST).iter().next_back())
    }

    #[test]
    fn http11_needs_exactly_one_valid_host() {
        assert_eq!(refusal(Version::HTTP_11, &[]), Some(Refusal::MissingHost));
        assert_eq!(refusal(Version::HTTP_11, &["a", "a"]), Some(Refusal::DuplicateHost));
        assert_eq!(refusal(Version::HTTP_11, &["a b"]), Some(Refusal::InvalidHost));
        assert_eq!(refusal(Version::HTTP_11, &["example.com:8080"]), None);
        assert_eq!(refusal(Version::HTTP_10, &[]), None, "HTTP/1.0 may leave Host out");
        assert_eq!(refusal(Version::HTTP_10, &["a", "b"]), Some(Refusal::DuplicateHost));
        assert_eq!(refusal(Version::HTTP_10, &["a/b"]), Some(Refusal::InvalidHost));
    }

    #[test]
    fn host_values_follow_rfc3986() {
        for valid in [
            "",
            "localhost",
            "127.0.0.1:8000",
            "[::1]",
            "[::1]:8000",
            "[v1.fe80::a+en1]",
            "xn--bcher-kva.example",
            "a%20b",
            "host:",
            "sub_domain.example~!$&'()*+,;=",
        ] {
            assert!(is_valid(valid.as_bytes()), "{valid:?} is valid");
        }
        for invalid in [
            "a b",
            "a/b",
            "a@b",
            "[::1",
            "[::1]x",
            "[not-an-address]",
            "[v.x]",
            "host:80a",
            "a%2",
            "a%zz",
            "h\u{e9}te",
            "a:b:c",
            "\t",
        ] {
            assert!(!is_valid(invalid.as_bytes()), "{invalid:?} is invalid");
        }
    }
}
