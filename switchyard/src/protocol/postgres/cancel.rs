//! Query cancellation across the proxy.
//!
//! A client cancels by opening a new connection and sending the BackendKeyData it got at
//! startup. That key must not be the server's: the cancel may arrive on any listener, and
//! the proxy must know which server (and which server key) it stands for. So each session
//! gets a random key of the proxy's own, mapped here to the server's until the session ends.

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

/// Where a proxy-issued key points.
#[derive(Debug, Clone)]
struct Target {
    server: CancelTarget,
    pid: u32,
    key: Vec<u8>,
}

/// The keys issued to clients of every postgres listener of the process.
#[derive(Debug, Default)]
pub struct CancelTable {
    /// `None`: a transaction-mode client between transactions (nothing to cancel).
    keys: Mutex<Keys>,
}

/// Issued keys → what they stand for.
type Keys = HashMap<(u32, Vec<u8>), Option<Target>>;

/// A key issued to one session; removes it from the table when the session ends.
#[derive(Debug)]
pub struct Registration {
    table: Arc<CancelTable>,
    /// The process id the client was given.
    pub pid: u32,
    /// The secret key the client was given.
    pub key: Vec<u8>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table
            .lock()
            .remove(&(self.pid, std::mem::take(&mut self.key)));
    }
}

impl CancelTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Issues a fresh random key (as long as the server's, which the client's protocol
    /// version allows) standing for the server's `pid`/`key` at `server`.
    pub fn register(self: &Arc<Self>, server: CancelTarget, pid: u32, key: &[u8]) -> Registration {
        let target = Target {
            server,
            pid,
            key: key.to_vec(),
        };
        self.issue(Some(target), key.len())
    }

    /// Issues a key of `key_len` bytes that stands for no server yet: a transaction-mode
    /// client points it at each connection it holds ([`CancelTable::retarget`]).
    pub fn register_unbound(self: &Arc<Self>, key_len: usize) -> Registration {
        self.issue(None, key_len)
    }

    /// Points `registration`'s key at the server connection `pid`/`key` on `server`.
    pub fn retarget(
        &self,
        registration: &Registration,
        server: CancelTarget,
        pid: u32,
        key: &[u8],
    ) {
        let target = Target {
            server,
            pid,
            key: key.to_vec(),
        };
        if let Some(slot) = self
            .lock()
            .get_mut(&(registration.pid, registration.key.clone()))
        {
            *slot = Some(target);
        }
    }

    /// Points `registration`'s key at nothing (the client holds no connection).
    pub fn untarget(&self, registration: &Registration) {
        if let Some(slot) = self
            .lock()
            .get_mut(&(registration.pid, registration.key.clone()))
        {
            *slot = None;
        }
    }

    fn issue(self: &Arc<Self>, target: Option<Target>, key_len: usize) -> Registration {
        let mut keys = self.lock();
        loop {
            let our_pid = fastrand::u32(1..i32::MAX as u32);
            let our_key: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
                .take(key_len)
                .collect();
            let entry = (our_pid, our_key.clone());
            if let std::collections::hash_map::Entry::Vacant(slot) = keys.entry(entry) {
                slot.insert(target);
                return Registration {
                    table: self.clone(),
                    pid: our_pid,
                    key: our_key,
                };
            }
        }
    }

    /// Forwards a client's CancelRequest to the server its key stands for. Unknown keys
    /// are dropped silently, as PostgreSQL does, so a guesser learns nothing.
    pub async fn cancel(&self, pid: u32, key: &[u8]) {
        let Some(target) = self.lock().get(&(pid, key.to_vec())).cloned().flatten() else {
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
            (a.pid, &a.key),
            (10, &vec![1, 2, 3, 4]),
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
        let entry = |t: &CancelTable| t.lock().get(&(client.pid, client.key.clone())).cloned();
        assert!(matches!(entry(&table), Some(None)));
        table.retarget(&client, server, 77, &[9; 4]);
        assert!(matches!(entry(&table), Some(Some(Target { pid: 77, .. }))));
        table.untarget(&client);
        assert!(matches!(entry(&table), Some(None)));
    }
}
