//! The SSRF guard: a resolver's answer comes from outside the config (a tenant's record, a
//! webhook), so the addresses it names are checked after DNS resolution, before any
//! connection, against the ranges no tenant backend should be in: the proxy's own host,
//! private networks, link-local (cloud metadata at 169.254.169.254), CGNAT, benchmarking,
//! multicast and unspecified addresses, and the IPv6 forms that embed an IPv4 address
//! (IPv4-mapped, IPv4-compatible, NAT64, 6to4), judged by the address they embed.
//! `allow_private` lists the CIDRs an operator lets through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The addresses answers may not point to unless allowed.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Vec<IpNet>,
}

impl Guard {
    /// A guard letting `allow` (parsed `allow_private` CIDRs) through.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// `Err(rule)` when `ip` is refused, naming the rule (e.g. `"loopback 127.0.0.0/8"`).
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let Some(rule) = refused_rule(ip) else {
            return Ok(());
        };
        let embedded = embedded_v4(ip).map(IpAddr::V4);
        let allowed = self
            .allow
            .iter()
            .any(|net| net.contains(&ip) || embedded.is_some_and(|v4| net.contains(&v4)));
        if allowed { Ok(()) } else { Err(rule) }
    }
}

/// The rule refusing `ip` by default, or `None` when it is a public address.
pub fn refused_rule(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => v4_rule(v4).map(str::to_string),
        IpAddr::V6(v6) => {
            if let Some((form, v4)) = embedding(v6) {
                return v4_rule(v4).map(|rule| format!("{form} form of {rule}"));
            }
            v6_rule(v6).map(str::to_string)
        }
    }
}

/// The IPv4 ranges refused, with the rule's name.
const V4_RULES: &[(u32, u8, &str)] = &[
    (0x0000_0000, 8, "unspecified 0.0.0.0/8"),
    (0x7F00_0000, 8, "loopback 127.0.0.0/8"),
    (0x0A00_0000, 8, "private 10.0.0.0/8"),
    (0xAC10_0000, 12, "private 172.16.0.0/12"),
    (0xC0A8_0000, 16, "private 192.168.0.0/16"),
    (0xA9FE_0000, 16, "link-local 169.254.0.0/16"),
    (0x6440_0000, 10, "CGNAT 100.64.0.0/10"),
    (0xC612_0000, 15, "benchmarking 198.18.0.0/15"),
    (0xE000_0000, 4, "multicast 224.0.0.0/4"),
    (0xF000_0000, 4, "reserved 240.0.0.0/4"),
];

fn v4_rule(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    V4_RULES
        .iter()
        .find(|(net, len, _)| bits >> (32 - len) == net >> (32 - len))
        .map(|(_, _, rule)| *rule)
}

fn v6_rule(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if ip.is_unspecified() {
        Some("unspecified ::")
    } else if ip.is_loopback() {
        Some("loopback ::1")
    } else if seg[0] & 0xFE00 == 0xFC00 {
        Some("unique-local fc00::/7")
    } else if seg[0] & 0xFFC0 == 0xFE80 {
        Some("link-local fe80::/10")
    } else if seg[0] & 0xFF00 == 0xFF00 {
        Some("multicast ff00::/8")
    } else if seg[0] == 0x0064 && seg[1] == 0xFF9B && seg[2] == 0x0001 {
        // Local-use NAT64 (RFC 8215) may embed an IPv4 address at any of several offsets.
        Some("local NAT64 64:ff9b:1::/48")
    } else {
        None
    }
}

/// The IPv4 address an IPv6 address stands for, and the form: IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:aabb:ccdd::/48`.
fn embedding(ip: Ipv6Addr) -> Option<(&'static str, Ipv4Addr)> {
    let seg = ip.segments();
    let low = Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    );
    match seg {
        [0, 0, 0, 0, 0, 0xFFFF, _, _] => Some(("IPv4-mapped", low)),
        // `::` and `::1` are IPv6's own unspecified and loopback.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => Some(("IPv4-compatible", low)),
        [0x0064, 0xFF9B, 0, 0, 0, 0, _, _] => Some(("NAT64", low)),
        [0x2002, a, b, ..] => Some((
            "6to4",
            Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8),
        )),
        _ => None,
    }
}

fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) => embedding(v6).map(|(_, v4)| v4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Option<String> {
        refused_rule(text.parse().unwrap())
    }

    #[test]
    fn every_refused_v4_range_is_named() {
        for (ip, name) in [
            ("0.0.0.0", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private 10."),
            ("172.16.0.1", "private 172.16."),
            ("172.31.255.255", "private 172.16."),
            ("192.168.1.1", "private 192.168."),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "reserved"),
        ] {
            let got = rule(ip);
            assert!(
                got.as_deref().is_some_and(|r| r.starts_with(name)),
                "{ip}: {got:?}"
            );
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "198.20.0.1",
            "192.169.0.1",
            "2001:db8::1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(rule(ip), None, "{ip}");
        }
    }

    #[test]
    fn v6_ranges_and_embedded_v4_forms() {
        for (ip, name) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "unique-local"),
            ("fdff::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "IPv4-mapped form of loopback"),
            ("::ffff:169.254.169.254", "IPv4-mapped form of link-local"),
            ("::ffff:10.0.0.1", "IPv4-mapped form of private"),
            ("::127.0.0.1", "IPv4-compatible form of loopback"),
            ("64:ff9b::7f00:1", "NAT64 form of loopback"),
            ("64:ff9b::a9fe:a9fe", "NAT64 form of link-local"),
            ("64:ff9b:1::a00:1", "local NAT64"),
            ("2002:7f00:1::", "6to4 form of loopback"),
        ] {
            let got = rule(ip);
            assert!(
                got.as_deref().is_some_and(|r| r.starts_with(name)),
                "{ip}: {got:?}"
            );
        }
    }

    #[test]
    fn allow_private_lets_listed_cidrs_through_in_every_form() {
        let guard = Guard::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(guard.check("10.9.8.7".parse().unwrap()).is_ok());
        assert!(guard.check("::ffff:10.9.8.7".parse().unwrap()).is_ok());
        assert!(guard.check("192.168.0.1".parse().unwrap()).is_err());
        assert!(guard.check("127.0.0.1".parse().unwrap()).is_err());
        let loopback = Guard::new(vec!["127.0.0.1/32".parse().unwrap()]);
        assert!(loopback.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(loopback.check("127.0.0.2".parse().unwrap()).is_err());
        assert!(Guard::default().check("1.1.1.1".parse().unwrap()).is_ok());
    }
}
