//! The keys of `smtp` listeners (`[listener.smtp]`: the name the proxy greets with,
//! STARTTLS, implicit TLS, the message size limit) and their routes by recipient domain,
//! and the pool keys SMTP listeners read (`send_xclient`); with the rules they follow.

use serde::Deserialize;

use super::listener_keys::{ListenerKeys, Surroundings};
use super::report::ErrorSink;
use crate::key_path;

/// What only an `smtp` listener has.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SmtpListener {
    /// The conversation the proxy holds with clients (`smtp = { ... }`).
    #[serde(default)]
    pub smtp: SmtpOptions,
    /// Routing rules by recipient domain; first match wins, else the listener's `pool`.
    #[serde(default)]
    pub routes: Vec<SmtpRoute>,
}

/// The proxy's side of the SMTP conversation with clients.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpOptions {
    /// The name in the `220` greeting, the EHLO reply and the proxy's own EHLO to servers;
    /// default: the machine's host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Whether clients may (or must) upgrade with STARTTLS; needs the listener's `tls`.
    #[serde(default)]
    pub starttls: StartTls,
    /// Largest message accepted, in bytes (advertised as `SIZE`; larger gets `552 5.3.4`).
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: u64,
    /// TLS from the first byte (port 465 style) with the listener's `tls`, instead of STARTTLS.
    #[serde(default)]
    pub implicit_tls: bool,
}

impl Default for SmtpOptions {
    fn default() -> Self {
        Self {
            hostname: None,
            starttls: StartTls::default(),
            max_message_bytes: defaults::max_message_bytes(),
            implicit_tls: false,
        }
    }
}

/// STARTTLS towards clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartTls {
    /// Not offered.
    Off,
    /// Offered when the listener has `tls`; plaintext mail is accepted too.
    #[default]
    Optional,
    /// Mail is refused (`530 5.7.0`) until the client has upgraded.
    Required,
}

/// An SMTP routing rule: the domain of the transaction's first recipient decides.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpRoute {
    /// The pool this route sends to.
    pub pool: String,
    /// Recipient domain, exact or `*.suffix`, case-insensitive; Unicode names are compared
    /// as A-labels.
    #[serde(default)]
    pub domain: Option<String>,
}

/// The pool keys `smtp` listeners read.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SmtpPool {
    /// Send Postfix's `XCLIENT` (the client's address, port, HELO name) after the server's
    /// EHLO, so that a Postfix-style server sees the real client.
    #[serde(default)]
    pub send_xclient: bool,
}

impl ListenerKeys for SmtpListener {
    fn route_pools(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.pool.as_str()).collect()
    }

    /// STARTTLS and implicit TLS need the listener's certificates and exclude each other;
    /// domains must be host names.
    fn validate(&self, around: &Surroundings<'_>, i: usize, sink: &mut ErrorSink<'_>) {
        validate_listener(around.tls, self, i, sink);
    }
}

fn validate_listener(tls: bool, smtp: &SmtpListener, i: usize, sink: &mut ErrorSink<'_>) {
    let options = &smtp.smtp;
    if options.starttls == StartTls::Required && !tls {
        sink.at(
            &key_path!("listener", i, "smtp", "starttls"),
            "`required` needs the listener's `tls` certificates",
        );
    }
    if options.implicit_tls && !tls {
        sink.at(
            &key_path!("listener", i, "smtp", "implicit_tls"),
            "needs the listener's `tls` certificates",
        );
    }
    if options.implicit_tls && options.starttls == StartTls::Required {
        sink.at(
            &key_path!("listener", i, "smtp", "starttls"),
            "an implicit TLS listener has no STARTTLS; leave `starttls` out",
        );
    }
    if options.max_message_bytes == 0 {
        sink.at(
            &key_path!("listener", i, "smtp", "max_message_bytes"),
            "must be at least 1",
        );
    }
    for (r, route) in smtp.routes.iter().enumerate() {
        if let Some(domain) = &route.domain
            && let Err(message) = crate::authority::route_pattern(domain)
        {
            sink.at(&key_path!("listener", i, "routes", r, "domain"), message);
        }
    }
}

mod defaults {
    /// 50 MiB, Postfix's `message_size_limit` default is 10 MiB; large enough for the
    /// usual attachment limits of mail services (25 MiB before base64).
    pub fn max_message_bytes() -> u64 {
        50 * 1024 * 1024
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{ListenerOptions, load_str};

    const POOLS: &str = r#"
[[pool]]
name = "mail"
send_xclient = true
servers = [ { address = "127.0.0.1:25" } ]
"#;

    fn listener(keys: &str) -> String {
        format!(
            "[[listener]]\nname = \"mx\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"smtp\"\npool = \"mail\"\n{keys}\n{POOLS}"
        )
    }

    #[test]
    fn smtp_listeners_read_their_keys_and_routes() {
        let text = listener(
            "smtp = { hostname = \"mx.example\", max_message_bytes = 1000 }\n[[listener.routes]]\ndomain = \"*.example.org\"\npool = \"mail\"",
        );
        let config = load_str(Path::new("t.toml"), &text).expect("valid");
        let ListenerOptions::Smtp(smtp) = &config.listeners[0].options else {
            panic!("an smtp listener");
        };
        assert_eq!(smtp.smtp.hostname.as_deref(), Some("mx.example"));
        assert_eq!(smtp.smtp.max_message_bytes, 1000);
        assert_eq!(smtp.smtp.starttls, StartTls::Optional);
        assert_eq!(smtp.routes[0].domain.as_deref(), Some("*.example.org"));
        assert!(config.pools[0].smtp.send_xclient);
    }

    #[test]
    fn tls_modes_need_certificates_and_domains_must_be_host_names() {
        for (keys, key) in [
            ("smtp = { starttls = \"required\" }", "smtp.starttls"),
            ("smtp = { implicit_tls = true }", "smtp.implicit_tls"),
            ("smtp = { max_message_bytes = 0 }", "smtp.max_message_bytes"),
            (
                "[[listener.routes]]\ndomain = \"\\u0308x.example\"\npool = \"mail\"",
                "routes[0].domain",
            ),
        ] {
            let errors = load_str(Path::new("t.toml"), &listener(keys))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(errors.contains(key), "{keys}: {errors}");
        }
    }
}
