//! Binary upgrade: a `run --upgrade` process takes the listening sockets over from the
//! running one, so that no connection attempt is refused, not even one in an accept queue.
//!
//! Protocol, over the Unix socket named by `upgrade_socket` (every running proxy listens on
//! it):
//! 1. the new process connects; the old one sends one message: a JSON line naming its
//!    listeners (and the admin API) with every listening socket attached (SCM_RIGHTS);
//! 2. the new process reuses the sockets whose name and address match its config, binds the
//!    rest, starts health checks, waits for their first round and starts accepting;
//! 3. it sends `READY`; the old process stops accepting (both hold the same kernel socket,
//!    so queued connections go to the new one), answers `STOPPING` with its counter totals,
//!    drains and exits;
//! 4. the new process then listens on the upgrade socket itself.
//!
//! Servers' operator states (drain, maint) and health travel with the offer, so a drained
//! server stays drained and a down one stays down; listener and server counters travel with
//! `STOPPING` and continue from the old totals (bytes the old process moves while draining
//! are in its own connection log lines, not in the new totals).
//!
//! If the new process fails before `READY`, the old one notices the closed connection and
//! keeps serving unchanged.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::config::Config;
use crate::net::AcceptFailures;
use crate::tally::Carried;
use crate::upstream::Health;
use crate::upstream::{AdminState, Pool, ReplicaLag, Server, ServerRole};

/// Longest wait for the new process's first health-check round before it takes over anyway.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the old process waits for `READY` (the new one may wait `READY_TIMEOUT`).
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// Most sockets one handover carries.
const MAX_SOCKETS: usize = 250;

/// What the old process tells the new one about the sockets attached, in the same order.
#[derive(Debug, Serialize, Deserialize)]
struct Offer {
    listeners: Vec<(String, SocketAddr)>,
    admin: Option<SocketAddr>,
    #[serde(default)]
    servers: Vec<ServerState>,
}

/// A server's operator state and health, for the new process to start from.
#[derive(Debug, Serialize, Deserialize)]
struct ServerState {
    pool: String,
    server: String,
    address: String,
    admin: AdminState,
    health: Health,
    /// Its database role and a replica's lag (absent from an older process's offer).
    #[serde(default)]
    role: ServerRole,
    #[serde(default)]
    lag: Option<ReplicaLag>,
}

/// Counter totals of the old process once it stopped accepting.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Totals {
    /// Per listener: connections, bytes in, bytes out, failed.
    listeners: Vec<(String, [u64; 4])>,
    /// Per pool and server: connections, bytes in, bytes out, connect errors, checks
    /// passed, checks failed.
    servers: Vec<(String, String, [u64; 6])>,
}

impl Totals {
    fn read(shared: &Shared) -> Self {
        let load = |counter: &dyn Carried| counter.value();
        let mut totals = Totals::default();
        for listener in shared.listeners().iter() {
            totals
                .listeners
                .push((listener.name.clone(), listener.stats.cumulative().map(load)));
        }
        for pool in shared.pools().iter() {
            for server in &pool.servers {
                totals.servers.push((
                    pool.name.clone(),
                    server.name.clone(),
                    server.stats.cumulative().map(load),
                ));
            }
        }
        totals
    }

    fn add_to(&self, shared: &Shared) {
        let listeners = shared.listeners();
        for (name, values) in &self.listeners {
            if let Some(listener) = listeners.iter().find(|l| &l.name == name) {
                add_counts(listener.stats.cumulative(), values);
            }
        }
        let pools = shared.pools();
        for (pool, name, values) in &self.servers {
            if let Some(server) = find_server(&pools, pool, name) {
                add_counts(server.stats.cumulative(), values);
            }
        }
    }
}

/// The server `name` of the pool `pool`, if both are in service.
fn find_server<'a>(pools: &'a [Arc<Pool>], pool: &str, name: &str) -> Option<&'a Arc<Server>> {
    pools
        .iter()
        .filter(|p| p.name == pool)
        .flat_map(|p| p.servers.iter())
        .find(|s| s.name == name)
}

