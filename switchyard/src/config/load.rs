//! Reading a config file and reporting every problem with file, line and key.
//!
//! Each top-level section and each `[[listener]]`/`[[pool]]` entry is deserialized on its own,
//! so one mistake does not hide the others; semantic checks then run over whatever parsed.

use std::collections::HashSet;
use std::path::Path;

use toml_edit::{Document, Item};

use super::database::{DatabaseCheck, MysqlCheck, UserConfig};
use super::http::{DEFAULT_ALPN, HttpCheck, HttpVersion};
use super::pool::{CheckKind, CheckOptions, HealthConfig, PoolConfig};
use super::protocols::{ListenerOptions, Protocol, pool_groups, read_pool_groups};
use super::report::{ConfigError, ConfigErrors, ErrorSink, first_line, line_of, section, segments};
use super::schema::{AdminConfig, Config, ListenerConfig, LogConfig};
use super::{duration, keys, validate};
use crate::key_path;

/// Where `switchyard run` looks for its config without `-c`, in order.
pub const DEFAULT_PATHS: [&str; 2] = ["switchyard.toml", "/etc/switchyard/switchyard.toml"];

/// The first of [`DEFAULT_PATHS`] that exists, or what to do when none does.
pub fn default_path() -> Result<std::path::PathBuf, String> {
    DEFAULT_PATHS
        .iter()
        .map(std::path::PathBuf::from)
        .find(|path| path.is_file())
        .ok_or_else(|| {
            format!(
                "no config file: looked for ./{} and {}; pass one with -c FILE \
                 (examples/quickstart.toml is a small working one, `switchyard check -c FILE` \
                 validates one)",
                DEFAULT_PATHS[0], DEFAULT_PATHS[1]
            )
        })
}

/// What a config's files and resources must also pass, beyond its own rules (the TLS
/// certificates can be read and fit their keys, say): checks from above the config that
/// report into the same sink, with lines.
pub type ResourceCheck = fn(&Config, &mut ErrorSink<'_>);

/// Reads, parses and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    load_file_with(path, &[])
}

/// Reads, parses and validates a config file, then runs `checks` on it.
pub fn load_file_with(path: &Path, checks: &[ResourceCheck]) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            message: format!("cannot read config file: {e}"),
        }])
    })?;
    load_str_with(path, &text, checks)
}

/// Parses and validates config text; `path` names it in errors and anchors relative paths.
pub fn load_str(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    load_str_with(path, text, &[])
}

/// Parses and validates config text, then runs `checks` on it.
pub fn load_str_with(
    path: &Path,
    text: &str,
    checks: &[ResourceCheck],
) -> Result<Config, ConfigErrors> {
    let document = Document::parse(text.to_string()).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)),
            key: String::new(),
            message: first_line(e.message()),
        }])
    })?;
    let mut sink = ErrorSink {
        file: path,
        document: &document,
        errors: Vec::new(),
        parsed_indexes: Vec::new(),
    };
    let mut config = deserialize_sections(&document, &mut sink);
    resolve_paths(&mut config, sink.config_dir());
    apply_defaults(&mut config);
    validate::validate(&config, &mut sink);
    for check in checks {
        check(&config, &mut sink);
    }
    if sink.errors.is_empty() {
        Ok(config)
    } else {
        let mut errors = sink.errors;
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        Err(ConfigErrors(errors))
    }
}

/// Makes the file paths of TLS sections, resolvers (a map's file, a webhook's `ca`) and the
/// usage sink's `ca` relative to the config file's directory.
fn resolve_paths(config: &mut Config, config_dir: &Path) {
    for listener in &mut config.listeners {
        if let Some(tls) = &mut listener.tls {
            for pair in &mut tls.certs {
                pair.cert = config_dir.join(&pair.cert);
                pair.key = config_dir.join(&pair.key);
            }
            if let Some(ca) = &mut tls.client_ca {
                *ca = config_dir.join(&*ca);
            }
        }
    }
    let sink_ca = config
        .accounting
        .as_mut()
        .and_then(|a| a.sink.as_mut())
        .and_then(|sink| sink.ca.as_mut());
    let resolver_files = config
        .resolvers
        .iter_mut()
        .flat_map(|r| [r.file.as_mut(), r.ca.as_mut()]);
    for file in resolver_files.chain([sink_ca]).flatten() {
        *file = config_dir.join(&*file);
    }
    for pool in &mut config.pools {
        if let Some(tls) = &mut pool.upstream_tls {
            for path in [
                &mut tls.root_cert,
                &mut tls.client_cert,
                &mut tls.client_key,
            ]
            .into_iter()
            .flatten()
            {
                *path = config_dir.join(&*path);
            }
        }
    }
}

