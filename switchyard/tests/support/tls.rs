//! TLS test material: a CA made with rcgen, certificates it signs written as PEM files,
//! TLS backends and rustls clients.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::backends::{Backend, echo_io};

/// A certificate and key written as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate PEM.
    pub cert: PathBuf,
    /// The private key PEM.
    pub key: PathBuf,
}

/// A test CA that writes the certificates it signs into a temporary directory.
pub struct Pki {
    /// Where the PEM files are.
    pub dir: tempfile::TempDir,
    /// The CA certificate PEM.
    pub ca: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, issuer.pem()).expect("write CA");
        Pki { dir, ca, issuer }
    }

    /// A certificate with common name `cn` and `sans` (DNS names or IP addresses), written
    /// as `stem.pem` and `stem.key`.
    pub fn issue(&self, stem: &str, cn: &str, sans: &[&str]) -> CertFiles {
        self.issue_with(stem, cn, sans, |_| {})
    }

    /// Like `issue`, with a validity period that ended in 2020.
    pub fn issue_expired(&self, stem: &str, cn: &str, sans: &[&str]) -> CertFiles {
        self.issue_with(stem, cn, sans, |params| {
            params.not_before = date_time_ymd(2019, 1, 1);
            params.not_after = date_time_ymd(2020, 1, 1);
        })
    }

    fn issue_with(
        &self,
        stem: &str,
        cn: &str,
        sans: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> CertFiles {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Switchyard Tests");
        adjust(&mut params);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let files = CertFiles {
            cert: self.dir.path().join(format!("{stem}.pem")),
            key: self.dir.path().join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// A rustls client trusting this CA, optionally presenting `client` and offering `alpn`.
    pub fn client(&self, client: Option<&CertFiles>, alpn: &[&str]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca).expect("read CA") {
            roots.add(cert.expect("CA PEM")).expect("add CA");
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = match client {
            Some(files) => builder
                .with_client_auth_cert(read_chain(&files.cert), read_key(&files.key))
                .expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

fn read_chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("read cert")
        .collect::<Result<_, _>>()
        .expect("cert PEM")
}

fn read_key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).expect("key PEM")
}

/// Connects to `addr` and runs a TLS handshake asking for `server_name` (an IP address
/// sends no SNI).
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_string()).expect("server name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The common name of the certificate the server presented.
pub fn peer_cn(stream: &TlsStream<TcpStream>) -> String {
    let (_, connection) = stream.get_ref();
    let leaf = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("server certificate");
    let facts = switchyard::tls::cert_facts(leaf).expect("parse certificate");
    facts.common_name.unwrap_or_default()
}

/// A TLS backend with `files` that writes `name\n` after the handshake, then echoes.
pub async fn tls_backend(files: &CertFiles, name: &'static str) -> Backend {
    tls_backend_with(files, name, None, &[]).await
}

/// Like `tls_backend`, requiring a client certificate signed by `client_ca` when given and
/// offering `alpn`; after the name it writes `alpn=PROTOCOL` when one was agreed and
/// `client=CN` for the client certificate's common name.
pub async fn tls_backend_with(
    files: &CertFiles,
    name: &'static str,
    client_ca: Option<&Path>,
    alpn: &[&str],
) -> Backend {
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(files, client_ca, alpn));
    Backend::start("127.0.0.1:0", move |stream: TcpStream| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(stream).await else {
                return;
            };
            let (_, connection) = tls.get_ref();
            let mut hello = format!("{name}\n");
            if let Some(alpn) = connection.alpn_protocol() {
                hello.push_str(&format!("alpn={}\n", String::from_utf8_lossy(alpn)));
            }
            if let Some(leaf) = connection.peer_certificates().and_then(|c| c.first()) {
                let facts = switchyard::tls::cert_facts(leaf).expect("client certificate");
                hello.push_str(&format!(
                    "client={}\n",
                    facts.common_name.unwrap_or_default()
                ));
            }
            if tls.write_all(hello.as_bytes()).await.is_ok() {
                echo_io(tls).await;
            }
        }
    })
    .await
}

/// A rustls server config serving `files`, offering `alpn` and, with `client_ca`,
/// requiring client certificates it signs (for TLS servers the tests write themselves).
pub fn server_config(
    files: &CertFiles,
    client_ca: Option<&Path>,
    alpn: &[&str],
) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_chain(ca) {
                roots.add(cert).expect("add CA");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(read_chain(&files.cert), read_key(&files.key))
        .expect("server cert");
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}
