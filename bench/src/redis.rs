//! A local `redis-server` (Debian package) for the `resolver` scenario: no persistence, on
//! a free loopback port, killed on drop. The bench speaks the few commands it needs (`PING`,
//! `SET`) in RESP itself rather than carrying a client library.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::sys::free_port;

/// A running `redis-server`.
pub struct Redis {
    /// Where it listens.
    pub addr: SocketAddr,
    _child: Child,
    _dir: tempfile::TempDir,
}

/// One command in RESP: an array of bulk strings.
fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Sends `commands` at once (pipelined) and checks the replies are exactly `expected`.
async fn exchange(addr: SocketAddr, commands: &[u8], expected: &[u8]) -> Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(commands).await?;
    let mut replies = vec![0u8; expected.len()];
    stream.read_exact(&mut replies).await?;
    if replies != expected {
        bail!(
            "redis answered {:?}",
            String::from_utf8_lossy(&replies[..replies.len().min(200)])
        );
    }
    Ok(())
}

impl Redis {
    /// Starts `bin` and waits (up to 10 s) until it answers `PING`.
    pub async fn start(bin: &Path) -> Result<Self> {
        let addr = free_port()?;
        let dir = tempfile::Builder::new()
            .prefix("bench-redis-")
            .tempdir()
            .context("creating temp dir")?;
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(addr.port().to_string())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let redis = Redis {
            addr,
            _child: child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = exchange(addr, &command(&[b"PING"]), b"+PONG\r\n").await {
            if Instant::now() >= deadline {
                return Err(e.context(format!("{} did not answer PING", bin.display())));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(redis)
    }

    /// Sets every `(key, value)`, 1000 per round trip.
    pub async fn set_all(&self, pairs: &[(String, String)]) -> Result<()> {
        for chunk in pairs.chunks(1000) {
            let commands: Vec<u8> = chunk
                .iter()
                .flat_map(|(key, value)| command(&[b"SET", key.as_bytes(), value.as_bytes()]))
                .collect();
            exchange(self.addr, &commands, &b"+OK\r\n".repeat(chunk.len()))
                .await
                .context("writing the answers to redis")?;
        }
        Ok(())
    }
}
