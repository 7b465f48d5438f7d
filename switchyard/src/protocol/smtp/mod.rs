//! `protocol = "smtp"`: the proxy owns the conversation with the client.
//!
//! It greets, answers EHLO with the extensions it carries end to end, and reads the
//! envelope itself; the first recipient's domain picks the pool (`routes` by `domain`, and
//! for a pool with `resolver` the servers of the answer for `{domain}`).
//! Then it opens a session on a server of that pool (EHLO as itself, `XCLIENT` when the
//! pool asks), sends MAIL and that RCPT (in one write when the server offers PIPELINING),
//! and relays the rest command by command: each reply paired with its command, DATA bodies
//! streamed to their exact end, BDAT chunks by their byte count, the message size limit
//! enforced. One access log line per message.
//!
//! Until the envelope has chosen a server the session is the SMTP "login": counted by the
//! listener's login gate (`max_logins_per_address`) and due within `timeouts.login`, so
//! that clients which never send mail cannot hold descriptors for the idle timeout.

mod check;
pub mod command;
pub mod data;
mod log;
mod metrics;
pub mod reply;
mod sasl;
mod server;
mod session;

use std::sync::Arc;

use super::{Context, Frontend, Pools};
use crate::config::{CheckKind, ListenerConfig, ListenerOptions, Protocol, SmtpOptions, SmtpRoute};
use crate::health::Check;
use crate::listener::{Accepted, Handler, Serving};
use crate::route::{Matcher, RouteRule, Routing};
use metrics::SmtpMetrics;

/// The `smtp` front end.
#[derive(Debug)]
pub struct Smtp {
    context: Arc<Context>,
    metrics: SmtpMetrics,
}

impl Smtp {
    /// The front end of every `smtp` listener.
    pub fn new(context: &Arc<Context>) -> Self {
        Self {
            context: context.clone(),
            metrics: SmtpMetrics::default(),
        }
    }
}

impl Frontend for Smtp {
    fn protocol(&self) -> Protocol {
        Protocol::Smtp
    }

    fn handler(
        &self,
        listener: &ListenerConfig,
        pools: &Pools,
    ) -> Result<Arc<dyn Handler>, String> {
        let ListenerOptions::Smtp(options) = &listener.options else {
            return Err(format!(
                "listener `{}` is not an smtp listener",
                listener.name
            ));
        };
        let hostname = options
            .smtp
            .hostname
            .clone()
            .unwrap_or_else(machine_hostname);
        Ok(Arc::new(SmtpHandler {
            context: self.context.clone(),
            metrics: self.metrics.clone(),
            ehlo: ehlo_reply(&hostname, &options.smtp, None),
            ehlo_starttls: ehlo_reply(&hostname, &options.smtp, Some("STARTTLS")),
            ehlo_auth: ehlo_reply(&hostname, &options.smtp, Some("AUTH PLAIN LOGIN")),
            hostname,
            options: options.smtp.clone(),
            routing: Routing::build(listener.pool.as_deref(), &options.routes, pools, |_, _| ())?,
        }))
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
    }

    fn checks(&self) -> Vec<(CheckKind, Arc<dyn Check>)> {
        let check = check::SmtpCheck {
            hostname: machine_hostname(),
        };
        vec![(CheckKind::Smtp, Arc::new(check))]
    }
}

impl RouteRule for SmtpRoute {
    fn pool(&self) -> &str {
        &self.pool
    }

    /// The domain in the form recipients' domains are compared in (validation has
    /// refused one that has none).
    fn matcher(&self) -> Matcher {
        Matcher {
            domain: self.domain.as_ref().map(|domain| {
                crate::authority::route_pattern(domain).unwrap_or_else(|_| domain.clone())
            }),
            ..Matcher::default()
        }
    }
}

/// What an `smtp` listener's connections share.
#[derive(Debug)]
pub struct SmtpHandler {
    context: Arc<Context>,
    metrics: SmtpMetrics,
    /// The name the proxy greets with.
    hostname: String,
    /// The EHLO reply, built once.
    ehlo: String,
    /// The EHLO reply offering STARTTLS.
    ehlo_starttls: String,
    /// The EHLO reply over TLS when the listener has a pool to relay AUTH to.
    ehlo_auth: String,
    options: SmtpOptions,
    routing: Routing<()>,
}

impl SmtpHandler {
    /// The pool AUTH is relayed to: the listener's `pool`, unless it is resolved per
    /// recipient domain (before the envelope there is no domain to look up).
    fn auth_pool(&self) -> Option<&Arc<crate::upstream::Pool>> {
        self.routing
            .default
            .as_ref()
            .filter(|pool| pool.resolver.is_none())
    }
}

impl Handler for SmtpHandler {
    fn serve(self: Arc<Self>, connection: Accepted) -> Serving {
        Box::pin(session::serve(self, connection))
    }

    /// A 421 greeting: the sending server keeps the message and tries again later (TLS,
    /// when the listener has it, starts with STARTTLS after the greeting).
    fn at_capacity(&self, _tls: bool) -> Vec<u8> {
        b"421 4.3.2 Too many connections, try again later\r\n".to_vec()
    }
}

/// The EHLO reply: the extensions the proxy carries end to end, and `extra` (STARTTLS
/// while the client may still upgrade, AUTH over TLS).
fn ehlo_reply(hostname: &str, options: &SmtpOptions, extra: Option<&str>) -> String {
    let mut lines = vec![
        hostname.to_string(),
        "PIPELINING".into(),
        format!("SIZE {}", options.max_message_bytes),
        "8BITMIME".into(),
        "SMTPUTF8".into(),
        "ENHANCEDSTATUSCODES".into(),
        "CHUNKING".into(),
    ];
    lines.extend(extra.map(str::to_string));
    let last = lines.len() - 1;
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| format!("250{}{line}\r\n", if i == last { ' ' } else { '-' }))
        .collect()
}

/// The machine's host name, for a listener without `smtp.hostname`.
fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
