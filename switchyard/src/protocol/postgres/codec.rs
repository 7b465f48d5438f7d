//! PostgreSQL wire framing and the few messages the proxy itself reads or writes.
//!
//! Hand-written rather than taken from a driver crate because the proxy must control the
//! bytes exactly: it relays most messages untouched, rewrites a few (the StartupMessage's
//! database/user, BackendKeyData, the SASL mechanism list), enforces its own length limits
//! before buffering anything, and must turn every malformed input into a protocol error
//! instead of a panic. Parsers here are pure functions over byte slices so the fuzz target
//! can drive them.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Protocol version 3.0, spoken by every current client.
pub const PROTOCOL_3_0: u32 = 196_608;
/// Protocol version 3.2 (PostgreSQL 18: longer cancel keys).
pub const PROTOCOL_3_2: u32 = 196_610;
/// The "version" of an SSLRequest.
pub const SSL_REQUEST: u32 = 80_877_103;
/// The "version" of a GSSENCRequest.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// The "version" of a CancelRequest.
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Longest cancel key protocol 3.2 allows.
pub const MAX_CANCEL_KEY: usize = 256;

/// Why bytes from a peer are not a valid message.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The socket failed or closed mid-message.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A length field below the minimum or above the configured limit.
    #[error("invalid message length {length} (limit {limit})")]
    Length {
        /// The length announced.
        length: u64,
        /// The most accepted.
        limit: usize,
    },
    /// The content does not follow the protocol.
    #[error("{0}")]
    Malformed(&'static str),
}

/// The first packet of a connection (no type byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption.
    GssEncRequest,
    /// Cancel the query running on the backend with this key.
    Cancel {
        /// The process id from BackendKeyData.
        pid: u32,
        /// The secret key (4 bytes in protocol 3.0, up to 256 in 3.2).
        key: Vec<u8>,
    },
    /// A StartupMessage.
    Startup(Startup),
}

/// A StartupMessage: protocol version and parameters in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// Major version in the high 16 bits, minor in the low.
    pub version: u32,
    /// `user`, `database`, `application_name`, `_pq_.*` options, GUCs...
    pub params: Vec<(String, String)>,
}

impl Startup {
    /// A parameter's value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or adds) a parameter, keeping the others in order.
    pub fn set_param(&mut self, name: &str, value: &str) {
        match self.params.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value.to_string(),
            None => self.params.push((name.to_string(), value.to_string())),
        }
    }

    /// The database: `database`, defaulting to the user name as PostgreSQL does.
    pub fn database(&self) -> Option<&str> {
        self.param("database").or_else(|| self.param("user"))
    }

    /// The packet as sent on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = self.version.to_be_bytes().to_vec();
        for (key, value) in &self.params {
            body.extend_from_slice(key.as_bytes());
            body.push(0);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        with_length(None, &body)
    }
}

/// Frames `body` with an optional type byte and the length word.
pub fn with_length(tag: Option<u8>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    put_message(&mut out, tag, &[body]);
    out
}

/// Appends to `out` a message with an optional type byte whose body is `parts`, one after
/// the other: the framing of [`with_length`] without a buffer of its own.
pub fn put_message(out: &mut Vec<u8>, tag: Option<u8>, parts: &[&[u8]]) {
    let body: usize = parts.iter().map(|part| part.len()).sum();
    out.extend(tag);
    out.extend_from_slice(&(body as u32 + 4).to_be_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// A CancelRequest packet.
pub fn encode_cancel(pid: u32, key: &[u8]) -> Vec<u8> {
    let mut body = CANCEL_REQUEST.to_be_bytes().to_vec();
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(key);
    with_length(None, &body)
}

/// Parses a startup packet's body (everything after the length word).
pub fn parse_startup(body: &[u8]) -> Result<StartupPacket, CodecError> {
    let (version, rest) = split_u32(body).ok_or(CodecError::Malformed("packet too short"))?;
    match version {
        SSL_REQUEST | GSSENC_REQUEST if !rest.is_empty() => {
            Err(CodecError::Malformed("encryption request with a body"))
        }
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            let (pid, key) =
                split_u32(rest).ok_or(CodecError::Malformed("short cancel request"))?;
            if key.len() < 4 || key.len() > MAX_CANCEL_KEY {
                return Err(CodecError::Malformed("cancel key length"));
            }
            Ok(StartupPacket::Cancel {
                pid,
                key: key.to_vec(),
            })
        }
        version if version >> 16 == 3 => Ok(StartupPacket::Startup(Startup {
            version,
            params: parse_params(rest)?,
        })),
        _ => Err(CodecError::Malformed("unsupported frontend protocol")),
    }
}

/// `name\0value\0`... ended by an empty name.
fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, CodecError> {
    let mut params = Vec::new();
    loop {
        let (name, after) = cstring(rest)?;
        if name.is_empty() {
            if !after.is_empty() {
                return Err(CodecError::Malformed("bytes after the startup parameters"));
            }
            return Ok(params);
        }
        let (value, after) = cstring(after)?;
        params.push((name.to_string(), value.to_string()));
        rest = after;
    }
}

/// A NUL-terminated UTF-8 string and what follows it.
pub fn cstring(bytes: &[u8]) -> Result<(&str, &[u8]), CodecError> {
    let (text, rest) = split_cstr(bytes).ok_or(CodecError::Malformed("unterminated string"))?;
    let text =
        std::str::from_utf8(text).map_err(|_| CodecError::Malformed("string is not UTF-8"))?;
    Ok((text, rest))
}

/// The bytes before the first NUL of `bytes`, and those after it. Looked for with
/// `memchr`: the pooler looks through every query text for its end.
pub fn split_cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr(0, bytes)?;
    Some((&bytes[..end], &bytes[end + 1..]))
}

