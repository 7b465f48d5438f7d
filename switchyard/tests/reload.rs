//! Live reload: SIGHUP, `POST /api/v1/reload` and `ctl reload` apply an edited config file
//! in place, with real sockets and the real binary.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::Value;
use tokio::net::TcpStream;

use support::backends::{Backend, first_line, read_line};
use support::http::{HttpBackend, HttpLoad};
use support::ops::{self, listener_addr, metric, parse_metrics, round_trip, wait_access};
use support::{Proxy, free_port, wait_until};

/// One pool `app` behind listener `front`, plus whatever `extra` TOML follows. Each
/// server is `(name, address, extra inline-table keys)`.
fn config(
    admin: &str,
    pool_keys: &str,
    servers: &[(&str, SocketAddr, &str)],
    extra: &str,
) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|(name, address, keys)| {
            let keys = if keys.is_empty() {
                String::new()
            } else {
                format!(", {keys}")
            };
            format!(r#"  {{ name = "{name}", address = "{address}"{keys} }}"#)
        })
        .collect();
    format!(
        r#"[admin]
listen = "{admin}"

[[listener]]
name = "front"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "app"

[[pool]]
name = "app"
{pool_keys}
servers = [
{servers}
]
{extra}
"#,
        servers = servers.join(",\n")
    )
}

/// Starts a proxy on `config("{admin}", ...)`; returns it and the `front` address.
async fn start(pool_keys: &str, servers: &[(&str, SocketAddr, &str)]) -> (Proxy, SocketAddr) {
    let proxy = Proxy::start(&config("{admin}", pool_keys, servers, "")).await;
    let front = listener_addr(&proxy, "front").await;
    (proxy, front)
}

/// Rewrites the proxy's config file (keeping its admin address).
fn rewrite(proxy: &Proxy, pool_keys: &str, servers: &[(&str, SocketAddr, &str)], extra: &str) {
    let text = config(support::ADMIN_LISTEN, pool_keys, servers, extra);
    std::fs::write(proxy.config_path(), text).expect("rewrite config");
}

/// `POST /api/v1/reload`: status and JSON body.
async fn reload(proxy: &Proxy) -> (u16, Value) {
    let (status, body) = proxy.post("/api/v1/reload", "").await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, json)
}

