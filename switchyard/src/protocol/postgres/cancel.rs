//! Query cancellation across the proxy.
//!
//! A client cancels by opening a new connection and sending the BackendKeyData it got at
//! startup. That key must not be the server's: the cancel may arrive on any listener, and
//! the proxy must know which server (and which server key) it stands for. So each session
//! gets a random key of the proxy's own, mapped here to the server's until the session ends.
//!
//! A transaction-mode client points its key at each connection it holds, twice per
//! transaction; its [`Registration`] holds its entry's binding so that costs no table
//! lock, no key lookup and no allocation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::codec::encode_cancel;
use super::tls::secure_server;
use crate::tls::UpstreamTls;

/// The server a session's cancel requests go to, and how to reach it.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// The address the session's server connection went to.
    pub server: SocketAddr,
    /// Time allowed to connect (the pool's connect timeout).
    pub connect_timeout: Duration,
    /// The pool's TLS: a cancel goes over TLS when the session's server wants it.
    pub tls: Option<Arc<UpstreamTls>>,
    /// The name the server's certificate is verified against.
    pub host: String,
    /// The session's PROXY header, when the pool sends one.
    pub preamble: Vec<u8>,
}

/// A server connection's cancel key and where to send it; made once per connection and
/// shared by every key pointed at it.
#[derive(Debug)]
pub struct ServerKey {
    server: CancelTarget,
    pid: u32,
    key: Vec<u8>,
}

impl ServerKey {
    /// The key `pid`/`key` the server at `server` gave a connection.
    pub fn new(server: CancelTarget, pid: u32, key: Vec<u8>) -> Self {
        Self { server, pid, key }
    }
}

/// What an issued key stands for now; `None`: a transaction-mode client between
/// transactions (nothing to cancel). A lock, not an `ArcSwap`: the client's own worker
/// points it twice per transaction and a cancel request reads it seldom, so it is never
/// contended, and a store to an `ArcSwap` walks every thread's debt list.
#[derive(Debug, Default)]
struct Binding(Mutex<Option<Arc<ServerKey>>>);

impl Binding {
    fn new(target: Option<Arc<ServerKey>>) -> Self {
        Self(Mutex::new(target))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<ServerKey>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the key stands for now.
    fn load_full(&self) -> Option<Arc<ServerKey>> {
        self.lock().clone()
    }

    /// Points the key at `target`.
    fn store(&self, target: Option<Arc<ServerKey>>) {
        *self.lock() = target;
    }
}

/// The keys issued to clients of every postgres listener of the process.
#[derive(Debug, Default)]
pub struct CancelTable {
    keys: Mutex<Keys>,
}

/// Issued keys → what they stand for. Hashed with foldhash, seeded per process: SipHash
/// cost more than the rest of the registration, and the keys are the proxy's own random
/// ones (a client can only look one up).
type Keys = HashMap<(u32, Vec<u8>), Arc<Binding>, foldhash::fast::RandomState>;

/// A key issued to one session; removes it from the table when the session ends.
#[derive(Debug)]
pub struct Registration {
    table: Arc<CancelTable>,
    binding: Arc<Binding>,
    /// The process id the client was given.
    pub pid: u32,
    /// The secret key the client was given (a boxed slice: kept for the session's life).
    pub key: Box<[u8]>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table
            .lock()
            .remove(&(self.pid, std::mem::take(&mut self.key).into_vec()));
    }
}

impl Registration {
    /// Points the key at `server` (the connection a transaction-mode client now holds).
    pub fn retarget(&self, server: &Arc<ServerKey>) {
        self.binding.store(Some(server.clone()));
    }

    /// Points the key at nothing (the client holds no connection).
    pub fn untarget(&self) {
        self.binding.store(None);
    }
}

