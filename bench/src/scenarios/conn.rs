//! Client connections that have done their protocol's first exchange: an echo, one
//! keep-alive `GET /small`, or a PostgreSQL login and `select 1`, plain or over TLS; opened
//! one at a time (probes) or many at once with bounded concurrency and held. Shared by
//! `idle` (memory per held connection) and `hold` (many held while new ones are probed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::connect;

/// Bound on one connect + exchange.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The exchange a connection makes once it is open, and again to show it still works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exchange {
    /// Bytes: `size` bytes echoed.
    Echo {
        /// Message size, bytes (at least 1).
        size: usize,
    },
    /// HTTP/1.1 keep-alive: one `GET /small`, its response read whole.
    HttpGet,
    /// PostgreSQL: a login as `postgres` (trusted) when the connection opens, then one
    /// `select 1`.
    PgSelect,
}

/// How the client side of one connection is opened.
#[derive(Clone)]
pub struct Opener {
    /// What it does once open.
    pub exchange: Exchange,
    /// TLS to the proxy's listener, when it terminates TLS.
    pub tls: Option<tokio_rustls::TlsConnector>,
}

/// One held connection, plain or TLS.
pub trait Held: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Held for T {}

/// Connections opened by [`open_many`] and why the others were not.
pub struct Opened {
    /// The connections, each after its first exchange.
    pub held: Vec<Box<dyn Held>>,
    /// Attempts that failed.
    pub errors: usize,
    /// The first failure, to say why.
    pub first_error: Option<String>,
}

impl Opener {
    /// A plaintext opener.
    pub fn plain(exchange: Exchange) -> Self {
        Opener {
            exchange,
            tls: None,
        }
    }

    /// Opens one connection (with its TLS handshake and, for PostgreSQL, its login) and
    /// does the exchange, all within [`ATTEMPT_TIMEOUT`].
    pub async fn open(&self, addr: SocketAddr) -> Result<Box<dyn Held>> {
        tokio::time::timeout(ATTEMPT_TIMEOUT, async {
            let tcp = connect(addr).await?;
            let mut stream: Box<dyn Held> = match &self.tls {
                Some(connector) => {
                    let name = ServerName::try_from(super::tls::SERVER_NAME)?;
                    Box::new(connector.connect(name, tcp).await?)
                }
                None => Box::new(tcp),
            };
            if self.exchange == Exchange::PgSelect {
                pg_login(&mut stream).await?;
            }
            self.again(&mut stream).await?;
            Ok(stream)
        })
        .await
        .context("connect and exchange timed out")?
    }

    /// Repeats the exchange on an open connection (no new login).
    pub async fn again(&self, stream: &mut Box<dyn Held>) -> Result<()> {
        match self.exchange {
            Exchange::Echo { size } => echo(stream, size.max(1)).await,
            Exchange::HttpGet => http_get(stream).await,
            Exchange::PgSelect => pg_select(stream).await,
        }
    }
}

/// Opens `conns` connections to `addr` with `opener`, `concurrency` at a time; stops
/// opening once `max_errors` attempts have failed (a proxy out of descriptors makes every
/// further attempt wait for its timeout).
pub async fn open_many(
    addr: SocketAddr,
    opener: &Opener,
    conns: usize,
    concurrency: usize,
    max_errors: usize,
) -> Result<Opened> {
    let workers = concurrency.clamp(1, conns.max(1));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let share = conns / workers + usize::from(w < conns % workers);
        let opener = opener.clone();
        let failed = failed.clone();
        tasks.spawn(async move {
            let mut held = Vec::with_capacity(share);
            let mut errors = Vec::new();
            for _ in 0..share {
                if failed.load(Ordering::Relaxed) >= max_errors {
                    break;
                }
                match opener.open(addr).await {
                    Ok(s) => held.push(s),
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{e:#}"));
                    }
                }
            }
            (held, errors)
        });
    }
    let mut opened = Opened {
        held: Vec::with_capacity(conns),
        errors: 0,
        first_error: None,
    };
    while let Some(res) = tasks.join_next().await {
        let (held, errors) = res.context("open task panicked")?;
        opened.held.extend(held);
        opened.errors += errors.len();
        if opened.first_error.is_none() {
            opened.first_error = errors.into_iter().next();
        }
    }
    Ok(opened)
}

async fn echo(stream: &mut Box<dyn Held>, size: usize) -> Result<()> {
    let msg = vec![0x5au8; size];
    let mut buf = vec![0u8; size];
    stream.write_all(&msg).await?;
    stream.read_exact(&mut buf).await.context("echo exchange")?;
    Ok(())
}

/// One keep-alive `GET /small`, its response read whole (headers and the
/// `Content-Length` body); any status but 200 fails with the status line.
pub async fn http_get(stream: &mut Box<dyn Held>) -> Result<()> {
    stream
        .write_all(b"GET /small HTTP/1.1\r\nHost: bench.test\r\n\r\n")
        .await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the response ended");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                bail!("unexpected response: {}", head.lines().next().unwrap_or(""));
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .context("no content-length")?
                .trim()
                .parse()?;
            if buf.len() >= end + 4 + length {
                return Ok(());
            }
        }
    }
}

/// A PostgreSQL StartupMessage (protocol 3.0) for `postgres` on database `postgres`.
pub fn pg_startup() -> Vec<u8> {
    let params = b"user\0postgres\0database\0postgres\0\0";
    let mut startup = Vec::with_capacity(8 + params.len());
    startup.extend_from_slice(&((8 + params.len()) as u32).to_be_bytes());
    startup.extend_from_slice(&196_608u32.to_be_bytes());
    startup.extend_from_slice(params);
    startup
}

/// A PostgreSQL login as `postgres` (trusted), read up to its ReadyForQuery.
async fn pg_login(stream: &mut Box<dyn Held>) -> Result<()> {
    stream.write_all(&pg_startup()).await?;
    pg_until_ready(stream).await.context("login")
}

/// One `select 1`, read up to its ReadyForQuery.
async fn pg_select(stream: &mut Box<dyn Held>) -> Result<()> {
    let sql = b"select 1\0";
    let mut query = vec![b'Q'];
    query.extend_from_slice(&((4 + sql.len()) as u32).to_be_bytes());
    query.extend_from_slice(sql);
    stream.write_all(&query).await?;
    pg_until_ready(stream).await.context("select 1")
}

/// Reads backend messages up to ReadyForQuery; an ErrorResponse fails with its fields
/// (severity, SQLSTATE, message).
async fn pg_until_ready(stream: &mut Box<dyn Held>) -> Result<()> {
    loop {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).await?;
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; length.saturating_sub(4)];
        stream.read_exact(&mut body).await?;
        match header[0] {
            b'Z' => return Ok(()),
            b'E' => bail!("server error: {}", pg_error_fields(&body)),
            _ => {}
        }
    }
}

/// The severity, SQLSTATE and message of an ErrorResponse body, e.g.
/// `FATAL 53300 sorry, too many clients already`.
fn pg_error_fields(body: &[u8]) -> String {
    let mut fields = Vec::new();
    for field in body.split(|&b| b == 0) {
        if let Some((&code, value)) = field.split_first()
            && matches!(code, b'S' | b'C' | b'M')
        {
            fields.push(String::from_utf8_lossy(value).into_owned());
        }
    }
    fields.join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_fields_give_severity_code_and_message() {
        let body = b"SFATAL\0VFATAL\0C53300\0Mtoo many connections\0\0";
        assert_eq!(
            super::pg_error_fields(body),
            "FATAL 53300 too many connections"
        );
    }
}
