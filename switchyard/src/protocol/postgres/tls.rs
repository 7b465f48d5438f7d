//! PostgreSQL's in-protocol TLS on both sides of a session.
//!
//! Upstream, TLS is asked for with an SSLRequest and the server answers `S` or `N`; the
//! pool's `sslmode` decides what to ask and what to accept, with libpq's meaning:
//! `disable` never asks; `allow` connects in plaintext and asks only on a retry after the
//! server refused plaintext; `prefer` asks and continues in plaintext on `N`; `require`,
//! `verify-ca` and `verify-full` ask and fail on `N`, verifying as the TLS module does.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::codec::{SSL_REQUEST, with_length};
use crate::config::SslMode;
use crate::tls::UpstreamTls;
use crate::upstream::ServerStream;

pub use crate::protocol::ClientStream;

pub use crate::upstream::server_host;

/// Negotiates TLS on a fresh server connection per `tls`'s `sslmode` (plaintext without
/// `upstream_tls`), after sending `preamble` (a PROXY header, or nothing) in clear; `retry`
/// is `allow`'s second attempt, which asks for TLS.
pub async fn secure_server(
    tls: Option<&UpstreamTls>,
    host: &str,
    mut stream: TcpStream,
    preamble: &[u8],
    retry: bool,
) -> io::Result<ServerStream> {
    stream.write_all(preamble).await?;
    let Some(tls) = tls.filter(|tls| tls.mode().asks_for_tls(retry)) else {
        return Ok(Either::Left(stream));
    };
    stream
        .write_all(&with_length(None, &SSL_REQUEST.to_be_bytes()))
        .await?;
    // Exactly one byte: anything the server sent after it before the handshake would be
    // unauthenticated (CVE-2021-23222), so nothing more is read here.
    match stream.read_u8().await? {
        b'S' => tls
            .handshake(stream, host)
            .await
            .map(Either::Right)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("TLS handshake (sslmode={}): {e}", tls.mode().as_str()),
                )
            }),
        b'N' if matches!(tls.mode(), SslMode::Prefer) => Ok(Either::Left(stream)),
        b'N' => Err(io::Error::other(format!(
            "the server does not support TLS (sslmode={})",
            tls.mode().as_str()
        ))),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer {other:#04x} to SSLRequest"),
        )),
    }
}

/// Whether `allow` may retry with TLS after the server refused a plaintext startup.
pub fn retries_with_tls(tls: Option<&UpstreamTls>, stream: &ServerStream) -> bool {
    matches!(stream, Either::Left(_)) && tls.is_some_and(|tls| tls.mode() == SslMode::Allow)
}
