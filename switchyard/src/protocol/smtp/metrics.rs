//! SMTP metrics: messages by final reply class, recipients accepted, message bytes, and
//! every reply the proxy sent clients by class; kept in live families that the admin
//! exporter registers at scrape time.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The families of every `smtp` listener.
#[derive(Debug, Default, Clone)]
pub struct SmtpMetrics {
    messages: Family<Labels, Counter>,
    recipients: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    replies: Family<Labels, Counter>,
}

impl SmtpMetrics {
    /// Counts one message that got its final reply of `class`, with its accepted
    /// recipients and size.
    pub fn message(
        &self,
        listener: &str,
        pool: &str,
        class: &'static str,
        recipients: u32,
        size: u64,
    ) {
        let labels = |extra: Option<&'static str>| {
            let mut labels = vec![
                ("listener", listener.to_string()),
                ("pool", pool.to_string()),
            ];
            if let Some(class) = extra {
                labels.push(("class", class.to_string()));
            }
            labels
        };
        self.messages.get_or_create(&labels(Some(class))).inc();
        self.recipients
            .get_or_create(&labels(None))
            .inc_by(u64::from(recipients));
        self.bytes.get_or_create(&labels(None)).inc_by(size);
    }

    /// Counts one reply sent to a client.
    pub fn reply(&self, listener: &str, class: &'static str) {
        self.replies
            .get_or_create(&vec![
                ("listener", listener.to_string()),
                ("class", class.to_string()),
            ])
            .inc();
    }

    /// Adds the families to a scrape's registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "switchyard_smtp_messages",
            "SMTP messages that got a final reply, by listener, pool and reply class",
            self.messages.clone(),
        );
        registry.register(
            "switchyard_smtp_recipients",
            "Recipients of SMTP messages accepted by the server, by listener and pool",
            self.recipients.clone(),
        );
        registry.register(
            "switchyard_smtp_message_bytes",
            "Bytes of SMTP messages (DATA bodies and BDAT chunks), by listener and pool",
            self.bytes.clone(),
        );
        registry.register(
            "switchyard_smtp_replies",
            "Replies sent to SMTP clients, by listener and reply class",
            self.replies.clone(),
        );
    }
}
