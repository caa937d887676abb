//! Where a request comes from: the client address behind trusted reverse proxies, and whether a
//! browser page's origin may open a WebSocket.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An address or a CIDR range (`10.0.0.0/8`, `::1`), for `[auth] trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    base: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `addr` is in the range.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.base, canonical(addr)) {
            (IpAddr::V4(base), IpAddr::V4(addr)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(base) & mask == u32::from(addr) & mask
            }
            (IpAddr::V6(base), IpAddr::V6(addr)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(base) & mask == u128::from(addr) & mask
            }
            _ => false,
        }
    }
}

/// IPv4 clients reached over an IPv6 socket look like `::ffff:a.b.c.d`.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let base: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self {
            base: canonical(base),
            prefix,
        })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl Serialize for IpRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The client of a request: the peer, or, when the peer is a trusted proxy, the nearest address
/// in `X-Forwarded-For` that is not a trusted proxy itself. Entries left of an untrusted hop are
/// whatever the client wrote, so they are never believed.
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpRange]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |addr: IpAddr| trusted.iter().any(|range| range.contains(addr));
    let Some(header) = forwarded_for.filter(|_| is_trusted(peer)) else {
        return peer;
    };
    let mut client = peer;
    for hop in header.rsplit(',') {
        let Ok(addr) = hop.trim().parse::<IpAddr>() else {
            return client;
        };
        client = canonical(addr);
        if !is_trusted(client) {
            return client;
        }
    }
    client
}

/// Whether a browser page at `origin` may open a WebSocket on the hub reached as `host`: the
/// same host and port, or an origin listed in `[auth] allowed_origins`. No origin means no
/// browser, hence no page that could borrow the user's session.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match (authority, host) {
        (Some(authority), Some(host)) => authority.eq_ignore_ascii_case(host),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(list: &[&str]) -> Vec<IpRange> {
        list.iter().map(|s| s.parse().expect("range")).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn ranges_parse_and_match_with_their_prefix() {
        let lan: IpRange = "10.1.0.0/16".parse().expect("range");
        assert!(lan.contains(ip("10.1.200.3")) && !lan.contains(ip("10.2.0.1")));
        assert!(lan.contains(ip("::ffff:10.1.0.9")), "mapped IPv4");
        let one: IpRange = "::1".parse().expect("range");
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        assert!(
            "0.0.0.0/0"
                .parse::<IpRange>()
                .expect("all")
                .contains(ip("8.8.8.8"))
        );
        assert!("10.0.0.0/33".parse::<IpRange>().is_err());
        assert!("proxy".parse::<IpRange>().is_err());
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let trusted = ranges(&["127.0.0.1", "10.9.0.0/16"]);
        let header = Some("1.2.3.4, 192.168.5.5, 10.9.0.2");
        assert_eq!(
            client_address(ip("127.0.0.1"), header, &trusted),
            ip("192.168.5.5"),
            "the hop before the proxies; the client's own claim is not believed"
        );
        assert_eq!(
            client_address(ip("192.168.1.1"), header, &trusted),
            ip("192.168.1.1"),
            "an untrusted peer's header is ignored"
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("garbage"), &trusted),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), None, &trusted),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), header, &[]),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn websocket_origins_must_be_the_hub_itself_or_listed() {
        let allowed = vec!["https://screen.example.org".to_owned()];
        let host = Some("hub.lab:8080");
        assert!(origin_allowed(None, host, &allowed), "not a browser");
        assert!(origin_allowed(Some("http://hub.lab:8080"), host, &allowed));
        assert!(origin_allowed(
            Some("https://screen.example.org"),
            host,
            &allowed
        ));
        assert!(!origin_allowed(Some("http://evil.example"), host, &allowed));
        assert!(!origin_allowed(Some("http://hub.lab:9999"), host, &allowed));
        assert!(!origin_allowed(Some("null"), host, &allowed));
        assert!(!origin_allowed(Some("http://hub.lab:8080"), None, &[]));
    }
}
