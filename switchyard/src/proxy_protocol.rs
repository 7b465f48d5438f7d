//! PROXY protocol v1/v2: reading the header a fronting balancer sends, and writing one to servers.
//!
//! Parsing and building use the `ppp` crate; what is written here is the incremental read
//! from the socket, which must stop exactly at the end of the header (whatever follows is
//! the client's payload and goes to the server), and the limits a proxy needs against
//! slow or hostile senders.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ppp::v2;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature that starts every binary header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 prefix.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// A v1 header's maximum length, CRLF included (the spec's limit).
const V1_MAX: usize = 107;
/// Largest v2 address + TLV block accepted (the spec allows 65535; nobody needs that).
const V2_MAX_PAYLOAD: usize = 4096;

/// The addresses a PROXY header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxiedAddrs {
    /// The original client.
    pub source: SocketAddr,
    /// The address the client connected to.
    pub destination: SocketAddr,
}

/// A parsed PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A proxied connection, with the original addresses.
    Proxied(ProxiedAddrs),
    /// A connection made by the balancer itself (v2 LOCAL, v1 UNKNOWN, non-IP families):
    /// the socket's own addresses apply.
    Local,
}

/// Why a PROXY header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProxyProtocolError {
    /// The header did not arrive in time.
    #[error("timed out waiting for the PROXY protocol header")]
    Timeout,
    /// The peer closed before the header was complete.
    #[error("connection closed before the PROXY protocol header was complete")]
    Closed,
    /// The bytes are not a valid header.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    /// The header exceeds the accepted size.
    #[error("PROXY protocol header too long")]
    TooLong,
    /// Reading failed.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// The result of parsing the start of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseOutcome {
    /// A complete header of `consumed` bytes.
    Complete {
        /// The header.
        header: ProxyHeader,
        /// Its length in bytes.
        consumed: usize,
    },
    /// More bytes are needed.
    Incomplete,
    /// Not a valid header (and more bytes cannot make it one).
    Invalid(String),
    /// Longer than accepted.
    TooLong,
}

/// Parses a header at the start of `buf`; pure, so the socket reader and the fuzz target
/// share it.
pub fn parse_header(buf: &[u8]) -> ParseOutcome {
    if buf.is_empty() {
        return ParseOutcome::Incomplete;
    }
    let probe = buf.len().min(V2_SIGNATURE.len());
    if buf[..probe] == V2_SIGNATURE[..probe] {
        return parse_v2(buf);
    }
    let probe = buf.len().min(V1_PREFIX.len());
    if buf[..probe] == V1_PREFIX[..probe] {
        return parse_v1(buf);
    }
    ParseOutcome::Invalid("not a PROXY protocol header".into())
}

fn parse_v2(buf: &[u8]) -> ParseOutcome {
    if buf.len() < 16 {
        return ParseOutcome::Incomplete;
    }
    if buf[12] >> 4 != 2 {
        return ParseOutcome::Invalid(format!("unsupported version {}", buf[12] >> 4));
    }
    let length = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if length > V2_MAX_PAYLOAD {
        return ParseOutcome::TooLong;
    }
    let total = 16 + length;
    if buf.len() < total {
        return ParseOutcome::Incomplete;
    }
    match v2::Header::try_from(&buf[..total]) {
        Ok(header) => {
            let proxied = match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Some(ProxiedAddrs {
                    source: SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
                    destination: SocketAddr::new(
                        IpAddr::V4(a.destination_address),
                        a.destination_port,
                    ),
                }),
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Some(ProxiedAddrs {
                    source: SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
                    destination: SocketAddr::new(
                        IpAddr::V6(a.destination_address),
                        a.destination_port,
                    ),
                }),
                _ => None,
            };
            ParseOutcome::Complete {
                header: proxied.map_or(ProxyHeader::Local, ProxyHeader::Proxied),
                consumed: total,
            }
        }
        Err(error) => ParseOutcome::Invalid(format!("v2: {error}")),
    }
}

