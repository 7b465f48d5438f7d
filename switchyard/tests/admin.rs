//! Admin API and `switchyard ctl`: status views, metrics, server state changes, the token.

mod support;

use std::process::{Command, Stdio};

use hyper::Method;
use serde_json::Value;
use switchyard::admin::client::AdminClient;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::backends::{Backend, first_line, read_line};
use support::config::Config;
use support::ops::{
    self, listener_addr, metric, on_listener, parse_metrics, read_until_closed, round_trip,
    wait_access,
};
use support::{Proxy, binary, free_port, run_ctl, wait_until};

/// One tcp listener `front` over pool `app` with servers `alpha` and `bravo`.
fn two_server_config(alpha: &Backend, bravo: &Backend) -> Config {
    Config::new()
        .server("alpha", alpha.addr, "")
        .server("bravo", bravo.addr, "")
}

/// The `two_server_config` proxy with `[admin] token = "env:VARIABLE"`, started with
/// `VARIABLE=token`; the admin client sends no token.
async fn start_guarded(alpha: &Backend, bravo: &Backend, variable: &str, token: &str) -> Proxy {
    let config = two_server_config(alpha, bravo)
        .admin(&format!("token = \"env:{variable}\""))
        .build();
    Proxy::start_with_env(&config, None, &[(variable, token)]).await
}

async fn two_named() -> (Backend, Backend) {
    (Backend::named("alpha").await, Backend::named("bravo").await)
}