fn split_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*head), rest))
}

/// Reads a startup packet (length word then body), refusing lengths over `limit`
/// before buffering anything.
///
/// The length word and the code after it are asked for in one read: no startup packet is
/// shorter than those 8 bytes, so nothing past the packet is read, and an SSLRequest
/// (which is just those 8 bytes) costs one system call instead of two. A bad length is
/// still refused as soon as its 4 bytes are in.
pub async fn read_startup<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: usize,
) -> Result<Vec<u8>, CodecError> {
    const HEAD: usize = 8;
    let mut head = [0u8; HEAD];
    let mut filled = 0;
    while filled < 4 {
        let read = stream.read(&mut head[filled..]).await?;
        if read == 0 {
            return Err(CodecError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        filled += read;
    }
    let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    // The bytes read past the length word begin the body (`read_body` refuses a length
    // under 8 before it looks at them).
    read_body(stream, length, HEAD as u32, limit, &head[4..filled]).await
}

/// A typed message: its type byte and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The type byte (`R`, `K`, `Z`, `p`...).
    pub tag: u8,
    /// The body, without the length word.
    pub body: Vec<u8>,
}

impl Message {
    /// The message as sent on the wire.
    pub fn encode(&self) -> Vec<u8> {
        with_length(Some(self.tag), &self.body)
    }
}

/// Reads one typed message, refusing lengths over `limit` before buffering anything.
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: usize,
) -> Result<Message, CodecError> {
    let tag = stream.read_u8().await?;
    let length = stream.read_u32().await?;
    let body = read_body(stream, length, 4, limit, &[]).await?;
    Ok(Message { tag, body })
}

/// Reads the body a length word announced, refusing lengths under `minimum` or over
/// `limit` before buffering anything; `started` is the part of it already read.
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    length: u32,
    minimum: u32,
    limit: usize,
    started: &[u8],
) -> Result<Vec<u8>, CodecError> {
    if length < minimum || length as u64 > limit as u64 {
        return Err(CodecError::Length {
            length: length.into(),
            limit,
        });
    }
    // Grow with what actually arrives: a length word alone must not make the proxy
    // allocate up to the limit.
    let wanted = length as usize - 4;
    let mut body = Vec::with_capacity(wanted.min(64 * 1024));
    body.extend_from_slice(started);
    let rest = wanted - started.len();
    let read = (&mut *stream)
        .take(rest as u64)
        .read_to_end(&mut body)
        .await?;
    if read < rest {
        return Err(CodecError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(body)
}

/// What an `R` (authentication request) message asks of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    /// AuthenticationOk: no reply, the startup goes on.
    Ok,
    /// AuthenticationSASL with the mechanisms the server offers.
    Sasl(Vec<String>),
    /// AuthenticationSASLFinal: no reply.
    SaslFinal,
    /// Any other request that the client answers with one message (cleartext, md5,
    /// SASL continue, GSS...).
    NeedsReply,
}

/// Classifies an `R` message body.
pub fn parse_auth(body: &[u8]) -> Result<AuthRequest, CodecError> {
    let (code, rest) = split_u32(body).ok_or(CodecError::Malformed("short authentication"))?;
    Ok(match code {
        0 => AuthRequest::Ok,
        10 => {
            let mut mechanisms = Vec::new();
            let mut rest = rest;
            loop {
                let (name, after) = cstring(rest)?;
                if name.is_empty() {
                    break;
                }
                mechanisms.push(name.to_string());
                rest = after;
            }
            AuthRequest::Sasl(mechanisms)
        }
        12 => AuthRequest::SaslFinal,
        _ => AuthRequest::NeedsReply,
    })
}

/// An AuthenticationSASL message offering `mechanisms`.
pub fn sasl_request<'a>(mechanisms: impl Iterator<Item = &'a String>) -> Message {
    let mut body = 10u32.to_be_bytes().to_vec();
    for mechanism in mechanisms {
        body.extend_from_slice(mechanism.as_bytes());
        body.push(0);
    }
    body.push(0);
    Message { tag: b'R', body }
}

