//! PROXY protocol v1/v2: reading the header a fronting balancer sends, and writing one to servers.
//!
//! Parsing and building use the `ppp` crate; what is written here is the incremental read
//! from the socket, which must stop exactly at the end of the header (whatever follows is
//! the client's payload and goes to the server), and the limits a proxy needs against
//! slow or hostile senders.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ppp::{PartialResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature that starts every binary header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Largest v2 address + TLV block accepted (the spec allows 65535; nobody needs that).
const V2_MAX_PAYLOAD: usize = 4096;
/// The v1 prefix.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// A v1 header's maximum length, CRLF included (the spec's limit).
const V1_MAX: usize = 107;
/// How much `read_header` asks the socket for at a time: at most this much of the client's
/// payload is read along with the header.
const READ_CHUNK: usize = 512;

/// The addresses a PROXY header carries: who the client really is, and what it connected to,
/// in place of the balancer's and our own socket addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxiedAddrs {
    /// The original client.
    pub source: SocketAddr,
    /// The address the client connected to (on the balancer).
    pub destination: SocketAddr,
}

/// A parsed PROXY header, reduced to what the proxy acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A proxied connection, with the original addresses.
    Proxied(ProxiedAddrs),
    /// A connection made by the balancer itself (v2 LOCAL, v1 `PROXY UNKNOWN`, or v2 with a
    /// non-IP address family): the socket's own addresses apply.
    Local,
}

/// Why a PROXY header could not be read, so the caller can log and count the cause before
/// dropping the connection.
#[derive(Debug, thiserror::Error)]
pub enum ProxyProtocolError {
    /// The header did not arrive in time (a slow or silent sender).
    #[error("timed out waiting for the PROXY protocol header")]
    Timeout,
    /// The peer closed before the header was complete.
    #[error("connection closed before the PROXY protocol header was complete")]
    Closed,
    /// The bytes are not a valid header; the string says why.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    /// The header exceeds the accepted size (107 bytes for v1, 16 + 4096 for v2).
    #[error("PROXY protocol header too long")]
    TooLong,
    /// Reading from the socket failed.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// The result of parsing the start of a connection: the one place that decides whether the
/// bytes so far are a header, could still become one, or never will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseOutcome {
    /// A complete header, `consumed` bytes long; the bytes after it are the client's payload.
    Complete {
        /// The header.
        header: ProxyHeader,
        /// Its length in bytes.
        consumed: usize,
    },
    /// Everything so far is a valid start of a header; more bytes are needed.
    Incomplete,
    /// Not a valid header, and no further bytes can make it one (this includes headers over
    /// the size limits).
    Invalid(String),
}

/// Why the bytes are refused; kept apart internally so `read_header` can report size
/// violations as [`ProxyProtocolError::TooLong`].
enum Rejection {
    Malformed(String),
    TooLong,
}

/// The internal parse result: `Ok(None)` means more bytes are needed.
type Parsed = Result<Option<(ProxyHeader, usize)>, Rejection>;

/// Parses a PROXY header (v1 or v2) at the start of `buf`.
///
/// Pure and panic-free on any input, so the socket reader and the fuzz target share it.
/// Returns `Invalid` as soon as the bytes seen prove that no header can follow, without
/// waiting for more.
pub fn parse_header(buf: &[u8]) -> ParseOutcome {
    match parse(buf) {
        Ok(Some((header, consumed))) => ParseOutcome::Complete { header, consumed },
        Ok(None) => ParseOutcome::Incomplete,
        Err(Rejection::Malformed(reason)) => ParseOutcome::Invalid(reason),
        Err(Rejection::TooLong) => ParseOutcome::Invalid("header too long".into()),
    }
}

/// Picks the version from the first bytes, rejecting as soon as neither prefix can match.
fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Ok(None);
    }
    if is_prefix_compatible(buf, V2_SIGNATURE) {
        parse_v2(buf)
    } else if is_prefix_compatible(buf, V1_PREFIX) {
        parse_v1(buf)
    } else {
        Err(Rejection::Malformed("not a PROXY protocol header".into()))
    }
}