fn parse_v1(buf: &[u8]) -> ParseOutcome {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            ParseOutcome::TooLong
        } else if window.contains(&b'\n') {
            ParseOutcome::Invalid("v1: line ends without CR".into())
        } else {
            ParseOutcome::Incomplete
        };
    };
    let consumed = end + 2;
    match ppp::v1::Header::try_from(&buf[..consumed]) {
        Ok(header) => {
            let proxied = match header.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some(ProxiedAddrs {
                    source: SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
                    destination: SocketAddr::new(
                        IpAddr::V4(a.destination_address),
                        a.destination_port,
                    ),
                }),
                ppp::v1::Addresses::Tcp6(a) => Some(ProxiedAddrs {
                    source: SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
                    destination: SocketAddr::new(
                        IpAddr::V6(a.destination_address),
                        a.destination_port,
                    ),
                }),
                ppp::v1::Addresses::Unknown => None,
            };
            ParseOutcome::Complete {
                header: proxied.map_or(ProxyHeader::Local, ProxyHeader::Proxied),
                consumed,
            }
        }
        Err(error) => ParseOutcome::Invalid(format!("v1: {error}")),
    }
}

/// Reads a header from `stream` within `timeout`. Returns it with any bytes read past its
/// end: the start of the client's payload, which must be forwarded first.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(ProxyHeader, Bytes), ProxyProtocolError> {
    let read = async {
        let mut buf = BytesMut::with_capacity(256);
        loop {
            match parse_header(&buf) {
                ParseOutcome::Complete { header, consumed } => {
                    let rest = buf.split_off(consumed).freeze();
                    return Ok((header, rest));
                }
                ParseOutcome::Invalid(reason) => return Err(ProxyProtocolError::Malformed(reason)),
                ParseOutcome::TooLong => return Err(ProxyProtocolError::TooLong),
                ParseOutcome::Incomplete => {
                    buf.reserve(512);
                    if stream.read_buf(&mut buf).await? == 0 {
                        return Err(ProxyProtocolError::Closed);
                    }
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

/// A v1 (text) header for a proxied TCP connection.
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// A v2 (binary) header for a proxied TCP connection.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (source, destination),
    )
    .build()
    // Building into a Vec cannot fail for IP addresses; an empty header would be refused
    // by the server rather than misattribute the client.
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    /// A v2 header as HAProxy sends it: PROXY, TCP over IPv4, 192.168.0.1:56324 → 192.168.0.11:443.
    const HAPROXY_V2: [u8; 28] = [
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
        0x21, 0x11, 0x00, 0x0c, // v2 PROXY, TCP4, 12 bytes
        0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0x0b, // addresses
        0xdc, 0x04, 0x01, 0xbb, // ports 56324, 443
    ];

    #[test]
    fn parses_captured_v1_headers() {
        let tcp4 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET /";
        assert_eq!(
            parse_header(tcp4),
            ParseOutcome::Complete {
                header: ProxyHeader::Proxied(ProxiedAddrs {
                    source: addr("192.168.0.1:56324"),
                    destination: addr("192.168.0.11:443"),
                }),
                consumed: 47,
            }
        );
        let tcp6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 5432\r\n";
        assert!(matches!(
            parse_header(tcp6),
            ParseOutcome::Complete { header: ProxyHeader::Proxied(a), consumed: 46 } if a.source == addr("[2001:db8::1]:4000")
        ));
        assert_eq!(
            parse_header(b"PROXY UNKNOWN\r\n"),
            ParseOutcome::Complete {
                header: ProxyHeader::Local,
                consumed: 15
            }
        );
    }

    #[test]
    fn parses_captured_v2_headers() {
        assert_eq!(
            parse_header(&HAPROXY_V2),
            ParseOutcome::Complete {
                header: ProxyHeader::Proxied(ProxiedAddrs {
                    source: addr("192.168.0.1:56324"),
                    destination: addr("192.168.0.11:443"),
                }),
                consumed: 28,
            }
        );
        // With an ALPN TLV ("h2") appended: length 12 + 5.
        let mut with_tlv = HAPROXY_V2.to_vec();
        with_tlv[15] = 17;
        with_tlv.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        assert!(matches!(
            parse_header(&with_tlv),
            ParseOutcome::Complete { consumed: 33, .. }
        ));
        // LOCAL command, no addresses (a balancer's own health check).
        let local = [&V2_SIGNATURE[..], &[0x20, 0x00, 0x00, 0x00]].concat();
        assert_eq!(
            parse_header(&local),
            ParseOutcome::Complete {
                header: ProxyHeader::Local,
                consumed: 16
            }
        );
    }

    #[test]
    fn every_prefix_of_a_valid_header_is_incomplete() {
        let v1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        for end in 0..v1.len() {
            assert_eq!(
                parse_header(&v1[..end]),
                ParseOutcome::Incomplete,
                "v1 prefix {end}"
            );
        }
        for end in 0..HAPROXY_V2.len() {
            assert_eq!(
                parse_header(&HAPROXY_V2[..end]),
                ParseOutcome::Incomplete,
                "v2 prefix {end}"
            );
        }
    }

    #[test]
    fn refuses_malformed_headers() {
        assert!(matches!(
            parse_header(b"GET / HTTP/1.1\r\n"),
            ParseOutcome::Invalid(_)
        ));
        assert!(matches!(
            parse_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n"),
            ParseOutcome::Invalid(_)
        ));
        assert!(matches!(
            parse_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 80\n"),
            ParseOutcome::Invalid(_)
        ));
        assert_eq!(
            parse_header(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'x'].repeat(20)),
            ParseOutcome::TooLong
        );
        let mut bad_version = HAPROXY_V2;
        bad_version[12] = 0x11;
        assert!(matches!(
            parse_header(&bad_version),
            ParseOutcome::Invalid(_)
        ));
        let mut too_long = HAPROXY_V2;
        too_long[14] = 0xff;
        assert_eq!(parse_header(&too_long), ParseOutcome::TooLong);
    }

    #[test]
    fn encoded_headers_parse_back() {
        for (source, destination) in [
            ("203.0.113.7:40000", "198.51.100.1:443"),
            ("[2001:db8::7]:40000", "[2001:db8::1]:443"),
            ("203.0.113.7:40000", "[2001:db8::1]:443"),
        ] {
            let (source, destination) = (addr(source), addr(destination));
            for encoded in [
                encode_v1(source, destination),
                encode_v2(source, destination),
            ] {
                let ParseOutcome::Complete {
                    header: ProxyHeader::Proxied(parsed),
                    consumed,
                } = parse_header(&encoded)
                else {
                    panic!("{encoded:?} did not parse");
                };
                assert_eq!(consumed, encoded.len());
                let (expected_source, expected_destination) = same_family(source, destination);
                assert_eq!(parsed.source, expected_source);
                assert_eq!(parsed.destination, expected_destination);
            }
        }
    }

    /// A stable-toolchain stand-in for the cargo-fuzz target: mutated real headers.
    #[test]
    fn mutated_headers_never_panic_or_overrun() {
        let seeds: [&[u8]; 3] = [
            &HAPROXY_V2,
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 5432\r\n",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let mut input = seeds[rng.usize(..seeds.len())].to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..input.len());
                match rng.u8(..3) {
                    0 => input[at] = rng.u8(..),
                    1 => input.truncate(at),
                    _ => input.insert(at, rng.u8(..)),
                }
                if input.is_empty() {
                    break;
                }
            }
            if let ParseOutcome::Complete { consumed, .. } = parse_header(&input) {
                assert!(consumed <= input.len());
            }
        }
    }

    #[tokio::test]
    async fn read_header_returns_the_payload_after_a_split_header() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            client.write_all(b"PROXY TCP4 10.0.0.1 ").await?;
            client.write_all(b"10.0.0.2 1000 2000\r\nhello").await?;
            Ok::<_, std::io::Error>(client)
        });
        let (header, rest) = read_header(&mut server, Duration::from_secs(5))
            .await
            .expect("header");
        assert!(matches!(header, ProxyHeader::Proxied(a) if a.source == addr("10.0.0.1:1000")));
        assert_eq!(&rest[..], b"hello");
        let _client = writer.await.expect("writer task").expect("writes");
    }

    #[tokio::test(start_paused = true)]
    async fn read_header_times_out_and_notices_eof() {
        let (client, mut server) = tokio::io::duplex(1024);
        let result = read_header(&mut server, Duration::from_secs(3)).await;
        assert!(matches!(result, Err(ProxyProtocolError::Timeout)));
        drop(client);
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"PROXY TCP4").await.expect("write");
        drop(client);
        let result = read_header(&mut server, Duration::from_secs(3)).await;
        assert!(matches!(result, Err(ProxyProtocolError::Closed)));
    }
}
