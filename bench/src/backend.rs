//! Backend servers the proxies forward to.
//!
//! [`Backend`] runs in the bench process but on its own tokio runtime (its
//! own worker threads), so the load generator cannot starve it.
//! [`BackendProcess`] runs a backend in a child process (`bench serve-echo`,
//! `bench serve-http-echo`): the `idle` scenario's echo server, so that client
//! and backend file descriptors are spread over two processes, and the `soak`
//! scenario's servers, which it kills with SIGKILL and starts again on the same
//! address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Runtime;

use crate::child::{self, Helper};

/// Listen backlog of every backend socket (the kernel caps it at somaxconn).
const BACKLOG: u32 = 8192;
/// Read/write buffer of echo connections; messages are small.
const ECHO_BUF: usize = 4096;

/// What a backend does with each accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Reads and discards everything, counting the bytes received.
    Sink,
    /// Writes an endless stream of bytes until the peer goes away.
    Source,
    /// Writes back whatever it reads.
    Echo,
    /// HTTP/1.1 keep-alive server for GET requests: `/small` answers a 13-byte body, any
    /// other path a 64 KiB body.
    Http,
    /// HTTP/1.1 and h2c server that answers each request with its own body, `GET /health`
    /// with `ok`, and echoes WebSocket messages (see [`crate::http_echo`]).
    HttpEcho,
}

/// An in-process backend server on a dedicated tokio runtime.
///
/// Dropping it shuts the runtime down and closes all its connections.
pub struct Backend {
    addrs: Vec<SocketAddr>,
    received: Arc<AtomicU64>,
    runtime: Option<Runtime>,
}

impl Backend {
    /// Starts a backend of `kind` on a free 127.0.0.1 port with `threads`
    /// worker threads; `chunk` is the read/write size for sink and source.
    pub fn start(kind: BackendKind, threads: usize, chunk: usize) -> Result<Self> {
        Self::start_multi(kind, threads, chunk, 1)
    }

    /// Like [`Backend::start`] but listening on `ports` free ports, all
    /// served alike (a pool of `ports` servers for the proxies).
    pub fn start_multi(
        kind: BackendKind,
        threads: usize,
        chunk: usize,
        ports: usize,
    ) -> Result<Self> {
        let runtime = child::runtime(threads, &format!("backend-{kind:?}").to_lowercase())?;
        let received = Arc::new(AtomicU64::new(0));
        let mut addrs = Vec::with_capacity(ports);
        for _ in 0..ports.max(1) {
            let listener = {
                let _guard = runtime.enter();
                bind_loopback()?
            };
            addrs.push(listener.local_addr()?);
            runtime.spawn(accept_loop(listener, kind, chunk, received.clone()));
        }
        Ok(Backend {
            addrs,
            received,
            runtime: Some(runtime),
        })
    }

    /// Addresses the backend listens on (at least one).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Total bytes received so far by a [`BackendKind::Sink`] backend.
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Never blocks, so it is safe inside an async context.
            rt.shutdown_background();
        }
    }
}

/// Binds a listener on a free loopback port with a large backlog.
/// Must be called inside a tokio runtime context.
fn bind_loopback() -> Result<TcpListener> {
    bind_at(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Binds a listener on `addr` with a large backlog and `SO_REUSEADDR`, so that a backend
/// killed a moment ago can be started again on its address.
/// Must be called inside a tokio runtime context.
fn bind_at(addr: SocketAddr) -> Result<TcpListener> {
    let socket = TcpSocket::new_v4().context("creating listen socket")?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding backend to {addr}"))?;
    socket.listen(BACKLOG).context("listen")
}

async fn accept_loop(
    listener: TcpListener,
    kind: BackendKind,
    chunk: usize,
    received: Arc<AtomicU64>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let received = received.clone();
                tokio::spawn(async move {
                    // Connection errors (resets when a run ends) are expected.
                    let _ = serve(kind, stream, chunk, &received).await;
                });
            }
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                eprintln!("backend accept error: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve(
    kind: BackendKind,
    mut stream: TcpStream,
    chunk: usize,
    received: &AtomicU64,
) -> std::io::Result<()> {
    match kind {
        BackendKind::Sink => {
            let mut buf = vec![0u8; chunk];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        BackendKind::Source => {
            let buf = vec![0xa5u8; chunk];
            loop {
                stream.write_all(&buf).await?;
            }
        }
        BackendKind::Echo => {
            let mut buf = vec![0u8; ECHO_BUF];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                stream.write_all(&buf[..n]).await?;
            }
        }
        BackendKind::Http => serve_http(stream).await,
        BackendKind::HttpEcho => crate::http_echo::serve(stream).await,
    }
}

/// Size of the large HTTP response body.
pub const HTTP_LARGE: usize = 64 * 1024;

/// The full response to a GET of `path`: 13 bytes for `/small`, else 64 KiB.
fn http_response(path: &[u8]) -> Vec<u8> {
    let body: Vec<u8> = if path == b"/small" {
        b"Hello, world!".to_vec()
    } else {
        vec![b'x'; HTTP_LARGE]
    };
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    response
}

/// Answers body-less requests (what wrk and the proxies send) in order, pipelined or not;
/// a minimal server so that the backend costs little next to the proxy under test.
async fn serve_http(mut stream: TcpStream) -> std::io::Result<()> {
    let (small, large) = (http_response(b"/small"), http_response(b"/large"));
    let mut pending: Vec<u8> = Vec::with_capacity(ECHO_BUF);
    let mut buf = vec![0u8; ECHO_BUF];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
        let mut out = Vec::new();
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let path = pending
                .split(|&b| b == b' ')
                .nth(1)
                .unwrap_or_default()
                .to_vec();
            out.extend_from_slice(if path == b"/small" { &small } else { &large });
            pending.drain(..end + 4);
        }
        stream.write_all(&out).await?;
    }
}

