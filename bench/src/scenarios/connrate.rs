//! `connrate`: W concurrent workers, each looping connect -> send one
//! message -> read the echo -> close. Reports completed connections per
//! second and the number of failed attempts. The loop ([`measure`]) takes the exchange
//! done on each connection, so that other scenarios measure their protocol's
//! connection rate with it (`resolver`: one HTTP request per connection).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout};

use super::{Context, progress};
use crate::backend::{Backend, BackendKind};
use crate::table::{Better, Row};
use crate::targets::RunningTarget;

const SCENARIO: &str = "connrate";
/// Bound on one connect + exchange.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of the `connrate` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnrateArgs {
    /// Concurrent workers.
    #[arg(
        id = "connrate-workers",
        long = "connrate-workers",
        value_name = "N",
        default_value_t = 32
    )]
    pub workers: usize,
    /// Measurement window, seconds.
    #[arg(
        id = "connrate-secs",
        long = "connrate-secs",
        value_name = "SECS",
        default_value_t = 12.0
    )]
    pub secs: f64,
    /// Warm-up before the window, seconds (not counted).
    #[arg(
        id = "connrate-warmup-secs",
        long = "connrate-warmup-secs",
        value_name = "SECS",
        default_value_t = 1.0
    )]
    pub warmup_secs: f64,
    /// Message size, bytes.
    #[arg(
        id = "connrate-msg-size",
        long = "connrate-msg-size",
        value_name = "BYTES",
        default_value_t = 64
    )]
    pub msg_size: usize,
    /// Client source addresses 127.0.0.1..=127.0.0.N used in rotation.
    /// Loopback connections to one destination are otherwise limited by
    /// ephemeral-port reuse (TIME_WAIT) to roughly 14k connections/s.
    #[arg(
        id = "connrate-source-ips",
        long = "connrate-source-ips",
        value_name = "N",
        default_value_t = 8
    )]
    pub source_ips: u8,
    /// Backend servers (ports) in the proxy's pool, so that the proxy-to-backend
    /// hop is not limited by port reuse either.
    #[arg(
        id = "connrate-backend-ports",
        long = "connrate-backend-ports",
        value_name = "N",
        default_value_t = 4
    )]
    pub backend_ports: usize,
    /// Upper bound of attempts per worker.
    #[arg(
        id = "connrate-max-attempts",
        long = "connrate-max-attempts",
        value_name = "N",
        default_value_t = 1_000_000
    )]
    pub max_attempts: u64,
}

/// Counts of one worker (or of all, summed).
#[derive(Default)]
pub struct Counts {
    /// Connections whose exchange completed in the window.
    pub ok: u64,
    /// Attempts that failed in the window.
    pub errors: u64,
    /// The first failure, in the window or not.
    pub first_error: Option<String>,
}

/// Runs the scenario on every target of `ctx`.
pub async fn run(ctx: &Context, args: &ConnrateArgs) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let rate_name = format!("{} workers (conn/s)", args.workers);
    let err_name = "errors (count)".to_string();
    for &target in &ctx.targets {
        let backend = Backend::start_multi(
            BackendKind::Echo,
            ctx.backend_threads,
            4096,
            args.backend_ports,
        )?;
        let result = match RunningTarget::start(target, backend.addrs(), &ctx.target_opts).await {
            Ok(running) => {
                progress(format!(
                    "connrate {target}: {} workers, {} backend ports",
                    args.workers,
                    backend.addrs().len()
                ));
                let res = measure(running.addr(), args, echo(args.msg_size.max(1))).await;
                running.stop().await?;
                res
            }
            Err(e) => Err(e),
        };
        match result {
            Ok((rate, counts)) => {
                progress(format!("  -> {rate:.0} conn/s, {} errors", counts.errors));
                rows.push(Row::ok(
                    SCENARIO,
                    rate_name.clone(),
                    target,
                    rate,
                    Better::Higher,
                ));
                let mut err_row = Row::ok(
                    SCENARIO,
                    err_name.clone(),
                    target,
                    counts.errors as f64,
                    Better::Lower,
                );
                if let Some(first) = counts.first_error {
                    err_row = err_row.with_note(format!("{target} connrate, first error: {first}"));
                }
                rows.push(err_row);
            }
            Err(e) => {
                progress(format!("{target}: failed: {e:#}"));
                rows.push(Row::failed(
                    SCENARIO,
                    rate_name.clone(),
                    target,
                    Better::Higher,
                    format!("{e:#}"),
                ));
                rows.push(Row::failed(
                    SCENARIO,
                    err_name.clone(),
                    target,
                    Better::Lower,
                    format!("{e:#}"),
                ));
            }
        }
    }
    Ok(rows)
}

