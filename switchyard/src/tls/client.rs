//! TLS to backends with libpq `sslmode` semantics: which verifier each mode gets, and the
//! handshake over an already-connected stream (plain TCP, or a database socket after the
//! server agreed to TLS in its own protocol).

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};

use super::advice::{Judged, explained};
use super::pem::{read_certs, read_key};
use super::{SUPPORTED_VERSIONS, provider};
use crate::config::{SslMode, UpstreamTlsConfig};

/// A pool's client side of TLS.
#[derive(Debug)]
pub struct UpstreamTls {
    mode: SslMode,
    starttls: bool,
    sni: Option<String>,
    config: Arc<ClientConfig>,
}

impl UpstreamTls {
    /// Builds the client side from a pool's `upstream_tls`; relative paths are taken from
    /// `base_dir`.
    pub fn from_config(cfg: &UpstreamTlsConfig, base_dir: &Path) -> Result<Self, String> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(SUPPORTED_VERSIONS)
            .map_err(|e| format!("TLS setup: {e}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = match cfg.sslmode {
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let ca = cfg.root_cert.as_ref().map(|path| base_dir.join(path));
                let webpki = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots(ca.as_deref())?),
                    provider.clone(),
                )
                .build()
                .map_err(|e| format!("root_cert: {e}"))?;
                Arc::new(Verifier {
                    chain: Some(webpki),
                    check_name: cfg.sslmode == SslMode::VerifyFull,
                    provider: provider.clone(),
                })
            }
            _ => Arc::new(Verifier {
                chain: None,
                check_name: false,
                provider: provider.clone(),
            }),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (&cfg.client_cert, &cfg.client_key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    read_certs(&base_dir.join(cert))?,
                    read_key(&base_dir.join(key))?,
                )
                .map_err(|e| format!("client_key does not fit client_cert: {e}"))?,
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = cfg.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(Self {
            mode: cfg.sslmode,
            starttls: cfg.starttls,
            sni: cfg.sni.clone(),
            config: Arc::new(config),
        })
    }

    /// The configured `sslmode`.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Whether TLS starts in the protocol (SMTP's STARTTLS) rather than at the first byte.
    pub fn starttls(&self) -> bool {
        self.starttls
    }

    /// Handshake over an already-connected stream, verifying per `sslmode`: `require`
    /// (and `allow`/`prefer`) encrypt without verifying, `verify-ca` checks the chain,
    /// `verify-full` the chain and the name (`sni`, else `server_host`, DNS or IP).
    /// The stream comes boxed: a client connection's state is about 1.1 KB, and the
    /// server streams that hold it (`upstream::ServerStream`, MySQL's login stream) are
    /// laid out in futures kept for a session's life, plaintext ones included.
    pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        server_host: &str,
    ) -> io::Result<Box<tokio_rustls::client::TlsStream<S>>> {
        let host = self.sni.as_deref().unwrap_or(server_host);
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("server name `{host}`: {e}"),
                )
            })?
            .to_owned();
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
            .map(Box::new)
            .map_err(|error| explained(error, Judged::Server))
    }
}

/// A client config for HTTPS endpoints the proxy calls itself (webhooks, the usage sink):
/// servers verified by name against the CAs of `ca`, else the Mozilla roots, as
/// `verify-full` does for pools.
pub fn https_client(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(SUPPORTED_VERSIONS)
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CAs of the PEM file `ca`, else the Mozilla roots.
fn roots(ca: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in read_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// One verifier for every mode: the chain check when `chain` is set (webpki checks the name
/// last, so a name mismatch after a good chain is accepted unless `check_name`), and the
/// handshake signatures always — an unverified server must still hold its key.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
