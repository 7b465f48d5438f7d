//! The startup phase: the client's opening packets, then the server's authentication
//! exchange relayed message by message until ReadyForQuery.
//!
//! Both sides are generic over the stream type so that a TLS-upgraded stream drops in
//! where a plain socket is used today.

use crate::observe::Termination;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::cancel::{CancelTable, CancelTarget, Registration};
use super::codec::{
    self, AuthRequest, CodecError, Message, Startup, StartupPacket, parse_auth, parse_startup,
    read_message, read_startup,
};
use super::errors::{error_field, fatal, sqlstate};
use crate::config::MessageLimits;

/// What the client's opening packets amounted to.
#[derive(Debug)]
pub enum Opening {
    /// A StartupMessage: route it and connect.
    Startup(Startup),
    /// The client asked for TLS and was told `S`: the handshake comes next.
    StartTls,
    /// A CancelRequest (the connection ends after it).
    Cancel {
        /// Process id the client was given.
        pid: u32,
        /// Key the client was given.
        key: Vec<u8>,
    },
}

pub use crate::protocol::Refusal;

/// Reads the client's opening packets: answers GSSENCRequest `N` and SSLRequest `S` when
/// `offer_tls` (returning [`Opening::StartTls`]) or `N`, and returns the StartupMessage or
/// CancelRequest that follows. Malformed input gets a FATAL ErrorResponse (08P01, or 0A000
/// for a protocol version other than 3.x).
pub async fn read_opening<S>(
    client: &mut S,
    limits: &MessageLimits,
    offer_tls: bool,
) -> Result<Opening, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A client may ask for GSS encryption, then TLS, then start: at most three packets.
    for _ in 0..3 {
        let packet = match read_startup(client, limits.startup_message).await {
            Ok(body) => parse_startup(&body),
            Err(CodecError::Io(error)) => {
                return Err(Refusal::new(Termination::ClientClosed, error));
            }
            Err(error) => Err(error),
        };
        match packet {
            Ok(StartupPacket::SslRequest) if offer_tls => {
                answer(client, b"S").await?;
                return Ok(Opening::StartTls);
            }
            Ok(StartupPacket::SslRequest) => answer(client, b"N").await?,
            Ok(StartupPacket::GssEncRequest) => answer(client, b"N").await?,
            Ok(StartupPacket::Cancel { pid, key }) => return Ok(Opening::Cancel { pid, key }),
            Ok(StartupPacket::Startup(startup)) => return Ok(Opening::Startup(startup)),
            Err(error) => {
                let code = match error {
                    CodecError::Malformed("unsupported frontend protocol") => {
                        sqlstate::FEATURE_NOT_SUPPORTED
                    }
                    _ => sqlstate::PROTOCOL_VIOLATION,
                };
                let message = format!("invalid startup packet: {error}");
                let _ = client.write_all(&fatal(code, &message)).await;
                return Err(Refusal::new(Termination::BadStartup, message));
            }
        }
    }
    let message = "too many encryption requests";
    let _ = client
        .write_all(&fatal(sqlstate::PROTOCOL_VIOLATION, message))
        .await;
    Err(Refusal::new(Termination::BadStartup, message))
}

async fn answer<S: AsyncWrite + Unpin>(client: &mut S, byte: &[u8]) -> Result<(), Refusal> {
    client
        .write_all(byte)
        .await
        .map_err(|e| Refusal::new(Termination::ClientError, e))
}

/// Bytes each way during the startup, for the counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct StartupBytes {
    /// Client to server.
    pub to_server: u64,
    /// Server to client.
    pub to_client: u64,
}

/// What the startup needs to know about the server connection.
pub struct ServerLink<'a> {
    /// Shared cancel key table.
    pub table: &'a Arc<CancelTable>,
    /// Where a forwarded cancel goes.
    pub cancel: CancelTarget,
    /// The server connection is TLS: SCRAM-SHA-256-PLUS is not offered to the client,
    /// whose TLS (if any) ends at the proxy, so channel binding could never match.
    pub encrypted: bool,
    /// `sslmode=allow`'s first, plaintext attempt: an error before anything reached the
    /// client is returned as [`Refusal`] `retry_tls` instead of being relayed.
    pub may_retry: bool,
}