/// Adds counter values carried from the old process.
fn add_counts<const N: usize>(counters: [&dyn Carried; N], values: &[u64; N]) {
    for (counter, value) in counters.into_iter().zip(values) {
        counter.carry(*value);
    }
}

/// The upgrade socket of a config: `upgrade_socket` (relative to the config file), or the
/// config file's path plus `.upgrade.sock`, which needs no privileges and differs per config.
pub fn socket_path(config: &Config, config_path: &Path) -> PathBuf {
    match &config.upgrade_socket {
        Some(path) => config_path.parent().unwrap_or(Path::new("")).join(path),
        None => {
            let mut path = config_path.as_os_str().to_owned();
            path.push(".upgrade.sock");
            PathBuf::from(path)
        }
    }
}

/// Sockets received from the old process (none for a plain start) and the link to it.
#[derive(Debug, Default)]
pub struct Inherited {
    listeners: HashMap<String, (SocketAddr, std::net::TcpListener)>,
    admin: Option<(SocketAddr, std::net::TcpListener)>,
    servers: Vec<ServerState>,
    link: Option<UnixStream>,
}

/// True when a socket bound to `actual` serves a config asking for `requested`.
fn serves(requested: SocketAddr, actual: SocketAddr) -> bool {
    requested == actual || (requested.port() == 0 && requested.ip() == actual.ip())
}

impl Inherited {
    /// True when this process takes over from a running one.
    pub fn is_upgrade(&self) -> bool {
        self.link.is_some()
    }

    /// Takes the old process's socket of listener `name` if it is bound where the config asks.
    pub fn take_listener(
        &mut self,
        name: &str,
        requested: SocketAddr,
    ) -> Option<std::net::TcpListener> {
        match self.listeners.remove(name) {
            Some((actual, socket)) if serves(requested, actual) => Some(socket),
            _ => None,
        }
    }

    /// Gives every server the old process also had (same pool, name and address) the
    /// operator state, health and database role it had there.
    pub fn restore_servers(&self, shared: &Shared) {
        let pools = shared.pools();
        for state in &self.servers {
            let server = find_server(&pools, &state.pool, &state.server)
                .filter(|s| s.address.to_string() == state.address);
            if let Some(server) = server {
                server.inherit_state(state.admin, state.health, (state.role, state.lag));
            }
        }
    }

    /// Takes the old process's admin API socket if it is bound where the config asks.
    pub fn take_admin(&mut self, requested: SocketAddr) -> Option<std::net::TcpListener> {
        match self.admin.take() {
            Some((actual, socket)) if serves(requested, actual) => Some(socket),
            _ => None,
        }
    }
}

/// Connects to the running process's upgrade socket and receives its listening sockets.
pub fn receive(path: &Path) -> io::Result<Inherited> {
    let link = UnixStream::connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot reach the running process at {}: {e}",
                path.display()
            ),
        )
    })?;
    link.set_read_timeout(Some(HANDOVER_TIMEOUT))?;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut control = nix::cmsg_space!([RawFd; MAX_SOCKETS]);
    let mut fds = Vec::new();
    let received = {
        let mut parts = [IoSliceMut::new(&mut buffer)];
        let message = recvmsg::<()>(
            link.as_raw_fd(),
            &mut parts,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: the kernel just installed these descriptors in this process for
                // this message; nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        message.bytes
    };
    let mut line = buffer[..received].to_vec();
    if !line.ends_with(b"\n") {
        // The rest of a long offer comes without descriptors.
        let mut reader = BufReader::new(&link);
        reader.read_until(b'\n', &mut line)?;
    }
    let offer: Offer = serde_json::from_slice(&line).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad upgrade offer: {e}"),
        )
    })?;
    let expected = offer.listeners.len() + usize::from(offer.admin.is_some());
    if fds.len() != expected {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "upgrade offer names {expected} sockets but carries {}",
                fds.len()
            ),
        ));
    }
    let mut sockets = fds.into_iter().map(std::net::TcpListener::from);
    let mut inherited = Inherited::default();
    for ((name, address), socket) in offer.listeners.into_iter().zip(&mut sockets) {
        socket.set_nonblocking(true)?;
        inherited.listeners.insert(name, (address, socket));
    }
    if let (Some(address), Some(socket)) = (offer.admin, sockets.next()) {
        socket.set_nonblocking(true)?;
        inherited.admin = Some((address, socket));
    }
    inherited.servers = offer.servers;
    inherited.link = Some(link);
    Ok(inherited)
}

