//! The client address behind trusted proxies (app/src/service.rs `client_addr`) and the trusted ranges
//! (app/src/config.rs `TrustedProxies`, gunicorn's `forwarded_allow_ips`):
//! - a list of ranges parses iff every item is an address or a CIDR range (or one is `*`), and membership
//!   agrees with ipnet's on the ranges as written, an IPv4-mapped address counting as its IPv4 address;
//! - the client address is the peer or one of the `X-Forwarded-For` hops; when it is a hop, the peer and every
//!   hop to its right are trusted, and the walk stopped where it had to: at an untrusted hop, at the leftmost
//!   one, or before a hop that is not an address.
//!
//! Input, as text: the first line lists the trusted items, separated by commas (`-`: the default, loopback);
//! the second is the peer's address; each further line is one `X-Forwarded-For` value.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use app::fuzzing::{TrustedProxies, client_addr};
use hyper::HeaderMap;
use hyper::header::HeaderValue;
use libfuzzer_sys::fuzz_target;

/// An item as ipnet reads it: a CIDR range, or an address as a range of one.
fn net(item: &str) -> Option<ipnet::IpNet> {
    item.parse().ok().or_else(|| item.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

/// A hop as an address: an address, or an address and a port.
fn hop_ip(hop: &str) -> Option<IpAddr> {
    let ip = hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))?;
    Some(ip.to_canonical())
}

/// Addresses on both sides of a range's edges.
fn edges(net: &ipnet::IpNet) -> Vec<IpAddr> {
    let (first, last) = (net.network(), net.broadcast());
    let step = |ip: IpAddr, up: bool| -> Option<IpAddr> {
        match ip {
            IpAddr::V4(v4) => {
                u32::from(v4).checked_add_signed(if up { 1 } else { -1 }).map(|n| IpAddr::from(n.to_be_bytes()))
            }
            IpAddr::V6(v6) => {
                u128::from(v6).checked_add_signed(if up { 1 } else { -1 }).map(|n| IpAddr::from(n.to_be_bytes()))
            }
        }
    };
    [Some(first), Some(last), step(first, false), step(last, true)].into_iter().flatten().collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let ranges = lines.next().unwrap_or_default();
    let peer = lines.next().unwrap_or_default();
    let values: Vec<&str> = lines.collect();

    let items: Vec<String> = ranges.split(',').map(|i| i.trim().to_owned()).collect();
    let (trusted, nets) = if ranges == "-" {
        (TrustedProxies::default(), vec![net("127.0.0.1").unwrap(), net("::1").unwrap()])
    } else {
        let parsed = TrustedProxies::parse(&items);
        let star = items.iter().any(|i| i == "*");
        let nets: Option<Vec<ipnet::IpNet>> = items.iter().map(|i| net(i)).collect();
        assert_eq!(parsed.is_ok(), star || nets.is_some(), "{items:?}: {parsed:?}");
        let Ok(trusted) = parsed else { return };
        if star {
            let everyone: Vec<ipnet::IpNet> = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
            (trusted, everyone)
        } else {
            (trusted, nets.unwrap())
        }
    };

    let mut headers = HeaderMap::new();
    for value in &values {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.append("x-forwarded-for", value);
        }
    }
    // The hops as a proxy chain writes them: every value, every comma-separated entry, left to right.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();

    // Membership agrees with ipnet on the ranges as written, at their edges and for every address given.
    let probes = nets.iter().flat_map(edges).chain(hops.iter().filter_map(|h| hop_ip(h))).chain(hop_ip(peer));
    for probe in probes {
        let expected = nets.iter().any(|n| n.contains(&probe.to_canonical()));
        assert_eq!(trusted.contains(probe), expected, "{probe} in {ranges:?}");
    }

    let Ok(peer) = peer.parse::<IpAddr>() else { return };
    let client = client_addr(peer, &headers, &trusted);
    if client == peer.to_canonical() && (!trusted.contains(peer) || hops.is_empty()) {
        return;
    }
    assert!(trusted.contains(peer), "an untrusted peer {peer} gave {client}, not itself; hops {hops:?}");
    // A hop it may have come from: the peer and every hop to its right trusted, and the walk stopped there.
    let from_hop = (0..hops.len()).rev().find(|&k| {
        let right_trusted = hops[k + 1..].iter().all(|h| hop_ip(h).is_some_and(|ip| trusted.contains(ip)));
        let stopped = !trusted.contains(client) || k == 0 || hop_ip(hops[k - 1]).is_none();
        hop_ip(hops[k]) == Some(client) && right_trusted && stopped
    });
    if from_hop.is_none() {
        // Or the peer itself, when the hop to its left is not an address.
        let peer_stops = hops.last().is_some_and(|h| hop_ip(h).is_none());
        assert!(client == peer.to_canonical() && peer_stops, "client {client} from peer {peer}, hops {hops:?}");
    }
});