impl CancelTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Issues a fresh random key (as long as the server's, which the client's protocol
    /// version allows) standing for the server's `pid`/`key` at `server`.
    pub fn register(self: &Arc<Self>, server: CancelTarget, pid: u32, key: &[u8]) -> Registration {
        let target = ServerKey::new(server, pid, key.to_vec());
        self.issue(Some(Arc::new(target)), key.len())
    }

    /// Issues a key of `key_len` bytes that stands for no server yet: a transaction-mode
    /// client points it at each connection it holds ([`Registration::retarget`]).
    pub fn register_unbound(self: &Arc<Self>, key_len: usize) -> Registration {
        self.issue(None, key_len)
    }

    fn issue(self: &Arc<Self>, target: Option<Arc<ServerKey>>, key_len: usize) -> Registration {
        let mut keys = self.lock();
        loop {
            let our_pid = fastrand::u32(1..i32::MAX as u32);
            let our_key: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
                .take(key_len)
                .collect();
            let entry = (our_pid, our_key.clone());
            if let std::collections::hash_map::Entry::Vacant(slot) = keys.entry(entry) {
                let binding = Arc::new(Binding::new(target));
                slot.insert(binding.clone());
                return Registration {
                    table: self.clone(),
                    binding,
                    pid: our_pid,
                    key: our_key.into_boxed_slice(),
                };
            }
        }
    }

    /// Forwards a client's CancelRequest to the server its key stands for. Unknown keys
    /// are dropped silently, as PostgreSQL does, so a guesser learns nothing.
    pub async fn cancel(&self, pid: u32, key: &[u8]) {
        let binding = self.lock().get(&(pid, key.to_vec())).cloned();
        let Some(target) = binding.and_then(|binding| binding.load_full()) else {
            tracing::debug!(
                pid,
                "cancel request with an unknown key, or for no running query"
            );
            return;
        };
        let server = &target.server;
        let send = async {
            let stream = TcpStream::connect(server.server).await?;
            let mut stream = secure_server(
                server.tls.as_deref(),
                &server.host,
                stream,
                &server.preamble,
                false,
            )
            .await?;
            stream
                .write_all(&encode_cancel(target.pid, &target.key))
                .await?;
            stream.shutdown().await
        };
        match tokio::time::timeout(server.connect_timeout, send).await {
            Ok(Ok(())) => {
                tracing::debug!(server = %server.server, pid = target.pid, "cancel forwarded")
            }
            Ok(Err(error)) => {
                tracing::warn!(server = %server.server, %error, "cancel forward failed")
            }
            Err(_) => tracing::warn!(server = %server.server, "cancel forward timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local_server() -> CancelTarget {
        CancelTarget {
            server: SocketAddr::from(([127, 0, 0, 1], 5432)),
            connect_timeout: Duration::from_secs(1),
            tls: None,
            host: "127.0.0.1".into(),
            preamble: Vec::new(),
        }
    }

    #[test]
    fn keys_are_issued_and_removed_with_the_session() {
        let table = Arc::new(CancelTable::default());
        let server = local_server();
        let a = table.register(server.clone(), 10, &[1, 2, 3, 4]);
        let b = table.register(server, 11, &[5; 32]);
        assert_eq!(a.key.len(), 4);
        assert_eq!(b.key.len(), 32, "as long as the server's key");
        assert_ne!(
            (a.pid, &a.key[..]),
            (10, &[1, 2, 3, 4][..]),
            "not the server's key"
        );
        assert_eq!(table.lock().len(), 2);
        drop(a);
        assert_eq!(table.lock().len(), 1);
        drop(b);
        assert!(table.lock().is_empty());
    }

    #[test]
    fn an_unbound_key_follows_the_connection_its_client_holds() {
        let table = Arc::new(CancelTable::default());
        let server = local_server();
        let client = table.register_unbound(4);
        let entry = |t: &CancelTable| {
            let binding = t.lock().get(&(client.pid, client.key.to_vec())).cloned();
            binding.map(|binding| binding.load_full().map(|target| target.pid))
        };
        assert_eq!(entry(&table), Some(None));
        let held = Arc::new(ServerKey::new(server, 77, vec![9; 4]));
        client.retarget(&held);
        assert_eq!(entry(&table), Some(Some(77)));
        client.untarget();
        assert_eq!(entry(&table), Some(None));
    }
}