/// In the new process, before its listeners accept: waits (at most `READY_TIMEOUT`) until
/// every health-checked server has had its first check, so that the takeover does not send
/// clients to servers nobody has looked at yet.
pub async fn first_checks(shared: &Shared) {
    let checked = async {
        loop {
            let unchecked = shared.pools().iter().any(|pool| {
                pool.health.is_some()
                    && pool.servers.iter().any(|s| s.health() == Health::Unchecked)
            });
            if !unchecked {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(READY_TIMEOUT, checked).await.is_err() {
        tracing::warn!(timeout = ?READY_TIMEOUT, "upgrade: first health checks not done; taking over anyway");
    }
}

/// In the new process, once its listeners accept: tells the old process to stop accepting
/// and waits for its answer, which carries its counter totals. Sockets inherited but no
/// longer configured are closed here.
pub async fn take_over(inherited: Inherited, shared: &Shared) -> io::Result<()> {
    let Some(link) = inherited.link else {
        return Ok(());
    };
    drop(inherited.listeners);
    drop(inherited.admin);
    let answer = tokio::task::spawn_blocking(move || -> io::Result<String> {
        (&link).write_all(b"READY\n")?;
        let mut answer = String::new();
        BufReader::new(&link).read_line(&mut answer)?;
        Ok(answer)
    })
    .await
    .map_err(io::Error::other)??;
    let Some(totals) = answer.trim().strip_prefix("STOPPING") else {
        return Err(io::Error::other(format!(
            "upgrade: the old process answered {answer:?} instead of STOPPING"
        )));
    };
    match serde_json::from_str::<Totals>(totals.trim()) {
        Ok(totals) => totals.add_to(shared),
        Err(error) => tracing::warn!(%error, "upgrade: counters not carried over"),
    }
    tracing::info!("upgrade: the old process stopped accepting; this one serves now");
    Ok(())
}

/// Listens on the upgrade socket and hands everything over to the first new process that
/// reports ready; then fires `handed_over` and `shared.shutdown` (the normal graceful stop).
/// `admin` is a duplicate of the admin API's socket, `stop_admin` stops its accept loop.
pub async fn serve(
    shared: Arc<Shared>,
    path: PathBuf,
    admin: Option<(SocketAddr, OwnedFd)>,
    stop_admin: CancellationToken,
    handed_over: CancellationToken,
) {
    // A file left by a process that is gone (or that handed over to this one) is stale.
    let _ = std::fs::remove_file(&path);
    let server = match tokio::net::UnixListener::bind(&path) {
        Ok(server) => server,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "no upgrade socket: binary upgrades are unavailable");
            return;
        }
    };
    tracing::info!(path = %path.display(), "upgrade socket listening");
    let failures = AcceptFailures::default();
    loop {
        let link = tokio::select! {
            accepted = server.accept() => match accepted {
                Ok((link, _)) => {
                    failures.succeeded("upgrade socket");
                    link
                }
                Err(error) => {
                    failures.failed("upgrade socket", &error).await;
                    continue;
                }
            },
            () = shared.shutdown.cancelled() => return,
        };
        // No reload may change the listeners while they are handed over.
        let _applied = shared.applied.lock().await;
        tracing::info!("upgrade: a new process asks for the listening sockets");
        match hand_over(&shared, link, admin.as_ref()).await {
            Ok(()) => {
                tracing::info!("upgrade: the new process is ready; stopping");
                stop_admin.cancel();
                handed_over.cancel();
                shared.shutdown.cancel();
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "upgrade failed; this process keeps serving");
            }
        }
    }
}

