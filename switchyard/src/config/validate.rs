//! Semantic checks that serde cannot express: references, uniqueness, addresses, limits.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::load::ErrorSink;
use super::schema::{
    CheckKind, ClientTlsMode, Config, ListenerRole, PoolMode, PostgresAuth, Protocol,
};
use crate::key_path;

/// Checks a parsed config, recording every problem in `sink`.
pub fn validate(config: &Config, sink: &mut ErrorSink<'_>) {
    if let Some(admin) = &config.admin {
        if admin.listen.parse::<SocketAddr>().is_err() {
            sink.at(
                &key_path!("admin", "listen"),
                format!("`{}` is not an IP:port address", admin.listen),
            );
        }
        if let Some(token) = &admin.token
            && let Err(e) = crate::admin::resolve_secret(token)
        {
            sink.at(&key_path!("admin", "token"), e);
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

    let unparsed_pools = sink.unparsed_names("pool");
    let mut pool_names = unique_names(config.pools.iter().map(|p| p.name.as_str()), "pool", sink);
    pool_names.extend(unparsed_pools.iter().map(String::as_str));
    unique_names(
        config.listeners.iter().map(|l| l.name.as_str()),
        "listener",
        sink,
    );

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
        if !matches!(
            listener.protocol,
            Protocol::Tcp | Protocol::Http | Protocol::Postgres
        ) {
            sink.at(
                &key_path!("listener", i, "protocol"),
                format!(
                    "protocol `{}` is not available in this build yet; use `tcp` or `http`",
                    listener.protocol.as_str()
                ),
            );
        }
        match &listener.pool {
            Some(pool) if !pool_names.contains(pool.as_str()) => sink.at(
                &key_path!("listener", i, "pool"),
                format!("pool `{pool}` is not defined"),
            ),
            None if listener.routes.is_empty() => sink.at(
                &key_path!("listener", i),
                "a listener needs a `pool` (or routes)",
            ),
            _ => {}
        }
        validate_database_listener(config, i, sink);
        crate::protocol::postgres::auth::validate_listener(config, i, sink);
        if listener.tls_passthrough
            && (listener.tls.is_some() || listener.protocol != Protocol::Tcp)
        {
            sink.at(
                &key_path!("listener", i, "tls_passthrough"),
                "only for `tcp` listeners without `tls`",
            );
        }
        if listener.protocol == Protocol::Http {
            crate::protocol::http::validate_listener(&listener.http, &mut |key, message| {
                sink.at(&key_path!("listener", i, "http", key), message)
            });
        }
        if listener.max_connections == Some(0) {
            sink.at(
                &key_path!("listener", i, "max_connections"),
                "must be at least 1",
            );
        }
        for (r, route) in listener.routes.iter().enumerate() {
            if !pool_names.contains(route.pool.as_str()) {
                sink.at(
                    &key_path!("listener", i, "routes", r, "pool"),
                    format!("pool `{}` is not defined", route.pool),
                );
            }
            if listener.protocol == Protocol::Tcp
                && !listener.tls_passthrough
                && listener.tls.is_none()
            {
                sink.at(
                    &key_path!("listener", i, "routes", r),
                    "tcp listeners route (by `sni`) only with `tls` or `tls_passthrough = true`",
                );
            }
            if listener.protocol == Protocol::Http {
                crate::protocol::http::validate_route(route, &mut |key, message| {
                    sink.at(&key_path!("listener", i, "routes", r, key), message)
                });
            }
            let pool = config.pools.iter().find(|p| p.name == route.pool);
            crate::protocol::postgres::split::validate_route(
                listener.protocol,
                route,
                pool,
                &mut |key, message| sink.at(&key_path!("listener", i, "routes", r, key), message),
            );
        }
    }

    crate::tls::validate(config, sink);
    crate::protocol::postgres::auth::validate_users(config, sink);
    for (i, pool) in config.pools.iter().enumerate() {
        if pool.servers.is_empty() {
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
            if let Err(e) = crate::upstream::ServerAddress::parse(&server.address) {
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
            if health.check == CheckKind::Smtp {
                sink.at(
                    &key_path!("pool", i, "health", "check"),
                    "only `tcp`, `http`, `postgres` and `mysql` checks are available in this build yet",
                );
            }
            if health.check == CheckKind::Mysql && health.user.is_none() {
                sink.at(
                    &key_path!("pool", i, "health"),
                    "a `mysql` check needs `user` (an account that may log in and run SHOW VARIABLES and SHOW REPLICA STATUS)",
                );
            }
            if let Some(password) = &health.password
                && let Err(e) = crate::admin::resolve_secret(password)
            {
                sink.at(&key_path!("pool", i, "health", "password"), e);
            }
            if health.fall == 0 {
                sink.at(
                    &key_path!("pool", i, "health", "fall"),
                    "must be at least 1",
                );
            }
            if health.rise == 0 {
                sink.at(
                    &key_path!("pool", i, "health", "rise"),
                    "must be at least 1",
                );
            }
            if health.interval.is_zero() {
                sink.at(
                    &key_path!("pool", i, "health", "interval"),
                    "must be longer than zero",
                );
            }
            if !health.path.starts_with('/') {
                sink.at(&key_path!("pool", i, "health", "path"), "must start with /");
            }
            if let Err(e) = crate::health::StatusRange::parse(&health.expect_status) {
                sink.at(&key_path!("pool", i, "health", "expect_status"), e);
            }
            if hyper::Method::from_bytes(health.method.as_bytes()).is_err() {
                sink.at(
                    &key_path!("pool", i, "health", "method"),
                    "not a valid HTTP method",
                );
            }
        }
        validate_pooling(config, i, sink);
        crate::protocol::postgres::split::validate_pool(pool, &mut |key, message| {
            sink.at(&key_path!("pool", i, key), message)
        });
        if pool.timeouts.connect.is_zero() {
            sink.at(
                &key_path!("pool", i, "timeouts", "connect"),
                "must be longer than zero",
            );
        }
    }
}

/// Keys of database listeners: `role` needs servers whose role is known, i.e. pools with
/// a `postgres` health check; limits must leave room for real startups.
fn validate_database_listener(config: &Config, i: usize, sink: &mut ErrorSink<'_>) {
    let listener = &config.listeners[i];
    if listener.client_tls.is_some() && listener.protocol != Protocol::Postgres {
        sink.at(
            &key_path!("listener", i, "client_tls"),
            "`client_tls` applies to postgres listeners only",
        );
    }
    if listener.client_tls_mode() != ClientTlsMode::Disabled && listener.tls.is_none() {
        sink.at(
            &key_path!("listener", i, "client_tls"),
            "needs `tls` with the certificates to offer",
        );
    }
    if listener.protocol == Protocol::Postgres {
        if listener.limits.startup_message < 1024 {
            sink.at(
                &key_path!("listener", i, "limits", "startup_message"),
                "must be at least 1024 bytes",
            );
        }
        if listener.limits.message < 1024 {
            sink.at(
                &key_path!("listener", i, "limits", "message"),
                "must be at least 1024 bytes",
            );
        }
    }
    if listener.role == ListenerRole::Any {
        return;
    }
    if listener.protocol != Protocol::Postgres {
        sink.at(
            &key_path!("listener", i, "role"),
            "`role` applies to postgres listeners only",
        );
        return;
    }
    let pool_names = listener
        .pool
        .iter()
        .chain(listener.routes.iter().map(|r| &r.pool));
    for name in pool_names {
        let checked = config.pools.iter().any(|p| {
            &p.name == name
                && p.health
                    .as_ref()
                    .is_some_and(|h| h.check == CheckKind::Postgres)
        });
        if !checked {
            sink.at(
                &key_path!("listener", i, "role"),
                format!(
                    "pool `{name}` needs `health = {{ check = \"postgres\" }}` so that its servers' roles are known"
                ),
            );
        }
    }
}

/// PostgreSQL pooling keys: bounds that make sense, and transaction mode only behind
/// postgres listeners.
fn validate_pooling(config: &Config, i: usize, sink: &mut ErrorSink<'_>) {
    let pool = &config.pools[i];
    if pool.pool_size == 0 {
        sink.at(&key_path!("pool", i, "pool_size"), "must be at least 1");
    }
    if pool.min_idle > pool.pool_size {
        sink.at(
            &key_path!("pool", i, "min_idle"),
            format!("must not exceed pool_size ({})", pool.pool_size),
        );
    }
    if pool.max_prepared_statements == 0 {
        sink.at(
            &key_path!("pool", i, "max_prepared_statements"),
            "must be at least 1",
        );
    }
    if pool.max_transaction_pools == 0 {
        sink.at(
            &key_path!("pool", i, "max_transaction_pools"),
            "must be at least 1",
        );
    }
    if pool.pool_mode != PoolMode::Transaction {
        if pool.read_write_split {
            sink.at(
                &key_path!("pool", i, "read_write_split"),
                "the split chooses a server per transaction: it needs `pool_mode = \"transaction\"`",
            );
        }
        return;
    }
    let used_by_other = config.listeners.iter().any(|listener| {
        listener.protocol != Protocol::Postgres
            && (listener.pool.as_deref() == Some(pool.name.as_str())
                || listener.routes.iter().any(|r| r.pool == pool.name))
    });
    if used_by_other {
        sink.at(
            &key_path!("pool", i, "pool_mode"),
            "transaction pooling is for pools behind postgres listeners only",
        );
    }
    for (l, listener) in config.listeners.iter().enumerate() {
        let uses_pool = listener.pool.as_deref() == Some(pool.name.as_str())
            || listener.routes.iter().any(|r| r.pool == pool.name);
        if uses_pool && listener.auth == Some(PostgresAuth::Passthrough) {
            sink.at(
                &key_path!("listener", l, "auth"),
                format!(
                    "pool `{}` pools transactions: switchyard logs in to its servers itself, so clients must authenticate to switchyard (not `passthrough`)",
                    pool.name
                ),
            );
        }
    }
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
