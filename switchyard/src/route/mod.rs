//! Routing: which pool a connection or request goes to, from what its protocol tells about
//! it (Host, path, SNI, database, user, mail domain).
//!
//! One matcher serves every protocol so that `[[listener.routes]]` means the same thing
//! everywhere: every key a route names must match, the first matching route wins, and the
//! listener's `pool` takes the rest.

use std::collections::HashMap;
use std::sync::Arc;

use crate::protocol::postgres::split::SplitConfig;

use crate::config::{ListenerConfig, RouteConfig};
use crate::upstream::Pool;

/// What a protocol front end knows about a connection or request when it picks a pool.
/// A route naming a key that is `None` here does not match.
#[derive(Debug, Default, Clone, Copy)]
pub struct RouteFacts<'a> {
    /// HTTP Host (or `:authority`), with or without a port.
    pub host: Option<&'a str>,
    /// HTTP request path.
    pub path: Option<&'a str>,
    /// TLS server name sent by the client.
    pub sni: Option<&'a str>,
    /// Database name from a PostgreSQL/MySQL startup.
    pub database: Option<&'a str>,
    /// User name from a PostgreSQL/MySQL startup.
    pub user: Option<&'a str>,
    /// Recipient mail domain (SMTP).
    pub domain: Option<&'a str>,
    /// `application_name` from a PostgreSQL startup.
    pub application_name: Option<&'a str>,
    /// Common name of the client's TLS certificate (mutual TLS).
    pub client_cn: Option<&'a str>,
    /// HTTP request method.
    pub method: Option<&'a str>,
    /// HTTP request headers.
    pub headers: Option<&'a hyper::HeaderMap>,
}

/// A route with its pool resolved.
#[derive(Debug)]
pub struct Route {
    /// The rule as configured (protocols read their own extra keys from it).
    pub rule: RouteConfig,
    /// Where matching traffic goes.
    pub pool: Arc<Pool>,
    /// PostgreSQL read/write split settings: the pool's, with the route's own keys over them.
    pub split: Arc<SplitConfig>,
}

/// A listener's routes and default pool, resolved against the pools in service.
#[derive(Debug)]
pub struct Routing {
    /// The listener's `pool`, for traffic no route matches.
    pub default: Option<Arc<Pool>>,
    /// Routes in config order.
    pub routes: Vec<Route>,
}

