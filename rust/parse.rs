//! Parsing of IP addresses and CIDR networks into normalised integer keys.
//!
//! Rules (shared with `capi_fast.reference`): dotted-quad IPv4 without leading zeros, RFC 4291
//! IPv6 without zone index, a decimal prefix length of at most three digits, IPv4-mapped IPv6
//! (`::ffff:a.b.c.d`, and networks inside `::ffff:0:0/96`) folded to IPv4, host bits cleared.

use crate::bits::Bits;
use crate::error::{Error, Result};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest text accepted for one value: a full IPv6 network is 43 characters.
pub const MAX_TEXT: usize = 64;

/// A single address of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    /// IPv4 (also what an IPv4-mapped IPv6 address becomes).
    V4(u32),
    /// IPv6.
    V6(u128),
}

/// A network of either family, host bits already cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Net {
    /// IPv4 network `(address, prefix length)`.
    V4(u32, u8),
    /// IPv6 network `(address, prefix length)`.
    V6(u128, u8),
}

const MAPPED_PREFIX: u128 = 0xffff;

fn invalid(s: &str, why: &str) -> Error {
    let shown: String = s.chars().take(MAX_TEXT).collect();
    let more = if s.chars().count() > MAX_TEXT { "..." } else { "" };
    Error::InvalidIp(format!("invalid IP address or network {shown:?}{more}: {why}"))
}

fn parse_host(s: &str, whole: &str) -> Result<Addr> {
    if s.contains(':') {
        let a: Ipv6Addr = s.parse().map_err(|_| invalid(whole, "not an IPv6 address"))?;
        let v = u128::from(a);
        if v >> 32 == MAPPED_PREFIX {
            return Ok(Addr::V4(v as u32));
        }
        Ok(Addr::V6(v))
    } else {
        let a: Ipv4Addr = s.parse().map_err(|_| invalid(whole, "not an IPv4 address"))?;
        Ok(Addr::V4(u32::from(a)))
    }
}

/// Parses one address (no prefix length).
pub fn parse_addr(s: &str) -> Result<Addr> {
    if s.is_empty() {
        return Err(invalid(s, "empty"));
    }
    if s.len() > MAX_TEXT {
        return Err(invalid(s, "too long"));
    }
    parse_host(s, s)
}

/// Parses an address or a CIDR network; returns the network and whether host bits were cleared.
pub fn parse_net(s: &str) -> Result<(Net, bool)> {
    if s.is_empty() {
        return Err(invalid(s, "empty"));
    }
    if s.len() > MAX_TEXT {
        return Err(invalid(s, "too long"));
    }
    let (host, len) = match s.split_once('/') {
        None => (s, None),
        Some((h, l)) => {
            if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(s, "prefix length is not a number"));
            }
            let n: u16 = l.parse().map_err(|_| invalid(s, "prefix length is not a number"))?;
            (h, Some(n))
        }
    };
    let was_v6 = host.contains(':');
    match parse_host(host, s)? {
        Addr::V4(a) => {
            let max = if was_v6 { 128 } else { 32 };
            let l = len.unwrap_or(max);
            if l > max {
                return Err(invalid(s, "prefix length out of range"));
            }
            if was_v6 && l < 96 {
                // A network wider than ::ffff:0:0/96 stays IPv6.
                let v = u128::from(Ipv4Addr::from(a).to_ipv6_mapped());
                return Ok(norm6(v, l as u8));
            }
            let l = if was_v6 { l - 96 } else { l } as u8;
            let net = a & u32::mask(l);
            Ok((Net::V4(net, l), net != a))
        }
        Addr::V6(a) => {
            let l = len.unwrap_or(128);
            if l > 128 {
                return Err(invalid(s, "prefix length out of range"));
            }
            Ok(norm6(a, l as u8))
        }
    }
}

fn norm6(a: u128, l: u8) -> (Net, bool) {
    let net = a & u128::mask(l);
    (Net::V6(net, l), net != a)
}

/// Formats a network the way `ipaddress` does (`1.2.3.0/24`, `2001:db8::/32`).
pub fn format_net(net: Net) -> String {
    match net {
        Net::V4(a, l) => format!("{}/{}", Ipv4Addr::from(a), l),
        Net::V6(a, l) => format!("{}/{}", Ipv6Addr::from(a), l),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_and_networks() {
        assert_eq!(parse_net("1.2.3.4"), Ok((Net::V4(0x0102_0304, 32), false)));
        assert_eq!(parse_net("10.1.2.3/8"), Ok((Net::V4(0x0a00_0000, 8), true)));
        assert_eq!(parse_net("::ffff:1.2.3.4"), Ok((Net::V4(0x0102_0304, 32), false)));
        assert_eq!(parse_net("::ffff:1.2.3.0/120"), Ok((Net::V4(0x0102_0300, 24), false)));
        assert_eq!(parse_net("2001:db8::1/32"), Ok((Net::V6(0x2001_0db8 << 96, 32), true)));
        assert_eq!(parse_net("0.0.0.0/0"), Ok((Net::V4(0, 0), false)));
        assert_eq!(parse_addr("::ffff:10.0.0.1"), Ok(Addr::V4(0x0a00_0001)));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4/33",
            "::g",
            "1.2.3.4/",
            "1.2.3.4/+8",
            "1.2.3.4/ 8",
            " 1.2.3.4",
            "01.2.3.4",
            "1.2.3.4/0008",
            "fe80::1%eth0",
            "::/129",
            "1.2.3.4/255.0.0.0",
            "abc",
        ] {
            assert!(matches!(parse_net(bad), Err(Error::InvalidIp(_))), "{bad:?} accepted");
        }
        let huge = "1".repeat(100_000);
        assert!(matches!(parse_net(&huge), Err(Error::InvalidIp(m)) if m.len() < 200));
        assert!(parse_addr("1.2.3.4/32").is_err());
    }

    #[test]
    fn formats_like_ipaddress() {
        assert_eq!(format_net(Net::V4(0x0a00_0000, 8)), "10.0.0.0/8");
        assert_eq!(format_net(Net::V6(0x2001_0db8 << 96, 32)), "2001:db8::/32");
    }
}
