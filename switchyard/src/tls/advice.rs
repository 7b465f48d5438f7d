//! Certificate failures in words an operator can act on.
//!
//! rustls names a failure by its type (`UnknownIssuer`, `Other(UnsupportedCertVersion)`);
//! the log line a user reads should say which certificate is wrong, why, and what to do.
//! Both handshake paths run their error through [`explained`]: termination judges a
//! client's certificate, origination a server's.

use std::io;

use rustls::{CertificateError, Error};

/// Whose certificate the proxy was judging when the handshake failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Judged {
    /// A client's, for mutual TLS on a listener (`client_ca`).
    Client,
    /// A server's, for a pool's `upstream_tls` (`verify-ca`, `verify-full`).
    Server,
}

/// `error` with a sentence of advice appended when it is a certificate failure the proxy
/// can explain; any other error is returned as it was.
pub(crate) fn explained(error: io::Error, judged: Judged) -> io::Error {
    let advice = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
        .and_then(|tls| advice(tls, judged));
    match advice {
        Some(advice) => io::Error::new(error.kind(), format!("{error}: {advice}")),
        None => error,
    }
}

/// The advice for one rustls error, if it is a certificate failure.
fn advice(error: &Error, judged: Judged) -> Option<String> {
    let Error::InvalidCertificate(certificate) = error else {
        return None;
    };
    let whose = match judged {
        Judged::Client => "the client's certificate",
        Judged::Server => "the server's certificate",
    };
    let trusted = match judged {
        Judged::Client => "the listener's `client_ca`",
        Judged::Server => "the pool's `upstream_tls.root_cert` (or the system roots without it)",
    };
    Some(match certificate {
        CertificateError::UnknownIssuer => {
            format!("{whose} is not signed by a CA in {trusted}; add its issuing CA there")
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("{whose} has expired; renew it (and check this machine's clock)")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("{whose} is not valid yet; check the clocks of both machines")
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "{whose} does not name the server switchyard connected to; give the \
                 certificate that name (a subjectAltName), set `upstream_tls.sni` to a name \
                 it has, or use sslmode `verify-ca`"
            )
        }
        CertificateError::BadEncoding => {
            format!("{whose} is not a well-formed X.509 certificate (bad DER)")
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            let purpose = match judged {
                Judged::Client => "clientAuth",
                Judged::Server => "serverAuth",
            };
            format!("{whose} does not allow use for {purpose} (extendedKeyUsage)")
        }
        CertificateError::Other(other)
            if format!("{other:?}").contains("UnsupportedCertVersion") =>
        {
            format!(
                "{whose} is X.509 v1; v3 with extensions is required (sign it with an \
                 extensions file, e.g. `openssl x509 -req … -extfile ext.cnf` with a \
                 subjectAltName line; see docs/configuration.md, TLS)"
            )
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn io_error(error: Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    #[test]
    fn a_v1_client_certificate_is_named_with_the_fix() {
        let other = rustls::OtherError(Arc::new(webpki_like::UnsupportedCertVersion));
        let error = explained(
            io_error(Error::InvalidCertificate(CertificateError::Other(other))),
            Judged::Client,
        );
        let text = error.to_string();
        assert!(
            text.contains("the client's certificate is X.509 v1"),
            "{text}"
        );
        assert!(text.contains("-extfile"), "{text}");
    }

    #[test]
    fn server_failures_say_which_key_to_change() {
        let unknown = explained(
            io_error(Error::InvalidCertificate(CertificateError::UnknownIssuer)),
            Judged::Server,
        )
        .to_string();
        assert!(unknown.contains("upstream_tls.root_cert"), "{unknown}");
        let name = explained(
            io_error(Error::InvalidCertificate(CertificateError::NotValidForName)),
            Judged::Server,
        )
        .to_string();
        assert!(name.contains("verify-ca"), "{name}");
        let expired = explained(
            io_error(Error::InvalidCertificate(CertificateError::Expired)),
            Judged::Client,
        )
        .to_string();
        assert!(
            expired.contains("the client's certificate has expired"),
            "{expired}"
        );
    }

    #[test]
    fn other_errors_pass_through_unchanged() {
        let error = explained(
            io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timeout"),
            Judged::Client,
        );
        assert_eq!(error.to_string(), "TLS handshake timeout");
        let alert = explained(io_error(Error::DecryptError), Judged::Server);
        assert_eq!(alert.to_string(), Error::DecryptError.to_string());
    }

    /// Stands in for webpki's error of the same name, which rustls wraps in `Other`.
    mod webpki_like {
        #[derive(Debug)]
        pub struct UnsupportedCertVersion;
        impl std::fmt::Display for UnsupportedCertVersion {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("UnsupportedCertVersion")
            }
        }
        impl std::error::Error for UnsupportedCertVersion {}
    }
}
