//! `[[resolver]]`: where pools with `resolver` look their servers up at run time, and the
//! pool keys that say which key (`key`, `key_pattern`) a connection is looked up by.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::duration;
use super::pool::PoolConfig;
use super::report::{ErrorSink, IntoSegment, PathSegment};
use crate::key_path;

/// One resolver: a source of answers (a file, a webhook or Redis), its cache and the
/// SSRF guard applied to the addresses it answers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    /// Unique name, referred to by pools' `resolver`.
    pub name: String,
    /// Where answers come from.
    pub kind: ResolverKind,
    /// `redis`: `redis://[user:password@]host:port[/db]` or `rediss://` for TLS; the
    /// password may also be given as `password`.
    #[serde(default)]
    pub address: Option<String>,
    /// `redis`: the password (`env:`/`file:` allowed), sent with AUTH.
    #[serde(default)]
    pub password: Option<String>,
    /// `redis`: the key looked up is `prefix + key`; purges arrive on `prefix + "purge"`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// `http`: the webhook's URL (`http://` or `https://host:port/path`).
    #[serde(default)]
    pub url: Option<String>,
    /// `http`: headers sent with every call (values may be `env:`/`file:` secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `http` over https: PEM CAs the webhook's certificate is verified against instead
    /// of the Mozilla roots; relative to the config file.
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// `map`: the TOML or JSON file of key → answer, relative to the config file.
    #[serde(default)]
    pub file: Option<std::path::PathBuf>,
    /// Time allowed for one lookup (webhook call, Redis command).
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// How answers are kept.
    #[serde(default)]
    pub cache: CacheConfig,
    /// CIDRs answers may point into although the SSRF guard refuses them by default.
    #[serde(default)]
    pub allow_private: Vec<String>,
}

/// The kinds of resolvers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolverKind {
    /// A file of key → answer.
    Map,
    /// A webhook answering JSON.
    Http,
    /// A Redis (or Valkey) server shared by a fleet.
    Redis,
}

impl ResolverKind {
    /// The name the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Map => "map",
            Self::Http => "http",
            Self::Redis => "redis",
        }
    }
}

/// How long answers are kept.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// How long an answer is used without asking again (an answer's `ttl` overrides it).
    #[serde(default = "default_ttl", with = "duration")]
    pub ttl: Duration,
    /// How long "no route" and "refused" are remembered.
    #[serde(default = "default_negative_ttl", with = "duration")]
    pub negative_ttl: Duration,
    /// How long past its TTL an answer is still served while the source fails.
    #[serde(default, with = "duration")]
    pub stale_if_error: Duration,
    /// Keys kept at most; the least recently used goes first.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            negative_ttl: default_negative_ttl(),
            stale_if_error: Duration::ZERO,
            max_entries: default_max_entries(),
        }
    }
}