/// Sends `startup` to the server and relays the authentication exchange until the
/// server's ReadyForQuery, replacing its BackendKeyData with a proxy-issued key. Returns
/// the key's registration (held for the session's life) and the bytes moved.
pub async fn authenticate<C, S>(
    client: &mut C,
    server: &mut S,
    startup: &Startup,
    limits: &MessageLimits,
    link: ServerLink<'_>,
) -> Result<(Option<Registration>, StartupBytes), Refusal>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut bytes = StartupBytes::default();
    let mut registration = None;
    let mut cancel = Some(link.cancel);
    let packet = startup.encode();
    send(server, &packet, Termination::ServerError).await?;
    bytes.to_server += packet.len() as u64;
    loop {
        let message = match read_message(server, limits.message).await {
            Ok(message) => message,
            Err(error) => {
                let text = format!("server connection failed during startup: {error}");
                let _ = client
                    .write_all(&fatal(sqlstate::CONNECTION_FAILURE, &text))
                    .await;
                return Err(Refusal::new(Termination::ServerError, text));
            }
        };
        if message.tag == b'E' && link.may_retry && bytes.to_client == 0 {
            return Err(Refusal::new(
                Termination::PlaintextRefused,
                error_text(&message),
            ));
        }
        let mut expects_reply = false;
        let outgoing = match message.tag {
            b'R' => match parse_auth(&message.body).map_err(|e| bad_server(&e))? {
                AuthRequest::Sasl(mechanisms) => {
                    expects_reply = true;
                    if link.encrypted {
                        codec::sasl_request(mechanisms.iter().filter(|m| !m.ends_with("-PLUS")))
                    } else {
                        message
                    }
                }
                request => {
                    expects_reply = request == AuthRequest::NeedsReply;
                    message
                }
            },
            b'K' => {
                let (pid, key) =
                    codec::parse_backend_key(&message.body).map_err(|e| bad_server(&e))?;
                let Some(target) = cancel.take() else {
                    return Err(bad_server(&CodecError::Malformed(
                        "a second BackendKeyData",
                    )));
                };
                let issued = link.table.register(target, pid, &key);
                let ours = codec::backend_key(issued.pid, &issued.key);
                registration = Some(issued);
                ours
            }
            _ => message,
        };
        let encoded = outgoing.encode();
        send(client, &encoded, Termination::ClientError).await?;
        bytes.to_client += encoded.len() as u64;
        match outgoing.tag {
            b'Z' => return Ok((registration, bytes)),
            // The server refused (bad password, no such database...): it closes next.
            b'E' => {
                return Err(Refusal::new(
                    Termination::ServerRefused,
                    error_text(&outgoing),
                ));
            }
            _ => {}
        }
        if expects_reply {
            let reply = match read_message(client, limits.message).await {
                Ok(reply) => reply,
                Err(CodecError::Io(error)) => {
                    return Err(Refusal::new(Termination::ClientClosed, error));
                }
                Err(error) => {
                    let text = format!("invalid authentication message: {error}");
                    let _ = client
                        .write_all(&fatal(sqlstate::PROTOCOL_VIOLATION, &text))
                        .await;
                    return Err(Refusal::new(Termination::BadMessage, text));
                }
            };
            let encoded = reply.encode();
            send(server, &encoded, Termination::ServerError).await?;
            bytes.to_server += encoded.len() as u64;
        }
    }
}

fn bad_server(error: &CodecError) -> Refusal {
    Refusal::new(
        Termination::ServerError,
        format!("invalid message from the server: {error}"),
    )
}

async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    reason: Termination,
) -> Result<(), Refusal> {
    crate::net::send_all(stream, bytes)
        .await
        .map_err(|e| Refusal::new(reason, e))
}