/// Fills in what HTTP needs when the config leaves it out: `tls` on `http` listeners offers
/// [`DEFAULT_ALPN`] (clients get HTTP/2 without configuration), and `upstream_tls` on pools
/// that `http` listeners use offers the pool's `http_version` (`h2` or `http/1.1`), so that
/// an HTTPS server speaking both knows which one is coming. Route `host` patterns are put in
/// the form request authorities are compared in (A-labels, no trailing dot); one that cannot
/// be is left for validation to report.
fn apply_defaults(config: &mut Config) {
    let mut http_pools = HashSet::new();
    for listener in &mut config.listeners {
        let ListenerOptions::Http(http) = &mut listener.options else {
            continue;
        };
        if let Some(tls) = &mut listener.tls
            && tls.alpn.is_empty()
        {
            tls.alpn = DEFAULT_ALPN.iter().map(|p| p.to_string()).collect();
        }
        for host in http.routes.iter_mut().filter_map(|r| r.host.as_mut()) {
            if let Ok(pattern) = crate::authority::route_pattern(host) {
                *host = pattern;
            }
        }
        http_pools.extend(listener.pool.iter().cloned());
        http_pools.extend(http.routes.iter().map(|route| route.pool.clone()));
    }
    for pool in &mut config.pools {
        if !http_pools.contains(&pool.name) {
            continue;
        }
        if let Some(tls) = &mut pool.upstream_tls
            && tls.alpn.is_empty()
        {
            let alpn = match pool.http.http_version {
                HttpVersion::Http1 => "http/1.1",
                HttpVersion::Http2 => "h2",
            };
            tls.alpn = vec![alpn.to_string()];
        }
    }
}

fn deserialize_sections(document: &Document<String>, sink: &mut ErrorSink<'_>) -> Config {
    let mut config = Config {
        workers: None,
        shutdown_timeout: std::time::Duration::from_secs(30),
        admin: None,
        log: LogConfig::default(),
        listeners: Vec::new(),
        pools: Vec::new(),
        users: Vec::new(),
        resolvers: Vec::new(),
        accounting: None,
        upgrade_socket: None,
    };
    for (key, item) in document.as_table().iter() {
        match key {
            "workers" => match item.as_integer() {
                Some(n) if (1..=1024).contains(&n) => config.workers = Some(n as usize),
                _ => sink.at(&key_path!("workers"), "must be an integer from 1 to 1024"),
            },
            "shutdown_timeout" => match item.as_str().map(duration::parse) {
                Some(Ok(d)) => config.shutdown_timeout = d,
                Some(Err(e)) => sink.at(&key_path!("shutdown_timeout"), e),
                None => sink.at(&key_path!("shutdown_timeout"), "must be a duration string"),
            },
            "admin" => config.admin = section::<AdminConfig>(item, &[key], sink),
            "log" => {
                if let Some(log) = section::<LogConfig>(item, &[key], sink) {
                    config.log = log;
                }
            }
            "listener" => config.listeners = entries(item, key, sink, listener),
            "pool" => config.pools = entries(item, key, sink, pool),
            "user" => config.users = entries(item, key, sink, section::<UserConfig>),
            "accounting" => {
                config.accounting =
                    section::<super::accounting::AccountingConfig>(item, &[key], sink)
            }
            "resolver" => {
                config.resolvers =
                    entries(item, key, sink, section::<super::resolver::ResolverConfig>)
            }
            "upgrade_socket" => match item.as_str() {
                Some(path) if !path.is_empty() => config.upgrade_socket = Some(path.into()),
                _ => sink.at(&key_path!("upgrade_socket"), "must be a non-empty path"),
            },
            other => sink.at(
                &key_path!(other),
                "unknown key; expected one of workers, shutdown_timeout, admin, log, listener, pool, user, resolver, accounting, upgrade_socket",
            ),
        }
    }
    config
}

