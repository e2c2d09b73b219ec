//! Who is calling: the client address behind trusted proxies, and per-source allowlists.
//!
//! `X-Forwarded-For` and `Forwarded` are written by whoever sends the request, so they are
//! believed only when the connection comes from a configured trusted proxy, and then only
//! the hops that trusted proxies added: the client is the right-most address that is not a
//! trusted proxy. Without trusted proxies the headers are ignored.

use std::net::IpAddr;

use ipnet::IpNet;

/// A list of networks (`10.0.0.0/8`, `2001:db8::/32`; a bare address is a /32 or /128).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(Vec<IpNet>);

impl Networks {
    /// Parses every entry; errors are `(index, message)`.
    pub fn parse(entries: &[String]) -> Result<Self, Vec<(usize, String)>> {
        let mut nets = Vec::new();
        let mut problems = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let entry = entry.trim();
            match entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(net) => nets.push(net.trunc()),
                Err(_) => problems.push((
                    i,
                    "must be an address or a network in CIDR form (`203.0.113.0/24`, `2001:db8::/32`)"
                        .to_string(),
                )),
            }
        }
        if problems.is_empty() {
            Ok(Self(nets))
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `address` is in one of the networks (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.iter().any(|net| net.contains(&address))
    }
}

fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the peer's, or — when the peer is a trusted proxy — the right-most
/// address in the forwarding headers that is not itself a trusted proxy. `Forwarded` (RFC
/// 7239) is read when present, else `X-Forwarded-For`; an unreadable hop stops the walk at
/// the last address known for sure.
pub fn client_address(peer: IpAddr, headers: &http::HeaderMap, trusted: &Networks) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let hops = forwarded_hops(headers);
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(address) => {
                client = canonical(*address);
                if !trusted.contains(client) {
                    return client;
                }
            }
            None => return client,
        }
    }
    client
}

/// The forwarding chain, client first: `None` for a hop that is not an address (`unknown`,
/// an obfuscated name).
fn forwarded_hops(headers: &http::HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect::<Vec<_>>()
    };
    let forwarded = values(http::header::FORWARDED);
    if !forwarded.is_empty() {
        return forwarded
            .into_iter()
            .map(|element| {
                element
                    .split(';')
                    .find_map(|pair| {
                        let (key, value) = pair.trim().split_once('=')?;
                        key.trim()
                            .eq_ignore_ascii_case("for")
                            .then_some(value.trim())
                    })
                    .and_then(parse_node)
            })
            .collect();
    }
    values(http::HeaderName::from_static("x-forwarded-for"))
        .into_iter()
        .map(parse_node)
        .collect()
}

/// One node: `192.0.2.1`, `192.0.2.1:4711`, `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<IpAddr>().ok().filter(IpAddr::is_ipv4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nets(list: &[&str]) -> Networks {
        Networks::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_parse_cidr_and_bare_addresses_in_both_families() {
        let n = nets(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]);
        assert!(n.contains(ip("10.200.1.1")));
        assert!(n.contains(ip("192.0.2.7")));
        assert!(!n.contains(ip("192.0.2.8")));
        assert!(n.contains(ip("2001:db8:1::5")));
        assert!(n.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped IPv6");
        let bad =
            Networks::parse(&["10.0.0.0/33".into(), "nope".into(), "::1".into()]).unwrap_err();
        assert_eq!(bad.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn forwarding_headers_count_only_behind_a_trusted_proxy() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "198.51.100.9, 10.0.0.2")]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &h, &trusted),
            ip("198.51.100.9")
        );
        assert_eq!(
            client_address(ip("203.0.113.5"), &h, &trusted),
            ip("203.0.113.5"),
            "an untrusted peer's header is ignored"
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), &h, &Networks::default()),
            ip("10.0.0.1"),
            "no trusted proxies: headers are never read"
        );
        // A forged first hop does not help: the right-most untrusted hop is the client.
        let forged = headers(&[("x-forwarded-for", "127.0.0.1, 198.51.100.9")]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &forged, &trusted),
            ip("198.51.100.9")
        );
        let rfc = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=https, for=\"[2001:db8:cafe::17]:4711\"",
        )]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &rfc, &trusted),
            ip("2001:db8:cafe::17")
        );
        let unknown = headers(&[("forwarded", "for=198.51.100.9, for=unknown")]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &unknown, &trusted),
            ip("10.0.0.1"),
            "an unreadable hop stops the walk at the last known address"
        );
    }

    proptest! {
        #[test]
        fn any_header_text_gives_an_address_without_panicking(text in ".{0,200}", peer in any::<[u8; 4]>()) {
            let trusted = nets(&["0.0.0.0/0"]);
            let Ok(value) = http::HeaderValue::from_str(&text) else { return Ok(()) };
            for name in ["x-forwarded-for", "forwarded"] {
                let mut h = http::HeaderMap::new();
                h.insert(http::HeaderName::from_static(name), value.clone());
                let _ = client_address(IpAddr::from(peer), &h, &trusted);
            }
        }
    }
}
