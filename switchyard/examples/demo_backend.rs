//! A tiny HTTP backend for the quick start: answers every request with its own name, so
//! you can watch switchyard balance between two of them.
//!
//! Usage: `demo_backend NAME ADDRESS` (e.g. `demo_backend app1 127.0.0.1:9001`).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "backend".into());
    let address = args.next().unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = TcpListener::bind(&address).await?;
    eprintln!("{name} listening on {address}");
    loop {
        let (mut stream, _) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Serve keep-alive requests until the client closes.
            loop {
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let end = request
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .unwrap_or(0)
                    + 4;
                request.drain(..end);
                let body = format!("hello from {name}\n");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}
