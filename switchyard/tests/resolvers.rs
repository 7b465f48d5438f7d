//! Pools with `resolver` over real sockets: HTTP routed by Host through a real Redis (two
//! instances sharing it, purges, an outage), a map file, a webhook (single flight), and
//! the SSRF guard refusing answers.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::{Response, StatusCode};
use redis::AsyncCommands;
use support::http::{HttpBackend, full, get};
use support::ops::listener_addr;
use support::redis::RedisServer;
use support::{Proxy, wait_until};

/// A backend answering its own name.
async fn named(name: &'static str) -> HttpBackend {
    HttpBackend::start(move |_| async move { Response::new(full(name)) }).await
}

/// An http listener over a pool resolved by `{host}` through `resolver` (a TOML table),
/// answers on loopback allowed.
async fn proxy(resolver: &str) -> (Proxy, SocketAddr) {
    proxy_allowing(resolver, "\"127.0.0.0/8\"").await
}

/// Like [`proxy`], with `allow` (a TOML array's items) as `allow_private`.
async fn proxy_allowing(resolver: &str, allow: &str) -> (Proxy, SocketAddr) {
    start_resolved(resolver, allow, None).await
}

/// Like [`proxy_allowing`], with an admin `token` when given.
async fn start_resolved(resolver: &str, allow: &str, token: Option<&str>) -> (Proxy, SocketAddr) {
    let token_key = token.map_or(String::new(), |t| format!("token = \"{t}\""));
    let config = format!(
        r#"
[admin]
listen = "{{admin}}"
{token_key}

[[listener]]
name = "web"
listen = "127.0.0.1:0"
protocol = "http"
pool = "tenants"

[[pool]]
name = "tenants"
resolver = "r"
key = "{{host}}"

[[resolver]]
name = "r"
allow_private = [{allow}]
{resolver}
"#
    );
    let proxy = Proxy::start_with_token(&config, token).await;
    let front = listener_addr(&proxy, "web").await;
    (proxy, front)
}

fn answer(backend: &HttpBackend) -> String {
    format!(
        r#"{{"servers":[{{"address":"{}"}}],"tenant":"t"}}"#,
        backend.addr
    )
}

async fn body_for(front: SocketAddr, host: &str) -> (u16, String) {
    let answer = get(front, "/", &[("host", host)]).await;
    (answer.status, answer.body)
}

#[tokio::test]
async fn redis_routes_by_host_and_a_purge_reaches_every_instance() {
    let redis = RedisServer::start().await;
    let (a, b) = (named("a").await, named("b").await);
    let mut conn = redis.connection().await;
    let _: () = conn.set("sw:shop.example", answer(&a)).await.unwrap();
    let resolver = format!(
        "kind = \"redis\"\naddress = \"{}\"\nprefix = \"sw:\"\ncache = {{ ttl = \"1h\" }}",
        redis.url()
    );
    let (first, front1) = proxy(&resolver).await;
    let (_second, front2) = proxy(&resolver).await;
    for front in [front1, front2] {
        assert_eq!(
            body_for(front, "Shop.Example:8080").await,
            (200, "a".into())
        );
    }
    // No key: no route.
    assert_eq!(body_for(front1, "nobody.example").await.0, 503);
    // Moved and purged: both instances follow, though their answers are cached for an hour.
    let _: () = conn.set("sw:shop.example", answer(&b)).await.unwrap();
    let _: i64 = conn.publish("sw:purge", "shop.example").await.unwrap();
    for front in [front1, front2] {
        wait_until("the purge to reach the instance", || async move {
            body_for(front, "shop.example").await == (200, "b".into())
        })
        .await;
    }
    // Keep-alive reuse works for resolved servers: one connection for many requests.
    let before = b.accepted.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(body_for(front1, "shop.example").await.1, "b");
    }
    assert!(b.accepted.load(Ordering::SeqCst) <= before + 1);
    drop(first);
}

