//! Semantic checks that serde cannot express: references, uniqueness, addresses, limits,
//! and keys written for a protocol that does not read them. The rules of each protocol's
//! own keys live with their types (`tcp`, `http`, `postgres`, `database`).

use std::collections::HashSet;
use std::net::SocketAddr;

use super::database::{self, PoolView};
use super::http;
use super::listener_keys::Surroundings;
use super::pool::{CheckOptions, PoolConfig};
use super::protocols::Protocol;
use super::report::ErrorSink;
use super::schema::Config;
use crate::key_path;

/// Checks a parsed config, recording every problem in `sink`.
pub fn validate(config: &Config, sink: &mut ErrorSink<'_>) {
    validate_admin_and_log(config, sink);
    let unparsed_pools = sink.unparsed_names("pool");
    let mut pool_names = unique_names(config.pools.iter().map(|p| p.name.as_str()), "pool", sink);
    pool_names.extend(unparsed_pools.iter().map(String::as_str));
    unique_names(
        config.listeners.iter().map(|l| l.name.as_str()),
        "listener",
        sink,
    );
    let pool_views: Vec<PoolView<'_>> = config.pools.iter().map(PoolView::from).collect();
    let mut bound = HashSet::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        match listener.listen.parse::<SocketAddr>() {
            Ok(addr) => {
                if addr.port() != 0 && !bound.insert(addr) {
                    sink.at(
                        &key_path!("listener", i, "listen"),
                        format!("{addr} is already used by another listener"),
                    );
                }
            }
            Err(_) => sink.at(
                &key_path!("listener", i, "listen"),
                format!(
                    "`{}` is not an IP:port address (use e.g. 127.0.0.1:8080 or [::]:8080)",
                    listener.listen
                ),
            ),
        }
        let pools = listener.pools();
        if pools.is_empty() {
            sink.at(
                &key_path!("listener", i),
                "a listener needs a `pool` (or routes)",
            );
        }
        if let Some(pool) = &listener.pool
            && !pool_names.contains(pool.as_str())
        {
            sink.at(
                &key_path!("listener", i, "pool"),
                format!("pool `{pool}` is not defined"),
            );
        }
        let routes = pools.iter().skip(usize::from(listener.pool.is_some()));
        for (r, pool) in routes.enumerate() {
            if !pool_names.contains(pool) {
                sink.at(
                    &key_path!("listener", i, "routes", r, "pool"),
                    format!("pool `{pool}` is not defined"),
                );
            }
        }
        if listener.max_connections == Some(0) {
            sink.at(
                &key_path!("listener", i, "max_connections"),
                "must be at least 1",
            );
        }
        if listener.workers == Some(0) {
            sink.at(&key_path!("listener", i, "workers"), "must be at least 1");
        }
        if !listener.protocol.has_login() {
            let login = key_path!("listener", i, "timeouts", "login");
            let logins = key_path!("listener", i, "max_logins_per_address");
            for at in [&login[..], &logins[..]] {
                if sink.is_set(at) {
                    sink.at(at, "applies to postgres, mysql and smtp listeners only");
                }
            }
        }
        if listener.timeouts.login.is_zero() {
            sink.at(
                &key_path!("listener", i, "timeouts", "login"),
                "must be more than 0",
            );
        }
        if listener.protocol != Protocol::Http {
            for key in ["http_request", "keep_alive"] {
                let at = key_path!("listener", i, "timeouts", key);
                if sink.is_set(&at) {
                    sink.at(&at, "applies to http listeners only");
                }
            }
        }
        let around = Surroundings {
            tls: listener.tls.is_some(),
            pool: listener.pool.as_ref(),
            users: &config.users,
            pools: &pool_views,
        };
        listener
            .options
            .keys_of_protocol()
            .validate(&around, i, sink);
    }
    database::validate_users(&config.users, sink);
    super::resolver::validate(&config.resolvers, &config.pools, sink);
    super::accounting::validate(config.accounting.as_ref(), sink);
    for (i, (pool, view)) in config.pools.iter().zip(&pool_views).enumerate() {
        validate_pool(config, i, pool, view, sink);
    }
}

fn validate_admin_and_log(config: &Config, sink: &mut ErrorSink<'_>) {
    if let Some(admin) = &config.admin {
        if admin.listen.parse::<SocketAddr>().is_err() {
            sink.at(
                &key_path!("admin", "listen"),
                format!("`{}` is not an IP:port address", admin.listen),
            );
        }
        if let Some(token) = &admin.token
            && let Err(e) = crate::secret::resolve(token)
        {
            sink.at(&key_path!("admin", "token"), e);
        }
        for host in &admin.allowed_hosts {
            if let Err(e) = crate::authority::Authority::parse(host.as_bytes()) {
                sink.at(
                    &key_path!("admin", "allowed_hosts"),
                    format!("`{host}` is not a host name or host:port: {e}"),
                );
            }
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        sink.at(
            &key_path!("log", "level"),
            format!("invalid log filter: {e}"),
        );
    }
    let access = config.log.access.as_str();
    if !matches!(access, "stdout" | "stderr" | "off") {
        let path = sink.config_dir().join(access);
        let dir = path.parent().map(|p| p.to_path_buf()).unwrap_or_default();
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            sink.at(
                &key_path!("log", "access"),
                format!("directory {} does not exist", dir.display()),
            );
        }
    }
}

