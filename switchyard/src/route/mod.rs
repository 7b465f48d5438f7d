//! Routing: which pool a connection or request goes to, from what its protocol tells about
//! it (Host, path, SNI, database, user, mail domain, MySQL connection attributes).
//!
//! One matcher serves every protocol so that `[[listener.routes]]` means the same thing
//! everywhere: every key a route names must match, the first matching route wins, and the
//! listener's `pool` takes the rest.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

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
    /// MySQL connection attributes (`program_name`, `_client_name`...) in the order sent.
    pub attributes: Option<&'a [(String, String)]>,
}

/// The match keys of a route, whatever its protocol: each protocol fills in the keys its
/// routes have. Every key given must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matcher {
    /// Host, exact or `*.suffix` (port ignored).
    pub host: Option<String>,
    /// Path prefix.
    pub path_prefix: Option<String>,
    /// TLS SNI, exact or `*.suffix`.
    pub sni: Option<String>,
    /// Database name, exact or glob.
    pub database: Option<String>,
    /// User name, exact or glob.
    pub user: Option<String>,
    /// Mail domain, exact or `*.suffix`.
    pub domain: Option<String>,
    /// `application_name`, exact or glob.
    pub application_name: Option<String>,
    /// Client certificate common name, exact or glob.
    pub client_cn: Option<String>,
    /// HTTP method, exact.
    pub method: Option<String>,
    /// HTTP headers that must be present with these exact values.
    pub headers: BTreeMap<String, String>,
    /// MySQL connection attributes that must be present with values matching these,
    /// exact or glob.
    pub attributes: BTreeMap<String, String>,
}

impl Matcher {
    /// Whether every key this matcher names matches `facts`.
    pub fn matches(&self, facts: &RouteFacts) -> bool {
        let host_like = |pattern: &Option<String>, value: Option<&str>| match pattern {
            None => true,
            Some(pattern) => value.is_some_and(|value| host_matches(pattern, strip_port(value))),
        };
        let exact_or_glob = |pattern: &Option<String>, value: Option<&str>| match pattern {
            None => true,
            Some(pattern) => value.is_some_and(|value| glob_matches(pattern, value)),
        };
        host_like(&self.host, facts.host)
            && host_like(&self.sni, facts.sni)
            && host_like(&self.domain, facts.domain)
            && self
                .path_prefix
                .as_ref()
                .is_none_or(|prefix| facts.path.is_some_and(|path| path.starts_with(prefix)))
            && exact_or_glob(&self.database, facts.database)
            && exact_or_glob(&self.user, facts.user)
            && exact_or_glob(&self.application_name, facts.application_name)
            && exact_or_glob(&self.client_cn, facts.client_cn)
            && self
                .method
                .as_ref()
                .is_none_or(|method| facts.method == Some(method.as_str()))
            && self.headers_match(facts.headers)
            && self.attributes_match(facts.attributes)
    }

    /// Whether every attribute named was sent with a value matching its pattern (the
    /// first one sent under that name: clients send each once).
    fn attributes_match(&self, attributes: Option<&[(String, String)]>) -> bool {
        self.attributes.iter().all(|(name, pattern)| {
            attributes
                .and_then(|sent| sent.iter().find(|(key, _)| key == name))
                .is_some_and(|(_, value)| glob_matches(pattern, value))
        })
    }

    /// Whether every header named is present with its exact value (one of the values when
    /// the header is repeated).
    fn headers_match(&self, headers: Option<&hyper::HeaderMap>) -> bool {
        self.headers.iter().all(|(name, value)| {
            headers.is_some_and(|headers| {
                headers
                    .get_all(name.as_str())
                    .iter()
                    .any(|present| present.as_bytes() == value.as_bytes())
            })
        })
    }
}

/// A route with its pool resolved and what its protocol does with matching traffic
/// (`extra`: header rules, rewrites, split settings...).
#[derive(Debug)]
pub struct Route<E> {
    /// When the route applies.
    pub matcher: Matcher,
    /// Where matching traffic goes.
    pub pool: Arc<Pool>,
    /// The protocol's own keys of the route.
    pub extra: E,
}

/// A listener's routes and default pool, resolved against the pools in service.
#[derive(Debug)]
pub struct Routing<E> {
    /// The listener's `pool`, for traffic no route matches.
    pub default: Option<Arc<Pool>>,
    /// Routes in config order.
    pub routes: Vec<Route<E>>,
}

