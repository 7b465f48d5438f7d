//! TLS for every protocol, on rustls: termination (certificates by SNI, ALPN, mutual TLS,
//! resumption, reload) and origination to backends with libpq `sslmode` semantics.
//!
//! Only TLS 1.2 and 1.3 with forward-secret (ECDHE) suites are offered, in the server's
//! order. Protocols call [`ServerTls::accept`] on an accepted stream and
//! [`UpstreamTls::handshake`] on a server stream once TLS is agreed.

mod advice;
mod client;
mod passthrough;
mod pem;
mod rewind;
mod server;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

use crate::config::report::{ErrorSink, PathSegment};
use crate::config::{ClientAuth, Config};
use crate::key_path;

pub use client::{UpstreamTls, https_client};
pub use passthrough::{CLIENT_HELLO_TIMEOUT, MAX_CLIENT_HELLO, read_client_hello};
pub use pem::{CertFacts, cert_facts};
pub use rewind::Rewind;
pub use server::{ClientIdentity, ServerTls, TlsInfo};

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

/// Checks the TLS sections: files readable, keys fitting their certificates, a CA for
/// client authentication, client certificate and key given together; the `ca` files of
/// webhooks and the usage sink.
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
    let webhooks = config
        .resolvers
        .iter()
        .enumerate()
        .map(|(i, r)| (key_path!("resolver", i, "ca").to_vec(), r.ca.as_deref()));
    let sink_ca = config
        .accounting
        .as_ref()
        .and_then(|a| a.sink.as_ref())
        .map(|s| {
            (
                key_path!("accounting", "sink", "ca").to_vec(),
                s.ca.as_deref(),
            )
        });
    for (at, ca) in webhooks.chain(sink_ca) {
        if let Some(ca) = ca
            && let Err(e) = https_client(Some(ca))
        {
            sink.at(&at, e);
        }
    }
}

fn check_alpn(alpn: &[String], at: &[PathSegment], sink: &mut ErrorSink<'_>) {
    if alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
        sink.at(at, "ALPN names are 1 to 255 bytes");
    }
}

/// PROXY v2 TLVs describing a terminated TLS connection, as HAProxy sends them:
/// `PP2_TYPE_ALPN`, `PP2_TYPE_AUTHORITY` (the SNI) and `PP2_TYPE_SSL` with the version,
/// cipher and, for a verified client certificate, its common name.
pub fn proxy_v2_tlvs(info: &TlsInfo) -> Vec<(u8, Vec<u8>)> {
    const PP2_TYPE_ALPN: u8 = 0x01;
    const PP2_TYPE_AUTHORITY: u8 = 0x02;
    const PP2_TYPE_SSL: u8 = 0x20;
    const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
    const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
    const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
    const PP2_CLIENT_SSL: u8 = 0x01;
    const PP2_CLIENT_CERT_CONN: u8 = 0x02;
    const PP2_CLIENT_CERT_SESS: u8 = 0x04;

    let mut tlvs = Vec::new();
    if let Some(alpn) = &info.alpn {
        tlvs.push((PP2_TYPE_ALPN, alpn.clone()));
    }
    if let Some(sni) = &info.sni {
        tlvs.push((PP2_TYPE_AUTHORITY, sni.as_bytes().to_vec()));
    }
    let mut client = PP2_CLIENT_SSL;
    if info.client_cert.is_some() {
        client |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS;
    }
    // `verify` is 0: a certificate that reaches here passed verification.
    let mut ssl = vec![client, 0, 0, 0, 0];
    let common_name = info
        .client_cert
        .as_ref()
        .and_then(|cert| cert.common_name.as_deref());
    for (kind, value) in [
        (PP2_SUBTYPE_SSL_VERSION, info.version.as_deref()),
        (PP2_SUBTYPE_SSL_CN, common_name),
        (PP2_SUBTYPE_SSL_CIPHER, info.cipher.as_deref()),
    ] {
        if let Some(value) = value {
            let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
            ssl.push(kind);
            ssl.extend_from_slice(&len.to_be_bytes());
            ssl.extend_from_slice(&value.as_bytes()[..usize::from(len)]);
        }
    }
    tlvs.push((PP2_TYPE_SSL, ssl));
    tlvs
}

#[cfg(test)]
mod tests;
