//! A resolver's answer: the JSON a map entry, webhook body or Redis value holds, and the
//! same answer once its addresses are resolved, checked by the guard and pinned.

use std::time::Duration;

use serde::Deserialize;

use super::guard::Guard;
use crate::address::ServerAddress;

/// An answer as written: `{"servers": [{"address": "db1:5432", "weight": 1}], "ttl": "30s",
/// "tenant": "acme", "rewrite_database": "...", "rewrite_user": "...", "host": "..."}`.
/// Unknown fields are ignored so that a newer writer does not break an older fleet.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AnswerText {
    /// The servers.
    pub servers: Vec<ServerText>,
    /// How long the answer may be cached, overriding the resolver's `ttl`.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Who the usage is accounted to; the key when absent.
    #[serde(default)]
    pub tenant: Option<String>,
    /// PostgreSQL/MySQL: the database name sent to the server instead of the client's.
    #[serde(default)]
    pub rewrite_database: Option<String>,
    /// PostgreSQL/MySQL: the user name sent to the server instead of the client's.
    #[serde(default)]
    pub rewrite_user: Option<String>,
    /// HTTP: the `Host` sent to the server instead of the client's.
    #[serde(default)]
    pub host: Option<String>,
}

/// One server of an answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ServerText {
    /// `host:port`, `ip:port` or `[ipv6]:port`.
    pub address: String,
    /// Relative share of traffic.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// An answer ready to connect with: every server's address resolved once, checked and
/// pinned.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The servers, pinned.
    pub servers: Vec<PinnedServer>,
    /// How long it may be cached, when the answer says.
    pub ttl: Option<Duration>,
    /// The tenant usage is accounted to.
    pub tenant: Option<String>,
    /// See [`AnswerText::rewrite_database`].
    pub rewrite_database: Option<String>,
    /// See [`AnswerText::rewrite_user`].
    pub rewrite_user: Option<String>,
    /// See [`AnswerText::host`].
    pub host: Option<String>,
}

/// A server of an answer, its address fixed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PinnedServer {
    /// As the answer wrote it (the server's name in status and logs).
    pub name: String,
    /// Where connections go.
    pub address: ServerAddress,
    /// Relative share of traffic.
    pub weight: u32,
}

/// Why an answer cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnswerError {
    /// The JSON is malformed or names bad addresses: the source's fault.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// A name did not resolve (a failure of the moment, like a source outage).
    #[error("{0}")]
    Dns(String),
    /// The guard refused an address; the rule is named.
    #[error("refused by the SSRF guard: {address} is {rule}")]
    Guarded {
        /// The address as resolved.
        address: String,
        /// The rule that refused it.
        rule: String,
    },
}

/// Parses answer JSON.
pub fn parse(bytes: &[u8]) -> Result<AnswerText, AnswerError> {
    let text: AnswerText =
        serde_json::from_slice(bytes).map_err(|e| AnswerError::Malformed(e.to_string()))?;
    if text.servers.is_empty() {
        return Err(AnswerError::Malformed("no servers".into()));
    }
    Ok(text)
}

/// Resolves every server of `text` once (within `timeout`), checks each address with
/// `guard`, and pins the first address of each name: what the guard saw is what is
/// connected to.
pub async fn pin(
    text: AnswerText,
    guard: &Guard,
    timeout: Duration,
) -> Result<Answer, AnswerError> {
    let ttl = text
        .ttl
        .as_deref()
        .map(crate::config::duration::parse)
        .transpose()
        .map_err(AnswerError::Malformed)?;
    let mut servers = Vec::with_capacity(text.servers.len());
    for server in text.servers {
        let parsed = ServerAddress::parse(&server.address).map_err(AnswerError::Malformed)?;
        let addrs = tokio::time::timeout(timeout, parsed.resolve())
            .await
            .map_err(|_| AnswerError::Dns(format!("resolving {} timed out", server.address)))?
            .map_err(|e| AnswerError::Dns(format!("resolving {}: {e}", server.address)))?;
        for addr in &addrs {
            guard
                .check(addr.ip())
                .map_err(|rule| AnswerError::Guarded {
                    address: format!("{} ({})", server.address, addr.ip()),
                    rule,
                })?;
        }
        let Some(&first) = addrs.first() else {
            return Err(AnswerError::Dns(format!(
                "{} resolved to no address",
                server.address
            )));
        };
        let address = match parsed {
            ServerAddress::Host { host, .. } => ServerAddress::Pinned { host, addr: first },
            other => other,
        };
        servers.push(PinnedServer {
            name: server.address,
            address,
            weight: server.weight.min(256),
        });
    }
    Ok(Answer {
        servers,
        ttl,
        tenant: text.tenant,
        rewrite_database: text.rewrite_database,
        rewrite_user: text.rewrite_user,
        host: text.host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_are_resolved_checked_and_pinned() {
        let text =
            parse(br#"{"servers":[{"address":"localhost:5432"}],"ttl":"30s","tenant":"t1"}"#)
                .unwrap();
        let refused = pin(text.clone(), &Guard::default(), Duration::from_secs(5)).await;
        assert!(
            matches!(&refused, Err(AnswerError::Guarded { rule, .. }) if rule.starts_with("loopback")),
            "{refused:?}"
        );
        let allowed = Guard::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]);
        let answer = pin(text, &allowed, Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer.ttl, Some(Duration::from_secs(30)));
        assert_eq!(answer.tenant.as_deref(), Some("t1"));
        assert!(matches!(
            &answer.servers[0].address,
            ServerAddress::Pinned { host, addr } if host == "localhost" && addr.ip().is_loopback()
        ));
    }

    #[test]
    fn malformed_answers_are_named() {
        assert!(matches!(parse(b"{"), Err(AnswerError::Malformed(_))));
        assert!(matches!(
            parse(br#"{"servers":[]}"#),
            Err(AnswerError::Malformed(_))
        ));
        assert!(parse(br#"{"servers":[{"address":"a:1"}],"future":true}"#).is_ok());
    }
}