/// A route as a protocol's config writes it.
pub trait RouteRule {
    /// The name of the pool it sends to.
    fn pool(&self) -> &str;
    /// When it applies.
    fn matcher(&self) -> Matcher;
}

impl<E> Routing<E> {
    /// Resolves a listener's pool names, and each route's `extra` (given its pool); an
    /// unknown name is an error (validation reports it first, so this only guards against
    /// building from an unvalidated config).
    pub fn build<R: RouteRule>(
        default: Option<&str>,
        routes: &[R],
        pools: &HashMap<String, Arc<Pool>>,
        extra: impl Fn(&R, &Arc<Pool>) -> E,
    ) -> Result<Self, String> {
        let find = |name: &str| {
            pools
                .get(name)
                .cloned()
                .ok_or_else(|| format!("pool `{name}` is not defined"))
        };
        let default = default.map(find).transpose()?;
        let routes = routes
            .iter()
            .map(|rule| {
                let pool = find(rule.pool())?;
                Ok(Route {
                    matcher: rule.matcher(),
                    extra: extra(rule, &pool),
                    pool,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { default, routes })
    }

    /// The first route whose every key matches `facts`.
    pub fn route(&self, facts: &RouteFacts) -> Option<&Route<E>> {
        self.routes
            .iter()
            .find(|route| route.matcher.matches(facts))
    }

    /// Every pool the listener may send to: the default, then each route's.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.default
            .iter()
            .chain(self.routes.iter().map(|route| &route.pool))
    }

    /// The pool for `facts`: the first matching route's, else the default.
    pub fn pool(&self, facts: &RouteFacts) -> Option<&Arc<Pool>> {
        self.route(facts)
            .map(|route| &route.pool)
            .or(self.default.as_ref())
    }
}

/// What a database route asks to change in the login sent to the server.
#[derive(Debug, Clone, Default)]
pub struct Rewrites {
    /// The database name sent instead of the client's.
    pub database: Option<String>,
    /// The user name sent instead of the client's.
    pub user: Option<String>,
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

pub use crate::authority::strip_port;

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
        let rule = Matcher {
            host: Some("*.example.com".into()),
            path_prefix: Some("/api".into()),
            ..Matcher::default()
        };
        let facts = RouteFacts {
            host: Some("x.example.com:443"),
            path: Some("/api/v1"),
            ..RouteFacts::default()
        };
        assert!(rule.matches(&facts));
        assert!(!rule.matches(&RouteFacts {
            path: Some("/web"),
            ..facts
        }));
        assert!(!rule.matches(&RouteFacts::default()));
    }

    #[test]
    fn database_keys_match_by_glob() {
        let rule = Matcher {
            application_name: Some("report*".into()),
            client_cn: Some("tenant-?".into()),
            ..Matcher::default()
        };
        let facts = RouteFacts {
            application_name: Some("reporter"),
            client_cn: Some("tenant-a"),
            ..RouteFacts::default()
        };
        assert!(rule.matches(&facts));
        assert!(!rule.matches(&RouteFacts {
            client_cn: None,
            ..facts
        }));
    }

    #[test]
    fn method_and_header_keys() {
        let mut rule = Matcher {
            method: Some("POST".into()),
            ..Matcher::default()
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
        assert!(rule.matches(&facts));
        assert!(!rule.matches(&RouteFacts {
            method: Some("GET"),
            ..facts
        }));
        assert!(!rule.matches(&RouteFacts {
            headers: None,
            ..facts
        }));
    }

    #[test]
    fn connection_attribute_keys() {
        let mut rule = Matcher::default();
        rule.attributes
            .insert("program_name".into(), "report*".into());
        rule.attributes
            .insert("_client_name".into(), "libmariadb".into());
        // What the `mariadb` CLI sends, with a program name of its user's choosing.
        let sent: Vec<(String, String)> = [
            ("_os", "Linux"),
            ("_client_name", "libmariadb"),
            ("program_name", "reporting"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let facts = RouteFacts {
            attributes: Some(&sent),
            ..RouteFacts::default()
        };
        assert!(rule.matches(&facts));
        assert!(!rule.matches(&RouteFacts {
            attributes: Some(&sent[..2]),
            ..facts
        }));
        assert!(!rule.matches(&RouteFacts::default()));
        rule.attributes
            .insert("program_name".into(), "Reporting".into());
        assert!(!rule.matches(&facts), "values match case-sensitively");
        assert!(Matcher::default().matches(&RouteFacts::default()));
    }
}
