//! Protocol front ends: what happens on a client connection after accept.

pub mod http;
pub mod mysql;
pub mod postgres;
pub mod smtp;
pub mod split;
pub mod sql;
pub mod tcp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::config::{CheckKind, Config, ListenerConfig, Protocol, ProxyProtocolVersion};
use crate::health::Check;
use crate::listener::{Handler, Listener};
use crate::observe::{AccessLog, ConnectionRecord, Termination};
use crate::proxy_protocol::{self};
use crate::relay::{IdleLimit, RelayCounters, Rewrite, relay, relay_streams};
use crate::tls::Rewind;
use crate::upstream::ServerStream;
use crate::upstream::{Pool, Server};

/// What every connection handler uses from the running proxy.
#[derive(Debug)]
pub struct Context {
    /// Fired when the shutdown timeout runs out: cuts every remaining session.
    pub hard_stop: CancellationToken,
    /// Each worker's child of `hard_stop`, made on first use: see [`Context::hard_stop_here`].
    worker_hard_stops: [OnceLock<CancellationToken>; WORKER_SLOTS],
    /// Fired when a graceful shutdown begins (listeners stop accepting), so protocols with
    /// keep-alive (HTTP) can close idle client connections and finish the rest.
    pub stopping: CancellationToken,
    /// The connection and request log.
    pub access_log: AccessLog,
    /// Usage per tenant.
    pub accounting: Arc<crate::accounting::Accounting>,
}

/// Per-worker slots of [`Context`] (see [`crate::workers::worker_slot`]).
const WORKER_SLOTS: usize = 32;

impl Context {
    /// A context whose stops have not fired.
    pub fn new(access_log: AccessLog, accounting: Arc<crate::accounting::Accounting>) -> Self {
        Self {
            hard_stop: CancellationToken::new(),
            worker_hard_stops: Default::default(),
            stopping: CancellationToken::new(),
            access_log,
            accounting,
        }
    }

    /// The hard stop, for a session that keeps it for its life and waits on it often (a
    /// pooled database client, between and during its transactions): the calling worker's
    /// child of [`Context::hard_stop`], cloned. A session's waits then lock a token only
    /// its worker touches, and holding it costs a pointer, where a child token of the
    /// session's own was an allocation (112 B) per client.
    pub fn hard_stop_here(&self) -> CancellationToken {
        self.worker_hard_stops[crate::workers::worker_slot(WORKER_SLOTS)]
            .get_or_init(|| self.hard_stop.child_token())
            .clone()
    }

    /// Ends a connection: its usage is accounted to its tenant (if it has one) and its
    /// line logged.
    pub fn finish_connection(&self, record: &crate::observe::ConnectionRecord) {
        if let Some(tenant) = &record.tenant {
            self.accounting.tenant(tenant).add_connection(
                record.bytes_in,
                record.bytes_out,
                record.duration_ms,
            );
        }
        self.access_log.log(record);
    }
}

/// Why a database session ended before its relay began (the client was answered in its
/// protocol where it could be).
#[derive(Debug)]
pub struct Refusal {
    /// The reason for the connection log.
    pub reason: Termination,
    /// Detail for the log line.
    pub detail: String,
}

impl Refusal {
    /// A refusal for the log: `reason` names it, `detail` says what happened.
    pub fn new(reason: Termination, detail: impl ToString) -> Self {
        Self {
            reason,
            detail: detail.to_string(),
        }
    }
}

/// The termination a database session ended with: a refusal's reason, counted as a failed
/// connection of the listener and logged (with its detail) unless it is ordinary (the
/// client went away, a cancel request, a bad PROXY header logged where it was read).
pub fn session_termination(
    outcome: Result<Termination, Refusal>,
    listener: &Listener,
    client: SocketAddr,
    protocol: &str,
) -> Termination {
    match outcome {
        Ok(termination) => termination,
        Err(refusal) => {
            if !matches!(
                refusal.reason,
                Termination::ClientClosed | Termination::Cancel | Termination::ProxyHeaderError
            ) {
                listener
                    .stats
                    .failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(listener = %listener.name, %client, reason = %refusal.reason, detail = %refusal.detail, "{protocol} session refused");
            }
            refusal.reason
        }
    }
}

/// The pools in service, by name.
pub type Pools = HashMap<String, Arc<Pool>>;

