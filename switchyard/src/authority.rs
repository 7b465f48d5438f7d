//! The authority a request names (`host[:port]`): which field decides it, whether it is
//! acceptable, and its one canonical form.
//!
//! A proxy that picks the pool by one field and forwards another lets a client reach one
//! tenant's servers under another tenant's name. HTTP says which field decides: the
//! absolute-form target's authority replaces `Host` (RFC 9112 §3.2.2), and in HTTP/2
//! `:authority`, which a `host` field must then equal (RFC 9113 §8.3.1). [`of_request`]
//! applies that once per request; routing, `X-Forwarded-Host`, the access log and the
//! `Host` sent to the server all read the one [`Authority`] it returns.
//!
//! Only a plain host is accepted: a name of letters, digits, `-`, `_` and `.` without empty
//! labels, or a bracketed IPv6 address, with an optional decimal port up to 65535. No
//! userinfo, no percent-encoding, no other characters: hosts are compared as text, and
//! text that two parsers could read differently is how routing and a server come to
//! disagree. The canonical form is lower case, without a trailing dot, with the port as a
//! plain number (an empty one dropped) and IPv6 as [`std::net::Ipv6Addr`] writes it.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv6Addr};

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Uri, Version};

/// What is wrong with an authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Nothing, or nothing before the port.
    #[error("empty host")]
    Empty,
    /// `user@host`: deprecated (RFC 9110 §4.2.4) and a classic way to disguise a host.
    #[error("userinfo is not allowed")]
    UserInfo,
    /// Not a number up to 65535.
    #[error("invalid port")]
    Port,
    /// A character outside the accepted set, an empty label, or a bad IPv6 literal.
    #[error("invalid host name")]
    Host,
}

/// A checked authority in canonical form (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// `host[:port]`, visible ASCII: valid as a header value and as text.
    value: HeaderValue,
    /// Bytes of `value` before the `:port`.
    host_len: usize,
    port: Option<u16>,
}

impl Authority {
    /// Checks `raw` (an authority as text) and puts it in canonical form.
    pub fn parse(raw: &[u8]) -> Result<Self, Invalid> {
        let canonical = Canonical::of(raw)?;
        let value = HeaderValue::from_bytes(&canonical.text).map_err(|_| Invalid::Host)?;
        Ok(canonical.with(value))
    }

    /// Like [`Self::parse`], for a header value: one already canonical (the usual case) is
    /// shared, not copied.
    pub fn from_header(value: &HeaderValue) -> Result<Self, Invalid> {
        let canonical = Canonical::of(value.as_bytes())?;
        let value = match &canonical.text {
            Cow::Borrowed(_) => value.clone(),
            Cow::Owned(text) => HeaderValue::from_bytes(text).map_err(|_| Invalid::Host)?,
        };
        Ok(canonical.with(value))
    }

    /// `host[:port]`, as routed, logged and sent on.
    pub fn as_str(&self) -> &str {
        self.value.to_str().unwrap_or_default()
    }

    /// The host without the port (IPv6 in brackets).
    pub fn host(&self) -> &str {
        self.as_str().get(..self.host_len).unwrap_or_default()
    }

    /// The port, when one was given.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        let host = self.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        host.parse().ok()
    }

    /// The authority as a header value (`Host`, `X-Forwarded-Host`).
    pub fn header_value(&self) -> &HeaderValue {
        &self.value
    }
}

/// An authority's canonical text (borrowed when the input already is canonical), the
/// length of its host part and its port.
struct Canonical<'a> {
    text: Cow<'a, [u8]>,
    host_len: usize,
    port: Option<u16>,
}

impl<'a> Canonical<'a> {
    /// The [`Authority`] whose value (`text` as a header value) is `value`.
    fn with(self, value: HeaderValue) -> Authority {
        Authority {
            value,
            host_len: self.host_len,
            port: self.port,
        }
    }