/// What a worker does on each connection it opens, before closing it: any
/// `Fn(TcpStream) -> impl Future<Output = io::Result<()>>` that can be shared.
pub trait Exchange: Clone + Send + Sync + 'static {
    /// Does the exchange on `stream`.
    fn run(&self, stream: TcpStream) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl<F, D> Exchange for F
where
    F: Fn(TcpStream) -> D + Clone + Send + Sync + 'static,
    D: Future<Output = std::io::Result<()>> + Send,
{
    fn run(&self, stream: TcpStream) -> impl Future<Output = std::io::Result<()>> + Send {
        self(stream)
    }
}

/// The echo of `connrate`: write `size` bytes, read them back.
fn echo(size: usize) -> impl Exchange {
    let msg: Arc<[u8]> = vec![0x5au8; size].into();
    move |mut stream: TcpStream| {
        let msg = msg.clone();
        async move {
            stream.write_all(&msg).await?;
            let mut buf = vec![0u8; msg.len()];
            stream.read_exact(&mut buf).await?;
            Ok(())
        }
    }
}

/// Runs `args.workers` workers against `addr`, each opening connections one after the
/// other and doing `exchange` on each; the connections per second of the window.
pub async fn measure(
    addr: SocketAddr,
    args: &ConnrateArgs,
    exchange: impl Exchange,
) -> Result<(f64, Counts)> {
    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(args.warmup_secs);
    let deadline = window_start + Duration::from_secs_f64(args.secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.workers.max(1) {
        let (max, ips) = (args.max_attempts, args.source_ips.max(1));
        let window = (window_start, deadline);
        tasks.spawn(worker(addr, ips, window, max, exchange.clone()));
    }
    let mut total = Counts::default();
    while let Some(res) = tasks.join_next().await {
        let c = res.context("connrate worker panicked")?;
        total.ok += c.ok;
        total.errors += c.errors;
        total.first_error = total.first_error.or(c.first_error);
    }
    let rate = total.ok as f64 / (deadline - window_start).as_secs_f64();
    Ok((rate, total))
}

/// One worker: sequential connection attempts until the window's end or `max_attempts`.
/// Attempts started in the window (its start and end) are counted.
async fn worker(
    addr: SocketAddr,
    source_ips: u8,
    (window_start, deadline): (Instant, Instant),
    max_attempts: u64,
    exchange: impl Exchange,
) -> Counts {
    let mut counts = Counts::default();
    for attempt in 0..max_attempts {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (attempt % u64::from(source_ips)) as u8);
        let started = Instant::now();
        if started >= deadline {
            break;
        }
        let attempt = async {
            let stream = connect_from(source, addr).await?;
            exchange.run(stream).await
        };
        let res = match timeout(ATTEMPT_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "attempt timed out",
            )),
        };
        let counted = started >= window_start;
        match res {
            Ok(()) if counted => counts.ok += 1,
            Ok(()) => {}
            Err(e) => {
                if counted {
                    counts.errors += 1;
                }
                counts.first_error.get_or_insert_with(|| e.to_string());
                // Do not spin on persistent failures (e.g. port exhaustion).
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    counts
}

/// Connects to `addr` from `source` (any port), with `TCP_NODELAY`.
pub(super) async fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if source != Ipv4Addr::LOCALHOST {
        bind_address_no_port(&socket)?;
        socket.bind(SocketAddr::from((source, 0)))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sets `IP_BIND_ADDRESS_NO_PORT`, so that binding a source address defers
/// the port choice to `connect`, which may then reuse a port that is in use
/// towards other destinations.
fn bind_address_no_port(socket: &TcpSocket) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: valid fd owned by `socket`; `one` outlives the call and the
    // length matches its type.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