/// The `M` field of an ErrorResponse, for the log.
fn error_text(message: &Message) -> String {
    error_field(&message.body, b'M')
        .unwrap_or("error")
        .to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn gssenc_and_ssl_are_answered_n_then_the_startup_is_read() {
        let startup = Startup {
            version: codec::PROTOCOL_3_0,
            params: vec![("user".into(), "u".into())],
        };
        let (mut client, mut proxy) = tokio::io::duplex(1024);
        let mut sent = codec::with_length(None, &codec::GSSENC_REQUEST.to_be_bytes());
        sent.extend(codec::with_length(None, &codec::SSL_REQUEST.to_be_bytes()));
        sent.extend(startup.encode());
        client.write_all(&sent).await.expect("write");
        let opening = read_opening(&mut proxy, &MessageLimits::default(), false).await;
        assert!(matches!(opening, Ok(Opening::Startup(s)) if s == startup));
        let mut answers = [0u8; 2];
        client.read_exact(&mut answers).await.expect("answers");
        assert_eq!(&answers, b"NN");
    }

    #[tokio::test]
    async fn a_bad_startup_gets_fatal_08p01() {
        let (mut client, mut proxy) = tokio::io::duplex(1024);
        client
            .write_all(&[0, 0, 0, 9, 0, 3, 0, 0, b'x'])
            .await
            .expect("write");
        let opening = read_opening(&mut proxy, &MessageLimits::default(), false).await;
        assert!(matches!(
            opening,
            Err(Refusal {
                reason: Termination::BadStartup,
                ..
            })
        ));
        drop(proxy);
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.expect("read");
        assert_eq!(reply[0], b'E');
        assert!(String::from_utf8_lossy(&reply).contains("C08P01"));
    }

    /// A SCRAM-SHA-256 login of psql 15 to PostgreSQL 15, captured with a recording relay
    /// (the ParameterStatus messages after AuthenticationOk trimmed to one).
    const SERVER_SAYS: &[u8] = b"R\x00\x00\x00\x17\x00\x00\x00\nSCRAM-SHA-256\x00\x00\
R\x00\x00\x00\\\x00\x00\x00\x0br=jWERqqq/4QxxkIurfS8RkPkvgqflgJv0xQ2Xvh+S2iYnQRst,s=p4AqHKfSsGtNy/VEJ9Gcxg==,i=4096\
R\x00\x00\x006\x00\x00\x00\x0cv=rKaMQDxbCmtMJJelnF13HtCVbhN+PZ4GpSpmJSKx5Po=\
R\x00\x00\x00\x08\x00\x00\x00\x00\
S\x00\x00\x00\x19client_encoding\x00UTF8\x00\
K\x00\x00\x00\x0c\x00\x00US!\n\xda\xca\
Z\x00\x00\x00\x05I";
    pub(crate) const CLIENT_SAYS: &[u8] = b"p\x00\x00\x006SCRAM-SHA-256\x00\x00\x00\x00 n,,n=,r=jWERqqq/4QxxkIurfS8RkPkv\
p\x00\x00\x00lc=biws,r=jWERqqq/4QxxkIurfS8RkPkvgqflgJv0xQ2Xvh+S2iYnQRst,p=+QrHa5oPj7MEUnesD+BpFDI8/X0H7FcfyYFMt/VMuB4=";

    #[tokio::test]
    async fn a_captured_scram_login_is_relayed_with_the_cancel_key_replaced() {
        let Ok(StartupPacket::Startup(startup)) = parse_startup(&codec::tests::PSQL_STARTUP[4..])
        else {
            panic!("captured startup");
        };
        let (mut fake_client, mut client_end) = tokio::io::duplex(4096);
        let (mut server_end, mut fake_server) = tokio::io::duplex(4096);
        fake_client.write_all(CLIENT_SAYS).await.expect("client");
        fake_server.write_all(SERVER_SAYS).await.expect("server");
        let table = Arc::new(CancelTable::default());
        let server = std::net::SocketAddr::from(([127, 0, 0, 1], 5432));
        let (registration, bytes) = authenticate(
            &mut client_end,
            &mut server_end,
            &startup,
            &MessageLimits::default(),
            ServerLink {
                table: &table,
                cancel: CancelTarget {
                    server,
                    connect_timeout: Duration::from_secs(1),
                    tls: None,
                    host: "127.0.0.1".into(),
                    preamble: Vec::new(),
                },
                encrypted: false,
                may_retry: false,
            },
        )
        .await
        .expect("login relayed");
        let registration = registration.expect("a cancel key was issued");
        drop((client_end, server_end));

        let mut to_server = Vec::new();
        fake_server.read_to_end(&mut to_server).await.expect("read");
        let mut expected = codec::tests::PSQL_STARTUP.to_vec();
        expected.extend_from_slice(CLIENT_SAYS);
        assert_eq!(
            to_server, expected,
            "the server got the client's bytes unchanged"
        );

        let mut to_client = Vec::new();
        fake_client.read_to_end(&mut to_client).await.expect("read");
        let key_at = SERVER_SAYS.len() - 13 - 6;
        assert_eq!(to_client[..key_at], SERVER_SAYS[..key_at]);
        assert_eq!(
            to_client[key_at..key_at + 13],
            codec::backend_key(registration.pid, &registration.key).encode()
        );
        assert_ne!(
            to_client[key_at + 5..key_at + 13],
            SERVER_SAYS[key_at + 5..key_at + 13]
        );
        assert_eq!(to_client[key_at + 13..], SERVER_SAYS[key_at + 13..]);
        assert_eq!(bytes.to_client, SERVER_SAYS.len() as u64);
        assert_eq!(bytes.to_server, expected.len() as u64);
    }
}