/// A protocol front end, as the rest of the program sees it: one per protocol, holding
/// what its listeners share across the process (cancel keys, user tables, transaction
/// pools, metrics). Runtime, reload, admin status and metrics and health checks reach a
/// protocol only through this.
pub trait Frontend: Send + Sync + std::fmt::Debug + 'static {
    /// The protocol whose listeners it serves.
    fn protocol(&self) -> Protocol;

    /// Builds the handler of one of its listeners from its config and the pools in
    /// service, at start and at every reload.
    fn handler(&self, listener: &ListenerConfig, pools: &Pools)
    -> Result<Arc<dyn Handler>, String>;

    /// Takes in the process-wide part of a (re)loaded config, before any handler is built
    /// from it; an error refuses the config.
    fn configure(&self, _config: &Config) -> Result<(), String> {
        Ok(())
    }

    /// What it adds to a pool's status in the admin API (e.g. `transaction_pools`).
    fn pool_status(&self, _pool: &str) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }

    /// Registers its metric families for one scrape.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}

    /// The health checks it provides, by kind.
    fn checks(&self) -> Vec<(CheckKind, Arc<dyn Check>)> {
        Vec::new()
    }
}

/// Every protocol of this build.
#[derive(Debug)]
pub struct Registry {
    frontends: Vec<Arc<dyn Frontend>>,
    checks: HashMap<CheckKind, Arc<dyn Check>>,
}

impl Registry {
    /// The front end of every protocol this build serves: the one place a protocol is
    /// registered.
    pub fn new(context: &Arc<Context>) -> Self {
        let frontends: Vec<Arc<dyn Frontend>> = vec![
            Arc::new(tcp::Tcp::new(context)),
            Arc::new(http::Http::new(context)),
            Arc::new(postgres::Postgres::new(context)),
            Arc::new(mysql::Mysql::new(context)),
            Arc::new(smtp::Smtp::new(context)),
        ];
        let mut checks: HashMap<CheckKind, Arc<dyn Check>> = HashMap::new();
        checks.insert(CheckKind::Tcp, Arc::new(crate::health::TcpCheck));
        for frontend in &frontends {
            checks.extend(frontend.checks());
        }
        Self { frontends, checks }
    }

    /// Every front end.
    pub fn frontends(&self) -> &[Arc<dyn Frontend>] {
        &self.frontends
    }

    /// Builds the handler of a listener, by its protocol's front end.
    pub fn handler(
        &self,
        listener: &ListenerConfig,
        pools: &Pools,
    ) -> Result<Arc<dyn Handler>, String> {
        let frontend = self
            .frontends
            .iter()
            .find(|f| f.protocol() == listener.protocol)
            .ok_or_else(|| {
                format!(
                    "protocol `{}` is not available in this build",
                    listener.protocol.as_str()
                )
            })?;
        frontend.handler(listener, pools)
    }

    /// Gives every front end the process-wide part of a (re)loaded config.
    pub fn configure(&self, config: &Config) -> Result<(), String> {
        self.frontends.iter().try_for_each(|f| f.configure(config))
    }

    /// The check of `kind`; a TCP connect for a kind no front end provides.
    pub fn check(&self, kind: CheckKind) -> Arc<dyn Check> {
        match self.checks.get(&kind) {
            Some(check) => check.clone(),
            None => Arc::new(crate::health::TcpCheck),
        }
    }
}

/// Adds bytes a front end moved itself (a PROXY header's payload, a database startup) to
/// the connection's record and to the server's and listener's counters.
pub fn count_bytes(
    record: &mut ConnectionRecord,
    listener: &Listener,
    server: &Server,
    to_server: u64,
    to_client: u64,
) {
    record.bytes_in += to_server;
    record.bytes_out += to_client;
    for counter in [&server.stats.bytes_in, &listener.stats.bytes_in] {
        counter.add(to_server);
    }
    for counter in [&server.stats.bytes_out, &listener.stats.bytes_out] {
        counter.add(to_client);
    }
}

/// Relays an established session until either side ends it, the server's sessions are cut
/// or the proxy's shutdown runs out; counts the bytes and returns the termination.
/// `rewrite` (if any) sees what the client sends.
#[allow(clippy::too_many_arguments)]
pub async fn relay_session(
    context: &Context,
    listener: &Listener,
    server: &Server,
    idle: Option<IdleLimit>,
    client: &TcpStream,
    upstream: &TcpStream,
    record: &mut ConnectionRecord,
    rewrite: Option<&mut dyn Rewrite>,
) -> Termination {
    let cut = server.session_token();
    let outcome = relay(
        client,
        upstream,
        idle,
        &cut,
        &context.hard_stop,
        RelayCounters {
            to_server: &[&server.stats.bytes_in, &listener.stats.bytes_in],
            to_client: &[&server.stats.bytes_out, &listener.stats.bytes_out],
        },
        rewrite,
    )
    .await;
    record.bytes_in += outcome.bytes_in;
    record.bytes_out += outcome.bytes_out;
    outcome.termination
}