/// The strings of a JSON array at `pointer` (e.g. `/servers/added`).
fn names(summary: &Value, pointer: &str) -> Vec<String> {
    summary
        .pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no {pointer} in {summary}"))
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// Server names of the pool `app` as the API shows them.
async fn server_names(proxy: &Proxy) -> Vec<String> {
    proxy
        .pools()
        .await
        .into_iter()
        .find(|p| p.name == "app")
        .map(|p| p.servers.into_iter().map(|s| s.name).collect())
        .unwrap_or_default()
}

/// Opens connections until one lands on `name`; returns it (the name line already read).
async fn session_on(front: SocketAddr, name: &str) -> TcpStream {
    for _ in 0..20 {
        let mut stream = TcpStream::connect(front).await.expect("connect");
        if read_line(&mut stream).await == name {
            return stream;
        }
    }
    panic!("no connection reached {name}");
}

/// Which backend each of `count` sequential new connections reached.
async fn spread(front: SocketAddr, count: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..count {
        seen.push(first_line(front).await);
    }
    seen
}

fn count(seen: &[String], name: &str) -> usize {
    seen.iter().filter(|s| *s == name).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_server_and_keeps_the_established_session() {
    let alpha = Backend::named("alpha").await;
    let bravo = Backend::named("bravo").await;
    let (proxy, front) = start("", &[("alpha", alpha.addr, "")]).await;
    let mut session = session_on(front, "alpha").await;
    assert_eq!(round_trip(&mut session, b"before").await, b"before");

    rewrite(
        &proxy,
        "",
        &[("alpha", alpha.addr, ""), ("bravo", bravo.addr, "")],
        "",
    );
    proxy.signal("HUP");
    // The new pool is visible in the API a moment before the reload logs its outcome.
    wait_until("bravo in the pool and the reload logged", || async {
        server_names(&proxy).await == ["alpha", "bravo"]
            && proxy.stderr().contains("configuration reloaded")
    })
    .await;

    let seen = spread(front, 4).await;
    assert_eq!(
        (count(&seen, "alpha"), count(&seen, "bravo")),
        (2, 2),
        "round robin over both: {seen:?}"
    );
    assert_eq!(round_trip(&mut session, b"after").await, b"after");
    // The old session still holds its slot once the four short connections have closed.
    wait_until("only the old session active on alpha", || async {
        proxy.server("app", "alpha").await.active == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_reload_removes_a_server_that_drains_its_session() {
    let alpha = Backend::named("alpha").await;
    let bravo = Backend::named("bravo").await;
    let (proxy, front) = start("", &[("alpha", alpha.addr, ""), ("bravo", bravo.addr, "")]).await;
    let mut session = session_on(front, "bravo").await;
    let bravo_accepted = bravo.accepted.load(Ordering::SeqCst);

    rewrite(&proxy, "", &[("alpha", alpha.addr, "")], "");
    let (status, summary) = reload(&proxy).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["changed"], true, "{summary}");
    assert_eq!(names(&summary, "/pools/changed"), ["app"]);
    assert_eq!(names(&summary, "/servers/removed"), ["app/bravo"]);
    assert!(names(&summary, "/servers/added").is_empty(), "{summary}");
    assert_eq!(server_names(&proxy).await, ["alpha"]);

    let seen = spread(front, 6).await;
    assert_eq!(count(&seen, "alpha"), 6, "{seen:?}");
    assert_eq!(
        bravo.accepted.load(Ordering::SeqCst),
        bravo_accepted,
        "the removed server got new connections"
    );
    // Its established session keeps working until the client closes it.
    assert_eq!(round_trip(&mut session, b"still here").await, b"still here");
    let port = session.local_addr().expect("local addr").port();
    drop(session);
    let line = wait_access(&proxy, "the drained session", |l| {
        ops::field(l, "client").ends_with(&format!(":{port}"))
    })
    .await;
    assert_eq!(ops::field(&line, "server"), "bravo", "{line}");
    assert_eq!(ops::field(&line, "termination"), "client_closed", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_weight_and_balance() {
    let alpha = Backend::named("alpha").await;
    let bravo = Backend::named("bravo").await;
    let (proxy, front) = start("", &[("alpha", alpha.addr, ""), ("bravo", bravo.addr, "")]).await;

    rewrite(
        &proxy,
        "",
        &[
            ("alpha", alpha.addr, ""),
            ("bravo", bravo.addr, "weight = 3"),
        ],
        "",
    );
    let (status, summary) = reload(&proxy).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(names(&summary, "/servers/changed"), ["app/bravo"]);
    assert_eq!(proxy.server("app", "bravo").await.weight, 3);
    let seen = spread(front, 8).await;
    assert_eq!(
        (count(&seen, "alpha"), count(&seen, "bravo")),
        (2, 6),
        "weights 1:3: {seen:?}"
    );

    // least_conn: with a session held on alpha, idle bravo takes every new connection.
    rewrite(
        &proxy,
        r#"balance = "least_conn""#,
        &[("alpha", alpha.addr, ""), ("bravo", bravo.addr, "")],
        "",
    );
    let (status, summary) = reload(&proxy).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(names(&summary, "/pools/changed"), ["app"]);
    let mut held = session_on(front, "alpha").await;
    for _ in 0..4 {
        wait_until("bravo idle", || async {
            proxy.server("app", "bravo").await.active == 0
        })
        .await;
        assert_eq!(first_line(front).await, "bravo");
    }
    assert_eq!(round_trip(&mut held, b"held").await, b"held");
}

/// `switchyard_server_checks_total{result="passed"}` of `app/NAME`.
async fn passed_checks(proxy: &Proxy, name: &str) -> f64 {
    let text = proxy.metrics().await;
    let samples = parse_metrics(&text).expect("metrics");
    metric(
        &samples,
        "switchyard_server_checks_total",
        &[("pool", "app"), ("server", name), ("result", "passed")],
    )
    .unwrap_or_else(|| panic!("no check counter for {name}:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_state_and_health_survive_a_reload() {
    let alpha = Backend::named("alpha").await;
    let bravo = Backend::named("bravo").await;
    let charlie = Backend::named("charlie").await;
    let health = r#"health = { check = "tcp", interval = "100ms" }"#;
    let (proxy, front) = start(
        health,
        &[("alpha", alpha.addr, ""), ("bravo", bravo.addr, "")],
    )
    .await;
    wait_until("a few passed checks of alpha", || async {
        passed_checks(&proxy, "alpha").await >= 3.0
    })
    .await;
    proxy.set_state("app", "alpha", "drain").await;

    // Touch the pool (add charlie) but not alpha.
    rewrite(
        &proxy,
        health,
        &[
            ("alpha", alpha.addr, ""),
            ("bravo", bravo.addr, ""),
            ("charlie", charlie.addr, ""),
        ],
        "",
    );
    let before = passed_checks(&proxy, "alpha").await;
    let (status, summary) = reload(&proxy).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(names(&summary, "/servers/added"), ["app/charlie"]);
    let alpha_now = proxy.server("app", "alpha").await;
    assert_eq!(alpha_now.state, "drain", "{alpha_now:?}");
    assert_eq!(alpha_now.health, "up", "health kept: {alpha_now:?}");
    assert!(
        passed_checks(&proxy, "alpha").await >= before,
        "check counter kept"
    );
    wait_until("alpha's checks to continue", || async {
        passed_checks(&proxy, "alpha").await >= before + 2.0
    })
    .await;
    let seen = spread(front, 6).await;
    assert_eq!(
        count(&seen, "alpha"),
        0,
        "a drained server got work: {seen:?}"
    );
    assert_eq!(count(&seen, "bravo"), 3, "{seen:?}");
    assert_eq!(count(&seen, "charlie"), 3, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_changes_nothing_and_lists_every_error() {
    let alpha = Backend::named("alpha").await;
    let (proxy, front) = start("", &[("alpha", alpha.addr, "")]).await;
    let path = proxy.config_path();
    // Three mistakes: an unknown pool key, a listener naming a missing pool, a bad log format.
    let broken = config(
        support::ADMIN_LISTEN,
        "colour = \"blue\"",
        &[("alpha", alpha.addr, "")],
        "[[listener]]\nname = \"other\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"nowhere\"\n\n[log]\nformat = \"fancy\"\n",
    );
    std::fs::write(&path, broken).expect("write broken config");

    let (status, answer) = reload(&proxy).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    let errors = names(&answer, "/errors");
    assert_eq!(errors.len(), 3, "{errors:?}");
    for error in &errors {
        assert!(
            error.starts_with(&format!("{}:", path.display())),
            "FILE:LINE: {error}"
        );
    }
    for key in ["colour", "nowhere", "fancy"] {
        assert!(errors.iter().any(|e| e.contains(key)), "{key}: {errors:?}");
    }

    // SIGHUP logs every error; ctl exits non-zero printing them.
    proxy.signal("HUP");
    wait_until("every error in the log", || async {
        let stderr = proxy.stderr();
        errors.iter().all(|e| stderr.contains(e.as_str()))
    })
    .await;
    let (ok, _, stderr) = proxy.ctl(&["reload"]);
    assert!(!ok, "ctl reload succeeded on a broken config");
    for error in &errors {
        assert!(stderr.contains(error.as_str()), "{error} in {stderr}");
    }

    // The old config keeps serving.
    assert_eq!(first_line(front).await, "alpha");
    assert_eq!(proxy.listeners().await.len(), 1);
    assert_eq!(server_names(&proxy).await, ["alpha"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_and_removed() {
    let alpha = Backend::named("alpha").await;
    let (proxy, front) = start("", &[("alpha", alpha.addr, "")]).await;
    let extra_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let extra = format!(
        "[[listener]]\nname = \"extra\"\nlisten = \"{extra_addr}\"\nprotocol = \"tcp\"\npool = \"app\"\n"
    );

    rewrite(&proxy, "", &[("alpha", alpha.addr, "")], &extra);
    let (status, summary) = reload(&proxy).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(names(&summary, "/listeners/added"), ["extra"]);
    assert_eq!(listener_addr(&proxy, "extra").await, extra_addr);
    let mut session = TcpStream::connect(extra_addr)
        .await
        .expect("the new listener accepts");
    assert_eq!(read_line(&mut session).await, "alpha");

    rewrite(&proxy, "", &[("alpha", alpha.addr, "")], "");
    let (status, summary) = reload(&proxy).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(names(&summary, "/listeners/removed"), ["extra"]);
    wait_until("the removed listener's port to refuse", || async {
        TcpStream::connect(extra_addr).await.is_err()
    })
    .await;
    assert_eq!(proxy.listeners().await.len(), 1);
    // Its established session continues, and the kept listener is untouched.
    assert_eq!(round_trip(&mut session, b"still on").await, b"still on");
    assert_eq!(first_line(front).await, "alpha");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_reload_prints_the_summary() {
    let alpha = Backend::named("alpha").await;
    let bravo = Backend::named("bravo").await;
    let (proxy, _front) = start("", &[("alpha", alpha.addr, "")]).await;
    rewrite(
        &proxy,
        "",
        &[("alpha", alpha.addr, ""), ("bravo", bravo.addr, "")],
        "",
    );
    let (ok, stdout, stderr) = proxy.ctl(&["reload"]);
    assert!(ok, "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).expect("JSON summary");
    assert_eq!(names(&summary, "/servers/added"), ["app/bravo"]);

    // Reloading the same file again changes nothing.
    let (ok, stdout, stderr) = proxy.ctl(&["reload"]);
    assert!(ok, "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).expect("JSON summary");
    assert_eq!(summary["changed"], false, "{summary}");
}

/// An `http` listener `web` over pool `web`, whose servers are the HTTP backends named
/// like the tcp servers in `servers`.
fn web_sections(servers: &[(&str, SocketAddr, &str)], http: &[(&str, SocketAddr)]) -> String {
    let servers: Vec<(&str, SocketAddr, &str)> = servers
        .iter()
        .filter_map(|(name, _, keys)| {
            let (_, address) = http.iter().find(|(n, _)| n == name)?;
            Some((*name, *address, *keys))
        })
        .collect();
    support::config::http_section("web", &servers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failed_connection_across_reloads_under_load() {
    let alpha = Backend::named("alpha").await;
    let bravo = Backend::named("bravo").await;
    let charlie = Backend::named("charlie").await;
    let http_backends = [
        HttpBackend::describe().await,
        HttpBackend::describe().await,
        HttpBackend::describe().await,
    ];
    let http: Vec<(&str, SocketAddr)> = ["alpha", "bravo", "charlie"]
        .into_iter()
        .zip(http_backends.iter().map(|b| b.addr))
        .collect();
    let first = [("alpha", alpha.addr, ""), ("bravo", bravo.addr, "")];
    let proxy = Proxy::start(&config("{admin}", "", &first, &web_sections(&first, &http))).await;
    let front = listener_addr(&proxy, "front").await;
    let web = listener_addr(&proxy, "web").await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn({
        let (stop, done) = (stop.clone(), done.clone());
        async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let outcome = async {
                    let mut stream = TcpStream::connect(front).await.map_err(|e| e.to_string())?;
                    let name = read_line(&mut stream).await;
                    if name.is_empty() {
                        return Err("closed before the server's greeting".to_string());
                    }
                    match round_trip(&mut stream, b"ping").await.as_slice() {
                        b"ping" => Ok(()),
                        other => Err(format!("{name} echoed {other:?}")),
                    }
                }
                .await;
                if let Err(failure) = outcome {
                    failures.push(failure);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            failures
        }
    });

    // A keep-alive session runs through every reload too: it was established on the old
    // settings and must keep working even when its server is removed (drained, not cut).
    let kept = tokio::spawn({
        let stop = stop.clone();
        let mut session = TcpStream::connect(front).await.expect("keep-alive connect");
        let name = read_line(&mut session).await;
        async move {
            let mut round_trips = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let reply = round_trip(&mut session, b"still there?").await;
                assert_eq!(reply, b"still there?", "keep-alive session on {name} broke");
                round_trips += 1;
            }
            round_trips
        }
    });

    // HTTP load on `web`: new connections, and a keep-alive client.
    let (http_load, http_tasks) = HttpLoad::spawn(web, &stop);

    let sets: [&[(&str, SocketAddr, &str)]; 5] = [
        &[
            ("alpha", alpha.addr, ""),
            ("bravo", bravo.addr, ""),
            ("charlie", charlie.addr, ""),
        ],
        &[("charlie", charlie.addr, "")],
        &[
            ("alpha", alpha.addr, "weight = 2"),
            ("bravo", bravo.addr, ""),
        ],
        &[("bravo", bravo.addr, ""), ("charlie", charlie.addr, "")],
        &[("alpha", alpha.addr, ""), ("bravo", bravo.addr, "")],
    ];
    // Ten reloads: the five server sets, twice.
    for servers in sets.iter().chain(sets.iter()) {
        let before = done.load(Ordering::SeqCst);
        let http_before = http_load.ok.load(Ordering::SeqCst);
        rewrite(&proxy, "", servers, &web_sections(servers, &http));
        let (status, summary) = reload(&proxy).await;
        assert_eq!(status, 200, "{summary}");
        assert_eq!(summary["changed"], true, "{summary}");
        wait_until("the load to go on after the reload", || async {
            done.load(Ordering::SeqCst) >= before + 20
                && http_load.ok.load(Ordering::SeqCst) >= http_before + 20
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    for task in http_tasks {
        task.await.expect("HTTP load task");
    }
    let http_ok = http_load.ok.load(Ordering::SeqCst);
    assert!(http_ok >= 200, "only {http_ok} HTTP requests");
    assert_eq!(
        http_load.failures(),
        Vec::<String>::new(),
        "failed HTTP requests"
    );
    // Every HTTP server set was used: the backends of the last set answered.
    assert!(
        http_backends
            .iter()
            .all(|b| b.requests.load(Ordering::SeqCst) > 0)
    );
    let failures = load.await.expect("load task");
    let kept_round_trips = kept.await.expect("keep-alive session");
    assert!(kept_round_trips > 0);
    let total = done.load(Ordering::SeqCst);
    assert!(total >= 200, "only {total} connections");
    assert!(
        failures.is_empty(),
        "{} of {total} connections failed: {failures:?}",
        failures.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_need_a_restart_are_reported() {
    let alpha = Backend::named("alpha").await;
    let (proxy, front) = start("", &[("alpha", alpha.addr, "")]).await;
    // The harness sets RUST_LOG, which wins over `log.level`.
    rewrite(
        &proxy,
        "",
        &[("alpha", alpha.addr, "")],
        "[log]\nlevel = \"debug\"\nformat = \"text\"\n",
    );
    let (status, summary) = reload(&proxy).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["changed"], false, "{summary}");
    let not_applied = names(&summary, "/not_applied");
    for key in ["log.level", "log.format"] {
        assert!(
            not_applied.iter().any(|n| n.starts_with(key)),
            "{key}: {summary}"
        );
    }
    assert_eq!(first_line(front).await, "alpha");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_bind_refuses_the_whole_reload() {
    let alpha = Backend::named("alpha").await;
    let bravo = Backend::named("bravo").await;
    let (proxy, front) = start("", &[("alpha", alpha.addr, "")]).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let taken_addr = taken.local_addr().expect("addr");
    let extra = format!(
        "[[listener]]\nname = \"extra\"\nlisten = \"{taken_addr}\"\nprotocol = \"tcp\"\npool = \"app\"\n"
    );
    // The file also adds a server: that must not happen either.
    rewrite(
        &proxy,
        "",
        &[("alpha", alpha.addr, ""), ("bravo", bravo.addr, "")],
        &extra,
    );
    let (status, answer) = reload(&proxy).await;
    assert_eq!(status, 400, "{answer}");
    let errors = names(&answer, "/errors");
    assert!(
        errors.len() == 1 && errors[0].contains("extra") && errors[0].contains("cannot bind"),
        "{errors:?}"
    );
    assert_eq!(server_names(&proxy).await, ["alpha"]);
    assert_eq!(proxy.listeners().await.len(), 1);
    assert_eq!(first_line(front).await, "alpha");

    // Once the port is free, the same file applies.
    drop(taken);
    let (status, summary) = reload(&proxy).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(names(&summary, "/listeners/added"), ["extra"]);
    assert_eq!(names(&summary, "/servers/added"), ["app/bravo"]);
}
