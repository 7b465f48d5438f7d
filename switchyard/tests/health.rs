//! Health checking against real backends: tcp, http and mysql checks, rise/fall, on_down
//! session cutting, passive checks from failed client connects, the unchecked state.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::backends::{Backend, echo, first_line, health_status, read_request_head, respond};
use support::config::start_pool;
use support::ops::{
    field, from_port, listener_addr, port_of, read_until_closed, round_trip, scrape, wait_access,
};
use support::{Proxy, wait_until};

/// The value of a metric sample of server `app/{server}` (plus `labels`).
async fn server_metric(proxy: &Proxy, name: &str, server: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("pool", "app"), ("server", server)];
    all.extend_from_slice(labels);
    scrape(proxy, name, &all).await
}

/// Health checks run on `server` so far with `result` ("passed" or "failed").
async fn checks(proxy: &Proxy, server: &str, result: &str) -> f64 {
    server_metric(
        proxy,
        "switchyard_server_checks_total",
        server,
        &[("result", result)],
    )
    .await
}

/// Answers `GET ...` requests with 200 while `healthy`, else 503 (then closes); any other
/// connection is an echo session that stays open until the client closes it.
async fn health_or_echo(healthy: Arc<AtomicBool>) -> Backend {
    Backend::start("127.0.0.1:0", move |mut stream: TcpStream| {
        let healthy = healthy.clone();
        async move {
            let mut received = Vec::new();
            let mut buf = [0u8; 1024];
            while received.len() < 4 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
            if !received.starts_with(b"GET ") {
                if stream.write_all(&received).await.is_ok() {
                    echo(stream).await;
                }
                return;
            }
            if read_request_head(&mut stream, &mut received).await {
                respond(&mut stream, health_status(&healthy)).await;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_marks_a_killed_server_down_and_a_revived_one_up() {
    let alpha = Backend::named("alpha").await;
    let alpha_addr = alpha.addr;
    let (proxy, front) = start_pool(
        r#"health = { check = "tcp", interval = "100ms", fall = 2, rise = 2 }"#,
        &[("alpha", alpha.addr, "")],
    )
    .await;
    proxy.wait_state("app", "alpha", "up").await;
    proxy.wait_health("app", "alpha", "up").await;
    assert_eq!(
        server_metric(&proxy, "switchyard_server_up", "alpha", &[]).await,
        1.0
    );

    drop(alpha);
    proxy.wait_state("app", "alpha", "down").await;
    assert_eq!(proxy.server("app", "alpha").await.health, "down");
    assert_eq!(
        server_metric(&proxy, "switchyard_server_up", "alpha", &[]).await,
        0.0
    );
    assert!(checks(&proxy, "alpha", "failed").await >= 2.0);

    wait_until("alpha's port to be free", || async {
        std::net::TcpListener::bind(alpha_addr).is_ok()
    })
    .await;
    let _alpha = Backend::named_at(alpha_addr, "alpha").await;
    proxy.wait_state("app", "alpha", "up").await;
    assert_eq!(
        server_metric(&proxy, "switchyard_server_up", "alpha", &[]).await,
        1.0
    );
    assert_eq!(first_line(front).await, "alpha");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_follows_the_status_code() {
    let healthy = Arc::new(AtomicBool::new(true));
    let web = Backend::http_health(healthy.clone()).await;
    let (proxy, _front) = start_pool(
        r#"health = { check = "http", path = "/health", interval = "100ms", fall = 2, rise = 2 }"#,
        &[("web", web.addr, "")],
    )
    .await;
    wait_until("web checked up", || async {
        let s = proxy.server("app", "web").await;
        s.health == "up" && s.state == "up"
    })
    .await;
    assert_eq!(
        proxy.server("app", "web").await.check.as_deref(),
        Some("ok")
    );

    healthy.store(false, Ordering::SeqCst);
    proxy.wait_state("app", "web", "down").await;
    let status = proxy.server("app", "web").await;
    assert!(
        status.check.as_deref().is_some_and(|c| c.contains("503")),
        "check text names the status: {status:?}"
    );
    assert_eq!(
        server_metric(&proxy, "switchyard_server_up", "web", &[]).await,
        0.0
    );

    healthy.store(true, Ordering::SeqCst);
    proxy.wait_state("app", "web", "up").await;
    assert_eq!(proxy.server("app", "web").await.health, "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_failed_check_does_not_take_a_server_down_with_fall_3() {
    // Fails exactly one check when `fail_next` is set, then passes again.
    let fail_next = Arc::new(AtomicBool::new(false));
    let flag = fail_next.clone();
    let web = Backend::http_status(move || {
        if flag.swap(false, Ordering::SeqCst) {
            "503 Service Unavailable"
        } else {
            "200 OK"
        }
    })
    .await;
    let (proxy, _front) = start_pool(
        r#"health = { check = "http", path = "/health", interval = "100ms", fall = 3, rise = 2 }"#,
        &[("web", web.addr, "")],
    )
    .await;
    proxy.wait_health("app", "web", "up").await;

    fail_next.store(true, Ordering::SeqCst);
    wait_until("the failed check to be recorded", || async {
        checks(&proxy, "web", "failed").await >= 1.0
    })
    .await;
    let passed_at_blip = checks(&proxy, "web", "passed").await;
    wait_until("three checks passed after the failure", || async {
        checks(&proxy, "web", "passed").await >= passed_at_blip + 3.0
    })
    .await;

    assert_eq!(checks(&proxy, "web", "failed").await, 1.0);
    let status = proxy.server("app", "web").await;
    assert_eq!(
        (status.state.as_str(), status.health.as_str()),
        ("up", "up")
    );
    assert!(
        !proxy.stderr().contains("server is down"),
        "the server never went down:\n{}",
        proxy.stderr()
    );
}

/// Starts `web` behind pool `app` with the `health` key given, waits for its check to pass,
/// then opens a session and checks one echo round trip. The setup of the on_down tests.
/// Returns the flag that fails `web`'s checks when cleared, `web` itself (to keep it alive),
/// the proxy, the session and its local port.
async fn web_session(health: &str) -> (Arc<AtomicBool>, Backend, Proxy, TcpStream, u16) {
    let healthy = Arc::new(AtomicBool::new(true));
    let web = health_or_echo(healthy.clone()).await;
    let (proxy, front) = start_pool(health, &[("web", web.addr, "")]).await;
    proxy.wait_health("app", "web", "up").await;

    let mut session = TcpStream::connect(front).await.expect("connect");
    let port = port_of(&session);
    assert_eq!(round_trip(&mut session, b"hello").await, b"hello");
    (healthy, web, proxy, session, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_down_shutdown_sessions_cuts_established_sessions() {
    let (healthy, _web, proxy, mut session, port) = web_session(
        r#"health = { check = "http", path = "/health", interval = "100ms", fall = 2, on_down = "shutdown_sessions" }"#,
    )
    .await;

    // The backend keeps the session's socket open; only its health check fails.
    healthy.store(false, Ordering::SeqCst);
    assert!(
        read_until_closed(&mut session).await.is_empty(),
        "the proxy closes the session"
    );
    assert_eq!(proxy.server("app", "web").await.state, "down");
    let line = wait_access(&proxy, "the cut session", from_port(port)).await;
    assert_eq!(field(&line, "termination"), "server_cut", "{line}");
    assert_eq!(field(&line, "server"), "web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_their_server_going_down_without_on_down() {
    let (healthy, _web, proxy, mut session, port) = web_session(
        r#"health = { check = "http", path = "/health", interval = "100ms", fall = 2 }"#,
    )
    .await;
    healthy.store(false, Ordering::SeqCst);
    proxy.wait_state("app", "web", "down").await;
    assert_eq!(
        round_trip(&mut session, b"still here").await,
        b"still here",
        "the session outlives its server's health"
    );

    session.shutdown().await.expect("shutdown");
    assert!(read_until_closed(&mut session).await.is_empty());
    let line = wait_access(&proxy, "the session", from_port(port)).await;
    assert_eq!(field(&line, "termination"), "client_closed", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_client_connects_take_a_server_down_before_the_next_active_check() {
    let victim = Backend::named("victim").await;
    let live = Backend::named("live").await;
    // One active check at startup, the next a minute later: anything that happens to the
    // victim's health within this test comes from passive observation.
    let (proxy, front) = start_pool(
        r#"health = { check = "tcp", interval = "60s", fall = 3, rise = 2 }"#,
        &[("victim", victim.addr, ""), ("live", live.addr, "")],
    )
    .await;
    proxy.wait_health("app", "victim", "up").await;
    assert_eq!(checks(&proxy, "victim", "passed").await, 1.0);

    drop(victim);
    wait_until(
        "client connect failures to take the victim down",
        || async {
            // Each client is still served: a failed connect is redispatched to `live`.
            let _ = first_line(front).await;
            proxy.server("app", "victim").await.state == "down"
        },
    )
    .await;

    assert_eq!(
        checks(&proxy, "victim", "passed").await,
        1.0,
        "no active check ran since startup"
    );
    assert!(checks(&proxy, "victim", "failed").await >= 3.0);
    assert!(proxy.server("app", "victim").await.connect_errors >= 3);
    for n in 0..10 {
        assert_eq!(first_line(front).await, "live", "connection {n} after down");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_start_unchecked_and_count_as_up() {
    let alpha = Backend::named("alpha").await;
    let bravo = Backend::named("bravo").await;
    let config = format!(
        r#"
[admin]
listen = "{{admin}}"

[[listener]]
name = "plain"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "plain"

[[listener]]
name = "checked"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "checked"

# No health section: servers are never actively checked.
[[pool]]
name = "plain"
servers = [ {{ name = "alpha", address = "{}" }} ]

# The first check runs at startup, the next one a minute later.
[[pool]]
name = "checked"
health = {{ check = "tcp", interval = "60s" }}
servers = [ {{ name = "bravo", address = "{}" }} ]
"#,
        alpha.addr, bravo.addr
    );
    let proxy = Proxy::start(&config).await;

    let plain = proxy.server("plain", "alpha").await;
    assert_eq!(
        (plain.state.as_str(), plain.health.as_str()),
        ("up", "unchecked")
    );
    assert_eq!(plain.check, None);
    let checked = proxy.server("checked", "bravo").await;
    assert_eq!(checked.state, "up");
    assert!(
        matches!(checked.health.as_str(), "unchecked" | "up"),
        "{checked:?}"
    );

    // Unchecked servers take traffic.
    assert_eq!(
        first_line(listener_addr(&proxy, "plain").await).await,
        "alpha"
    );
    assert_eq!(
        first_line(listener_addr(&proxy, "checked").await).await,
        "bravo"
    );
}

/// The `mysql` check in the running proxy, on a pool behind a `tcp` listener: a real
/// MariaDB is checked up as a primary, becomes a replica when made read-only, and is
/// taken down when it stops; the listener relays a real `mariadb` client meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_check_reads_the_role_of_a_real_mariadb() {
    use support::mysql::{MONITOR_USER, MariaDb, MyOptions, NATIVE_USER, mariadb_cli};

    let mut server = MariaDb::start(&MyOptions::default());
    let (proxy, front) = start_pool(
        &format!(
            r#"health = {{ check = "mysql", user = "{}", password = "{}", interval = "100ms", fall = 1, rise = 1 }}"#,
            MONITOR_USER.0, MONITOR_USER.1
        ),
        &[("db", server.address(), "")],
    )
    .await;
    proxy.wait_health("app", "db", "up").await;
    wait_until("db to be checked as the primary", || async {
        proxy.server("app", "db").await.role == "primary"
    })
    .await;
    let (ok, out, err) = mariadb_cli(front, NATIVE_USER, &["--skip-ssl"], "SELECT 41 + 1");
    assert!(ok, "{err}");
    assert_eq!(out, "42");

    server.sql("SET GLOBAL read_only = ON");
    wait_until("db to be checked as a replica", || async {
        proxy.server("app", "db").await.role == "replica"
    })
    .await;
    assert_eq!(proxy.server("app", "db").await.health, "up");

    server.stop();
    proxy.wait_health("app", "db", "down").await;
}