/// The answers are in Redis, not a map: a map's reread drops the whole cache, which would
/// hide whether the refused connection made the proxy ask again.
#[tokio::test]
async fn a_resolved_server_refusing_connections_is_held_down_and_asked_about_again() {
    let redis = RedisServer::start().await;
    let live = named("live").await;
    let closed: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let mut conn = redis.connection().await;
    let at = |addr: SocketAddr| format!(r#"{{"servers":[{{"address":"{addr}"}}]}}"#);
    let _: () = conn.set("sw:shop.example", at(closed)).await.unwrap();
    let resolver = format!(
        "kind = \"redis\"\naddress = \"{}\"\nprefix = \"sw:\"\ncache = {{ ttl = \"1h\" }}",
        redis.url()
    );
    let (proxy, front) = proxy(&resolver).await;
    assert_eq!(body_for(front, "shop.example").await.0, 502);
    // The server is held down, its failure shown.
    let closed_server = || async {
        let pools = proxy.pools().await;
        let sets = &pools[0].resolved;
        sets.iter()
            .flat_map(|set| &set.servers)
            .find(|s| s.name == closed.to_string())
            .cloned()
            .expect("the closed server's set is shown")
    };
    let held = closed_server().await;
    assert_eq!(held.state, "down", "{held:?}");
    assert!(
        held.check
            .as_deref()
            .is_some_and(|c| c.starts_with("connect")),
        "{held:?}"
    );
    // Moved, without a purge: the answer cached for an hour is asked about again at once.
    let _: () = conn.set("sw:shop.example", at(live.addr)).await.unwrap();
    assert_eq!(body_for(front, "shop.example").await, (200, "live".into()));
    // Another key answered with the held server: no client is sent to it while held ...
    let _: () = conn.set("sw:blog.example", at(closed)).await.unwrap();
    assert_eq!(body_for(front, "blog.example").await.0, 503);
    assert_eq!(closed_server().await.connect_errors, 1);
    // ... and its answer, though cached for an hour, is asked about again when the hold ends.
    let _: () = conn.set("sw:blog.example", at(live.addr)).await.unwrap();
    wait_until("the moved answer once the hold is over", || async {
        body_for(front, "blog.example").await == (200, "live".into())
    })
    .await;
}

#[tokio::test]
async fn the_status_shows_each_resolved_server_set_with_its_keys() {
    let (a, b) = (named("a").await, named("b").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    let mut routes = String::new();
    for (key, backend, tenant) in [
        ("shop.example", &a, "t1"),
        ("blog.example", &a, "t2"),
        ("other.example", &b, "t3"),
    ] {
        routes.push_str(&format!(
            "[\"{key}\"]\nservers = [{{ address = \"{}\" }}]\ntenant = \"{tenant}\"\n",
            backend.addr
        ));
    }
    std::fs::write(&file, routes).unwrap();
    let (proxy, front) = proxy(&format!("kind = \"map\"\nfile = \"{}\"", file.display())).await;
    for host in ["shop.example", "blog.example", "other.example"] {
        body_for(front, host).await;
    }
    let pool = &proxy.pools().await[0];
    assert!(pool.servers.is_empty());
    assert!(
        pool.resolved
            .iter()
            .all(|set| set.servers.len() == 1 && set.servers[0].total >= 1)
    );
    // Per set: its server, and its keys with their tenants.
    let mut shown: Vec<(String, String)> = pool
        .resolved
        .iter()
        .map(|set| {
            let keys: Vec<String> = set
                .keys
                .iter()
                .map(|k| format!("{} {}", k.key, k.tenant.as_deref().unwrap_or("-")))
                .collect();
            (set.servers[0].name.clone(), keys.join(", "))
        })
        .collect();
    let mut expected = vec![
        (
            a.addr.to_string(),
            "blog.example t2, shop.example t1".to_string(),
        ),
        (b.addr.to_string(), "other.example t3".to_string()),
    ];
    shown.sort();
    expected.sort();
    assert_eq!(shown, expected);
    // The operator's view too.
    let (ok, out, err) = proxy.ctl(&["status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("keys: blog.example (tenant t2), shop.example (tenant t1)"),
        "{out}"
    );
    assert!(out.contains(&b.addr.to_string()), "{out}");
}

#[tokio::test]
async fn redis_outage_serves_stale_answers_and_recovers() {
    let mut redis = RedisServer::start().await;
    let a = named("a").await;
    let mut conn = redis.connection().await;
    let _: () = conn.set("sw:cached.example", answer(&a)).await.unwrap();
    // A zero TTL makes every request ask Redis, so that during the outage the cached
    // answer can only come from `stale_if_error`.
    let resolver = format!(
        "kind = \"redis\"\naddress = \"{}\"\nprefix = \"sw:\"\ntimeout = \"500ms\"\ncache = {{ ttl = \"0s\", stale_if_error = \"10m\" }}",
        redis.url()
    );
    let (_proxy, front) = proxy(&resolver).await;
    assert_eq!(body_for(front, "cached.example").await, (200, "a".into()));
    redis.stop();
    assert_eq!(body_for(front, "cached.example").await, (200, "a".into()));
    assert_eq!(body_for(front, "new.example").await.0, 503);
    redis.run().await;
    let mut conn = redis.connection().await;
    let _: () = conn.set("sw:new.example", answer(&a)).await.unwrap();
    wait_until("lookups to work again", || async move {
        body_for(front, "new.example").await == (200, "a".into())
    })
    .await;
}

#[tokio::test]
async fn map_resolver_reloads_its_file() {
    let (a, b) = (named("a").await, named("b").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.json");
    let write = |backend: &HttpBackend| {
        std::fs::write(&file, format!(r#"{{"shop.example": {}}}"#, answer(backend))).unwrap()
    };
    write(&a);
    let resolver = format!("kind = \"map\"\nfile = \"{}\"", file.display());
    let (proxy, front) = proxy(&resolver).await;
    assert_eq!(body_for(front, "shop.example").await, (200, "a".into()));
    // The operator's view: the cached answer, then a purge.
    let resolve = || {
        let (ok, out, err) = proxy.ctl(&["resolve", "r", "shop.example"]);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).expect("ctl resolve prints JSON")
    };
    let shown = resolve();
    assert_eq!(shown["cache"], "fresh");
    assert_eq!(shown["answer"]["servers"][0]["address"], a.addr.to_string());
    assert_eq!(shown["answer"]["tenant"], "t");
    let (ok, out, err) = proxy.ctl(&["purge", "r", "shop.example"]);
    assert!(ok && out.contains("purged"), "{out}{err}");
    assert_eq!(resolve()["cache"], "miss");
    assert!(
        support::ops::scrape(
            &proxy,
            "switchyard_resolver_lookups_total",
            &[("resolver", "r")]
        )
        .await
            >= 2.0
    );
    // Each lookup's time, in the histogram (a map answers well within its last bucket).
    let text = proxy.metrics().await;
    let samples = support::ops::parse_metrics(&text).expect("valid metrics text");
    let lookups = |name: &str, labels: &[(&str, &str)]| {
        let mut labels = labels.to_vec();
        labels.push(("resolver", "r"));
        support::ops::metric(&samples, name, &labels).unwrap_or_else(|| panic!("{name}: {text}"))
    };
    let count = lookups("switchyard_resolver_lookup_seconds_count", &[]);
    assert!(count >= 2.0, "{text}");
    assert_eq!(
        lookups(
            "switchyard_resolver_lookup_seconds_bucket",
            &[("le", "+Inf")]
        ),
        count
    );
    assert!(
        lookups(
            "switchyard_resolver_lookup_seconds_bucket",
            &[("le", "3.2768")]
        ) >= 2.0
    );
    write(&b);
    proxy.signal("HUP");
    wait_until("the map to be reread", || async move {
        body_for(front, "shop.example").await == (200, "b".into())
    })
    .await;
}

/// A webhook that answers `backend` for `shop.example`, 403 for `banned.example`, 404
/// otherwise, holding every answer until `open` is set; counts its calls.
async fn webhook(
    backend: SocketAddr,
    calls: Arc<AtomicUsize>,
    open: Arc<tokio::sync::Semaphore>,
) -> HttpBackend {
    HttpBackend::start(move |request| {
        let (calls, open) = (calls.clone(), open.clone());
        async move {
            use http_body_util::BodyExt;
            assert_eq!(request.headers()["x-secret"], "s3cret");
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let asked: serde_json::Value = serde_json::from_slice(&body).unwrap();
            calls.fetch_add(1, Ordering::SeqCst);
            let _permit = open.acquire().await;
            let (status, body) = match asked["key"].as_str() {
                Some("shop.example") => (
                    StatusCode::OK,
                    format!(r#"{{"servers":[{{"address":"{backend}"}}]}}"#),
                ),
                Some("banned.example") => (StatusCode::FORBIDDEN, String::new()),
                _ => (StatusCode::NOT_FOUND, String::new()),
            };
            assert_eq!(asked["protocol"], "http");
            assert_eq!(asked["listener"], "web");
            let mut response = Response::new(full(body));
            *response.status_mut() = status;
            response
        }
    })
    .await
}

#[tokio::test]
async fn webhook_single_flight_for_a_thousand_clients_and_its_statuses() {
    let a = named("a").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(tokio::sync::Semaphore::new(0));
    let hook = webhook(a.addr, calls.clone(), open.clone()).await;
    let resolver = format!(
        "kind = \"http\"\nurl = \"http://{}/resolve\"\nheaders = {{ x-secret = \"s3cret\" }}\ntimeout = \"30s\"",
        hook.addr
    );
    let (proxy, front) = proxy(&resolver).await;
    let clients: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(body_for(front, "shop.example")))
        .collect();
    wait_until("the first lookup to reach the webhook", || {
        let calls = calls.clone();
        async move { calls.load(Ordering::SeqCst) == 1 }
    })
    .await;
    wait_until("every client to be connected", || async {
        proxy
            .listeners()
            .await
            .iter()
            .any(|l| l.name == "web" && l.active >= 1000)
    })
    .await;
    open.add_permits(1_000_000);
    for client in clients {
        assert_eq!(client.await.unwrap(), (200, "a".into()));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one lookup for one cold key"
    );
    assert_eq!(body_for(front, "banned.example").await.0, 403);
    assert_eq!(body_for(front, "other.example").await.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_over_https_is_verified_against_its_ca() {
    let a = named("a").await;
    let pki = support::tls::Pki::new("Webhook CA");
    let cert = pki.issue("hook", "hook.test", &["127.0.0.1"]);
    let body = format!(r#"{{"servers":[{{"address":"{}"}}]}}"#, a.addr);
    let config = support::tls::server_config(&cert, None, &["http/1.1"]);
    let hook = HttpBackend::start_tls(config, move |_| {
        let body = body.clone();
        async move { Response::new(full(body)) }
    })
    .await;
    let resolver = |ca: &str| {
        format!(
            "kind = \"http\"\nurl = \"https://{}/resolve\"\n{ca}",
            hook.addr
        )
    };
    let (_trusting, front) = proxy(&resolver(&format!("ca = {:?}", pki.ca))).await;
    assert_eq!(body_for(front, "shop.example").await, (200, "a".into()));
    // Checked against the Mozilla roots, the test CA's certificate is refused.
    let (untrusting, front) = proxy(&resolver("")).await;
    assert_eq!(body_for(front, "shop.example").await.0, 503);
    wait_until("the log to say why", || async {
        untrusting.stderr().contains("UnknownIssuer")
    })
    .await;
}

#[tokio::test]
async fn the_ssrf_guard_refuses_private_answers_unless_allowed() {
    let a = named("a").await;
    let port = a.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    let mut routes = String::new();
    for (key, address) in [
        ("loopback.example", format!("127.0.0.1:{port}")),
        ("name.example", format!("localhost:{port}")),
        ("mapped.example", format!("[::ffff:127.0.0.1]:{port}")),
        ("metadata.example", "169.254.169.254:80".to_string()),
        ("private.example", "10.1.2.3:80".to_string()),
        ("cgnat.example", "100.64.0.1:80".to_string()),
        ("v6.example", format!("[::1]:{port}")),
    ] {
        routes.push_str(&format!(
            "[\"{key}\"]\nservers = [{{ address = \"{address}\" }}]\n"
        ));
    }
    std::fs::write(&file, routes).unwrap();
    let map = format!("kind = \"map\"\nfile = \"{}\"", file.display());
    let (strict, front) = proxy_allowing(&map, "").await;
    for host in [
        "loopback.example",
        "name.example",
        "mapped.example",
        "metadata.example",
        "private.example",
        "cgnat.example",
        "v6.example",
    ] {
        assert_eq!(body_for(front, host).await.0, 403, "{host}");
    }
    wait_until("the log to name the rule", || async {
        strict.stderr().contains("link-local 169.254.0.0/16")
            && strict.stderr().contains("IPv4-mapped form of loopback")
    })
    .await;
    let (_allowing, front) = proxy_allowing(&map, "\"127.0.0.1/32\"").await;
    assert_eq!(body_for(front, "loopback.example").await, (200, "a".into()));
    assert_eq!(body_for(front, "mapped.example").await, (200, "a".into()));
    assert_eq!(body_for(front, "private.example").await.0, 403);
}

#[tokio::test]
async fn postgres_routes_by_database_through_redis_with_rewrites() {
    postgres_by_database("session").await;
}

/// Both tenants' databases are rewritten to the same name on different clusters: the
/// transaction pools must keep their server connections apart.
#[tokio::test]
async fn postgres_transaction_pooling_shares_connections_per_resolved_server_only() {
    postgres_by_database("transaction").await;
}

async fn postgres_by_database(pool_mode: &str) {
    use support::postgres::{PASSWORD, PgCluster, PgOptions, psql, psql_ok, stderr};
    let redis = RedisServer::start().await;
    let options = PgOptions {
        databases: vec!["app"],
        ..PgOptions::default()
    };
    let (one, two) = (PgCluster::start(&options), PgCluster::start(&options));
    let mut conn = redis.connection().await;
    for (tenant, cluster) in [("acme", &one), ("bob", &two)] {
        let value = format!(
            r#"{{"servers":[{{"address":"{}"}}],"rewrite_database":"app"}}"#,
            cluster.address()
        );
        let _: () = conn.set(format!("pg:{tenant}"), value).await.unwrap();
    }
    let config = format!(
        r#"
[admin]
listen = "{{admin}}"
[[listener]]
name = "db"
listen = "127.0.0.1:0"
protocol = "postgres"
pool = "tenants"
[[pool]]
name = "tenants"
resolver = "r"
key = "{{database}}"
key_pattern = "^db-(?P<key>[a-z0-9]+)$"
pool_mode = "{pool_mode}"
[[user]]
name = "postgres"
password = "{PASSWORD}"
[[resolver]]
name = "r"
kind = "redis"
address = "{}"
prefix = "pg:"
allow_private = ["127.0.0.0/8"]
"#,
        redis.url()
    );
    let proxy = Proxy::start(&config).await;
    let front = listener_addr(&proxy, "db").await;
    let sql = "SELECT current_database() || ':' || current_setting('port')";
    for _ in 0..3 {
        assert_eq!(
            psql_ok(front, "postgres", "db-acme", sql),
            format!("app:{}", one.port)
        );
        assert_eq!(
            psql_ok(front, "postgres", "db-bob", sql),
            format!("app:{}", two.port)
        );
    }
    // Usage per tenant (the key: the answers name none), each psql one connection with
    // one transaction (counted where transactions are seen: in transaction mode).
    let transactions = if pool_mode == "transaction" { 3 } else { 0 };
    wait_until("every session accounted to its tenant", || async {
        let (_, tenants) = proxy.get("/api/v1/tenants").await;
        let tenants: serde_json::Value = serde_json::from_str(&tenants).unwrap();
        [(0, "acme"), (1, "bob")].iter().all(|(row, tenant)| {
            tenants[row]["tenant"] == *tenant
                && tenants[row]["connections"] == 3
                && tenants[row]["transactions"] == transactions
        })
    })
    .await;
    // No key in Redis, and a name the pattern does not take: no route, 3D000.
    for database in ["db-nobody", "other"] {
        let output = psql(
            front,
            "postgres",
            database,
            "SELECT 1",
            &[("PGPASSWORD", PASSWORD)],
        );
        assert!(!output.status.success());
        assert!(
            stderr(&output).contains("no route for database"),
            "{}",
            stderr(&output)
        );
    }
}

/// The usage hash of `tenant` in Redis, as numbers.
async fn usage(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> [u64; 4] {
    let hash: std::collections::HashMap<String, u64> = conn.hgetall(key).await.unwrap();
    ["connections", "bytes_in", "bytes_out", "requests"]
        .map(|field| hash.get(field).copied().unwrap_or_default())
}

/// `n` POSTs of `body` bytes to `shop.example`, each answered with 1000 bytes.
async fn post_many(front: SocketAddr, n: usize, body: usize) {
    for _ in 0..n {
        let request = hyper::Request::post("/")
            .header("host", "shop.example")
            .body(full(vec![b'x'; body]))
            .unwrap();
        let answer = support::http::send(front, request).await;
        assert_eq!((answer.status, answer.body.len()), (200, 1000));
    }
}

/// A map resolver for `shop.example` (tenant `t`) and usage delivered to `sink` (a TOML
/// inline table).
async fn accounted_proxy(
    sink: &str,
    flush_interval: &str,
) -> (Proxy, SocketAddr, HttpBackend, tempfile::TempDir) {
    let backend = HttpBackend::start(
        |request: hyper::Request<hyper::body::Incoming>| async move {
            use http_body_util::BodyExt;
            let _ = request.into_body().collect().await;
            Response::new(full(vec![b'y'; 1000]))
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.json");
    std::fs::write(
        &file,
        format!(r#"{{"shop.example": {}}}"#, answer(&backend)),
    )
    .unwrap();
    let resolver = format!(
        "kind = \"map\"\nfile = \"{}\"\n\n[accounting]\nflush_interval = \"{flush_interval}\"\nsink = {sink}",
        file.display(),
    );
    let (proxy, front) = proxy(&resolver).await;
    (proxy, front, backend, dir)
}

/// The Redis sink of `redis`, prefix `use:`.
fn redis_sink(redis: &RedisServer) -> String {
    format!(
        "{{ kind = \"redis\", address = \"{}\", prefix = \"use:\" }}",
        redis.url()
    )
}

#[tokio::test]
async fn usage_reaches_redis_exactly_at_reload_and_at_shutdown() {
    let redis = RedisServer::start().await;
    let mut conn = redis.connection().await;
    let (mut proxy, front, _backend, _dir) = accounted_proxy(&redis_sink(&redis), "1h").await;
    post_many(front, 5, 300).await;
    let (_, tenants) = proxy.get("/api/v1/tenants").await;
    let tenants: serde_json::Value = serde_json::from_str(&tenants).unwrap();
    assert_eq!(tenants[0]["tenant"], "t");
    assert_eq!(tenants[0]["bytes_in"], 1500);
    assert_eq!(tenants[0]["bytes_out"], 5000);
    assert_eq!(tenants[0]["requests"], 5);
    let (ok, out, _) = proxy.ctl(&["tenants"]);
    assert!(ok && out.contains("t "), "{out}");
    // The flush interval is an hour: only the reload can deliver it.
    proxy.signal("HUP");
    wait_until("usage delivered at the reload", || {
        let mut conn = conn.clone();
        async move { usage(&mut conn, "use:t").await == [0, 1500, 5000, 5] }
    })
    .await;
    post_many(front, 3, 100).await;
    proxy.signal("TERM");
    assert!(proxy.wait_exit().await.success());
    assert_eq!(usage(&mut conn, "use:t").await, [0, 1800, 8000, 8]);
}

#[tokio::test]
async fn usage_counted_during_a_sink_outage_is_delivered_when_it_is_back() {
    let mut redis = RedisServer::start().await;
    let (_proxy, front, _backend, _dir) = accounted_proxy(&redis_sink(&redis), "100ms").await;
    post_many(front, 2, 50).await;
    let conn = redis.connection().await;
    wait_until("usage delivered by the periodic flush", || {
        let mut conn = conn.clone();
        async move { usage(&mut conn, "use:t").await == [0, 100, 2000, 2] }
    })
    .await;
    // Redis loses its data with the crash in this test (no persistence): only what is
    // counted while it is down is expected after it comes back.
    redis.stop();
    post_many(front, 4, 10).await;
    redis.run().await;
    let conn = redis.connection().await;
    wait_until("the batches kept during the outage to be delivered", || {
        let mut conn = conn.clone();
        async move { usage(&mut conn, "use:t").await == [0, 40, 4000, 4] }
    })
    .await;
    post_many(front, 1, 1).await;
    wait_until("later usage on top", || {
        let mut conn = conn.clone();
        async move { usage(&mut conn, "use:t").await == [0, 41, 5000, 5] }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_passthrough_routes_by_sni_through_a_map() {
    use support::tls::{Pki, connect, peer_cn};
    let pki = Pki::new("Test CA");
    let a = support::tls::tls_backend(&pki.issue("a", "a.test", &["a.test"]), "alpha").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        format!(
            "[\"a.test\"]\nservers = [{{ address = \"{}\" }}]\ntenant = \"ta\"\n",
            a.addr
        ),
    )
    .unwrap();
    let (proxy, front) = map_proxy("tcp", "tls_passthrough = true", "{sni}", &file).await;
    let mut stream = connect(front, "a.test", pki.client(None, &[]))
        .await
        .expect("end-to-end handshake");
    assert_eq!(peer_cn(&stream), "a.test");
    let mut line = [0u8; 6];
    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut line)
        .await
        .unwrap();
    assert_eq!(&line, b"alpha\n");
    drop(stream);
    assert!(
        connect(front, "b.test", pki.client(None, &[]))
            .await
            .is_err()
    );
    wait_until("the access log to name the tenant", || async {
        support::ops::access_lines(&proxy)
            .iter()
            .any(|line| line["tenant"] == "ta")
    })
    .await;
}

/// A `protocol` listener `front` (with `listener_keys`) over pool `tenants`, whose servers
/// come from the map `file` by `key`, answers on loopback allowed.
async fn map_proxy(
    protocol: &str,
    listener_keys: &str,
    key: &str,
    file: &std::path::Path,
) -> (Proxy, SocketAddr) {
    let config = support::config::map_resolved(protocol, listener_keys, key, file, "");
    let proxy = Proxy::start(&config).await;
    let front = listener_addr(&proxy, "front").await;
    (proxy, front)
}

#[tokio::test]
async fn purging_through_the_admin_api_needs_the_token() {
    let a = named("a").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.json");
    std::fs::write(&file, format!(r#"{{"shop.example": {}}}"#, answer(&a))).unwrap();
    let map = format!("kind = \"map\"\nfile = \"{}\"", file.display());
    let (proxy, front) = start_resolved(&map, "\"127.0.0.0/8\"", Some("tok")).await;
    assert_eq!(body_for(front, "shop.example").await, (200, "a".into()));
    let admin = proxy.admin.to_string();
    let args = ["purge", "r", "shop.example"];
    let (ok, _, err) = support::run_ctl(&admin, None, &args);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, out, err) = support::run_ctl(&admin, Some("tok"), &args);
    assert!(ok && out.contains("purged"), "{out}{err}");
    // Reading needs no token; an unknown resolver is 404.
    let (ok, out, _) = support::run_ctl(&admin, None, &["resolve", "r", "shop.example"]);
    assert!(ok && out.contains("\"miss\""), "{out}");
    let (ok, _, err) = support::run_ctl(&admin, None, &["resolve", "nope", "x"]);
    assert!(!ok && err.contains("404"), "{err}");
}

#[tokio::test]
async fn redis_with_auth() {
    let redis = RedisServer::start_with(Some("s3cret-pw")).await;
    let a = named("a").await;
    let mut conn = redis.connection().await;
    let _: () = conn.set("sw:shop.example", answer(&a)).await.unwrap();
    let resolver = |password: &str| {
        format!(
            "kind = \"redis\"\naddress = \"{}\"\nprefix = \"sw:\"{password}",
            redis.bare_url()
        )
    };
    let (_with, front) = proxy(&resolver("\npassword = \"s3cret-pw\"")).await;
    assert_eq!(body_for(front, "shop.example").await, (200, "a".into()));
    let (_without, front) = proxy(&resolver("")).await;
    assert_eq!(body_for(front, "shop.example").await.0, 503);
}

/// A POST an HTTP usage receiver got: its `Idempotency-Key`, body and the status it answered.
#[derive(Debug, Clone)]
struct UsagePost {
    key: String,
    body: serde_json::Value,
    status: u16,
}

/// A usage receiver over TLS with `cert`, as a billing system would run it: it checks the
/// shared secret, records every POST and answers 500 to the first `failures`.
async fn usage_receiver(
    cert: &support::tls::CertFiles,
    failures: usize,
) -> (HttpBackend, Arc<std::sync::Mutex<Vec<UsagePost>>>) {
    let posts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = posts.clone();
    let failing = Arc::new(AtomicUsize::new(failures));
    let config = support::tls::server_config(cert, None, &["http/1.1"]);
    let receiver = HttpBackend::start_tls(config, move |request| {
        let (posts, failing) = (recorded.clone(), failing.clone());
        async move {
            use http_body_util::BodyExt;
            assert_eq!(request.headers()["authorization"], "Bearer s3cret");
            let key = request.headers()["idempotency-key"]
                .to_str()
                .unwrap()
                .to_string();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let fail = failing
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let status = if fail { 500 } else { 200 };
            posts.lock().unwrap().push(UsagePost { key, body, status });
            let mut response = Response::new(full(""));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            response
        }
    })
    .await;
    (receiver, posts)
}

/// Tenant `t`'s usage as a receiver that drops batches it already has counts it: the
/// batches answered 200, each key once.
fn received_usage(posts: &[UsagePost]) -> [u64; 4] {
    let mut seen = std::collections::HashSet::new();
    let mut total = [0; 4];
    for post in posts.iter().filter(|p| p.status == 200) {
        if !seen.insert(post.key.clone()) {
            continue;
        }
        for row in post.body["tenants"].as_array().unwrap() {
            if row["tenant"] == "t" {
                for (sum, field) in
                    total
                        .iter_mut()
                        .zip(["connections", "bytes_in", "bytes_out", "requests"])
                {
                    *sum += row[field].as_u64().unwrap();
                }
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reaches_an_https_sink_once_per_batch_though_it_fails_at_first() {
    let pki = support::tls::Pki::new("Billing CA");
    let cert = pki.issue("billing", "billing.test", &["127.0.0.1"]);
    let (receiver, posts) = usage_receiver(&cert, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("sink-token");
    std::fs::write(&secret, "Bearer s3cret").unwrap();
    let sink = format!(
        "{{ kind = \"http\", url = \"https://{}/usage\", ca = {:?}, headers = {{ authorization = \"file:{}\" }} }}",
        receiver.addr,
        pki.ca.display().to_string(),
        secret.display()
    );
    let (_proxy, front, _backend, _dir) = accounted_proxy(&sink, "100ms").await;
    post_many(front, 5, 300).await;
    let done = || {
        let posts = posts.lock().unwrap().clone();
        received_usage(&posts) == [0, 1500, 5000, 5]
    };
    wait_until("the usage to be received", || async { done() }).await;
    post_many(front, 2, 7).await;
    wait_until("later usage on top", || async {
        received_usage(&posts.lock().unwrap()) == [0, 1514, 7000, 7]
    })
    .await;
    let posts = posts.lock().unwrap().clone();
    // The batches answered 500 came again with the same key (and were counted once).
    let failed: Vec<&UsagePost> = posts.iter().filter(|p| p.status == 500).collect();
    assert_eq!(failed.len(), 2, "{posts:?}");
    for post in &failed {
        assert!(
            posts
                .iter()
                .any(|p| p.status == 200 && p.key == post.key && p.body == post.body),
            "batch {} was not resent: {posts:?}",
            post.key
        );
    }
    assert!(posts.iter().all(|p| p.body["batch"] == p.key.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_messages_accepted_are_counted_per_tenant() {
    use support::smtp::{Aiosmtpd, smtplib_send};
    let server = Aiosmtpd::start("aiosmtpd-usage", false).await;
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("domains.toml");
    let mut routes = String::new();
    for (domain, tenant) in [("a.example", "ta"), ("b.example", "tb")] {
        routes.push_str(&format!(
            "[\"{domain}\"]\nservers = [{{ address = \"{}\" }}]\ntenant = \"{tenant}\"\n",
            server.addr
        ));
    }
    std::fs::write(&map, routes).unwrap();
    let (proxy, front) = map_proxy(
        "smtp",
        "smtp = { hostname = \"mx.test\" }",
        "{domain}",
        &map,
    )
    .await;
    let body = b"Subject: usage\r\n\r\nhi\r\n";
    for (recipient, accepted) in [
        ("r@a.example", true),
        ("s@a.example", true),
        ("r@b.example", true),
        ("r@c.example", false),
    ] {
        let report =
            smtplib_send(front, "127.0.0.1", "s@example.net", &[recipient], &[], body).await;
        assert_eq!(
            report["refused"] == serde_json::json!({}),
            accepted,
            "{report}"
        );
    }
    server.wait_received(3).await;
    wait_until("the messages counted per tenant", || async {
        let (_, tenants) = proxy.get("/api/v1/tenants").await;
        let tenants: serde_json::Value = serde_json::from_str(&tenants).unwrap();
        tenants[0]["tenant"] == "ta"
            && tenants[0]["messages"] == 2
            && tenants[1]["tenant"] == "tb"
            && tenants[1]["messages"] == 1
    })
    .await;
    let (ok, out, _) = proxy.ctl(&["tenants"]);
    assert!(ok && out.contains("messages"), "{out}");
}