impl Routing {
    /// Resolves a listener's pool names; an unknown name is an error (validation reports
    /// it first, so this only guards against building from an unvalidated config).
    pub fn build(
        config: &ListenerConfig,
        pools: &HashMap<String, Arc<Pool>>,
    ) -> Result<Self, String> {
        let find = |name: &str| {
            pools
                .get(name)
                .cloned()
                .ok_or_else(|| format!("pool `{name}` is not defined"))
        };
        let default = config.pool.as_deref().map(find).transpose()?;
        let routes = config
            .routes
            .iter()
            .map(|rule| {
                let pool = find(&rule.pool)?;
                let split = if SplitConfig::overridden_by(rule) {
                    Arc::new(pool.split.with_route(rule))
                } else {
                    pool.split.clone()
                };
                Ok(Route {
                    rule: rule.clone(),
                    pool,
                    split,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { default, routes })
    }

    /// The first route whose every key matches `facts`.
    pub fn route(&self, facts: &RouteFacts) -> Option<&Route> {
        self.routes.iter().find(|route| matches(&route.rule, facts))
    }

    /// The pool for `facts`: the first matching route's, else the default.
    pub fn pool(&self, facts: &RouteFacts) -> Option<&Arc<Pool>> {
        self.route(facts)
            .map(|route| &route.pool)
            .or(self.default.as_ref())
    }
}

/// Whether every key `rule` names matches `facts`.
pub fn matches(rule: &RouteConfig, facts: &RouteFacts) -> bool {
    let host_like = |pattern: &Option<String>, value: Option<&str>| match pattern {
        None => true,
        Some(pattern) => value.is_some_and(|value| host_matches(pattern, strip_port(value))),
    };
    let exact_or_glob = |pattern: &Option<String>, value: Option<&str>| match pattern {
        None => true,
        Some(pattern) => value.is_some_and(|value| glob_matches(pattern, value)),
    };
    host_like(&rule.host, facts.host)
        && host_like(&rule.sni, facts.sni)
        && host_like(&rule.domain, facts.domain)
        && rule
            .path_prefix
            .as_ref()
            .is_none_or(|prefix| facts.path.is_some_and(|path| path.starts_with(prefix)))
        && exact_or_glob(&rule.database, facts.database)
        && exact_or_glob(&rule.user, facts.user)
        && exact_or_glob(&rule.application_name, facts.application_name)
        && exact_or_glob(&rule.client_cn, facts.client_cn)
        && rule
            .method
            .as_ref()
            .is_none_or(|method| facts.method == Some(method.as_str()))
        && headers_match(rule, facts.headers)
}

/// Whether every header a rule names is present with its exact value (one of the values
/// when the header is repeated).
fn headers_match(rule: &RouteConfig, headers: Option<&hyper::HeaderMap>) -> bool {
    rule.headers.iter().all(|(name, value)| {
        headers.is_some_and(|headers| {
            headers
                .get_all(name.as_str())
                .iter()
                .any(|present| present.as_bytes() == value.as_bytes())
        })
    })
}

/// Host-style match, case-insensitive: `example.com` exactly, or `*.example.com` for any
/// name below it (not `example.com` itself).
pub fn host_matches(pattern: &str, name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
                && name.as_bytes()[name.len() - suffix.len()..]
                    .eq_ignore_ascii_case(suffix.as_bytes())
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// Removes a `:port` (and IPv6 brackets) from a Host header value.
pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        _ => host,
    }
}

/// Shell-style glob with `*` (any run) and `?` (one character); case-sensitive, as
/// database and user names are.
pub fn glob_matches(pattern: &str, value: &str) -> bool {
    let (p, v) = (pattern.as_bytes(), value.as_bytes());
    let (mut pi, mut vi) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while vi < v.len() {
        match p.get(pi) {
            Some(b'*') => {
                backtrack = Some((pi, vi));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == v[vi] => {
                pi += 1;
                vi += 1;
            }
            _ => match backtrack {
                Some((star, matched)) => {
                    pi = star + 1;
                    vi = matched + 1;
                    backtrack = Some((star, matched + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_exactly_or_by_wildcard_ignoring_case_and_port() {
        assert!(host_matches("api.example.com", "API.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
        assert!(host_matches("example.com", "example.com."));
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn globs() {
        assert!(glob_matches("db-*", "db-abc123"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a?c*", "abcdef"));
        assert!(!glob_matches("db-*", "xdb-1"));
        assert!(glob_matches("*-*-x", "a-b-c-x"));
        assert!(!glob_matches("exact", "exactly"));
    }

    #[test]
    fn every_named_key_must_match() {
        let rule = RouteConfig {
            pool: "p".into(),
            host: Some("*.example.com".into()),
            path_prefix: Some("/api".into()),
            ..RouteConfig::default()
        };
        let facts = RouteFacts {
            host: Some("x.example.com:443"),
            path: Some("/api/v1"),
            ..RouteFacts::default()
        };
        assert!(matches(&rule, &facts));
        assert!(!matches(
            &rule,
            &RouteFacts {
                path: Some("/web"),
                ..facts
            }
        ));
        assert!(!matches(&rule, &RouteFacts::default()));
    }

    #[test]
    fn database_keys_match_by_glob() {
        let rule = RouteConfig {
            pool: "p".into(),
            application_name: Some("report*".into()),
            client_cn: Some("tenant-?".into()),
            ..RouteConfig::default()
        };
        let facts = RouteFacts {
            application_name: Some("reporter"),
            client_cn: Some("tenant-a"),
            ..RouteFacts::default()
        };
        assert!(matches(&rule, &facts));
        assert!(!matches(
            &rule,
            &RouteFacts {
                client_cn: None,
                ..facts
            }
        ));
    }

    #[test]
    fn method_and_header_keys() {
        let mut rule = RouteConfig {
            pool: "p".into(),
            method: Some("POST".into()),
            ..RouteConfig::default()
        };
        rule.headers.insert("x-env".into(), "canary".into());
        let mut headers = hyper::HeaderMap::new();
        headers.append("X-Env", hyper::header::HeaderValue::from_static("prod"));
        headers.append("X-Env", hyper::header::HeaderValue::from_static("canary"));
        let facts = RouteFacts {
            method: Some("POST"),
            headers: Some(&headers),
            ..RouteFacts::default()
        };
        assert!(matches(&rule, &facts));
        assert!(!matches(
            &rule,
            &RouteFacts {
                method: Some("GET"),
                ..facts
            }
        ));
        assert!(!matches(
            &rule,
            &RouteFacts {
                headers: None,
                ..facts
            }
        ));
    }
}