fn default_prefix() -> String {
    "switchyard:route:".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_max_entries() -> usize {
    100_000
}

/// Checks every resolver and every pool's `resolver`, `key` and `key_pattern`.
pub fn validate(resolvers: &[ResolverConfig], pools: &[PoolConfig], sink: &mut ErrorSink<'_>) {
    let mut names = std::collections::HashSet::new();
    for (i, resolver) in resolvers.iter().enumerate() {
        if !names.insert(resolver.name.as_str()) {
            sink.at(
                &key_path!("resolver", i, "name"),
                format!("resolver `{}` is defined twice", resolver.name),
            );
        }
        let needs = |key: &str, present: bool, sink: &mut ErrorSink<'_>| {
            if !present {
                sink.at(
                    &key_path!("resolver", i),
                    format!("a `{}` resolver needs `{key}`", resolver.kind.as_str()),
                );
            }
        };
        match resolver.kind {
            ResolverKind::Map => needs("file", resolver.file.is_some(), sink),
            ResolverKind::Http => {
                needs("url", resolver.url.is_some(), sink);
                if let Some(url) = &resolver.url {
                    check_webhook(url, &resolver.headers, &key_path!("resolver", i), sink);
                }
            }
            ResolverKind::Redis => {
                needs("address", resolver.address.is_some(), sink);
                if let Some(address) = &resolver.address
                    && let Err(e) =
                        redis::parse_redis_url(address).ok_or("not a redis:// or rediss:// URL")
                {
                    sink.at(&key_path!("resolver", i, "address"), e);
                }
            }
        }
        if let Some(password) = &resolver.password
            && let Err(e) = crate::secret::resolve(password)
        {
            sink.at(&key_path!("resolver", i, "password"), e);
        }
        for cidr in &resolver.allow_private {
            if cidr.parse::<ipnet::IpNet>().is_err() {
                sink.at(
                    &key_path!("resolver", i, "allow_private"),
                    format!("`{cidr}` is not a CIDR (e.g. 10.0.0.0/8)"),
                );
            }
        }
        if resolver.cache.max_entries == 0 {
            sink.at(
                &key_path!("resolver", i, "cache", "max_entries"),
                "must be at least 1",
            );
        }
    }
    for (i, pool) in pools.iter().enumerate() {
        match &pool.resolver {
            Some(name) => {
                if !names.contains(name.as_str()) {
                    sink.at(
                        &key_path!("pool", i, "resolver"),
                        format!("resolver `{name}` is not defined"),
                    );
                }
                if !pool.servers.is_empty() {
                    sink.at(
                        &key_path!("pool", i, "servers"),
                        "a pool with `resolver` takes its servers from the answers",
                    );
                }
                match &pool.key {
                    None => sink.at(
                        &key_path!("pool", i),
                        "a pool with `resolver` needs `key` (e.g. \"{host}\")",
                    ),
                    Some(key) => {
                        if let Err(e) = KeyTemplate::parse(key, pool.key_pattern.as_deref()) {
                            sink.at(&key_path!("pool", i, "key"), e);
                        }
                    }
                }
            }
            None => {
                for key in ["key", "key_pattern"] {
                    let at = key_path!("pool", i, key);
                    if sink.is_set(&at) {
                        sink.at(&at, "applies to pools with `resolver` only");
                    }
                }
            }
        }
    }
}

/// The URL of a webhook the proxy calls (the `http` resolver's, the `http` usage sink's):
/// `http://` or `https://`, with a host.
pub fn webhook_url(url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("url `{url}`: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(uri),
        _ => Err(format!(
            "url `{url}`: only http:// and https://host[:port]/path URLs are supported"
        )),
    }
}

/// Checks the `url` and `headers` (their secrets resolve) of the table at `at`: a webhook
/// resolver or the `http` usage sink.
pub(super) fn check_webhook(
    url: &str,
    headers: &BTreeMap<String, String>,
    at: &[PathSegment],
    sink: &mut ErrorSink<'_>,
) {
    let under = |key: &str| {
        let mut path = at.to_vec();
        path.push(key.into_segment());
        path
    };
    if let Err(e) = webhook_url(url) {
        sink.at(&under("url"), e);
    }
    for (name, value) in headers {
        let mut path = under("headers");
        path.push(name.as_str().into_segment());
        if let Err(e) = crate::secret::resolve(value) {
            sink.at(&path, e);
        } else if name.parse::<hyper::header::HeaderName>().is_err() {
            sink.at(&path, format!("`{name}` is not a header name"));
        }
    }
}

/// A pool's routing key: a template of the facts a protocol gives (`{host}` lowercased
/// without its port, `{sni}`, `{database}`, `{user}`, `{domain}`) and literal text,
/// optionally narrowed by `key_pattern`, whose named group `key` is what is looked up.
#[derive(Debug, Clone)]
pub struct KeyTemplate {
    parts: Vec<KeyPart>,
    pattern: Option<regex::Regex>,
}

/// One piece of a key template.
#[derive(Debug, Clone, PartialEq)]
enum KeyPart {
    Text(String),
    Fact(KeyFact),
}

/// The facts a key template may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFact {
    /// HTTP Host, lowercased, without a port.
    Host,
    /// TLS SNI, lowercased.
    Sni,
    /// Database name from the startup.
    Database,
    /// User name from the startup.
    User,
    /// Recipient mail domain, lowercased.
    Domain,
}