/// Reads every entry of an array of tables with `read`.
fn entries<T>(
    item: &Item,
    key: &str,
    sink: &mut ErrorSink<'_>,
    read: impl Fn(&Item, &[&str], &mut ErrorSink<'_>) -> Option<T>,
) -> Vec<T> {
    let count = match item {
        Item::ArrayOfTables(tables) => tables.len(),
        Item::Value(toml_edit::Value::Array(array)) => array.len(),
        _ => {
            sink.at(
                &key_path!(key),
                format!("must be an array of tables ([[{key}]])"),
            );
            return Vec::new();
        }
    };
    let mut parsed_indexes = Vec::new();
    let entries = (0..count)
        .filter_map(|i| {
            let entry = read(&item[i], &[key, &i.to_string()], sink)?;
            parsed_indexes.push(i);
            Some(entry)
        })
        .collect();
    sink.parsed_indexes.push((key.to_string(), parsed_indexes));
    entries
}

/// Reads a listener: the keys every listener has, then those of its protocol; a key
/// neither reads is reported, naming the protocols that do read it.
fn listener(item: &Item, at: &[&str], sink: &mut ErrorSink<'_>) -> Option<ListenerConfig> {
    let mut listener: ListenerConfig = section(item, at, sink)?;
    let path = segments(at, &[]);
    let Some(keys) = ListenerOptions::keys(listener.protocol) else {
        sink.at(
            &segments(at, &["protocol".to_string()]),
            format!(
                "protocol `{}` is not available in this build yet; use `tcp`, `http`, `postgres`, `mysql` or `smtp`",
                listener.protocol.as_str()
            ),
        );
        return None;
    };
    let options = ListenerOptions::read(listener.protocol, item, at, sink)?;
    let protocol = listener.protocol.as_str();
    let elsewhere: Vec<(String, &'static [&'static str])> = Protocol::ALL
        .into_iter()
        .filter(|p| *p != listener.protocol)
        .filter_map(|p| {
            Some((
                format!("{} listeners", p.as_str()),
                ListenerOptions::keys(p)?,
            ))
        })
        .collect();
    keys::check(
        item,
        &path,
        &[keys::of::<ListenerConfig>(), keys],
        &format!("{protocol} listeners"),
        &elsewhere,
        sink,
    );
    listener.options = options;
    Some(listener)
}

/// Reads a pool: the keys every pool has, the HTTP keys and the database keys (whether a
/// listener using the pool reads them is checked later), and its health check's keys.
fn pool(item: &Item, at: &[&str], sink: &mut ErrorSink<'_>) -> Option<PoolConfig> {
    let mut pool: PoolConfig = section(item, at, sink)?;
    read_pool_groups(&mut pool, item, at, sink)?;
    let mut allowed = vec![keys::of::<PoolConfig>()];
    allowed.extend(pool_groups().iter().map(|(_, keys, _)| *keys));
    keys::check(item, &segments(at, &[]), &allowed, "pools", &[], sink);
    if let (Some(health), Some(health_item)) = (&mut pool.health, item.get("health")) {
        let mut at = at.to_vec();
        at.push("health");
        health.options = check_options(health, health_item, &at, sink)?;
    }
    Some(pool)
}

/// Reads the keys of a health check's kind, and reports a key neither the check nor its
/// kind reads.
fn check_options(
    health: &HealthConfig,
    item: &Item,
    at: &[&str],
    sink: &mut ErrorSink<'_>,
) -> Option<CheckOptions> {
    let kinds: [(CheckKind, &'static [&'static str]); 5] = [
        (CheckKind::Tcp, &[]),
        (CheckKind::Http, keys::of::<HttpCheck>()),
        (CheckKind::Postgres, keys::of::<DatabaseCheck>()),
        (CheckKind::Mysql, keys::of::<MysqlCheck>()),
        (CheckKind::Smtp, &[]),
    ];
    let (options, keys) = match health.check {
        CheckKind::Tcp => (CheckOptions::Tcp, kinds[0].1),
        CheckKind::Http => (CheckOptions::Http(section(item, at, sink)?), kinds[1].1),
        CheckKind::Postgres => (CheckOptions::Postgres(section(item, at, sink)?), kinds[2].1),
        CheckKind::Mysql => (CheckOptions::Mysql(section(item, at, sink)?), kinds[3].1),
        CheckKind::Smtp => (CheckOptions::Smtp, kinds[4].1),
    };
    let elsewhere: Vec<(String, &'static [&'static str])> = kinds
        .iter()
        .filter(|(kind, _)| *kind != health.check)
        .map(|(kind, keys)| (format!("`{}` checks", kind.as_str()), *keys))
        .collect();
    keys::check(
        item,
        &segments(at, &[]),
        &[keys::of::<HealthConfig>(), keys],
        &format!("`{}` checks", health.check.as_str()),
        &elsewhere,
        sink,
    );
    Some(options)
}
