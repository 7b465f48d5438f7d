//! One access log line per message: who sent it (client, HELO, MAIL FROM), how many
//! recipients, its size, which server took it, the server's final reply code and queue
//! id, how long it took.

use std::net::SocketAddr;

use serde::Serialize;

use crate::observe::{Line, OrDash};

/// One message, as logged (with the time it is logged) when the server has given its
/// final reply (or the proxy refused it).
#[derive(Debug, Clone, Serialize)]
pub struct MessageRecord {
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
    pub pool: Option<Box<str>>,
    /// Server that took it.
    pub server: Option<Box<str>>,
    /// The final reply code the client got.
    pub reply: u16,
    /// The queue id the server named in its reply, if any.
    pub queue_id: Option<String>,
    /// From MAIL FROM to the final reply, in milliseconds.
    pub duration_ms: u64,
}

impl MessageRecord {
    /// Writes the line: JSON, else `key=value` text.
    pub fn write(&self, line: &mut Line<'_>) {
        line.json_or_fields(
            self,
            format_args!(
                "listener={} smtp_message client={} helo={} from=<{}> recipients={} size={} pool={} server={} reply={} queue_id={} duration_ms={}",
                self.listener,
                self.client,
                self.helo,
                self.from,
                self.recipients,
                self.size,
                OrDash(self.pool.as_deref()),
                OrDash(self.server.as_deref()),
                self.reply,
                OrDash(self.queue_id.as_deref()),
                self.duration_ms,
            ),
        );
    }
}
