//! The `smtp` check: the server's `220` banner, EHLO, STARTTLS when the pool upgrades with
//! it (`upstream_tls.starttls`; TLS from the first byte otherwise, per `sslmode`), QUIT. The
//! same opening the proxy's own sessions make, so a server the check finds up is one they
//! can use.

use super::server::greet;
use crate::config::HealthConfig;
use crate::health::{Check, Outcome};
use crate::upstream::{Pool, Server, connect_server};

/// The `smtp` check; `hostname` is its EHLO name.
#[derive(Debug)]
pub struct SmtpCheck {
    /// The name the check says EHLO with.
    pub hostname: String,
}

impl Check for SmtpCheck {
    fn check<'a>(&'a self, pool: &'a Pool, server: &'a Server, _: &'a HealthConfig) -> Outcome<'a> {
        Box::pin(async move {
            let (stream, _) = connect_server(server, pool)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (mut conversation, _) = greet(pool, server, stream, &[], &self.hostname)
                .await
                .map_err(|failure| format!("{}: {}", failure.termination, failure.detail))?;
            conversation.quit().await;
            Ok(())
        })
    }
}
