//! CIDR networks, for `TRUSTED_PROXIES`.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use warp::http::HeaderMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix_len: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidNetwork;

impl FromStr for IpNetwork {
    type Err = InvalidNetwork;

    /// `10.0.0.0/8`, `fd00::/8`, or a bare address for a single host.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let (addr, prefix_len) = match raw.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (raw, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| InvalidNetwork)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_len {
            Some(len) => len.parse().map_err(|_| InvalidNetwork)?,
            None => max,
        };
        if prefix_len > max {
            return Err(InvalidNetwork);
        }
        Ok(Self { addr, prefix_len })
    }
}

impl IpNetwork {
    pub fn contains(&self, candidate: IpAddr) -> bool {
        let candidate = match candidate {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(candidate, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, candidate) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => same_prefix(
                u32::from(net).into(),
                u32::from(ip).into(),
                self.prefix_len,
                32,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(u128::from(net), u128::from(ip), self.prefix_len, 128)
            }
            _ => false,
        }
    }
}

fn same_prefix(network: u128, candidate: u128, prefix_len: u8, width: u32) -> bool {
    let host_bits = width - u32::from(prefix_len);
    (network ^ candidate).checked_shr(host_bits).unwrap_or(0) == 0
}

/// Whether `ip` is in any of `networks`.
pub fn is_listed(networks: &[IpNetwork], ip: IpAddr) -> bool {
    networks.iter().any(|network| network.contains(ip))
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the nearest address in
/// `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &[IpNetwork],
) -> Option<IpAddr> {
    let peer = peer?.ip();
    if !is_listed(trusted, peer) {
        return Some(peer);
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    // From the nearest hop outwards; an entry that is not a plain address ends the trust, so
    // that a malformed entry cannot hide the one the trusted proxy appended.
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Ok(ip) = entry.parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_listed(trusted, ip) {
            break;
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap()
    }

    #[test]
    fn membership() {
        let net: IpNetwork = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")));
        let host: IpNetwork = "127.0.0.1".parse().unwrap();
        assert!(host.contains(ip("127.0.0.1")));
        assert!(!host.contains(ip("127.0.0.2")));
        let all: IpNetwork = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let v6: IpNetwork = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_trusted() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4, 5.6.7.8".parse().unwrap());
        let peer = Some(SocketAddr::from(([10, 0, 0, 2], 4000)));
        assert_eq!(client_ip(peer, &headers, &[]), Some(ip("10.0.0.2")));
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        assert_eq!(client_ip(peer, &headers, &trusted), Some(ip("5.6.7.8")));
        headers.insert("x-forwarded-for", "1.2.3.4, 10.9.9.9".parse().unwrap());
        assert_eq!(client_ip(peer, &headers, &trusted), Some(ip("1.2.3.4")));
        headers.insert("x-forwarded-for", "6.6.6.6, 7.7.7.7:5678".parse().unwrap());
        assert_eq!(
            client_ip(peer, &headers, &trusted),
            Some(ip("10.0.0.2")),
            "no skipping past junk"
        );
    }

    #[test]
    fn malformed_networks_are_refused() {
        for raw in ["10.0.0.0/33", "::/129", "10.0.0/8", "x", "10.0.0.0/-1"] {
            assert!(raw.parse::<IpNetwork>().is_err(), "{raw}");
        }
    }
}
