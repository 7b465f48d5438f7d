//! `upstream_tls` on plain TCP pools, where "the server offers TLS" can only mean "a TLS
//! handshake succeeds":
//!
//! - `disable` and `allow`: plaintext. A TCP server gives no in-protocol "TLS please"
//!   answer, and a TLS server accepts a plaintext connection and then waits, so there is
//!   no failure that could trigger `allow`'s TLS retry without replaying client bytes;
//!   `allow` therefore behaves as `disable` on `tcp` pools (PostgreSQL and MySQL pools get
//!   the real retry from their protocol's refusal).
//! - `prefer`: a TLS handshake (unverified); if the server answers with something that is
//!   not TLS, or closes/resets the connection during the handshake, a new plaintext
//!   connection is made. Any other handshake failure (a TLS alert) is an error.
//! - `require`, `verify-ca`, `verify-full`: a TLS handshake or an error that says why.
//!
//! A PROXY header goes first, in clear, on every connection (as HAProxy does).

use std::io;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::{Pool, Server, ServerAddress, connect_server};
use crate::config::SslMode;

/// A server connection, plaintext or TLS (boxed, as `UpstreamTls::handshake` gives it:
/// futures that hold a server connection for a session's life are laid out for both
/// sides, and most connections are plaintext).
pub type ServerStream = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// Turns a fresh connection to `server` into what the pool's `sslmode` asks for, writing
/// `proxy_header` (possibly empty) before any TLS.
pub async fn secure_upstream(
    pool: &Pool,
    server: &Server,
    mut stream: TcpStream,
    proxy_header: &[u8],
) -> io::Result<ServerStream> {
    let tls = match &pool.tls {
        Some(tls) if !matches!(tls.mode(), SslMode::Disable | SslMode::Allow) => tls,
        _ => {
            stream.write_all(proxy_header).await?;
            return Ok(Either::Left(stream));
        }
    };
    let host = server_host(server);
    stream.write_all(proxy_header).await?;
    let handshake = tokio::time::timeout(pool.timeouts.connect, tls.handshake(stream, &host))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timeout"))?;
    match handshake {
        Ok(stream) => Ok(Either::Right(stream)),
        Err(error) if tls.mode() == SslMode::Prefer && not_tls(&error) => {
            tracing::debug!(pool = %pool.name, server = %server.name, %error, "server does not speak TLS; sslmode=prefer falls back to plaintext");
            let (mut stream, _) = connect_server(server, pool).await?;
            stream.write_all(proxy_header).await?;
            Ok(Either::Left(stream))
        }
        Err(error) => Err(io::Error::new(
            error.kind(),
            format!("TLS handshake (sslmode={}): {error}", tls.mode().as_str()),
        )),
    }
}

/// The name a server is verified against (`verify-full`) and sent as SNI, unless the
/// pool's `upstream_tls.sni` overrides it.
pub fn server_host(server: &Server) -> String {
    match &server.address {
        ServerAddress::Ip(addr) => addr.ip().to_string(),
        ServerAddress::Host { host, .. } | ServerAddress::Pinned { host, .. } => host.clone(),
    }
}

/// Whether a handshake failed because the peer does not speak TLS at all.
fn not_tls(error: &io::Error) -> bool {
    if matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    ) {
        return true;
    }
    matches!(
        error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(
            rustls::Error::InvalidMessage(_)
                | rustls::Error::InappropriateMessage { .. }
                | rustls::Error::InappropriateHandshakeMessage { .. }
        )
    )
}
