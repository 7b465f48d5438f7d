//! Fuzzes what resolvers read from outside: answer JSON (a Redis value, a webhook body)
//! must parse or be refused without panicking; the SSRF guard must judge any address, and
//! an IPv4-mapped address exactly as the IPv4 address it maps; key templates and patterns
//! (config text) must parse or be refused, and render any facts without panicking.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use switchyard::config::KeyTemplate;
use switchyard::resolve::answer;
use switchyard::resolve::guard::refused_rule;

fuzz_target!(|data: &[u8]| {
    let _ = answer::parse(data);
    if data.len() >= 4 {
        let v4 = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        assert_eq!(
            refused_rule(IpAddr::V4(v4)).is_some(),
            refused_rule(mapped).is_some()
        );
    }
    if data.len() >= 16 {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&data[..16]);
        let _ = refused_rule(IpAddr::from(octets));
    }
    let text = String::from_utf8_lossy(data);
    let (key, pattern) = text.split_once('\n').unwrap_or((&text, ""));
    let pattern = (!pattern.is_empty()).then_some(pattern);
    if let Ok(template) = KeyTemplate::parse(key, pattern) {
        let _ = template.render(|_| Some(key));
    }
});