/// Whether `buf` and `prefix` agree on their common length.
fn is_prefix_compatible(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf.get(..n) == prefix.get(..n)
}

fn parse_v2(buf: &[u8]) -> Parsed {
    // Check the version/command and family/protocol bytes as soon as they arrive, so a bad
    // header is refused without waiting for the length field.
    if let Some(&version_command) = buf.get(12) {
        if version_command >> 4 != 2 {
            return Err(Rejection::Malformed(format!(
                "v2: unsupported version {}",
                version_command >> 4
            )));
        }
        if version_command & 0x0f > 1 {
            return Err(Rejection::Malformed(format!(
                "v2: unknown command {:#x}",
                version_command & 0x0f
            )));
        }
    }
    if let Some(&family_protocol) = buf.get(13)
        && (family_protocol >> 4 > 3 || family_protocol & 0x0f > 2)
    {
        return Err(Rejection::Malformed(format!(
            "v2: unknown address family/protocol {family_protocol:#04x}"
        )));
    }
    if let (Some(&high), Some(&low)) = (buf.get(14), buf.get(15))
        && usize::from(u16::from_be_bytes([high, low])) > V2_MAX_PAYLOAD
    {
        return Err(Rejection::TooLong);
    }

    let result = v2::Header::try_from(buf);
    if result.is_incomplete() {
        return Ok(None);
    }
    let header = result.map_err(|error| Rejection::Malformed(format!("v2: {error}")))?;
    let consumed = header.len();
    let proxied = match (header.command, header.addresses) {
        (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Some(ProxiedAddrs {
            source: SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            destination: SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
        }),
        (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Some(ProxiedAddrs {
            source: SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            destination: SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
        }),
        // LOCAL (whatever the addresses), AF_UNIX and AF_UNSPEC: use the socket's addresses.
        _ => None,
    };
    Ok(Some((
        proxied.map_or(ProxyHeader::Local, ProxyHeader::Proxied),
        consumed,
    )))
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let window = &buf[..buf.len().min(V1_MAX)];
    // The header is one line of printable ASCII ending in CRLF; anything else in it is
    // refused immediately rather than after 107 bytes.
    let mut line_end = None;
    for (i, &byte) in window.iter().enumerate() {
        match byte {
            b'\r' => match window.get(i + 1) {
                Some(b'\n') => {
                    line_end = Some(i + 2);
                    break;
                }
                Some(_) => return Err(Rejection::Malformed("v1: CR not followed by LF".into())),
                None => {}
            },
            b'\n' => return Err(Rejection::Malformed("v1: line ends without CR".into())),
            b' '..=b'~' => {}
            _ => {
                return Err(Rejection::Malformed(format!(
                    "v1: non-printable byte {byte:#04x}"
                )));
            }
        }
    }

    let Some(consumed) = line_end else {
        if buf.len() >= V1_MAX {
            return Err(Rejection::TooLong);
        }
        // No full line yet. ppp's notion of "partial" is not exact on truncated lines (it
        // calls "... 56324 " an invalid port), so only its verdicts about the protocol word
        // are trusted this early; everything else waits for the CRLF.
        return match v1::Header::try_from(window) {
            Err(v1::BinaryParseError::Parse(
                error @ (v1::ParseError::InvalidPrefix | v1::ParseError::InvalidProtocol),
            )) => Err(Rejection::Malformed(format!("v1: {error}"))),
            _ => Ok(None),
        };
    };

    // A full line: whatever ppp says now is final.
    let header = v1::Header::try_from(&window[..consumed])
        .map_err(|error| Rejection::Malformed(format!("v1: {error}")))?;
    let proxied = match header.addresses {
        v1::Addresses::Tcp4(a) => Some(ProxiedAddrs {
            source: SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            destination: SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
        }),
        v1::Addresses::Tcp6(a) => Some(ProxiedAddrs {
            source: SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            destination: SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
        }),
        v1::Addresses::Unknown => None,
    };
    Ok(Some((
        proxied.map_or(ProxyHeader::Local, ProxyHeader::Proxied),
        consumed,
    )))
}

/// Reads a PROXY header from the start of `stream`, so a listener behind a balancer learns
/// the real client address.
///
/// The whole read is bounded by `timeout`. Reads go in chunks of at most 512 bytes and stop
/// as soon as the header is complete or proven invalid; the bytes read past the header (the
/// start of the client's payload, at most one chunk) are returned and must be forwarded
/// before anything else read from `stream`.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(ProxyHeader, Bytes), ProxyProtocolError> {
    let read = async {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match parse(&buf) {
                Ok(Some((header, consumed))) => {
                    let rest = buf.split_off(consumed).freeze();
                    return Ok((header, rest));
                }
                Err(Rejection::Malformed(reason)) => {
                    return Err(ProxyProtocolError::Malformed(reason));
                }
                Err(Rejection::TooLong) => return Err(ProxyProtocolError::TooLong),
                Ok(None) => {
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(ProxyProtocolError::Closed);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ProxyProtocolError::Timeout)?
}

/// Makes both addresses the same family (IPv4-mapped IPv6 when they differ), as both header
/// versions require.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let to_v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if source.is_ipv4() == destination.is_ipv4() {
        (source, destination)
    } else {
        (to_v6(source), to_v6(destination))
    }
}

/// A v1 (text) header for a proxied TCP connection, sent first to a server that expects to
/// learn the real client address (`TCP4`, or `TCP6` when either address is IPv6).
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    v1::Addresses::from(same_family(source, destination))
        .to_string()
        .into_bytes()
}

