//! Reading PEM certificates and keys, and what a certificate says about itself (names,
//! subject, expiry) for SNI selection, client identity and startup warnings.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Every certificate in a PEM file, in file order; an empty file is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!("no private key in {}", path.display())
        }
        e => format!("cannot read key {}: {e}", path.display()),
    })
}

/// A certificate chain with its key, checked to belong together.
pub fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    CertifiedKey::from_der(chain, key_der, provider)
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "key {} does not fit certificate {}: {e}",
                key.display(),
                cert.display()
            )
        })
}

/// What a certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// The subject distinguished name, RFC 4514 style (`CN=client,O=Example`).
    pub subject: String,
    /// The subject's first common name.
    pub common_name: Option<String>,
    /// DNS names, IP addresses, e-mail addresses and URIs from the subjectAltName.
    pub sans: Vec<String>,
    /// DNS names only (lower case), for SNI selection.
    pub dns_names: Vec<String>,
    /// Whether the validity period has ended.
    pub expired: bool,
}

/// Parses a DER certificate; malformed input is an error, never a panic.
pub fn cert_facts(der: &[u8]) -> Result<CertFacts, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("bad certificate: {e}"))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let mut sans = Vec::new();
    let mut dns_names = Vec::new();
    if let Ok(Some(extension)) = cert.subject_alternative_name() {
        for name in &extension.value.general_names {
            match name {
                GeneralName::DNSName(dns) => {
                    sans.push(format!("DNS:{dns}"));
                    dns_names.push(dns.to_ascii_lowercase());
                }
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        sans.push(format!("IP:{ip}"));
                    }
                }
                GeneralName::RFC822Name(mail) => sans.push(format!("email:{mail}")),
                GeneralName::URI(uri) => sans.push(format!("URI:{uri}")),
                _ => {}
            }
        }
    }
    Ok(CertFacts {
        subject: cert.subject().to_string(),
        common_name,
        sans,
        dns_names,
        expired: cert.validity().time_to_expiration().is_none(),
    })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}
