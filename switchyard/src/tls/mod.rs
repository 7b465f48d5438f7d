//! TLS for every protocol, on rustls: termination (certificates by SNI, ALPN, mutual TLS,
//! resumption, reload) and origination to backends with libpq `sslmode` semantics.
//!
//! Only TLS 1.2 and 1.3 with forward-secret (ECDHE) suites are offered, in the server's
//! order. Protocols call [`ServerTls::accept`] on an accepted stream and
//! [`UpstreamTls::handshake`] on a server stream once TLS is agreed.

mod client;
mod pem;
mod rewind;
mod server;
mod upstream;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

use crate::config::load::ErrorSink;
use crate::config::{ClientAuth, Config};
use crate::key_path;

pub use client::UpstreamTls;
pub use pem::{CertFacts, cert_facts};
pub use rewind::Rewind;
pub use server::{ClientIdentity, ServerTls, TlsInfo};
pub use upstream::{ServerStream, secure_upstream};

/// TLS 1.0 and 1.1 are refused.
const SUPPORTED_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The ring provider, keeping only forward-secret suites (every TLS 1.3 suite, ECDHE for
/// TLS 1.2).
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|suite| match suite {
        SupportedCipherSuite::Tls13(_) => true,
        SupportedCipherSuite::Tls12(suite) => {
            suite.kx == rustls::crypto::KeyExchangeAlgorithm::ECDHE
        }
    });
    Arc::new(provider)
}

/// Makes every TLS file path absolute against the config file's directory, so that the
/// files are found whatever the working directory and a reload compares like with like.
pub fn resolve_paths(config: &mut Config, config_dir: &Path) {
    for listener in &mut config.listeners {
        if let Some(tls) = &mut listener.tls {
            for pair in &mut tls.certs {
                pair.cert = config_dir.join(&pair.cert);
                pair.key = config_dir.join(&pair.key);
            }
            if let Some(ca) = &mut tls.client_ca {
                *ca = config_dir.join(&*ca);
            }
        }
    }
    for pool in &mut config.pools {
        if let Some(tls) = &mut pool.upstream_tls {
            for path in [
                &mut tls.root_cert,
                &mut tls.client_cert,
                &mut tls.client_key,
            ]
            .into_iter()
            .flatten()
            {
                *path = config_dir.join(&*path);
            }
        }
    }
}

/// Checks the TLS sections: files readable, keys fitting their certificates, a CA for
/// client authentication, client certificate and key given together.
pub fn validate(config: &Config, sink: &mut ErrorSink<'_>) {
    let provider = provider();
    for (i, listener) in config.listeners.iter().enumerate() {
        let Some(tls) = &listener.tls else { continue };
        if tls.certs.is_empty() {
            sink.at(
                &key_path!("listener", i, "tls", "certs"),
                "needs at least one certificate/key pair",
            );
        }
        for (c, pair) in tls.certs.iter().enumerate() {
            let at = match pem::read_certs(&pair.cert) {
                Err(e) => Some(("cert", e)),
                Ok(chain) => match chain.first().map(|leaf| cert_facts(leaf)) {
                    Some(Err(e)) => Some(("cert", format!("{}: {e}", pair.cert.display()))),
                    _ => pem::certified_key(&pair.cert, &pair.key, &provider)
                        .err()
                        .map(|e| ("key", e)),
                },
            };
            if let Some((key, message)) = at {
                sink.at(&key_path!("listener", i, "tls", "certs", c, key), message);
            }
        }
        match (&tls.client_ca, tls.client_auth) {
            (None, ClientAuth::Optional | ClientAuth::Required) => sink.at(
                &key_path!("listener", i, "tls", "client_auth"),
                "needs `client_ca`",
            ),
            (Some(ca), _) => {
                if let Err(e) = pem::read_certs(ca) {
                    sink.at(&key_path!("listener", i, "tls", "client_ca"), e);
                }
            }
            _ => {}
        }
        check_alpn(&tls.alpn, &key_path!("listener", i, "tls", "alpn"), sink);
    }
    for (i, pool) in config.pools.iter().enumerate() {
        let Some(tls) = &pool.upstream_tls else {
            continue;
        };
        check_alpn(
            &tls.alpn,
            &key_path!("pool", i, "upstream_tls", "alpn"),
            sink,
        );
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            sink.at(
                &key_path!("pool", i, "upstream_tls"),
                "`client_cert` and `client_key` go together",
            );
            continue;
        }
        if let Err(e) = UpstreamTls::from_config(tls, Path::new("")) {
            let key = if e.starts_with("client") {
                "client_cert"
            } else {
                "root_cert"
            };
            sink.at(&key_path!("pool", i, "upstream_tls", key), e);
        }
    }
}

fn check_alpn(alpn: &[String], at: &[crate::config::load::PathSegment], sink: &mut ErrorSink<'_>) {
    if alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
        sink.at(at, "ALPN names are 1 to 255 bytes");
    }
}
