//! The accept stage every protocol shares: what happens to a connection between the
//! accept and the first byte its protocol reads. A listener with `proxy_protocol` reads the
//! PROXY header (the real client, and the address it reached); a `tls_passthrough`
//! listener reads the TLS ClientHello for its server name; a listener that terminates TLS
//! at the start does the handshake. Every failure is counted on the listener, logged once
//! and named, so no protocol reads these its own way. Protocols that upgrade to TLS inside
//! their own conversation (PostgreSQL's SSLRequest) use the listener's certificates
//! through [`ListenerSettings::tls`] when their client asks.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::listener::{Listener, ListenerSettings};
use crate::observe::Termination;
use crate::proxy_protocol::{self, ProxyHeader};
use crate::tls::{Rewind, ServerTls, TlsInfo, read_client_hello};

/// A client connection after its prelude, ready for its protocol.
#[derive(Debug)]
pub struct Opened {
    /// The client's socket.
    pub stream: TcpStream,
    /// The client: from the PROXY header when there is one, else the peer.
    pub client: SocketAddr,
    /// The address the client reached, as the PROXY header said (`None` without one, or
    /// for a LOCAL header).
    pub proxied_destination: Option<SocketAddr>,
    /// Client bytes already read (past the PROXY header, or the ClientHello read for its
    /// server name), which the protocol must see first.
    pub early: Bytes,
}

/// A client's TLS connection terminated by the listener.
pub type TlsClient = tokio_rustls::server::TlsStream<Rewind<TcpStream>>;

/// A client's stream once the accept stage is done: plaintext, or TLS the listener
/// terminated (boxed, so that plaintext connections are not sized by TLS state).
pub type ClientStream = Either<TcpStream, Box<TlsClient>>;

/// Reads the PROXY header a listener with `proxy_protocol` requires.
pub async fn open(
    listener: &Listener,
    settings: &ListenerSettings,
    stream: TcpStream,
    peer: SocketAddr,
) -> Result<Opened, Termination> {
    let mut opened = Opened {
        stream,
        client: peer,
        proxied_destination: None,
        early: Bytes::new(),
    };
    if settings.config.proxy_protocol.is_none() {
        return Ok(opened);
    }
    let timeout = settings.config.timeouts.proxy_header;
    // Boxed: the header's read buffer and timer are needed only until the header is read.
    match Box::pin(proxy_protocol::read_header(&mut opened.stream, timeout)).await {
        Ok((header, early)) => {
            if let ProxyHeader::Proxied(addresses) = header {
                opened.client = addresses.source;
                opened.proxied_destination = Some(addresses.destination);
            }
            opened.early = early;
            Ok(opened)
        }
        Err(error) => {
            listener.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(listener = %listener.name, client = %peer, %error, "bad PROXY protocol header");
            Err(Termination::ProxyHeaderError)
        }
    }
}

impl Opened {
    /// The address the client reached: the PROXY header's, else the socket's (a system
    /// call: a front end that needs it only for a PROXY header sent upstream keeps
    /// `proxied_destination` and asks [`destination`] then).
    pub fn destination(&self, listener: &Listener) -> SocketAddr {
        destination(self.proxied_destination, &self.stream, listener)
    }

    /// Reads the TLS ClientHello without terminating (`tls_passthrough`): its server
    /// name, with its bytes kept in `early` for the server.
    pub async fn read_server_name(
        &mut self,
        listener: &Listener,
    ) -> Result<Option<String>, Termination> {
        let early = std::mem::take(&mut self.early);
        match Box::pin(read_client_hello(&mut self.stream, early)).await {
            Ok((sni, bytes)) => {
                self.early = bytes;
                Ok(sni)
            }
            Err(error) => {
                listener.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(listener = %listener.name, client = %self.client, %error, "no TLS ClientHello");
                Err(Termination::ClientHelloError)
            }
        }
    }

    /// The TLS handshake with the listener's certificates, for listeners that terminate
    /// TLS at the start.
    pub async fn terminate_tls(
        self,
        listener: &Listener,
        tls: &ServerTls,
    ) -> Result<(Box<TlsClient>, TlsInfo), Termination> {
        let client = self.client;
        // TLS state lives on the heap so that plaintext connections do not carry its size
        // in their task.
        match Box::pin(tls.accept(self.into_rewind())).await {
            Ok((stream, info)) => Ok((Box::new(stream), info)),
            Err(error) => {
                listener.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(listener = %listener.name, %client, %error, "TLS handshake failed");
                Err(Termination::TlsHandshakeFailed)
            }
        }
    }

    /// The client's stream for its protocol: TLS terminated when the listener has `tls`,
    /// with what the handshake told, and the bytes already read (none after a handshake:
    /// they were part of it).
    pub async fn into_client_stream(
        self,
        listener: &Listener,
        settings: &ListenerSettings,
    ) -> Result<(ClientStream, Option<TlsInfo>, Bytes), Termination> {
        match &settings.tls {
            Some(tls) => {
                let (stream, info) = self.terminate_tls(listener, tls).await?;
                Ok((Either::Right(stream), Some(info), Bytes::new()))
            }
            None => Ok((Either::Left(self.stream), None, self.early)),
        }
    }

    /// The stream with the early bytes in front, for a protocol that reads it itself.
    pub fn into_rewind(self) -> Rewind<TcpStream> {
        Rewind::new(self.early, self.stream)
    }
}

/// The address the client reached: `proxied` (a PROXY header's), else `socket`'s local
/// address, else the listener's.
pub fn destination(
    proxied: Option<SocketAddr>,
    socket: &TcpStream,
    listener: &Listener,
) -> SocketAddr {
    proxied
        .or_else(|| socket.local_addr().ok())
        .unwrap_or(listener.address)
}
