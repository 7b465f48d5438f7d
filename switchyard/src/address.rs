//! Server addresses: an IP literal or a host name resolved at each connect.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

/// Where a server listens, as written in the config.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddress {
    /// An IP literal: no resolution needed.
    Ip(SocketAddr),
    /// A host name, resolved at each connect so DNS changes (failover) are followed.
    Host {
        /// The host name (also the default TLS server name later).
        host: String,
        /// The port.
        port: u16,
    },
    /// A host name resolved once and checked (a resolver's answer, past the SSRF guard):
    /// connections go to `addr` only, so a DNS change between the check and the connect
    /// cannot send them elsewhere; `host` is still the TLS server name.
    Pinned {
        /// The host name the answer gave.
        host: String,
        /// The address it resolved to, and the port.
        addr: SocketAddr,
    },
}

impl ServerAddress {
    /// Parses `host:port`, `ip:port` or `[ipv6]:port`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self::Ip(addr));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("`{text}` needs a port (host:port)"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{text}` has an invalid port `{port}`"))?;
        if host.parse::<IpAddr>().is_ok() || host.contains(':') {
            return Err(format!(
                "`{text}` is not a valid address (write IPv6 addresses as [addr]:port)"
            ));
        }
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid_host {
            return Err(format!("`{host}` is not a valid host name"));
        }
        Ok(Self::Host {
            host: host.to_string(),
            port,
        })
    }

    /// The one socket address connections go to, when it needs no resolution.
    pub fn socket(&self) -> Option<SocketAddr> {
        match self {
            Self::Ip(addr) | Self::Pinned { addr, .. } => Some(*addr),
            Self::Host { .. } => None,
        }
    }

    /// Resolves to socket addresses to try, in order.
    pub async fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        match self {
            Self::Ip(addr) | Self::Pinned { addr, .. } => Ok(vec![*addr]),
            Self::Host { host, port } => {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                    .await?
                    .collect();
                if addrs.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{host} resolved to no address"),
                    ));
                }
                Ok(addrs)
            }
        }
    }
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(addr) => write!(f, "{addr}"),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
            Self::Pinned { host, addr } => write!(f, "{host}:{} ({})", addr.port(), addr.ip()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_operators_write() {
        assert!(matches!(
            ServerAddress::parse("127.0.0.1:80"),
            Ok(ServerAddress::Ip(_))
        ));
        assert!(matches!(
            ServerAddress::parse("[::1]:5432"),
            Ok(ServerAddress::Ip(_))
        ));
        assert_eq!(
            ServerAddress::parse("db-1.internal:5432"),
            Ok(ServerAddress::Host {
                host: "db-1.internal".into(),
                port: 5432
            })
        );
        for bad in [
            "127.0.0.1",
            "::1:80",
            "host:99999",
            ":80",
            "a..b:1",
            "ho st:1",
            "",
        ] {
            assert!(ServerAddress::parse(bad).is_err(), "{bad}");
        }
    }
}