/// A database client connection (after any PROXY header, whose trailing bytes it reads
/// first): plaintext, or TLS terminated by the proxy after the protocol's own upgrade.
/// The TLS side is boxed: its state is over a kilobyte, and a plaintext client's future
/// (kept for the client's life) should not carry room for it.
pub type ClientStream =
    Either<Rewind<TcpStream>, Box<tokio_rustls::server::TlsStream<Rewind<TcpStream>>>>;

/// The client's socket under its TLS, if any: for what only the socket knows (its
/// readiness, the address the client reached).
pub fn client_socket(stream: &ClientStream) -> &Rewind<TcpStream> {
    match stream {
        Either::Left(plain) => plain,
        Either::Right(tls) => tls.get_ref().0,
    }
}

/// The address `client` reached: its PROXY header's (`proxied`), else its socket's (a
/// system call, so asked only when a PROXY header goes upstream).
pub fn client_destination(
    proxied: Option<SocketAddr>,
    client: &ClientStream,
    listener: &Listener,
) -> SocketAddr {
    crate::accept::destination(proxied, client_socket(client).get_ref(), listener)
}

/// Ready once a client waiting between messages, with nothing buffered or partly read,
/// has sent something or closed: its socket's readiness (under TLS too, whose reader
/// stopped at the socket for want of bytes).
pub fn poll_stirred(stream: &ClientStream, cx: &mut std::task::Context<'_>) -> Poll<()> {
    let rewind = client_socket(stream);
    if !rewind.buffered().is_empty() {
        return Poll::Ready(());
    }
    rewind.get_ref().poll_read_ready(cx).map(|_| ())
}

/// Relays a logged-in database session whose client and server sides may each be TLS:
/// plaintext on both sides takes the socket-to-socket path of [`relay_session`] (after
/// forwarding client bytes the PROXY header read brought along), anything else the
/// stream relay. `rewrite` (if any) sees what the client sends. Counts the bytes and
/// returns the termination.
#[allow(clippy::too_many_arguments)]
pub async fn relay_database_session(
    context: &Context,
    listener: &Listener,
    server: &Server,
    idle: Option<IdleLimit>,
    client: ClientStream,
    server_stream: ServerStream,
    record: &mut ConnectionRecord,
    rewrite: Option<&mut dyn Rewrite>,
) -> Termination {
    match (client, server_stream) {
        (Either::Left(client), Either::Left(mut server_stream)) => {
            let (early, client) = client.into_parts();
            if !early.is_empty() {
                if server_stream.write_all(&early).await.is_err() {
                    return Termination::ServerError;
                }
                count_bytes(record, listener, server, early.len() as u64, 0);
            }
            relay_session(
                context,
                listener,
                server,
                idle,
                &client,
                &server_stream,
                record,
                rewrite,
            )
            .await
        }
        (client, server_stream) => {
            let cut = server.session_token();
            let counters = RelayCounters {
                to_server: &[&server.stats.bytes_in, &listener.stats.bytes_in],
                to_client: &[&server.stats.bytes_out, &listener.stats.bytes_out],
            };
            let outcome = relay_streams(
                client,
                server_stream,
                idle,
                &cut,
                &context.hard_stop,
                counters,
                rewrite,
            )
            .await;
            record.bytes_in += outcome.bytes_in;
            record.bytes_out += outcome.bytes_out;
            outcome.termination
        }
    }
}

/// The PROXY header a pool sends its servers ahead of the client's bytes (empty without
/// `send_proxy_protocol`); `destination` is only looked up when one is sent, and a v2 header
/// carries the client's TLS facts (`tls`) as TLVs.
pub fn proxy_preamble(
    version: Option<ProxyProtocolVersion>,
    source: SocketAddr,
    destination: impl FnOnce() -> SocketAddr,
    tls: Option<&crate::tls::TlsInfo>,
) -> Vec<u8> {
    match version {
        Some(ProxyProtocolVersion::V1) => proxy_protocol::encode_v1(source, destination()),
        Some(ProxyProtocolVersion::V2) => {
            let tlvs = tls.map(crate::tls::proxy_v2_tlvs).unwrap_or_default();
            proxy_protocol::encode_v2_with_tlvs(source, destination(), &tlvs)
        }
        None => Vec::new(),
    }
}