/// A v2 (binary) header for a proxied TCP connection (PROXY command, STREAM protocol), sent
/// first to a server that expects to learn the real client address.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        same_family(source, destination),
    )
    .build()
    // ppp only fails past 64 KiB of payload, which 36 bytes of addresses never reach.
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncWriteExt, ReadBuf};

    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    fn proxied(source: &str, destination: &str) -> ProxyHeader {
        ProxyHeader::Proxied(ProxiedAddrs {
            source: addr(source),
            destination: addr(destination),
        })
    }

    fn complete(header: ProxyHeader, consumed: usize) -> ParseOutcome {
        ParseOutcome::Complete { header, consumed }
    }

    const V1_TCP4: &[u8] = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
    const V1_TCP6: &[u8] = b"PROXY TCP6 2001:db8:85a3::8a2e:370:7334 2001:db8::1 51234 8443\r\n";
    const V1_UNKNOWN: &[u8] = b"PROXY UNKNOWN\r\n";

    /// A v2 header as HAProxy sends it (`send-proxy-v2`): PROXY, TCP over IPv4,
    /// 192.168.0.1:56324 → 192.168.0.11:443.
    const HAPROXY_V2: [u8; 28] = [
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
        0x21, // version 2, PROXY
        0x11, // AF_INET, STREAM
        0x00, 0x0c, // 12 bytes follow
        0xc0, 0xa8, 0x00, 0x01, // 192.168.0.1
        0xc0, 0xa8, 0x00, 0x0b, // 192.168.0.11
        0xdc, 0x04, // 56324
        0x01, 0xbb, // 443
    ];

    /// The same with a PP2_TYPE_ALPN TLV carrying "h2", as HAProxy sends it for TLS
    /// connections (`send-proxy-v2 proxy-v2-options ssl`): 12 + 5 bytes follow.
    const HAPROXY_V2_ALPN: [u8; 33] = [
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
        0x21, 0x11, 0x00, 0x11, // v2 PROXY, TCP4, 17 bytes
        0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0x0b, // addresses
        0xdc, 0x04, 0x01, 0xbb, // ports
        0x01, 0x00, 0x02, b'h', b'2', // PP2_TYPE_ALPN, length 2, "h2"
    ];

    /// LOCAL command, AF_UNSPEC: a balancer's own health check.
    const HAPROXY_V2_LOCAL: [u8; 16] = [
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
        0x20, 0x00, 0x00, 0x00, // v2 LOCAL, UNSPEC, 0 bytes
    ];

    /// PROXY over TCP/IPv6, [2001:db8::1]:1234 → [2001:db8::2]:443.
    fn v2_tcp6() -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
        for ip in ["2001:db8::1", "2001:db8::2"] {
            let ip: std::net::Ipv6Addr = ip.parse().expect("test address");
            header.extend_from_slice(&ip.octets());
        }
        header.extend_from_slice(&[0x04, 0xd2, 0x01, 0xbb]);
        header
    }

    /// PROXY over AF_UNIX (216 bytes of paths): no IP addresses to report.
    fn v2_unix() -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x21, 0x31, 0x00, 0xd8]);
        let mut paths = [0u8; 216];
        paths[..8].copy_from_slice(b"/run/a.s");
        paths[108..116].copy_from_slice(b"/run/b.s");
        header.extend_from_slice(&paths);
        header
    }

    fn valid_headers() -> Vec<Vec<u8>> {
        vec![
            V1_TCP4.to_vec(),
            V1_TCP6.to_vec(),
            V1_UNKNOWN.to_vec(),
            HAPROXY_V2.to_vec(),
            HAPROXY_V2_ALPN.to_vec(),
            HAPROXY_V2_LOCAL.to_vec(),
            v2_tcp6(),
            v2_unix(),
            encode_v1(addr("203.0.113.7:40000"), addr("[2001:db8::1]:443")),
            encode_v2(addr("203.0.113.7:40000"), addr("[2001:db8::1]:443")),
        ]
    }

    #[test]
    fn parses_captured_v1_headers() {
        let with_payload = [V1_TCP4, b"GET / HTTP/1.1\r\n"].concat();
        assert_eq!(
            parse_header(&with_payload),
            complete(proxied("192.168.0.1:56324", "192.168.0.11:443"), 47)
        );
        assert_eq!(
            parse_header(V1_TCP6),
            complete(
                proxied("[2001:db8:85a3::8a2e:370:7334]:51234", "[2001:db8::1]:8443"),
                V1_TCP6.len()
            )
        );
        assert_eq!(parse_header(V1_UNKNOWN), complete(ProxyHeader::Local, 15));
        // UNKNOWN may carry addresses, which are ignored.
        let unknown = b"PROXY UNKNOWN ::1 ::1 1 2\r\nxyz";
        assert_eq!(parse_header(unknown), complete(ProxyHeader::Local, 27));
    }

    #[test]
    fn parses_captured_v2_headers() {
        let expected = proxied("192.168.0.1:56324", "192.168.0.11:443");
        assert_eq!(parse_header(&HAPROXY_V2), complete(expected, 28));
        let with_payload = [&HAPROXY_V2[..], b"\x16\x03\x01"].concat();
        assert_eq!(parse_header(&with_payload), complete(expected, 28));
        assert_eq!(parse_header(&HAPROXY_V2_ALPN), complete(expected, 33));
        assert_eq!(
            parse_header(&HAPROXY_V2_LOCAL),
            complete(ProxyHeader::Local, 16)
        );
        assert_eq!(
            parse_header(&v2_tcp6()),
            complete(proxied("[2001:db8::1]:1234", "[2001:db8::2]:443"), 52)
        );
        assert_eq!(parse_header(&v2_unix()), complete(ProxyHeader::Local, 232));
        // LOCAL with addresses: the addresses are ignored.
        let mut local_with_addresses = HAPROXY_V2;
        local_with_addresses[12] = 0x20;
        assert_eq!(
            parse_header(&local_with_addresses),
            complete(ProxyHeader::Local, 28)
        );
    }

    #[test]
    fn every_prefix_of_a_valid_header_is_incomplete() {
        for header in valid_headers() {
            for end in 0..header.len() {
                assert_eq!(
                    parse_header(&header[..end]),
                    ParseOutcome::Incomplete,
                    "prefix {end} of {header:?}"
                );
            }
            assert!(
                matches!(parse_header(&header), ParseOutcome::Complete { consumed, .. } if consumed == header.len()),
                "{header:?}"
            );
        }
    }

    fn assert_invalid(input: &[u8]) {
        assert!(
            matches!(parse_header(input), ParseOutcome::Invalid(_)),
            "{:?} gave {:?}",
            String::from_utf8_lossy(input),
            parse_header(input)
        );
    }

    #[test]
    fn refuses_malformed_headers() {
        assert_invalid(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
        assert_invalid(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
        // Bad v1 ports and addresses.
        assert_invalid(b"PROXY TCP4 192.168.0.1 192.168.0.11 99999 443\r\n");
        assert_invalid(b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n");
        assert_invalid(b"PROXY TCP4 192.168.0.1 192.168.0.11 port 443\r\n");
        assert_invalid(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n");
        assert_invalid(b"PROXY TCP4 ::1 ::1 56324 443\r\n");
        assert_invalid(b"PROXY TCP6 192.168.0.1 192.168.0.11 56324 443\r\n");
        assert_invalid(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 extra\r\n");
        assert_invalid(b"PROXY tcp4 192.168.0.1 192.168.0.11 56324 443\r\n");
        // v1 line endings.
        assert_invalid(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n");
        assert_invalid(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\rX");
        // v1 without CRLF within 107 bytes.
        let long = [&b"PROXY UNKNOWN "[..], &[b'x'; 200]].concat();
        assert_invalid(&long[..V1_MAX]);
        assert_invalid(&long);
        let mut just_over = long[..V1_MAX - 1].to_vec();
        just_over.extend_from_slice(b"\r\n");
        assert_invalid(&just_over);
        // v2 with the wrong version nibble, command, family or protocol.
        for (index, byte) in [(12, 0x11), (12, 0x31), (12, 0x22), (13, 0x41), (13, 0x13)] {
            let mut header = HAPROXY_V2;
            header[index] = byte;
            assert_invalid(&header);
        }
        // v2 length over the 4096-byte cap, or too short for its addresses.
        let mut too_long = HAPROXY_V2;
        too_long[14..16].copy_from_slice(&4097u16.to_be_bytes());
        assert_invalid(&too_long);
        let mut too_short = HAPROXY_V2;
        too_short[15] = 8;
        assert_invalid(&too_short);
    }

    #[test]
    fn refuses_as_soon_as_the_prefix_cannot_match() {
        for early in [
            &b"G"[..],
            b"\x16",
            b"PROXX",
            b"PROXY\t",
            b"\r\n\r\n\0\r\nQUIX",
            b"PROXY FOO",
            b"PROXY TCP4 \xff",
            b"PROXY TCP4 1.2.3.4\n",
        ] {
            assert_invalid(early);
        }
        // The v2 version byte is judged on arrival, before the length field.
        assert_invalid(&[&V2_SIGNATURE[..], &[0x11]].concat());
        assert_invalid(&[&V2_SIGNATURE[..], &[0x21, 0x51]].concat());
        // The v2 cap is judged from the length field, before the body arrives.
        assert_invalid(&[&V2_SIGNATURE[..], &[0x21, 0x11, 0xff, 0xff]].concat());
        assert_eq!(
            parse_header(&[&V2_SIGNATURE[..], &[0x21, 0x11, 0x10, 0x00]].concat()),
            ParseOutcome::Incomplete
        );
    }

    #[test]
    fn encodes_what_haproxy_sends() {
        let (source, destination) = (addr("192.168.0.1:56324"), addr("192.168.0.11:443"));
        assert_eq!(encode_v1(source, destination), V1_TCP4);
        assert_eq!(encode_v2(source, destination), HAPROXY_V2);
    }

    #[test]
    fn encoded_headers_parse_back() {
        for (source, destination, expected_source, expected_destination) in [
            (
                "203.0.113.7:40000",
                "198.51.100.1:443",
                "203.0.113.7:40000",
                "198.51.100.1:443",
            ),
            (
                "[2001:db8::7]:40000",
                "[2001:db8::1]:443",
                "[2001:db8::7]:40000",
                "[2001:db8::1]:443",
            ),
            (
                "203.0.113.7:40000",
                "[2001:db8::1]:443",
                "[::ffff:203.0.113.7]:40000",
                "[2001:db8::1]:443",
            ),
            (
                "[2001:db8::7]:0",
                "255.255.255.255:65535",
                "[2001:db8::7]:0",
                "[::ffff:255.255.255.255]:65535",
            ),
        ] {
            let (source, destination) = (addr(source), addr(destination));
            let expected = proxied(expected_source, expected_destination);
            for encoded in [
                encode_v1(source, destination),
                encode_v2(source, destination),
            ] {
                assert!(encoded.len() <= V1_MAX || encoded.starts_with(V2_SIGNATURE));
                assert_eq!(
                    parse_header(&encoded),
                    complete(expected, encoded.len()),
                    "{encoded:?}"
                );
            }
        }
        // The longest v1 header still fits the 107-byte limit.
        let widest = addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
        let encoded = encode_v1(widest, widest);
        assert_eq!(encoded.len(), 104);
        assert_eq!(
            parse_header(&encoded),
            complete(
                ProxyHeader::Proxied(ProxiedAddrs {
                    source: widest,
                    destination: widest
                }),
                104
            )
        );
    }

    /// A small deterministic fuzz pass, so the crate's own tests exercise the properties the
    /// fuzz target checks: no panics, `consumed` within the input, and verdicts that more
    /// bytes never overturn.
    #[test]
    fn mutated_headers_keep_verdicts_consistent() {
        let mut mutator = crate::testing::Mutator::new();
        let seeds = valid_headers();
        for round in 0..20_000 {
            let seed = &seeds[round % seeds.len()];
            let mut input = seed.clone();
            mutator.mutate(&mut input);
            input.extend((0..mutator.next() % 8).map(|_| mutator.next() as u8));

            let mut previous = ParseOutcome::Incomplete;
            for end in 0..=input.len() {
                let outcome = parse_header(&input[..end]);
                match (&previous, &outcome) {
                    (ParseOutcome::Incomplete, _) => {}
                    (ParseOutcome::Invalid(_), ParseOutcome::Invalid(_)) => {}
                    (ParseOutcome::Complete { .. }, current) => assert_eq!(current, &previous),
                    _ => panic!("{input:?}: {previous:?} at {} became {outcome:?}", end - 1),
                }
                if let ParseOutcome::Complete { consumed, .. } = outcome {
                    assert!(consumed <= end);
                }
                previous = outcome;
            }
        }
    }

    #[tokio::test]
    async fn read_header_returns_the_payload_after_the_header() {
        for header in valid_headers() {
            let (mut client, mut server) = tokio::io::duplex(64 * 1024);
            client
                .write_all(&[&header[..], b"hello"].concat())
                .await
                .expect("write");
            let (_, rest) = read_header(&mut server, Duration::from_secs(5))
                .await
                .expect("header");
            assert_eq!(&rest[..], b"hello");
        }
    }

    #[tokio::test]
    async fn read_header_reads_at_most_one_chunk_past_the_header() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        client
            .write_all(&[&HAPROXY_V2[..], &payload].concat())
            .await
            .expect("write");
        drop(client);
        let (header, rest) = read_header(&mut server, Duration::from_secs(5))
            .await
            .expect("header");
        assert_eq!(header, proxied("192.168.0.1:56324", "192.168.0.11:443"));
        assert!(rest.len() < READ_CHUNK);
        let mut remainder = Vec::new();
        server.read_to_end(&mut remainder).await.expect("read");
        assert_eq!([&rest[..], &remainder].concat(), payload);
    }

    #[tokio::test]
    async fn read_header_assembles_a_header_split_across_writes() {
        for header in [V1_TCP6.to_vec(), HAPROXY_V2_ALPN.to_vec()] {
            // A 3-byte pipe: every write is split, and the reader sees many short reads.
            let (mut client, mut server) = tokio::io::duplex(3);
            let sent = [&header[..], b"payload"].concat();
            let writer = tokio::spawn(async move {
                for piece in sent.chunks(5) {
                    client.write_all(piece).await?;
                    tokio::task::yield_now().await;
                }
                // Dropping the client at the end closes the pipe.
                Ok::<_, std::io::Error>(())
            });
            let (parsed, rest) = read_header(&mut server, Duration::from_secs(5))
                .await
                .expect("header");
            assert!(matches!(parsed, ProxyHeader::Proxied(_)));
            assert!(rest.len() <= 3, "{rest:?}");
            let mut received = rest.to_vec();
            server.read_to_end(&mut received).await.expect("read");
            writer.await.expect("writer task").expect("writes");
            assert_eq!(received, b"payload");
        }
    }

    #[tokio::test]
    async fn read_header_times_out_when_nothing_arrives() {
        tokio::time::pause();
        let (_client, mut server) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        let result = read_header(&mut server, Duration::from_secs(3)).await;
        assert!(
            matches!(result, Err(ProxyProtocolError::Timeout)),
            "{result:?}"
        );
        // Paused time jumps straight to the deadline (rounded up to the timer's 1 ms tick).
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_millis(3010),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn read_header_times_out_on_a_header_that_stalls() {
        tokio::time::pause();
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&HAPROXY_V2[..20]).await.expect("write");
        let result = read_header(&mut server, Duration::from_secs(3)).await;
        assert!(
            matches!(result, Err(ProxyProtocolError::Timeout)),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn read_header_reports_eof_mid_header() {
        for header in [V1_TCP4, &HAPROXY_V2[..]] {
            let (mut client, mut server) = tokio::io::duplex(1024);
            client.write_all(&header[..20]).await.expect("write");
            drop(client);
            let result = read_header(&mut server, Duration::from_secs(3)).await;
            assert!(
                matches!(result, Err(ProxyProtocolError::Closed)),
                "{result:?}"
            );
        }
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        let result = read_header(&mut server, Duration::from_secs(3)).await;
        assert!(
            matches!(result, Err(ProxyProtocolError::Closed)),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn read_header_refuses_bad_headers_without_waiting() {
        // The connection stays open and time is paused: only an immediate verdict returns
        // anything other than Timeout.
        tokio::time::pause();
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("write");
        let result = read_header(&mut server, Duration::from_secs(3)).await;
        assert!(
            matches!(result, Err(ProxyProtocolError::Malformed(_))),
            "{result:?}"
        );

        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(b"PROXY ").await.expect("write");
        client.write_all(&[b'x'; 200]).await.expect("write");
        let result = read_header(&mut server, Duration::from_secs(3)).await;
        assert!(
            matches!(result, Err(ProxyProtocolError::TooLong)),
            "{result:?}"
        );

        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let mut header = HAPROXY_V2;
        header[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        client.write_all(&header).await.expect("write");
        let result = read_header(&mut server, Duration::from_secs(3)).await;
        assert!(
            matches!(result, Err(ProxyProtocolError::TooLong)),
            "{result:?}"
        );

        // The largest accepted v2 header still goes through.
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let mut header = HAPROXY_V2.to_vec();
        header[14..16].copy_from_slice(&4096u16.to_be_bytes());
        header.extend_from_slice(&[0x04, 0x0f, 0xf1]); // PP2_TYPE_NOOP, 4081 bytes
        header.resize(16 + 4096, 0);
        client.write_all(&header).await.expect("write");
        let (parsed, rest) = read_header(&mut server, Duration::from_secs(3))
            .await
            .expect("header");
        assert_eq!(parsed, proxied("192.168.0.1:56324", "192.168.0.11:443"));
        assert!(rest.is_empty());
    }

    /// A stream whose reads fail.
    struct Failing;

    impl AsyncRead for Failing {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
        }
    }

    #[tokio::test]
    async fn read_header_passes_on_io_errors() {
        let result = read_header(&mut Failing, Duration::from_secs(3)).await;
        assert!(
            matches!(result, Err(ProxyProtocolError::Io(_))),
            "{result:?}"
        );
    }
}