/// A BackendKeyData body: process id and secret key.
pub fn parse_backend_key(body: &[u8]) -> Result<(u32, Vec<u8>), CodecError> {
    let (pid, key) = split_u32(body).ok_or(CodecError::Malformed("short BackendKeyData"))?;
    if key.len() < 4 || key.len() > MAX_CANCEL_KEY {
        return Err(CodecError::Malformed("BackendKeyData key length"));
    }
    Ok((pid, key.to_vec()))
}

/// A BackendKeyData message.
pub fn backend_key(pid: u32, key: &[u8]) -> Message {
    let mut body = pid.to_be_bytes().to_vec();
    body.extend_from_slice(key);
    Message { tag: b'K', body }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// psql 15 ↔ PostgreSQL 15 over TCP, captured with a recording relay: the SSLRequest
    /// psql sends first with the default `sslmode=prefer`.
    const PSQL_SSL_REQUEST: &[u8] = b"\x00\x00\x00\x08\x04\xd2\x16/";

    /// The StartupMessage psql 15 sent next, after the server answered `N`.
    pub(crate) const PSQL_STARTUP: &[u8] = b"\x00\x00\x00?\x00\x03\x00\x00user\x00postgres\x00database\x00postgres\x00application_name\x00psql\x00\x00";

    fn body(packet: &[u8]) -> &[u8] {
        &packet[4..]
    }

    #[test]
    fn parses_captured_psql_packets() {
        assert_eq!(
            parse_startup(body(PSQL_SSL_REQUEST)).ok(),
            Some(StartupPacket::SslRequest)
        );
        let Ok(StartupPacket::Startup(startup)) = parse_startup(body(PSQL_STARTUP)) else {
            panic!("a startup message");
        };
        assert_eq!(startup.version, PROTOCOL_3_0);
        assert_eq!(startup.param("user"), Some("postgres"));
        assert_eq!(startup.database(), Some("postgres"));
        assert_eq!(startup.param("application_name"), Some("psql"));
        assert_eq!(startup.encode(), PSQL_STARTUP, "re-encodes byte for byte");
    }

    #[test]
    fn protocol_3_2_and_pq_options_pass_through() {
        let startup = Startup {
            version: PROTOCOL_3_2,
            params: vec![
                ("user".into(), "u".into()),
                ("_pq_.test_option".into(), "1".into()),
            ],
        };
        let packet = startup.encode();
        assert_eq!(
            parse_startup(body(&packet)).ok(),
            Some(StartupPacket::Startup(startup.clone()))
        );
        assert_eq!(
            startup.database(),
            Some("u"),
            "database defaults to the user"
        );
    }

    #[test]
    fn cancel_requests_of_both_key_sizes() {
        let packet = encode_cancel(1234, &[1, 2, 3, 4]);
        assert_eq!(
            packet,
            [0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 4, 210, 1, 2, 3, 4]
        );
        assert_eq!(
            parse_startup(body(&packet)).ok(),
            Some(StartupPacket::Cancel {
                pid: 1234,
                key: vec![1, 2, 3, 4]
            })
        );
        let long = encode_cancel(7, &[9; 32]);
        assert!(matches!(
            parse_startup(body(&long)),
            Ok(StartupPacket::Cancel { key, .. }) if key.len() == 32
        ));
    }

    #[test]
    fn malformed_startups_are_errors() {
        for bad in [
            &b""[..],
            b"\x00\x03",
            b"\x00\x02\x00\x00user\x00x\x00\x00",
            b"\x00\x03\x00\x00user\x00x\x00",
            b"\x00\x03\x00\x00user\x00x\x00\x00junk",
            b"\x00\x03\x00\x00us\xffer\x00x\x00\x00",
            b"\x04\xd2\x16\x2f\x00",
            b"\x04\xd2\x16\x2e\x00\x00\x00\x01\x00",
        ] {
            assert!(parse_startup(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_startup_packet_is_read_to_its_end_and_no_further() {
        // An SSLRequest, then what a client sends after it: only the request is read.
        let mut stream: &[u8] = b"\x00\x00\x00\x08\x04\xd2\x16\x2f\x16\x03\x01";
        let body = read_startup(&mut stream, 10_000).await.ok();
        assert_eq!(body.as_deref(), Some(&b"\x04\xd2\x16\x2f"[..]));
        assert_eq!(stream, b"\x16\x03\x01");
        // A StartupMessage trickling in a byte at a time.
        let packet = b"\x00\x00\x00\x12\x00\x03\x00\x00user\x00bob\x00\x00";
        let (mut client, mut proxy) = tokio::io::duplex(1);
        let writer =
            tokio::spawn(
                async move { tokio::io::AsyncWriteExt::write_all(&mut client, packet).await },
            );
        let body = read_startup(&mut proxy, 10_000).await.ok();
        assert_eq!(body.as_deref(), Some(&packet[4..]));
        assert!(matches!(writer.await, Ok(Ok(()))));
    }

    #[tokio::test]
    async fn lengths_over_the_limit_are_refused_before_reading() {
        let mut huge: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_startup(&mut huge, 10_000).await,
            Err(CodecError::Length { .. })
        ));
        let mut short: &[u8] = &[0, 0, 0, 4];
        assert!(matches!(
            read_startup(&mut short, 10_000).await,
            Err(CodecError::Length { .. })
        ));
        // A huge announced length with little behind it: no huge buffer, just an error.
        let mut truncated: &[u8] = b"p\x3f\xff\xff\xffabc";
        assert!(matches!(
            read_message(&mut truncated, 1 << 30).await,
            Err(CodecError::Io(_))
        ));
        let mut message: &[u8] = b"Z\x00\x00\x00\x05I";
        let read = read_message(&mut message, 100).await.ok();
        assert_eq!(
            read,
            Some(Message {
                tag: b'Z',
                body: b"I".to_vec()
            })
        );
    }

    #[test]
    fn authentication_requests() {
        // AuthenticationSASL as PostgreSQL 15 sent it over plain TCP (captured).
        let sasl = b"\x00\x00\x00\nSCRAM-SHA-256\x00\x00";
        assert_eq!(
            parse_auth(sasl).ok(),
            Some(AuthRequest::Sasl(vec!["SCRAM-SHA-256".into()]))
        );
        let mechanisms = ["SCRAM-SHA-256".to_string()];
        assert_eq!(sasl_request(mechanisms.iter()).body, sasl);
        assert_eq!(parse_auth(&[0, 0, 0, 0]).ok(), Some(AuthRequest::Ok));
        assert_eq!(
            parse_auth(&[0, 0, 0, 5, 1, 2, 3, 4]).ok(),
            Some(AuthRequest::NeedsReply)
        );
        assert!(parse_auth(&[0, 0]).is_err());
    }

    /// A small deterministic fuzz pass over mutated captured packets, so the crate's own
    /// tests check what the fuzz target checks: no panics, and exact round trips.
    #[test]
    fn mutated_packets_parse_or_fail_cleanly_and_round_trip() {
        let mut mutator = crate::testing::Mutator::new();
        let seeds = [
            body(PSQL_STARTUP).to_vec(),
            body(PSQL_SSL_REQUEST).to_vec(),
            body(&encode_cancel(42, &[1, 2, 3, 4])).to_vec(),
        ];
        for round in 0..20_000 {
            let mut input = seeds[round % seeds.len()].clone();
            mutator.mutate(&mut input);
            let _ = parse_auth(&input);
            let _ = parse_backend_key(&input);
            match parse_startup(&input) {
                Ok(StartupPacket::Startup(startup)) => {
                    assert_eq!(&startup.encode()[4..], input.as_slice())
                }
                Ok(StartupPacket::Cancel { pid, key }) => {
                    assert_eq!(&encode_cancel(pid, &key)[4..], input.as_slice())
                }
                Ok(_) => assert_eq!(input.len(), 4),
                Err(_) => {}
            }
        }
    }
}
