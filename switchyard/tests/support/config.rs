//! The config most tests run: an admin API, one tcp listener `front` over one pool `app`.
//!
//! Tests used to spell this TOML out each in their own template; the builder keeps one copy
//! of the common shape and lets each test add only the keys it is about.

use std::net::SocketAddr;

use super::Proxy;
use super::ops::listener_addr;

/// Builds the single-listener, single-pool config:
///
/// ```text
/// <top keys>                 e.g. shutdown_timeout
/// [admin]
/// listen = "{admin}"         filled in by `Proxy::start`
/// <admin keys>               e.g. token
///
/// [[listener]]
/// name = "front"
/// listen = "127.0.0.1:0"     or what `listen(..)` set
/// protocol = "tcp"         or what `protocol(..)` set
/// pool = "app"             unless `routes_only()`
/// <listener keys>
///
/// [[pool]]
/// name = "app"
/// <pool keys>
/// servers = [ ... ]          one inline table per `server(..)`
///
/// <sections>                 whole extra sections, e.g. another listener
/// ```
///
/// Every `top` / `admin` / `listener` / `pool` call appends its text (one or more TOML lines)
/// to that section.
#[derive(Debug, Clone)]
pub struct Config {
    top: Vec<String>,
    admin: Vec<String>,
    listen: String,
    protocol: String,
    default_pool: bool,
    listener: Vec<String>,
    pool: Vec<String>,
    servers: Vec<String>,
    sections: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl Config {
    /// Listener `front` on `127.0.0.1:0` over pool `app`, no servers yet.
    pub fn new() -> Self {
        Config {
            top: Vec::new(),
            admin: Vec::new(),
            listen: "127.0.0.1:0".to_string(),
            protocol: "tcp".to_string(),
            default_pool: true,
            listener: Vec::new(),
            pool: Vec::new(),
            servers: Vec::new(),
            sections: Vec::new(),
        }
    }

    /// Adds top-level keys (written before `[admin]`).
    pub fn top(mut self, keys: &str) -> Self {
        self.top.push(keys.to_string());
        self
    }

    /// Adds keys to `[admin]`.
    pub fn admin(mut self, keys: &str) -> Self {
        self.admin.push(keys.to_string());
        self
    }

    /// Sets the listener's `listen` address (default `127.0.0.1:0`).
    pub fn listen(mut self, address: &str) -> Self {
        self.listen = address.to_string();
        self
    }

    /// Sets the listener's `protocol` (default `tcp`).
    pub fn protocol(mut self, protocol: &str) -> Self {
        self.protocol = protocol.to_string();
        self
    }

    /// Leaves out the listener's `pool = "app"`, so that only its routes lead anywhere.
    pub fn routes_only(mut self) -> Self {
        self.default_pool = false;
        self
    }

    /// Adds whole TOML sections after the pool (e.g. a second `[[listener]]`).
    pub fn section(mut self, toml: &str) -> Self {
        self.sections.push(toml.to_string());
        self
    }

    /// Adds keys to the `front` listener.
    pub fn listener(mut self, keys: &str) -> Self {
        self.listener.push(keys.to_string());
        self
    }

    /// Adds keys to pool `app`.
    pub fn pool(mut self, keys: &str) -> Self {
        self.pool.push(keys.to_string());
        self
    }

    /// Adds server `{ name = NAME, address = ADDR, EXTRA }` to pool `app`; `extra` is more
    /// inline-table keys (e.g. `weight = 3`) or empty.
    pub fn server(mut self, name: &str, address: SocketAddr, extra: &str) -> Self {
        self.servers.push(server_entry(name, address, extra));
        self
    }

    /// Adds each `(name, address, extra)` as `server` does, in order.
    pub fn servers(self, servers: &[(&str, SocketAddr, &str)]) -> Self {
        servers.iter().fold(self, |config, (name, address, extra)| {
            config.server(name, *address, extra)
        })
    }

    /// The TOML text, with the `{admin}` placeholder `Proxy::start` fills in.
    pub fn build(&self) -> String {
        format!(
            r#"{top}
[admin]
listen = "{{admin}}"
{admin}

[[listener]]
name = "front"
listen = "{listen}"
protocol = "{protocol}"
{default_pool}
{listener}

[[pool]]
name = "app"
{pool}
servers = [
{servers}
]

{sections}
"#,
            top = self.top.join("\n"),
            admin = self.admin.join("\n"),
            listen = self.listen,
            protocol = self.protocol,
            default_pool = if self.default_pool {
                "pool = \"app\""
            } else {
                ""
            },
            listener = self.listener.join("\n"),
            pool = self.pool.join("\n"),
            servers = self.servers.join(",\n"),
            sections = self.sections.join("\n"),
        )
    }

    /// Starts a proxy with this config; returns it and the address `front` actually bound.
    pub async fn start(&self) -> (Proxy, SocketAddr) {
        let proxy = Proxy::start(&self.build()).await;
        let front = listener_addr(&proxy, "front").await;
        (proxy, front)
    }
}

/// Starts a proxy whose pool `app` has the extra keys `pool_keys` (e.g. a balance or health
/// setting) and `servers` as `(name, address, extra inline-table keys)`; returns it and the
/// address `front` bound. The balancing and health tests vary nothing else.
pub async fn start_pool(
    pool_keys: &str,
    servers: &[(&str, SocketAddr, &str)],
) -> (Proxy, SocketAddr) {
    Config::new().pool(pool_keys).servers(servers).start().await
}

/// One server as an inline table: `{ name = NAME, address = ADDR, EXTRA }`.
fn server_entry(name: &str, address: SocketAddr, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(r#"  {{ name = "{name}", address = "{address}"{extra} }}"#)
}

/// An `http` listener on `127.0.0.1:0` and its pool, both called `name`, with `servers`
/// as `(name, address, extra inline-table keys)`: a `Config::section` or config text.
pub fn http_section(name: &str, servers: &[(&str, SocketAddr, &str)]) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|(server, address, extra)| server_entry(server, *address, extra))
        .collect();
    format!(
        r#"
[[listener]]
name = "{name}"
listen = "127.0.0.1:0"
protocol = "http"
pool = "{name}"

[[pool]]
name = "{name}"
servers = [
{servers}
]
"#,
        servers = servers.join(",\n")
    )
}

/// A config whose listener `front` (`protocol`, with `listener_keys`) goes to pool
/// `tenants`, whose servers come by `key` from the map resolver `r` reading `file`
/// (answers on loopback allowed); `extra` is more TOML after it.
pub fn map_resolved(
    protocol: &str,
    listener_keys: &str,
    key: &str,
    file: &std::path::Path,
    extra: &str,
) -> String {
    format!(
        r#"
[admin]
listen = "{{admin}}"
[[listener]]
name = "front"
listen = "127.0.0.1:0"
protocol = "{protocol}"
pool = "tenants"
{listener_keys}
[[pool]]
name = "tenants"
resolver = "r"
key = "{key}"
[[resolver]]
name = "r"
kind = "map"
file = "{}"
allow_private = ["127.0.0.0/8"]
{extra}
"#,
        file.display()
    )
}
