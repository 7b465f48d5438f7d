//! In-test backends: real sockets, small behaviours.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A TCP backend; stops (closing its listening socket) when dropped.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Listens on `addr` (use port 0 for any) and runs `serve` for each connection.
    pub async fn start<F, Fut>(addr: &str, serve: F) -> Backend
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let serve = Arc::new(serve);
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let serve = serve.clone();
                tokio::spawn(async move { serve(stream).await });
            }
        });
        Backend {
            addr,
            accepted,
            task,
        }
    }

    /// Echoes everything back; half-closes when the client does.
    pub async fn echo() -> Backend {
        Self::start("127.0.0.1:0", echo).await
    }

    /// Writes `name\n` on connect, then echoes.
    pub async fn named(name: &'static str) -> Backend {
        Self::named_on("127.0.0.1:0", name, CancellationToken::new()).await
    }

    /// Listens on a fixed address (to restart a "killed" backend on the same port).
    pub async fn named_at(addr: SocketAddr, name: &'static str) -> Backend {
        Self::named_on(&addr.to_string(), name, CancellationToken::new()).await
    }

    /// Like `named_at`, and every connection is closed when `cut` is cancelled: what
    /// killing a backend process does to its sessions (dropping a `Backend` only closes
    /// its listening socket).
    pub async fn named_until(
        addr: SocketAddr,
        name: &'static str,
        cut: CancellationToken,
    ) -> Backend {
        Self::named_on(&addr.to_string(), name, cut).await
    }

    /// The one body behind `named`, `named_at` and `named_until`.
    async fn named_on(addr: &str, name: &'static str, cut: CancellationToken) -> Backend {
        Self::start(addr, move |mut stream: TcpStream| {
            let cut = cut.clone();
            async move {
                let serve = async {
                    let _ = stream.write_all(format!("{name}\n").as_bytes()).await;
                    echo(stream).await;
                };
                tokio::select! {
                    () = cut.cancelled() => {}
                    () = serve => {}
                }
            }
        })
        .await
    }

    /// An HTTP/1.1 server answering any request with 200 while `healthy` is true, else 503,
    /// then closing the connection.
    pub async fn http_health(healthy: Arc<AtomicBool>) -> Backend {
        Self::http_status(move || health_status(&healthy)).await
    }

    /// An HTTP/1.1 server answering each request with the status line `status()` returns
    /// at that moment (e.g. `"200 OK"`), then closing the connection. For health-check
    /// targets whose verdict a test steers.
    pub async fn http_status<F>(status: F) -> Backend
    where
        F: Fn() -> &'static str + Send + Sync + 'static,
    {
        let status = Arc::new(status);
        Self::start("127.0.0.1:0", move |mut stream: TcpStream| {
            let status = status.clone();
            async move {
                let mut request = Vec::new();
                if read_request_head(&mut stream, &mut request).await {
                    respond(&mut stream, status()).await;
                }
            }
        })
        .await
    }
}

/// `"200 OK"` while `healthy` is set, else `"503 Service Unavailable"`: the answer of a
/// health endpoint a test can switch off and on.
pub fn health_status(healthy: &AtomicBool) -> &'static str {
    if healthy.load(Ordering::SeqCst) {
        "200 OK"
    } else {
        "503 Service Unavailable"
    }
}

/// Reads into `received` (which may already hold the start of it) until it holds a whole
/// HTTP request head; false if the peer closed or failed first. Shared by the HTTP backends.
pub async fn read_request_head(stream: &mut TcpStream, received: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 1024];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Writes an empty HTTP/1.1 response with `status` and `connection: close`; errors are
/// ignored (the checker may be gone). Shared by the HTTP backends.
pub async fn respond(stream: &mut TcpStream, status: &str) {
    let _ = stream
        .write_all(
            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
}

/// Echo loop used by several backends.
pub async fn echo(stream: TcpStream) {
    echo_io(stream).await;
}

/// The echo loop over any stream (TLS backends too).
pub async fn echo_io<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = stream.shutdown().await;
                return;
            }
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Connects to `addr` and reads the first line (a named backend's name).
pub async fn first_line(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect to proxy");
    read_line(&mut stream).await
}

/// Opens a connection and keeps it; returns it with the name of the (named) server it
/// reached.
pub async fn hold(front: SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(front).await.expect("connect to proxy");
    let name = read_line(&mut stream).await;
    (stream, name)
}

/// Reads one `\n`-terminated line.
pub async fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}