    /// Checks `raw` and puts it in canonical form.
    fn of(raw: &'a [u8]) -> Result<Self, Invalid> {
        if raw.contains(&b'@') {
            return Err(Invalid::UserInfo);
        }
        let (host, port) = match raw.strip_prefix(b"[") {
            Some(rest) => {
                let close = memchr::memchr(b']', rest).ok_or(Invalid::Host)?;
                let port = match &rest[close + 1..] {
                    [] => None,
                    [b':', port @ ..] => Some(port),
                    _ => return Err(Invalid::Host),
                };
                (&raw[..close + 2], port)
            }
            None => match memchr::memchr(b':', raw) {
                Some(colon) => (&raw[..colon], Some(&raw[colon + 1..])),
                None => (raw, None),
            },
        };
        let written_port = port;
        let port = written_port.map(parse_port).transpose()?.flatten();
        let host_text: Cow<'_, [u8]> = if host.first() == Some(&b'[') {
            let inner = &host[1..host.len() - 1];
            let address: Ipv6Addr = std::str::from_utf8(inner)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or(Invalid::Host)?;
            let written = format!("[{address}]");
            if written.as_bytes() == host {
                Cow::Borrowed(host)
            } else {
                Cow::Owned(written.into_bytes())
            }
        } else {
            reg_name(host)?
        };
        let host_len = host_text.len();
        // A port as written is canonical unless empty or with leading zeros.
        let port_kept = match written_port {
            None => true,
            Some(digits) => port.is_some() && (digits.len() == 1 || digits[0] != b'0'),
        };
        let text = if matches!(host_text, Cow::Borrowed(_)) && port_kept {
            Cow::Borrowed(raw)
        } else {
            let mut text = host_text.into_owned();
            if let Some(port) = port {
                text.push(b':');
                text.extend_from_slice(port.to_string().as_bytes());
            }
            Cow::Owned(text)
        };
        Ok(Self {
            text,
            host_len,
            port,
        })
    }
}

/// A port: decimal digits up to 65535; empty (allowed by RFC 3986, meaning the default)
/// is no port.
fn parse_port(digits: &[u8]) -> Result<Option<u16>, Invalid> {
    if digits.is_empty() {
        return Ok(None);
    }
    if digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Invalid::Port);
    }
    let value = digits
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(value).map(Some).map_err(|_| Invalid::Port)
}

/// A host name (an IPv4 address is one too): checked, lower-cased, trailing dot dropped.
fn reg_name(name: &[u8]) -> Result<Cow<'_, [u8]>, Invalid> {
    let trimmed = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Err(Invalid::Empty);
    }
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if !trimmed.iter().all(allowed) || trimmed.split(|&b| b == b'.').any(<[u8]>::is_empty) {
        return Err(Invalid::Host);
    }
    if trimmed.len() == name.len() && !trimmed.iter().any(u8::is_ascii_uppercase) {
        Ok(Cow::Borrowed(name))
    } else {
        Ok(Cow::Owned(trimmed.to_ascii_lowercase()))
    }
}

/// Why a request's authority cannot be trusted: each is answered `400` before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// RFC 9112 §3.2: an HTTP/1.1 request must carry `Host`.
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    /// RFC 9112 §3.2: more than one `Host` field line.
    #[error("more than one Host field")]
    RepeatedHost,
    /// A `Host` field that is not an acceptable authority.
    #[error("invalid Host: {0}")]
    InvalidHost(Invalid),
    /// An absolute-form target (or `:authority`) that is not an acceptable authority.
    #[error("invalid request target authority: {0}")]
    InvalidTarget(Invalid),
    /// An absolute-form target (or `:scheme`) for something other than HTTP.
    #[error("request target scheme is not http or https")]
    Scheme,
    /// An authority-form target, which only `CONNECT` uses.
    #[error("authority-form request target outside CONNECT")]
    AuthorityForm,
    /// RFC 9113 §8.3.1: an HTTP/2 `host` field that differs from `:authority`.
    #[error("host differs from :authority")]
    Mismatch,
    /// An HTTP/2 request with neither `:authority` nor `host`.
    #[error("HTTP/2 request without :authority or host")]
    MissingAuthority,
}

