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

/// Dotted-quad IPv4 (four decimal octets of 1 to 3 digits, no leading zero, at most 255), the
/// common case, read without the general parser. None means "not that shape": the general
/// parser then decides, and says what is wrong.
#[inline]
fn dotted_quad(b: &[u8]) -> Option<u32> {
    if !(7..=15).contains(&b.len()) {
        return None;
    }
    let (mut out, mut i) = (0u32, 0usize);
    for part in 0..4 {
        let start = i;
        let mut v = 0u32;
        while let Some(&c) = b.get(i) {
            if !c.is_ascii_digit() || i - start == 3 {
                break;
            }
            v = v * 10 + u32::from(c - b'0');
            i += 1;
        }
        let n = i - start;
        if n == 0 || v > 255 || (n > 1 && b[start] == b'0') {
            return None;
        }
        out = (out << 8) | v;
        if part < 3 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
    }
    (i == b.len()).then_some(out)
}

fn parse_host(s: &str, whole: &str) -> Result<Addr> {
    if let Some(v) = dotted_quad(s.as_bytes()) {
        return Ok(Addr::V4(v));
    }
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
    fn dotted_quad_agrees_with_the_standard_parser() {
        // Every string it accepts, std accepts with the same value; and every canonical
        // dotted quad std accepts, it accepts too.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"0123456789..255:x 01";
        for _ in 0..200_000 {
            let len = (next() % 17) as usize;
            let s: Vec<u8> = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            let s = String::from_utf8(s).expect("ascii");
            let std = s.parse::<Ipv4Addr>().ok().map(u32::from);
            if let Some(v) = dotted_quad(s.as_bytes()) {
                assert_eq!(Some(v), std, "{s:?}");
            }
            if std.is_some() {
                assert_eq!(dotted_quad(s.as_bytes()), std, "{s:?}");
            }
        }
        for _ in 0..100_000 {
            let v = next() as u32;
            assert_eq!(dotted_quad(Ipv4Addr::from(v).to_string().as_bytes()), Some(v));
        }
        for bad in ["1.2.3.04", "1.2.3.256", "1.2.3.4.", ".1.2.3.4", "1..2.3", "1.2.3.4444", "1.2.3.-4"] {
            assert_eq!(dotted_quad(bad.as_bytes()), None, "{bad:?}");
        }
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
