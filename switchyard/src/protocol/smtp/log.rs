//! One access log line per message: who sent it (client, HELO, MAIL FROM), how many
//! recipients, its size, which server took it, the server's final reply code and queue
//! id, how long it took.

use std::net::SocketAddr;

use serde::Serialize;

use crate::config::LogFormat;

/// One message, as logged when the server has given its final reply (or the proxy
/// refused it).
#[derive(Debug, Clone, Serialize)]
pub struct MessageRecord {
    /// When it ended (RFC 3339, UTC).
    pub time: String,
    /// Listener name.
    pub listener: String,
    /// Always `smtp_message`: tells these lines from connection lines.
    pub kind: &'static str,
    /// Client address (after PROXY protocol, if any).
    pub client: SocketAddr,
    /// The client's HELO/EHLO name.
    pub helo: String,
    /// The MAIL FROM address (empty for the null sender).
    pub from: String,
    /// Recipients the server accepted.
    pub recipients: u32,
    /// Message bytes received from the client (DATA body with its end, or BDAT chunks).
    pub size: u64,
    /// Pool chosen.
    pub pool: Option<String>,
    /// Server that took it.
    pub server: Option<String>,
    /// The final reply code the client got.
    pub reply: u16,
    /// The queue id the server named in its reply, if any.
    pub queue_id: Option<String>,
    /// From MAIL FROM to the final reply, in milliseconds.
    pub duration_ms: u64,
}

impl MessageRecord {
    /// The line in `format`.
    pub fn render(&self, format: LogFormat) -> String {
        match format {
            LogFormat::Json => serde_json::to_string(self).unwrap_or_default(),
            LogFormat::Text | LogFormat::Clf | LogFormat::Combined => format!(
                "{} listener={} smtp_message client={} helo={} from=<{}> recipients={} size={} pool={} server={} reply={} queue_id={} duration_ms={}",
                self.time,
                self.listener,
                self.client,
                self.helo,
                self.from,
                self.recipients,
                self.size,
                self.pool.as_deref().unwrap_or("-"),
                self.server.as_deref().unwrap_or("-"),
                self.reply,
                self.queue_id.as_deref().unwrap_or("-"),
                self.duration_ms,
            ),
        }
    }
}
