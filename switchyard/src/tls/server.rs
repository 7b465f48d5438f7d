//! TLS termination: certificates chosen by SNI, ALPN, mutual TLS, resumption, and
//! certificate reload without touching established connections.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{
    ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache,
    StoresServerSessions, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};

use super::advice::{Judged, explained};
use super::pem::{cert_facts, certified_key, read_certs};
use super::{SUPPORTED_VERSIONS, provider};
use crate::config::{ClientAuth, TlsServerConfig};

/// Sessions remembered for TLS 1.2 session-ID resumption.
const SESSION_CACHE_SIZE: usize = 4096;

/// What the handshake told about the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The server name the client asked for.
    pub sni: Option<String>,
    /// The ALPN protocol agreed on.
    pub alpn: Option<Vec<u8>>,
    /// The verified client certificate (mutual TLS), for headers and PROXY TLVs.
    pub client_cert: Option<ClientIdentity>,
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: Option<String>,
    /// The cipher suite (IANA name, e.g. `TLS13_AES_128_GCM_SHA256`).
    pub cipher: Option<String>,
}

/// Who a verified client certificate names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Subject distinguished name (`CN=alice,O=Example`).
    pub subject: String,
    /// The subject's common name.
    pub common_name: Option<String>,
    /// subjectAltName entries as `DNS:..`, `IP:..`, `email:..`, `URI:..`.
    pub sans: Vec<String>,
}

/// A listener's TLS server side. The rustls config sits behind an `ArcSwap` so a reload
/// changes what new handshakes get, while the ticket key and session cache carry over so
/// that clients keep resuming across reloads.
pub struct ServerTls {
    current: ArcSwap<Current>,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
}

/// What a reload replaces.
struct Current {
    config: Arc<ServerConfig>,
    handshake_timeout: std::time::Duration,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the certificates and builds the server side; relative paths are taken from
    /// `base_dir`.
    pub fn from_config(cfg: &TlsServerConfig, base_dir: &Path) -> Result<Self, String> {
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| format!("cannot make a session ticket key: {e}"))?;
        let sessions: Arc<dyn StoresServerSessions> =
            ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        let config = build(cfg, base_dir, &ticketer, &sessions)?;
        Ok(Self {
            current: ArcSwap::from_pointee(Current {
                config: Arc::new(config),
                handshake_timeout: cfg.handshake_timeout,
            }),
            ticketer,
            sessions,
        })
    }

    /// Re-reads the certificate files (and takes the other settings) for handshakes from
    /// now on; on any error everything in use stays and the error is returned for the log.
    pub fn reload(&self, cfg: &TlsServerConfig, base_dir: &Path) -> Result<(), String> {
        let config = build(cfg, base_dir, &self.ticketer, &self.sessions)?;
        self.current.store(Arc::new(Current {
            config: Arc::new(config),
            handshake_timeout: cfg.handshake_timeout,
        }));
        Ok(())
    }

    /// Runs the server handshake on an accepted stream, bounded by `handshake_timeout`.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
    ) -> io::Result<(tokio_rustls::server::TlsStream<S>, TlsInfo)> {
        let current = self.current.load_full();
        let acceptor = tokio_rustls::TlsAcceptor::from(current.config.clone());
        let tls = tokio::time::timeout(current.handshake_timeout, acceptor.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timeout"))?
            .map_err(|error| explained(error, Judged::Client))?;
        let (_, connection) = tls.get_ref();
        let info = TlsInfo {
            sni: connection.server_name().map(str::to_string),
            alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
            client_cert: connection
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| cert_facts(leaf).ok())
                .map(|facts| ClientIdentity {
                    subject: facts.subject,
                    common_name: facts.common_name,
                    sans: facts.sans,
                }),
            version: connection.protocol_version().map(|v| match v {
                rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
                rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
                other => format!("{other:?}"),
            }),
            cipher: connection.negotiated_cipher_suite().map(|suite| {
                let id = suite.suite();
                id.as_str()
                    .map_or_else(|| format!("{id:?}"), str::to_string)
            }),
        };
        Ok((tls, info))
    }
}

fn build(
    cfg: &TlsServerConfig,
    base_dir: &Path,
    ticketer: &Arc<dyn ProducesTickets>,
    sessions: &Arc<dyn StoresServerSessions>,
) -> Result<ServerConfig, String> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(SUPPORTED_VERSIONS)
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match (&cfg.client_ca, cfg.client_auth) {
        (Some(ca), auth) if auth != ClientAuth::None => {
            let mut roots = RootCertStore::empty();
            let ca = base_dir.join(ca);
            for cert in read_certs(&ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone());
            let verifier = match auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            }
            .build()
            .map_err(|e| format!("client_ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config =
        builder.with_cert_resolver(Arc::new(CertStore::load(cfg, base_dir, &provider)?));
    config.alpn_protocols = cfg.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.ignore_client_order = true;
    config.ticketer = ticketer.clone();
    config.session_storage = sessions.clone();
    Ok(config)
}

/// Certificates by the names they carry: SAN DNS names (or the CN when there is none),
/// exact and `*.wildcard`. The first certificate is the default.
#[derive(Debug)]
struct CertStore {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    strict_sni: bool,
}

impl CertStore {
    fn load(
        cfg: &TlsServerConfig,
        base_dir: &Path,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<Self, String> {
        let mut default = None;
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for pair in &cfg.certs {
            let cert_path = base_dir.join(&pair.cert);
            let key = certified_key(&cert_path, &base_dir.join(&pair.key), provider)?;
            let leaf = key
                .cert
                .first()
                .ok_or_else(|| format!("no certificate in {}", cert_path.display()))?;
            let facts = cert_facts(leaf).map_err(|e| format!("{}: {e}", cert_path.display()))?;
            if facts.expired {
                tracing::warn!(cert = %cert_path.display(), "certificate has expired");
            }
            let names = if facts.dns_names.is_empty() {
                facts
                    .common_name
                    .iter()
                    .map(|cn| cn.to_ascii_lowercase())
                    .collect()
            } else {
                facts.dns_names
            };
            for name in names {
                // The first certificate naming a host keeps it.
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()),
                    None => exact.entry(name),
                }
                .or_insert_with(|| key.clone());
            }
            default.get_or_insert(key);
        }
        let default = default.ok_or("`certs` needs at least one certificate")?;
        Ok(Self {
            default,
            exact,
            wildcard,
            strict_sni: cfg.strict_sni,
        })
    }

    fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        self.exact.get(&name).or_else(|| {
            name.split_once('.')
                .and_then(|(_, parent)| self.wildcard.get(parent))
        })
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            None => Some(self.default.clone()),
            Some(name) => match self.find(name) {
                Some(key) => Some(key.clone()),
                None if self.strict_sni => {
                    tracing::debug!(sni = name, "no certificate for this name (strict_sni)");
                    None
                }
                None => Some(self.default.clone()),
            },
        }
    }
}