/// Checks pool `i`; `view` is the pool as the database rules read it (made once, for the
/// listeners' rules too).
fn validate_pool(
    config: &Config,
    i: usize,
    pool: &PoolConfig,
    view: &PoolView<'_>,
    sink: &mut ErrorSink<'_>,
) {
    if pool.servers.is_empty() && pool.resolver.is_none() {
        sink.at(
            &key_path!("pool", i, "servers"),
            "a pool needs at least one server",
        );
    }
    let mut names = HashSet::new();
    for (s, server) in pool.servers.iter().enumerate() {
        if !names.insert(server.display_name()) {
            sink.at(
                &key_path!("pool", i, "servers", s),
                format!(
                    "server name `{}` is used twice in pool `{}`",
                    server.display_name(),
                    pool.name
                ),
            );
        }
        if let Err(e) = crate::address::ServerAddress::parse(&server.address) {
            sink.at(&key_path!("pool", i, "servers", s, "address"), e);
        }
        if server.weight > 256 {
            sink.at(
                &key_path!("pool", i, "servers", s, "weight"),
                "must be from 0 to 256",
            );
        }
        if server.max_connections == Some(0) {
            sink.at(
                &key_path!("pool", i, "servers", s, "max_connections"),
                "must be at least 1",
            );
        }
    }
    if let Some(health) = &pool.health {
        for (key, zero, message) in [
            ("fall", health.fall == 0, "must be at least 1"),
            ("rise", health.rise == 0, "must be at least 1"),
            (
                "interval",
                health.interval.is_zero(),
                "must be longer than zero",
            ),
        ] {
            if zero {
                sink.at(&key_path!("pool", i, "health", key), message);
            }
        }
        match &health.options {
            CheckOptions::Tcp | CheckOptions::Smtp => {}
            CheckOptions::Http(check) => http::validate_check(check, i, sink),
            CheckOptions::Postgres(check) => {
                database::validate_check(check.password.as_deref(), i, sink);
            }
            CheckOptions::Mysql(check) => {
                database::validate_check(check.password.as_deref(), i, sink);
            }
        }
    }
    if pool.timeouts.connect.is_zero() {
        sink.at(
            &key_path!("pool", i, "timeouts", "connect"),
            "must be longer than zero",
        );
    }
    database::validate_pool(view, i, sink);
    validate_pool_keys_are_read(config, i, pool, sink);
}

/// A pool key (or `upstream_tls` key) that only some protocol's listeners read, written on
/// a pool that listeners use but none of that protocol: it would do nothing, silently.
fn validate_pool_keys_are_read(
    config: &Config,
    i: usize,
    pool: &PoolConfig,
    sink: &mut ErrorSink<'_>,
) {
    let users: HashSet<Protocol> = config
        .listeners
        .iter()
        .filter(|l| l.pools().contains(&pool.name.as_str()))
        .map(|l| l.protocol)
        .collect();
    if users.is_empty() {
        return;
    }
    let groups = super::protocols::pool_groups();
    let own = groups.iter().flat_map(|&(readers, keys, who)| {
        keys.iter()
            .map(move |key| (readers, key_path!("pool", i, *key).to_vec(), who))
    });
    let tls = super::protocols::upstream_tls_groups();
    let nested = tls.iter().map(|&(readers, key, who)| {
        let at = key_path!("pool", i, "upstream_tls", key).to_vec();
        (readers, at, who)
    });
    for (readers, at, who) in own.chain(nested) {
        if readers.iter().any(|p| users.contains(p)) || !sink.is_set(&at) {
            continue;
        }
        sink.at(
            &at,
            format!(
                "read by {who} only, and pool `{}` serves none (it serves {})",
                pool.name,
                names(&users)
            ),
        );
    }
}

/// Protocol names, sorted, for a message.
fn names(protocols: &HashSet<Protocol>) -> String {
    let mut names: Vec<&str> = protocols.iter().map(|p| p.as_str()).collect();
    names.sort_unstable();
    names.join(", ")
}

/// Reports duplicate names and returns the set of names.
fn unique_names<'c>(
    names: impl Iterator<Item = &'c str>,
    section: &str,
    sink: &mut ErrorSink<'_>,
) -> HashSet<&'c str> {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if name.is_empty() {
            sink.at(&key_path!(section, i, "name"), "must not be empty");
        } else if !seen.insert(name) {
            sink.at(
                &key_path!(section, i, "name"),
                format!("{section} name `{name}` is used twice"),
            );
        }
    }
    seen
}
