//! `tls`: TLS termination. Full handshakes per second (no session reuse), resumed
//! handshakes per second (TLS 1.3 tickets), and download throughput over TLS, each through
//! switchyard and HAProxy terminating TLS with the same ECDSA P-256 certificate. The direct
//! target has no TLS and is skipped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::{Instant, timeout};

use super::{Context, connect, progress};
use crate::backend::{Backend, BackendKind};
use crate::table::{Better, Row};
use crate::targets::{RunningTarget, TargetKind, TlsFiles};

const SCENARIO: &str = "tls";
/// Bound on one connect + handshake + exchange.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The name in the benchmark certificate.
pub(super) const SERVER_NAME: &str = "bench.test";

/// Options of the `tls` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct TlsArgs {
    /// Concurrent handshake workers.
    #[arg(
        id = "tls-workers",
        long = "tls-workers",
        value_name = "N",
        default_value_t = 32
    )]
    pub workers: usize,
    /// Measurement window of each measure, seconds.
    #[arg(
        id = "tls-secs",
        long = "tls-secs",
        value_name = "SECS",
        default_value_t = 8.0
    )]
    pub secs: f64,
    /// Parallel connections of the throughput measure.
    #[arg(
        id = "tls-conns",
        long = "tls-conns",
        value_name = "N",
        default_value_t = 4
    )]
    pub conns: usize,
}

/// Runs the scenario on every proxy target of `ctx`.
pub async fn run(ctx: &Context, args: &TlsArgs) -> Result<Vec<Row>> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let (files, client) = certificate(dir.path())?;
    let mut opts = ctx.target_opts.clone();
    opts.tls = Some(files);
    let mut rows = Vec::new();
    let measures = [
        (
            format!("{} workers full (handshakes/s)", args.workers),
            Measure::Full,
        ),
        (
            format!("{} workers resumed (handshakes/s)", args.workers),
            Measure::Resumed,
        ),
        (
            format!("{} conns download (Gb/s)", args.conns),
            Measure::Download,
        ),
    ];
    for &target in ctx.targets.iter().filter(|t| **t != TargetKind::Direct) {
        for (name, measure) in &measures {
            let kind = match measure {
                Measure::Download => BackendKind::Source,
                _ => BackendKind::Echo,
            };
            let backend = Backend::start(kind, ctx.backend_threads, 64 * 1024)?;
            let result = async {
                let running = RunningTarget::start(target, backend.addrs(), &opts).await?;
                progress(format!("tls {target}: {name}"));
                let value = match measure {
                    Measure::Download => download(running.addr(), &client, args).await,
                    _ => handshakes(running.addr(), &client, *measure, args).await,
                };
                running.stop().await?;
                value
            }
            .await;
            rows.push(match result {
                Ok(value) => {
                    progress(format!("  -> {value:.2}"));
                    Row::ok(SCENARIO, name.clone(), target, value, Better::Higher)
                }
                Err(e) => Row::failed(
                    SCENARIO,
                    name.clone(),
                    target,
                    Better::Higher,
                    format!("{e:#}"),
                ),
            });
        }
    }
    Ok(rows)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Measure {
    Full,
    Resumed,
    Download,
}

/// Writes a self-signed ECDSA certificate for [`SERVER_NAME`]; returns the files and a
/// client config trusting it.
pub(super) fn certificate(dir: &std::path::Path) -> Result<(TlsFiles, ClientConfig)> {
    let key = rcgen::KeyPair::generate().context("key")?;
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?.self_signed(&key)?;
    let files = TlsFiles {
        cert: dir.join("bench.pem"),
        key: dir.join("bench.key"),
        combined: dir.join("bench-combined.pem"),
    };
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    std::fs::write(
        &files.combined,
        format!("{}{}", cert.pem(), key.serialize_pem()),
    )?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone())?;
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok((files, client))
}

/// Connect, handshake, one 64-byte echo, close, in a loop on each worker; returns completed
/// handshakes per second. `Resumed` shares one session store per worker, so every
/// connection after its first resumes; `Full` disables resumption.
async fn handshakes(
    addr: SocketAddr,
    client: &ClientConfig,
    measure: Measure,
    args: &TlsArgs,
) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs_f64(args.secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.workers.max(1) {
        let mut config = client.clone();
        if measure == Measure::Full {
            config.resumption = Resumption::disabled();
        } else {
            config.resumption = Resumption::in_memory_sessions(64);
        }
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        tasks.spawn(async move {
            let mut done = 0u64;
            let mut first_error = None;
            while Instant::now() < deadline {
                match timeout(ATTEMPT_TIMEOUT, exchange(addr, &connector)).await {
                    Ok(Ok(())) => done += 1,
                    Ok(Err(e)) => {
                        first_error.get_or_insert(e);
                    }
                    Err(_) => {
                        first_error.get_or_insert(anyhow::anyhow!("attempt timed out"));
                    }
                }
                if let (Some(_), 0) = (&first_error, done) {
                    break;
                }
            }
            (done, first_error)
        });
    }
    let mut total = 0;
    while let Some(result) = tasks.join_next().await {
        let (done, error) = result.context("worker panicked")?;
        if done == 0
            && let Some(error) = error
        {
            return Err(error);
        }
        total += done;
    }
    Ok(total as f64 / args.secs)
}

async fn exchange(addr: SocketAddr, connector: &tokio_rustls::TlsConnector) -> Result<()> {
    let tcp = connect(addr).await?;
    let name = ServerName::try_from(SERVER_NAME)?;
    let mut tls = connector.connect(name, tcp).await?;
    let message = [0x5au8; 64];
    let mut back = [0u8; 64];
    tls.write_all(&message).await?;
    tls.read_exact(&mut back).await?;
    Ok(())
}

/// `conns` connections reading an endless stream over TLS for `secs`; returns Gb/s.
async fn download(addr: SocketAddr, client: &ClientConfig, args: &TlsArgs) -> Result<f64> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client.clone()));
    let deadline = Instant::now() + Duration::from_secs_f64(args.secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.conns.max(1) {
        let connector = connector.clone();
        tasks.spawn(async move {
            let tcp = connect(addr).await?;
            let mut tls = connector
                .connect(ServerName::try_from(SERVER_NAME)?, tcp)
                .await?;
            let mut buffer = vec![0u8; 256 * 1024];
            let mut received = 0u64;
            while let Ok(read) = tokio::time::timeout_at(deadline, tls.read(&mut buffer)).await {
                match read? {
                    0 => break,
                    n => received += n as u64,
                }
            }
            anyhow::Ok(received)
        });
    }
    let mut total = 0;
    while let Some(result) = tasks.join_next().await {
        total += result.context("reader panicked")??;
    }
    Ok(total as f64 * 8.0 / 1e9 / args.secs)
}