/// Entry point of the hidden `serve-echo` and `serve-http-echo` subcommands.
///
/// Binds a `kind` server on `listen` (a free loopback port when `None`), prints
/// `LISTEN <addr>` on stdout and serves until stdin reaches end-of-file (i.e. the parent
/// bench process closed it or died).
pub fn serve_child_main(
    kind: BackendKind,
    threads: usize,
    listen: Option<SocketAddr>,
) -> Result<()> {
    let runtime = child::runtime(threads, "serve-child")?;
    runtime.block_on(async {
        let listener = match listen {
            Some(addr) => bind_at(addr)?,
            None => bind_loopback()?,
        };
        let addr = listener.local_addr()?;
        tokio::spawn(accept_loop(listener, kind, ECHO_BUF, Arc::default()));
        child::serve(&format!("LISTEN {addr}"), |_| async { String::new() }).await
    })?;
    runtime.shutdown_background();
    Ok(())
}

/// A backend running as a child process (`bench serve-echo` or `bench serve-http-echo`).
pub struct BackendProcess {
    helper: Helper,
    addr: SocketAddr,
}

impl BackendProcess {
    /// Spawns an echo child with `threads` worker threads on a free port and waits until
    /// it reports its listen address.
    pub async fn spawn(threads: usize) -> Result<Self> {
        Self::spawn_kind(BackendKind::Echo, threads, None).await
    }

    /// Spawns a `kind` child ([`BackendKind::Echo`] or [`BackendKind::HttpEcho`]) on
    /// `listen` (a free port when `None`) and waits until it reports its listen address.
    pub async fn spawn_kind(
        kind: BackendKind,
        threads: usize,
        listen: Option<SocketAddr>,
    ) -> Result<Self> {
        let subcommand = match kind {
            BackendKind::Echo => "serve-echo",
            BackendKind::HttpEcho => "serve-http-echo",
            other => bail!("no child process serves {other:?}"),
        };
        let mut args = vec![
            subcommand.to_string(),
            "--backend-threads".to_string(),
            threads.to_string(),
        ];
        if let Some(addr) = listen {
            args.extend(["--serve-listen".to_string(), addr.to_string()]);
        }
        let helper = Helper::spawn(&args, Duration::from_secs(10)).await?;
        let line = helper.ready_line().to_string();
        let Some(addr) = line.trim().strip_prefix("LISTEN ") else {
            bail!("unexpected {subcommand} output {line:?}");
        };
        let addr = addr
            .parse()
            .with_context(|| format!("parsing address {addr:?}"))?;
        Ok(BackendProcess { helper, addr })
    }

    /// Address the child listens on.
    pub fn addrs(&self) -> &[SocketAddr] {
        std::slice::from_ref(&self.addr)
    }

    /// Kills the child with SIGKILL, as a crash would: its connections are reset by the
    /// kernel, nothing is closed in order.
    pub async fn kill(self) -> Result<()> {
        self.helper.kill().await
    }

    /// Stops the child by closing its stdin; kills it if it lingers.
    pub async fn stop(self) -> Result<()> {
        self.helper.stop().await
    }
}