/// The authority that decides where a request goes and what its server is told: the
/// target's (absolute form, or HTTP/2's `:authority`), else the single `Host` field;
/// `None` only for an HTTP/1.0 request that names none. `CONNECT` is not for this (its
/// target is where to tunnel, not a resource here).
pub fn of_request(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<Authority>, Refusal> {
    let mut fields = headers.get_all(header::HOST).iter();
    let host = match (fields.next(), fields.next()) {
        (_, Some(_)) => return Err(Refusal::RepeatedHost),
        (host, None) => host
            .map(Authority::from_header)
            .transpose()
            .map_err(Refusal::InvalidHost)?,
    };
    let target = match uri.authority() {
        None => None,
        Some(authority) => {
            match uri.scheme_str() {
                Some(scheme)
                    if scheme.eq_ignore_ascii_case("http")
                        || scheme.eq_ignore_ascii_case("https") => {}
                Some(_) => return Err(Refusal::Scheme),
                None => return Err(Refusal::AuthorityForm),
            }
            Some(Authority::parse(authority.as_str().as_bytes()).map_err(Refusal::InvalidTarget)?)
        }
    };
    if version >= Version::HTTP_2 {
        return match (target, host) {
            (Some(target), Some(host)) if target != host => Err(Refusal::Mismatch),
            (Some(authority), _) | (None, Some(authority)) => Ok(Some(authority)),
            (None, None) => Err(Refusal::MissingAuthority),
        };
    }
    if version == Version::HTTP_11 && host.is_none() {
        return Err(Refusal::MissingHost);
    }
    Ok(target.or(host))
}

/// A route's `host` pattern in the form request authorities take, so that they compare as
/// text: a Unicode name becomes A-labels (UTS 46, as browsers send it), a trailing dot goes,
/// ASCII is lower-cased; a leading `*.` stays.
pub fn route_pattern(pattern: &str) -> Result<String, String> {
    let (wildcard, name) = match pattern.strip_prefix("*.") {
        Some(name) => ("*.", name),
        None => ("", pattern),
    };
    let ascii = if name.is_ascii() {
        name.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(name)
            .map_err(|_| format!("`{pattern}` is not a valid internationalized host name"))?
    };
    let ascii = ascii.strip_suffix('.').unwrap_or(&ascii);
    Ok(format!("{wildcard}{ascii}"))
}

/// Removes a `:port` (and IPv6 brackets) from a Host header value.
pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical_text(raw: &str) -> Result<String, Invalid> {
        Authority::parse(raw.as_bytes()).map(|a| a.as_str().to_string())
    }

    #[test]
    fn plain_hosts_are_kept_and_shared() {
        for raw in [
            "a.example",
            "a.example:8080",
            "127.0.0.1:80",
            "[::1]:9900",
            "_srv.x-y.example",
        ] {
            assert_eq!(canonical_text(raw).as_deref(), Ok(raw));
            let value = HeaderValue::from_static(raw);
            let authority = Authority::from_header(&value).expect(raw);
            assert_eq!(authority.header_value(), &value);
        }
        let authority = Authority::parse(b"[::1]:9900").expect("v6");
        assert_eq!(authority.host(), "[::1]");
        assert_eq!(authority.port(), Some(9900));
        assert_eq!(authority.ip(), Some(IpAddr::from(Ipv6Addr::LOCALHOST)));
        assert_eq!(Authority::parse(b"a.example").expect("name").ip(), None);
    }

    #[test]
    fn canonical_form_is_lower_case_without_trailing_dot_or_empty_port() {
        let cases = [
            ("A.Example", "a.example"),
            ("a.example.", "a.example"),
            ("A.EXAMPLE.:443", "a.example:443"),
            ("a.example:", "a.example"),
            ("a.example:0080", "a.example:80"),
            ("[0:0:0:0:0:0:0:1]", "[::1]"),
            ("[2001:DB8::A]:8443", "[2001:db8::a]:8443"),
            ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ];
        for (raw, canonical) in cases {
            assert_eq!(canonical_text(raw).as_deref(), Ok(canonical), "{raw}");
            let authority = Authority::parse(raw.as_bytes()).expect(raw);
            assert_eq!(
                Authority::parse(authority.as_str().as_bytes()).as_ref(),
                Ok(&authority),
                "canonical form is a fixed point: {raw}"
            );
        }
    }

    #[test]
    fn anything_but_a_plain_host_is_refused() {
        let cases: &[(&[u8], Invalid)] = &[
            (b"", Invalid::Empty),
            (b":80", Invalid::Empty),
            (b"user@a.example", Invalid::UserInfo),
            (b"a.example@b.example", Invalid::UserInfo),
            (b"a.example:http", Invalid::Port),
            (b"a.example:65536", Invalid::Port),
            (b"a.example:123456", Invalid::Port),
            (b"a.example:80:80", Invalid::Port),
            (b"a.example:+80", Invalid::Port),
            (b"a example", Invalid::Host),
            (b"a.example ", Invalid::Host),
            (b"a..example", Invalid::Host),
            (b".a.example", Invalid::Host),
            (b".", Invalid::Host),
            (b"a.example..", Invalid::Host),
            (b"a%2eexample", Invalid::Host),
            (b"a.example/path", Invalid::Host),
            (b"a,b", Invalid::Host),
            (b"b\xc3\xbccher.example", Invalid::Host),
            (b"a\x00b", Invalid::Host),
            (b"[::1", Invalid::Host),
            (b"[::1]x", Invalid::Host),
            (b"[fe80::1%25eth0]", Invalid::Host),
            (b"[v1.x]", Invalid::Host),
            (b"[127.0.0.1]", Invalid::Host),
            (b"::1", Invalid::Port),
        ];
        for (raw, why) in cases {
            assert_eq!(
                Authority::parse(raw).err(),
                Some(*why),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    fn request(version: Version, target: &str, hosts: &[&str]) -> Result<Option<String>, Refusal> {
        let uri: Uri = target.parse().expect("target");
        let mut headers = HeaderMap::new();
        for host in hosts {
            headers.append(header::HOST, HeaderValue::from_str(host).expect("value"));
        }
        of_request(version, &uri, &headers).map(|a| a.map(|a| a.as_str().to_string()))
    }

    #[test]
    fn http1_takes_the_target_authority_else_the_one_host() {
        let ok = |s: &str| Ok(Some(s.to_string()));
        assert_eq!(
            request(Version::HTTP_11, "/", &["A.example."]),
            ok("a.example")
        );
        assert_eq!(
            request(Version::HTTP_11, "http://a.example/", &["b.example"]),
            ok("a.example")
        );
        assert_eq!(
            request(Version::HTTP_11, "https://a.example:8443/x", &["b"]),
            ok("a.example:8443")
        );
        assert_eq!(
            request(Version::HTTP_11, "*", &["a.example"]),
            ok("a.example")
        );
        assert_eq!(request(Version::HTTP_10, "/", &[]), Ok(None));
        assert_eq!(
            request(Version::HTTP_10, "http://a.example/", &[]),
            ok("a.example")
        );
        assert_eq!(
            request(Version::HTTP_11, "/", &[]),
            Err(Refusal::MissingHost)
        );
        assert_eq!(
            request(Version::HTTP_11, "http://a.example/", &[]),
            Err(Refusal::MissingHost)
        );
        for hosts in [&["a.example", "b.example"][..], &["a.example", "a.example"]] {
            assert_eq!(
                request(Version::HTTP_11, "/", hosts),
                Err(Refusal::RepeatedHost)
            );
            assert_eq!(
                request(Version::HTTP_10, "/", hosts),
                Err(Refusal::RepeatedHost)
            );
        }
        assert_eq!(
            request(Version::HTTP_11, "/", &["a.example:99999"]),
            Err(Refusal::InvalidHost(Invalid::Port))
        );
        // The Host is checked even where the target's authority wins.
        assert_eq!(
            request(Version::HTTP_11, "http://a.example/", &["u@b.example"]),
            Err(Refusal::InvalidHost(Invalid::UserInfo))
        );
        assert_eq!(
            request(Version::HTTP_11, "http://u@a.example/", &["a.example"]),
            Err(Refusal::InvalidTarget(Invalid::UserInfo))
        );
        assert_eq!(
            request(Version::HTTP_11, "ftp://a.example/", &["a.example"]),
            Err(Refusal::Scheme)
        );
        assert_eq!(
            request(Version::HTTP_11, "a.example:443", &["a.example"]),
            Err(Refusal::AuthorityForm)
        );
    }

    #[test]
    fn http2_takes_authority_which_host_must_equal() {
        let ok = |s: &str| Ok(Some(s.to_string()));
        assert_eq!(
            request(Version::HTTP_2, "http://a.example/", &[]),
            ok("a.example")
        );
        assert_eq!(
            request(Version::HTTP_2, "https://a.example/", &["A.example"]),
            ok("a.example")
        );
        assert_eq!(
            request(Version::HTTP_2, "/", &["a.example"]),
            ok("a.example")
        );
        assert_eq!(
            request(Version::HTTP_2, "http://a.example/", &["b.example"]),
            Err(Refusal::Mismatch)
        );
        assert_eq!(
            request(Version::HTTP_2, "http://a.example/", &["a.example:443"]),
            Err(Refusal::Mismatch)
        );
        assert_eq!(
            request(Version::HTTP_2, "/", &[]),
            Err(Refusal::MissingAuthority)
        );
    }

    #[test]
    fn route_patterns_take_the_form_requests_are_compared_in() {
        assert_eq!(route_pattern("A.Example."), Ok("a.example".to_string()));
        assert_eq!(
            route_pattern("*.Bücher.example"),
            Ok("*.xn--bcher-kva.example".to_string())
        );
        assert_eq!(
            route_pattern("BÜCHER.example."),
            Ok("xn--bcher-kva.example".to_string())
        );
        assert!(route_pattern("\u{0308}bücher.example").is_err());
        let request_host = Authority::parse(b"xn--bcher-kva.example:8080").expect("host");
        let pattern = route_pattern("bücher.example").expect("pattern");
        assert!(crate::route::host_matches(
            &pattern,
            crate::route::strip_port(request_host.as_str())
        ));
    }

    /// A small deterministic fuzz pass, as the fuzz target runs it: no panics, and an
    /// accepted authority's canonical form is accepted unchanged.
    #[test]
    fn mutated_authorities_are_canonical_fixed_points() {
        let mut mutator = crate::testing::Mutator::new();
        let seeds: &[&[u8]] = &[
            b"a.example:8080",
            b"[2001:db8::1]:443",
            b"A.Example.",
            b"x_y-z.example:",
        ];
        for round in 0..5_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            mutator.mutate(&mut input);
            if let Ok(authority) = Authority::parse(&input) {
                let again = Authority::parse(authority.as_str().as_bytes());
                assert_eq!(again.as_ref(), Ok(&authority), "{input:?}");
            }
        }
    }
}