impl KeyTemplate {
    /// Parses `key` (and `key_pattern`); the error says what is wrong.
    pub fn parse(key: &str, pattern: Option<&str>) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = key;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(KeyPart::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("`{key}` has a `{{` without `}}`"))?;
            let name = &rest[open + 1..open + close];
            let fact = match name {
                "host" => KeyFact::Host,
                "sni" => KeyFact::Sni,
                "database" => KeyFact::Database,
                "user" => KeyFact::User,
                "domain" => KeyFact::Domain,
                other => {
                    return Err(format!(
                        "`{{{other}}}` is not a key fact; use {{host}}, {{sni}}, {{database}}, {{user}} or {{domain}}"
                    ));
                }
            };
            parts.push(KeyPart::Fact(fact));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(KeyPart::Text(rest.to_string()));
        }
        if !parts.iter().any(|p| matches!(p, KeyPart::Fact(_))) {
            return Err(format!("`{key}` names no fact such as {{host}}"));
        }
        let pattern = pattern
            .map(|p| {
                let regex = regex::Regex::new(p).map_err(|e| format!("key_pattern: {e}"))?;
                if !regex.capture_names().any(|name| name == Some("key")) {
                    return Err("key_pattern needs a named group `key`: (?P<key>...)".to_string());
                }
                Ok(regex)
            })
            .transpose()?;
        Ok(Self { parts, pattern })
    }

    /// The facts the template names (a protocol that cannot give one never matches).
    pub fn facts(&self) -> impl Iterator<Item = KeyFact> + '_ {
        self.parts.iter().filter_map(|p| match p {
            KeyPart::Fact(fact) => Some(*fact),
            KeyPart::Text(_) => None,
        })
    }

    /// The key for a connection, from `fact` (which gives a fact's value, if known); `None`
    /// when a fact is missing or empty, or `key_pattern` does not match.
    pub fn render<'a>(&self, fact: impl Fn(KeyFact) -> Option<&'a str>) -> Option<String> {
        let mut key = String::new();
        for part in &self.parts {
            match part {
                KeyPart::Text(text) => key.push_str(text),
                KeyPart::Fact(which) => {
                    let value = fact(*which).filter(|v| !v.is_empty())?;
                    match which {
                        KeyFact::Host => {
                            let host = crate::authority::strip_port(value);
                            let host = host.strip_suffix('.').unwrap_or(host);
                            key.extend(host.chars().map(|c| c.to_ascii_lowercase()));
                        }
                        KeyFact::Sni | KeyFact::Domain => {
                            key.extend(value.chars().map(|c| c.to_ascii_lowercase()))
                        }
                        KeyFact::Database | KeyFact::User => key.push_str(value),
                    }
                }
            }
        }
        match &self.pattern {
            None => Some(key),
            Some(pattern) => pattern
                .captures(&key)
                .and_then(|c| c.name("key"))
                .map(|m| m.as_str().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_facts_lowercasing_hosts_without_port() {
        let t = KeyTemplate::parse("{host}", None).unwrap();
        assert_eq!(
            t.render(|f| (f == KeyFact::Host).then_some("Shop.Example.COM:8443")),
            Some("shop.example.com".into())
        );
        assert_eq!(t.render(|_| None), None);
        let t = KeyTemplate::parse("{user}@{database}", None).unwrap();
        let facts = |f| match f {
            KeyFact::User => Some("Alice"),
            KeyFact::Database => Some("db1"),
            _ => None,
        };
        assert_eq!(t.render(facts), Some("Alice@db1".into()));
    }

    #[test]
    fn key_pattern_takes_the_named_group() {
        let t = KeyTemplate::parse("{database}", Some("^db-(?P<key>[a-z0-9]+)$")).unwrap();
        assert_eq!(t.render(|_| Some("db-acme1")), Some("acme1".into()));
        assert_eq!(t.render(|_| Some("other")), None);
        assert!(KeyTemplate::parse("{database}", Some("^db-(.*)$")).is_err());
        assert!(KeyTemplate::parse("{nope}", None).is_err());
        assert!(KeyTemplate::parse("static", None).is_err());
        assert!(KeyTemplate::parse("{host", None).is_err());
    }
}