const STATE: &str = "/api/v1/pools/app/servers/alpha/state";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_ok() {
    let (alpha, bravo) = two_named().await;
    let proxy = Proxy::start(&two_server_config(&alpha, &bravo).build()).await;
    let (status, body) = proxy.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body.trim(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_show_name_address_protocol_and_active() {
    let backend = Backend::echo().await;
    let config = Config::new().server("echo", backend.addr, "").build();
    let proxy = Proxy::start(&config).await;
    let listeners = proxy.listeners().await;
    assert_eq!(listeners.len(), 1);
    let front = &listeners[0];
    assert_eq!(front.name, "front");
    assert_eq!(front.protocol, "tcp");
    assert_eq!(front.active, 0);
    let address: std::net::SocketAddr = front.address.parse().expect("an IP:port address");
    assert_eq!(address.ip().to_string(), "127.0.0.1");
    assert_ne!(
        address.port(),
        0,
        "the bound port is shown, not the configured 0"
    );

    let mut client = TcpStream::connect(address).await.expect("connect");
    assert_eq!(round_trip(&mut client, b"hello").await, b"hello");
    wait_until("front to show one active connection", || async {
        proxy.listeners().await[0].active == 1
    })
    .await;
    drop(client);
    wait_until("front to show no active connection", || async {
        let l = &proxy.listeners().await[0];
        l.active == 0 && l.total == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_show_servers_with_state_health_and_admin_state() {
    let (alpha, bravo) = two_named().await;
    let config = two_server_config(&alpha, &bravo)
        .pool(r#"health = { check = "tcp", interval = "100ms" }"#)
        .build();
    let proxy = Proxy::start(&config).await;
    proxy.wait_pool_checked_up("app").await;
    let pools = proxy.pools().await;
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].name, "app");
    assert_eq!(pools[0].queued, 0);
    let servers = &pools[0].servers;
    assert_eq!(servers.len(), 2);
    for (server, backend) in servers.iter().zip([&alpha, &bravo]) {
        assert_eq!(server.address, backend.addr.to_string());
        assert_eq!(server.state, "up");
        assert_eq!(server.health, "up");
        assert_eq!(server.admin_state, "ready");
        assert!(
            server.check.is_some(),
            "last check result is shown: {server:?}"
        );
    }
    assert_eq!(servers[0].name, "alpha");
    assert_eq!(servers[1].name, "bravo");

    // The raw JSON carries the same fields under these names.
    let (_, body) = proxy.get("/api/v1/pools").await;
    let raw: Value = serde_json::from_str(&body).expect("JSON");
    let first = &raw[0]["servers"][0];
    for key in [
        "name",
        "address",
        "state",
        "health",
        "admin_state",
        "active",
        "total",
        "bytes_in",
        "bytes_out",
    ] {
        assert!(first.get(key).is_some(), "server JSON has `{key}`: {first}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_prometheus_text_with_the_documented_families() {
    let backend = Backend::echo().await;
    let dead_port = free_port();
    let config = format!(
        r#"
[admin]
listen = "{{admin}}"

[[listener]]
name = "front"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "app"

[[listener]]
name = "broken"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "dead"

[[pool]]
name = "app"
health = {{ check = "tcp", interval = "100ms" }}
servers = [ {{ name = "echo", address = "{}" }} ]

[[pool]]
name = "dead"
retries = 0
servers = [ {{ name = "nobody", address = "127.0.0.1:{dead_port}" }} ]
"#,
        backend.addr
    );
    let proxy = Proxy::start(&config).await;

    // Traffic: one echoed exchange, and one client whose server cannot be reached.
    let mut client = TcpStream::connect(listener_addr(&proxy, "front").await)
        .await
        .expect("connect");
    assert_eq!(round_trip(&mut client, b"0123456789").await, b"0123456789");
    drop(client);
    let mut broken = TcpStream::connect(listener_addr(&proxy, "broken").await)
        .await
        .expect("connect");
    read_until_closed(&mut broken).await;
    wait_access(&proxy, "the echoed connection", on_listener("front")).await;
    wait_until("both connections to be finished", || async {
        proxy.listeners().await.iter().all(|l| l.active == 0)
    })
    .await;
    wait_until("a passed health check", || async {
        let samples = parse_metrics(&proxy.metrics().await).expect("valid metrics");
        metric(
            &samples,
            "switchyard_server_checks_total",
            &[("pool", "app"), ("result", "passed")],
        )
        .is_some_and(|v| v >= 1.0)
    })
    .await;

    let text = proxy.metrics().await;
    let samples = parse_metrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let value = |name: &str, labels: &[(&str, &str)]| {
        metric(&samples, name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{text}"))
    };
    let front = [("listener", "front")];
    assert_eq!(value("switchyard_listener_connections_total", &front), 1.0);
    assert_eq!(
        value(
            "switchyard_listener_connections_total",
            &[("listener", "broken")]
        ),
        1.0
    );
    assert_eq!(value("switchyard_listener_connections_active", &front), 0.0);
    assert_eq!(
        value("switchyard_listener_received_bytes_total", &front),
        10.0
    );
    assert_eq!(value("switchyard_listener_sent_bytes_total", &front), 10.0);
    let echo = [("pool", "app"), ("server", "echo")];
    assert_eq!(value("switchyard_server_up", &echo), 1.0);
    assert_eq!(value("switchyard_server_connections_total", &echo), 1.0);
    assert_eq!(value("switchyard_server_received_bytes_total", &echo), 10.0);
    assert_eq!(value("switchyard_server_sent_bytes_total", &echo), 10.0);
    assert_eq!(value("switchyard_server_connect_errors_total", &echo), 0.0);
    assert!(
        value(
            "switchyard_server_checks_total",
            &[("pool", "app"), ("server", "echo"), ("result", "passed")]
        ) >= 1.0
    );
    value(
        "switchyard_server_checks_total",
        &[("pool", "app"), ("server", "echo"), ("result", "failed")],
    );
    assert_eq!(
        value("switchyard_pool_queue_length", &[("pool", "app")]),
        0.0
    );
    assert_eq!(
        value(
            "switchyard_server_connect_errors_total",
            &[("pool", "dead"), ("server", "nobody")]
        ),
        1.0
    );
    // TYPE lines name the families with the right kinds.
    for (family, kind) in [
        ("switchyard_listener_connections", "counter"),
        ("switchyard_server_up", "gauge"),
        ("switchyard_pool_queue_length", "gauge"),
        ("switchyard_server_checks", "counter"),
        ("switchyard_server_connect_errors", "counter"),
    ] {
        assert!(
            text.lines().any(|l| l == format!("# TYPE {family} {kind}")),
            "# TYPE {family} {kind} missing in\n{text}"
        );
    }
    assert!(samples.iter().all(|s| s.name.starts_with("switchyard_")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_takes_no_new_connections_and_ready_takes_them_again() {
    let (alpha, bravo) = two_named().await;
    let proxy = Proxy::start(&two_server_config(&alpha, &bravo).build()).await;
    let front = listener_addr(&proxy, "front").await;

    let (status, body) = proxy.post(STATE, r#"{"state":"drain"}"#).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(answer["state"], "drain");
    let alpha_status = proxy.server("app", "alpha").await;
    assert_eq!(alpha_status.state, "drain");
    assert_eq!(alpha_status.admin_state, "drain");

    for _ in 0..6 {
        assert_eq!(
            first_line(front).await,
            "bravo",
            "a drained server takes no new connection"
        );
    }
    assert_eq!(proxy.server("app", "alpha").await.total, 0);

    let (status, body) = proxy.post(STATE, r#"{"state":"ready"}"#).await;
    assert_eq!(status, 200, "{body}");
    proxy.wait_state("app", "alpha", "up").await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(first_line(front).await);
    }
    assert!(
        seen.iter().any(|s| s == "alpha"),
        "alpha takes connections again: {seen:?}"
    );
    assert!(seen.iter().any(|s| s == "bravo"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maint_cuts_an_established_session() {
    let (alpha, bravo) = two_named().await;
    let proxy = Proxy::start(&two_server_config(&alpha, &bravo).build()).await;
    let mut client = TcpStream::connect(listener_addr(&proxy, "front").await)
        .await
        .expect("connect");
    let server = read_line(&mut client).await;
    assert!(server == "alpha" || server == "bravo", "{server}");
    assert_eq!(round_trip(&mut client, b"ping\n").await, b"ping\n");

    proxy.set_state("app", &server, "maint").await;
    assert_eq!(proxy.server("app", &server).await.state, "maint");
    // The proxy closes the client side: the read ends (EOF or reset) without our closing.
    let rest = read_until_closed(&mut client).await;
    assert!(rest.is_empty(), "nothing more arrives: {rest:?}");
    let line = wait_access(&proxy, "the cut session", |l| {
        ops::field(l, "server") == server
    })
    .await;
    assert_eq!(ops::field(&line, "termination"), "server_cut", "{line}");
    wait_until("the session's slot is freed", || async {
        proxy.server("app", &server).await.active == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_endpoint_rejects_bad_requests() {
    let (alpha, bravo) = two_named().await;
    let proxy = Proxy::start(&two_server_config(&alpha, &bravo).build()).await;
    let ready = r#"{"state":"ready"}"#;
    let cases = [
        ("/api/v1/pools/nope/servers/alpha/state", ready, 404),
        ("/api/v1/pools/app/servers/nope/state", ready, 404),
        (STATE, "{not json", 400),
        (STATE, "", 400),
        (STATE, r#"{"state":"paused"}"#, 400),
        (STATE, r#"{"status":"ready"}"#, 400),
    ];
    for (path, body, expected) in cases {
        let (status, answer) = proxy.post(path, body).await;
        assert_eq!(status, expected, "POST {path} {body:?} -> {answer}");
        let error: Value =
            serde_json::from_str(&answer).unwrap_or_else(|_| panic!("JSON error body: {answer}"));
        assert!(error["error"].is_string(), "{answer}");
    }
    let (status, _) = proxy.get(STATE).await;
    assert_eq!(status, 405);
    let (status, _) = proxy.get("/no/such/path").await;
    assert_eq!(status, 404);
    // Nothing changed.
    assert_eq!(proxy.server("app", "alpha").await.state, "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guards_mutating_calls_only() {
    let (alpha, bravo) = two_named().await;
    let proxy = start_guarded(
        &alpha,
        &bravo,
        "SWITCHYARD_TEST_ADMIN_TOKEN_ADMIN_RS",
        "s3cret-token",
    )
    .await;
    let drain = Some(r#"{"state":"drain"}"#.to_string());

    // No token.
    let (status, body) = proxy.post(STATE, r#"{"state":"drain"}"#).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = proxy.post("/api/v1/reload", "").await;
    assert_eq!(status, 401);
    // Wrong token.
    let wrong =
        AdminClient::new(&proxy.admin.to_string(), Some("not-the-token".into())).expect("client");
    let (status, _) = wrong
        .call(Method::POST, STATE, drain.clone())
        .await
        .expect("call");
    assert_eq!(status, 401);
    assert_eq!(
        proxy.server("app", "alpha").await.state,
        "up",
        "refused calls change nothing"
    );
    // GETs need no token.
    for path in ["/health", "/metrics", "/api/v1/pools", "/api/v1/listeners"] {
        assert_eq!(proxy.get(path).await.0, 200, "GET {path}");
    }
    // The right token.
    let right =
        AdminClient::new(&proxy.admin.to_string(), Some("s3cret-token".into())).expect("client");
    let (status, body) = right.call(Method::POST, STATE, drain).await.expect("call");
    assert_eq!(status, 200, "{body}");
    assert_eq!(proxy.server("app", "alpha").await.state, "drain");
}

/// A listener served by one of two workers keeps all its connections there (as the
/// per-worker gauge shows), while another listener's spread over both; a reload that
/// changes its `workers` says it needs a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_served_by_fewer_workers_keeps_its_connections_on_them() {
    let backend = Backend::echo().await;
    let config = format!(
        r#"
workers = 2

[admin]
listen = "{{admin}}"

[[listener]]
name = "one"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "app"
workers = 1

[[listener]]
name = "all"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "app"

[[pool]]
name = "app"
servers = [ {{ name = "echo", address = "{}" }} ]
"#,
        backend.addr
    );
    let proxy = Proxy::start(&config).await;
    let per_worker = |text: &str| {
        let samples = parse_metrics(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        ["0", "1"].map(|worker| {
            metric(
                &samples,
                "switchyard_worker_connections",
                &[("worker", worker)],
            )
            .unwrap_or_else(|| panic!("no gauge for worker {worker} in\n{text}"))
        })
    };
    let mut clients = Vec::new();
    for (listener, expected) in [("one", [6.0, 0.0]), ("all", [6.0, 6.0])] {
        let front = listener_addr(&proxy, listener).await;
        for _ in 0..6 {
            let mut client = TcpStream::connect(front).await.expect("connect");
            assert_eq!(round_trip(&mut client, b"ping").await, b"ping");
            clients.push(client);
        }
        assert_eq!(per_worker(&proxy.metrics().await), expected, "{listener}");
    }
    drop(clients);
    wait_until("the connections to close", || async {
        per_worker(&proxy.metrics().await) == [0.0, 0.0]
    })
    .await;

    let written = std::fs::read_to_string(proxy.config_path()).expect("read config");
    let rewritten = written.replacen("workers = 1\n", "workers = 2\n", 1);
    std::fs::write(proxy.config_path(), rewritten).expect("rewrite config");
    let (status, body) = proxy.post("/api/v1/reload", "").await;
    assert_eq!(status, 200, "{body}");
    let summary: Value = serde_json::from_str(&body).expect("JSON body");
    let not_applied = summary["not_applied"].to_string();
    assert!(
        not_applied.contains("listener `one`: a new workers needs a restart"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_of_an_unchanged_file_reports_no_change() {
    let (alpha, bravo) = two_named().await;
    let proxy = Proxy::start(&two_server_config(&alpha, &bravo).build()).await;
    let (status, body) = proxy.post("/api/v1/reload", "").await;
    assert_eq!(status, 200, "{body}");
    let summary: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(summary["changed"], Value::Bool(false), "{body}");
    let (status, _) = proxy.get("/api/v1/reload").await;
    assert_eq!(status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_status_shows_both_servers_and_json_parses() {
    let (alpha, bravo) = two_named().await;
    let proxy = Proxy::start(&two_server_config(&alpha, &bravo).build()).await;

    let (ok, stdout, stderr) = proxy.ctl(&["status"]);
    assert!(ok, "{stderr}");
    for (name, backend) in [("alpha", &alpha), ("bravo", &bravo)] {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"));
        assert!(line.starts_with("app "), "{line}");
        assert!(line.contains(&backend.addr.to_string()), "{line}");
        assert!(line.contains(" up "), "{line}");
    }
    assert!(
        stdout.lines().any(|l| l.starts_with("front ")),
        "listener row:\n{stdout}"
    );

    let (ok, stdout, stderr) = proxy.ctl(&["status", "--json"]);
    assert!(ok, "{stderr}");
    let status: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}:\n{stdout}"));
    let servers: Vec<&str> = status["pools"][0]["servers"]
        .as_array()
        .expect("servers array")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(servers, ["alpha", "bravo"]);
    assert_eq!(status["listeners"][0]["name"], "front");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drain_ready_maint_change_state() {
    let (alpha, bravo) = two_named().await;
    let proxy = Proxy::start(&two_server_config(&alpha, &bravo).build()).await;
    for (command, state) in [
        ("drain", "drain"),
        ("ready", "up"),
        ("maint", "maint"),
        ("ready", "up"),
    ] {
        let (ok, stdout, stderr) = proxy.ctl(&[command, "app", "bravo"]);
        assert!(ok, "ctl {command}: {stderr}");
        assert!(stdout.contains("app/bravo"), "{stdout}");
        assert_eq!(
            proxy.server("app", "bravo").await.state,
            state,
            "after ctl {command}"
        );
    }
    assert_eq!(
        proxy.server("app", "alpha").await.state,
        "up",
        "the other server is untouched"
    );
    let (ok, _, stderr) = proxy.ctl(&["drain", "app", "nope"]);
    assert!(!ok);
    assert!(stderr.contains("404"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drain_wait_returns_only_when_the_server_is_idle() {
    let alpha = Backend::named("alpha").await;
    let config = Config::new().server("alpha", alpha.addr, "").build();
    let proxy = Proxy::start(&config).await;
    let mut session = TcpStream::connect(listener_addr(&proxy, "front").await)
        .await
        .expect("connect");
    assert_eq!(read_line(&mut session).await, "alpha");
    wait_until("the session to count on alpha", || async {
        proxy.server("app", "alpha").await.active == 1
    })
    .await;

    let mut ctl = Command::new(binary())
        .args([
            "ctl",
            "--admin",
            &proxy.admin.to_string(),
            "drain",
            "app",
            "alpha",
            "--wait",
        ])
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctl");
    proxy.wait_state("app", "alpha", "drain").await;
    assert!(
        ctl.try_wait().expect("ctl status").is_none(),
        "ctl drain --wait returned while a session is open"
    );
    // The session still works while draining.
    assert_eq!(
        round_trip(&mut session, b"still here\n").await,
        b"still here\n"
    );
    assert!(ctl.try_wait().expect("ctl status").is_none());

    session.shutdown().await.expect("close");
    read_until_closed(&mut session).await;
    drop(session);
    let mut exited = None;
    wait_until("ctl drain --wait to return", || {
        if exited.is_none() {
            exited = ctl.try_wait().expect("ctl status");
        }
        let done = exited.is_some();
        async move { done }
    })
    .await;
    let output = ctl.wait_with_output().expect("ctl output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("idle"), "{stdout}");
    assert_eq!(proxy.server("app", "alpha").await.active, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_against_nothing_fails_readably() {
    let nowhere = format!("127.0.0.1:{}", free_port());
    let (ok, stdout, stderr) = run_ctl(&nowhere, None, &["status"]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("cannot reach admin API"), "{stderr}");
    assert!(stderr.contains(&nowhere), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_with_a_wrong_token_fails_with_401() {
    let (alpha, bravo) = two_named().await;
    let proxy = start_guarded(
        &alpha,
        &bravo,
        "SWITCHYARD_TEST_ADMIN_TOKEN_CTL",
        "right-token",
    )
    .await;
    let admin = proxy.admin.to_string();
    let (ok, _, stderr) = run_ctl(&admin, Some("wrong-token"), &["drain", "app", "alpha"]);
    assert!(!ok);
    assert!(stderr.contains("401"), "{stderr}");
    assert_eq!(proxy.server("app", "alpha").await.state, "up");
    let (ok, _, stderr) = run_ctl(&admin, Some("right-token"), &["drain", "app", "alpha"]);
    assert!(ok, "{stderr}");
    assert_eq!(proxy.server("app", "alpha").await.state, "drain");
}

/// One request to the admin API as raw bytes, so that the test sets every header a browser
/// would (`Host`, `Origin`, `Referer`, `Content-Type`); returns the status and the body.
async fn admin_raw(
    proxy: &Proxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let answer = support::http::raw(proxy.admin, request.as_bytes()).await;
    let status = answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// With the default admin config (loopback, no token), what a web page elsewhere can make
/// a browser send is refused: a cross-origin "simple" POST (`text/plain`, no preflight),
/// a cross-origin JSON one, a `Referer` from elsewhere, a body not said to be JSON. The
/// startup log says once that mutating calls are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_other_origins_cannot_change_state_or_reload() {
    let (alpha, bravo) = two_named().await;
    let proxy = Proxy::start(&two_server_config(&alpha, &bravo).build()).await;
    let host = proxy.admin.to_string();
    let own_origin = format!("http://{host}");
    let (evil, json, text) = (
        ("origin", "http://evil.example"),
        ("content-type", "application/json"),
        ("content-type", "text/plain"),
    );
    let cases: [(&str, Vec<(&str, &str)>); 5] = [
        ("cross-origin simple POST", vec![evil, text]),
        ("cross-origin JSON POST", vec![evil, json]),
        (
            "Referer from elsewhere",
            vec![("referer", "http://evil.example/page"), json],
        ),
        (
            "own origin, text/plain",
            vec![("origin", &own_origin), text],
        ),
        ("no content type", vec![]),
    ];
    for path in [STATE, "/api/v1/reload"] {
        for (what, headers) in &cases {
            let mut all = vec![("host", host.as_str())];
            all.extend_from_slice(headers);
            let (status, body) =
                admin_raw(&proxy, "POST", path, &all, r#"{"state":"maint"}"#).await;
            assert_eq!(status, 403, "{what} to {path}: {body}");
            let error: Value = serde_json::from_str(&body).expect("JSON error body");
            assert!(error["error"].is_string(), "{body}");
        }
    }
    assert_eq!(proxy.server("app", "alpha").await.state, "up");
    let log = proxy.stderr();
    assert_eq!(
        log.matches("the admin API has no token").count(),
        1,
        "{log}"
    );
    assert!(log.contains("admin API refused a request"), "{log}");
}

/// DNS rebinding: a page whose own name now resolves to 127.0.0.1 sends that name as
/// `Host`, and is refused even reads. The listener's address, `localhost` on its port and
/// `allowed_hosts` names pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_requests_naming_the_admin_listener_are_served() {
    let (alpha, bravo) = two_named().await;
    let config = two_server_config(&alpha, &bravo)
        .admin(r#"allowed_hosts = ["admin.test"]"#)
        .build();
    let proxy = Proxy::start(&config).await;
    let port = proxy.admin.port();
    let other_port = if port == u16::MAX { port - 1 } else { port + 1 };
    let cases = [
        (format!("evil.example:{port}"), 421),
        (format!("127.0.0.1:{other_port}"), 421),
        (format!("localhost:{other_port}"), 421),
        ("user@127.0.0.1".to_string(), 400),
        (proxy.admin.to_string(), 200),
        (format!("localhost:{port}"), 200),
        (format!("admin.test:{port}"), 200),
    ];
    for path in ["/api/v1/pools", "/metrics", "/health"] {
        for (host, expected) in &cases {
            let (status, body) = admin_raw(&proxy, "GET", path, &[("host", host)], "").await;
            assert_eq!(status, *expected, "GET {path} with Host {host}: {body}");
        }
    }
    let (status, _) = admin_raw(&proxy, "GET", "/health", &[], "").await;
    assert_eq!(status, 400, "no Host");
}

/// What may change state: `switchyard ctl` (its `reload` sends no body), a page of the
/// admin API's own origin, and a script with the token and no `Origin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_own_origin_pages_and_scripts_with_the_token_may_change_state() {
    let (alpha, bravo) = two_named().await;
    let proxy = Proxy::start(&two_server_config(&alpha, &bravo).build()).await;
    let admin = proxy.admin.to_string();
    let (ok, _, stderr) = run_ctl(&admin, None, &["reload"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = run_ctl(
        &format!("http://localhost:{}", proxy.admin.port()),
        None,
        &["drain", "app", "alpha"],
    );
    assert!(ok, "{stderr}");
    assert_eq!(proxy.server("app", "alpha").await.state, "drain");
    let own_origin = format!("http://{admin}");
    let headers = [
        ("host", admin.as_str()),
        ("origin", own_origin.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, body) = admin_raw(&proxy, "POST", STATE, &headers, r#"{"state":"maint"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(proxy.server("app", "alpha").await.state, "maint");

    let guarded = start_guarded(
        &alpha,
        &bravo,
        "SWITCHYARD_TEST_ADMIN_TOKEN_SCRIPT",
        "script-token",
    )
    .await;
    let script =
        AdminClient::new(&guarded.admin.to_string(), Some("script-token".into())).expect("client");
    let (status, body) = script
        .call(Method::POST, STATE, Some(r#"{"state":"drain"}"#.into()))
        .await
        .expect("call");
    assert_eq!(status, 200, "{body}");
    assert_eq!(guarded.server("app", "alpha").await.state, "drain");
    assert!(
        !guarded.stderr().contains("the admin API has no token"),
        "{}",
        guarded.stderr()
    );
}

/// `stats.csv` read by Python's csv module, as a script would: one dict per row.
fn python_csv(text: &str) -> Vec<std::collections::HashMap<String, String>> {
    use std::io::Write;

    let mut python = Command::new("python3")
        .args([
            "-c",
            "import csv, json, sys; print(json.dumps(list(csv.DictReader(sys.stdin))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    python
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("CSV to python");
    let output = python.wait_with_output().expect("python ran");
    assert!(output.status.success(), "python could not read:\n{text}");
    serde_json::from_slice(&output.stdout).expect("python's JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_csv_parses_and_its_totals_match_the_metrics() {
    let (alpha, bravo) = two_named().await;
    let web = support::http::HttpBackend::describe().await;
    let config = two_server_config(&alpha, &bravo)
        .section(&support::config::http_section(
            "web",
            // TOML's escapes: the name is `w,"2"`.
            &[("w1", web.addr, ""), (r#"w,\"2\""#, free_addr(), "")],
        ))
        .build();
    let proxy = Proxy::start(&config).await;
    let front = listener_addr(&proxy, "front").await;
    for _ in 0..4 {
        first_line(front).await;
    }
    let web_front = listener_addr(&proxy, "web").await;
    for path in ["/a", "/b", "/c"] {
        support::http::get(web_front, path, &[]).await;
    }
    wait_until("every connection to end", || async {
        proxy.listeners().await.iter().all(|l| l.active == 0)
    })
    .await;

    let (status, text) = proxy.get("/api/v1/stats.csv").await;
    assert_eq!(status, 200);
    let samples = parse_metrics(&proxy.metrics().await).expect("valid metrics");
    let rows = python_csv(&text);
    let columns: Vec<&str> = text.lines().next().unwrap_or_default().split(',').collect();
    assert_eq!(columns[..3], ["type", "pxname", "svname"]);
    let kinds: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["type"].as_str(),
                r["pxname"].as_str(),
                r["svname"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("listener", "front", "LISTENER"),
            ("listener", "web", "LISTENER"),
            ("pool", "app", "POOL"),
            ("server", "app", "alpha"),
            ("server", "app", "bravo"),
            ("pool", "web", "POOL"),
            ("server", "web", "w1"),
            ("server", "web", "w,\"2\""),
        ],
        "a name with a comma and quotes reads back whole"
    );
    let value = |name: &str, labels: &[(&str, &str)]| -> String {
        let value =
            metric(&samples, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
        format!("{value}")
    };
    let mut connections = 0;
    for row in rows.iter().filter(|r| r["type"] == "server") {
        let labels = [
            ("pool", row["pxname"].as_str()),
            ("server", row["svname"].as_str()),
        ];
        assert_eq!(
            row["stot"],
            value("switchyard_server_connections_total", &labels)
        );
        assert_eq!(
            row["bin"],
            value("switchyard_server_received_bytes_total", &labels)
        );
        assert_eq!(
            row["bout"],
            value("switchyard_server_sent_bytes_total", &labels)
        );
        assert_eq!(
            row["econ"],
            value("switchyard_server_connect_errors_total", &labels)
        );
        connections += row["stot"].parse::<u64>().expect("a count");
    }
    assert!(connections >= 5, "the traffic was counted: {connections}");
    for row in rows.iter().filter(|r| r["type"] == "listener") {
        let labels = [("listener", row["pxname"].as_str())];
        assert_eq!(
            row["stot"],
            value("switchyard_listener_connections_total", &labels)
        );
        assert_eq!(
            row["bin"],
            value("switchyard_listener_received_bytes_total", &labels)
        );
        assert_eq!(
            row["bout"],
            value("switchyard_listener_sent_bytes_total", &labels)
        );
        assert_eq!(
            row["ereq"],
            value("switchyard_listener_connections_failed_total", &labels)
        );
    }
    let app = &rows[2];
    let app_servers = &rows[3..5];
    let sum = |column: &str| -> u64 {
        app_servers
            .iter()
            .map(|r| r[column].parse::<u64>().expect("a count"))
            .sum()
    };
    assert_eq!(app["stot"].parse::<u64>().ok(), Some(sum("stot")));
    assert_eq!(app["bout"].parse::<u64>().ok(), Some(sum("bout")));
    assert_eq!(app["hrsp_2xx"], "", "a tcp pool counts no HTTP responses");
    // HTTP responses by class: the same counters as switchyard_http_requests_total.
    let w1 = &rows[6];
    let answered = value(
        "switchyard_http_requests_total",
        &[("pool", "web"), ("server", "w1"), ("code", "2xx")],
    );
    assert_eq!((w1["hrsp_2xx"].as_str(), answered.as_str()), ("3", "3"));
    assert_eq!(
        (w1["hrsp_5xx"].as_str(), w1["status"].as_str()),
        ("0", "up")
    );
    assert_eq!(rows[5]["hrsp_2xx"], "3");

    // The JSON snapshot carries the same counts and its own clock.
    let (status, body) = proxy.get("/api/v1/stats").await;
    assert_eq!(status, 200);
    let stats: switchyard::admin::Stats = serde_json::from_str(&body).expect("stats JSON");
    assert!(!stats.token_required);
    assert!(stats.uptime_seconds > 0.0);
    let web_pool = stats
        .pools
        .iter()
        .find(|p| p.name == "web")
        .expect("web pool");
    assert_eq!(
        web_pool.protocol["http_responses"]["servers"]["w1"]["2xx"],
        3
    );
}

/// An address nothing listens on.
fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_named_by_its_address_changes_state_by_its_encoded_name() {
    let backend = Backend::named("alpha").await;
    let config = Config::new()
        .section(&format!(
            "[[pool]]\nname = \"spare pool\"\nservers = [{{ address = \"{}\" }}]\n",
            backend.addr
        ))
        .server("alpha", backend.addr, "")
        .build();
    let proxy = Proxy::start(&config).await;
    let name = backend.addr.to_string();
    let encoded = name.replace(':', "%3A");
    let (status, body) = proxy
        .post(
            &format!("/api/v1/pools/spare%20pool/servers/{encoded}/state"),
            r#"{"state":"drain"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(proxy.server("spare pool", &name).await.state, "drain");
}

/// A client that sends part of a request head and stops is closed (after the admin API's
/// head timeout, 10 s), not kept for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_head_is_closed() {
    use tokio::io::AsyncReadExt;
    let (alpha, bravo) = two_named().await;
    let proxy = Proxy::start(&two_server_config(&alpha, &bravo).build()).await;
    let mut client = TcpStream::connect(proxy.admin)
        .await
        .expect("connect to the admin API");
    client
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127")
        .await
        .expect("send part of a head");
    let mut buffer = [0u8; 1024];
    // Waits for the close; the bound only keeps a broken build from hanging the suite.
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        client.read(&mut buffer),
    )
    .await
    .expect("the admin API closed the connection");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed without a response, got {read:?}"
    );
}