async fn hand_over(
    shared: &Shared,
    link: tokio::net::UnixStream,
    admin: Option<&(SocketAddr, OwnedFd)>,
) -> io::Result<()> {
    let mut offer = Offer {
        listeners: Vec::new(),
        admin: None,
        servers: Vec::new(),
    };
    let mut fds = Vec::new();
    for listener in shared.listeners().iter() {
        if let Some(fd) = listener.handover_fd() {
            fds.push(fd?);
            offer
                .listeners
                .push((listener.name.clone(), listener.address));
        }
    }
    if let Some((address, fd)) = admin {
        fds.push(fd.try_clone()?);
        offer.admin = Some(*address);
    }
    for pool in shared.pools().iter() {
        for server in &pool.servers {
            offer.servers.push(ServerState {
                pool: pool.name.clone(),
                server: server.name.clone(),
                address: server.address.to_string(),
                admin: server.admin_state(),
                health: server.health(),
                role: server.role(),
                lag: server.replica_lag(),
            });
        }
    }
    let mut line = serde_json::to_vec(&offer).map_err(io::Error::other)?;
    line.push(b'\n');
    let link = link.into_std()?;
    link.set_nonblocking(false)?;
    link.set_read_timeout(Some(HANDOVER_TIMEOUT))?;
    let link = tokio::task::spawn_blocking(move || -> io::Result<UnixStream> {
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let sent = sendmsg::<()>(
            link.as_raw_fd(),
            &[IoSlice::new(&line)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )?;
        (&link).write_all(&line[sent..])?;
        drop(fds);
        let mut answer = String::new();
        BufReader::new(&link).read_line(&mut answer)?;
        if answer.trim() != "READY" {
            return Err(io::Error::other(
                "the new process closed the connection before it was ready",
            ));
        }
        Ok(link)
    })
    .await
    .map_err(io::Error::other)??;
    // Stop accepting before reading the totals, so that every connection this process
    // accepted is counted.
    shared.context.stopping.cancel();
    for listener in shared.listeners().iter() {
        let _ = tokio::time::timeout(Duration::from_secs(1), listener.stopped_accepting()).await;
    }
    let mut answer = b"STOPPING ".to_vec();
    serde_json::to_writer(&mut answer, &Totals::read(shared)).map_err(io::Error::other)?;
    answer.push(b'\n');
    // Past `READY` the new process serves; a lost answer only loses the counters.
    let written = tokio::task::spawn_blocking(move || (&link).write_all(&answer)).await;
    if let Err(error) = written.map_err(io::Error::other).and_then(|w| w) {
        tracing::warn!(%error, "upgrade: could not send the counters to the new process");
    }
    Ok(())
}

/// SIGUSR2: starts `<this program> run --upgrade -c <config>` (like nginx and HAProxy), which
/// takes over once ready; its outcome is logged. The program is named by `argv[0]`, not
/// `/proc/self/exe`, so that a binary replaced on disk starts the new version.
pub fn spawn_successor(config_path: &Path) {
    let program = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or_else(|| PathBuf::from("switchyard"));
    tracing::info!(program = %program.display(), "SIGUSR2: starting the new process");
    let spawned = tokio::process::Command::new(&program)
        .args(["run", "--upgrade", "-c"])
        .arg(config_path)
        .spawn();
    match spawned {
        // Waiting reaps the child if it fails; if it takes over, this process exits first.
        Ok(mut child) => {
            tokio::spawn(async move {
                if let Ok(status) = child.wait().await {
                    tracing::warn!(%status, "upgrade: the new process exited");
                }
            });
        }
        Err(error) => tracing::error!(%error, "upgrade: cannot start the new process"),
    }
}

/// Under systemd (`Type=notify`, `NotifyAccess=all`), reports this process as ready and as
/// the service's main process, so that the unit follows the upgrade to the new process.
pub fn notify_systemd() {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|socket| {
        let bytes = target.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message.as_bytes(), &address)
            }
            None => socket.send_to(message.as_bytes(), &target),
        }
    });
    if let Err(error) = sent {
        tracing::warn!(%error, "cannot notify systemd");
    }
}
