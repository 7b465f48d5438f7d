//! Balancing over real backends: round robin (plain and weighted), least_conn, random,
//! source_hash with maintenance, backup takeover and give-back, redispatch after a failed
//! connect, slow_start ramping a returning server.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use support::backends::{Backend, first_line, hold};
use support::config::start_pool;
use support::ops::{field, scrape, wait_access};
use support::{free_port, wait_until};

/// Opens `n` connections one after the other (each closed before the next) and counts
/// which server answered each.
async fn tally(front: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts.entry(first_line(front).await).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_over_equal_weights() {
    let backends = [
        Backend::named("alpha").await,
        Backend::named("bravo").await,
        Backend::named("charlie").await,
    ];
    let names = ["alpha", "bravo", "charlie"];
    let servers: Vec<_> = names
        .iter()
        .zip(&backends)
        .map(|(name, b)| (*name, b.addr, "weight = 1"))
        .collect();
    let (_proxy, front) = start_pool(r#"balance = "round_robin""#, &servers).await;
    let counts = tally(front, 30).await;
    let expected: BTreeMap<String, usize> = names.iter().map(|n| (n.to_string(), 10)).collect();
    assert_eq!(counts, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_follows_weights() {
    let heavy = Backend::named("heavy").await;
    let light = Backend::named("light").await;
    let servers = [
        ("heavy", heavy.addr, "weight = 3"),
        ("light", light.addr, "weight = 1"),
    ];
    let (_proxy, front) = start_pool(r#"balance = "round_robin""#, &servers).await;
    let counts = tally(front, 40).await;
    assert_eq!(counts.get("heavy"), Some(&30), "{counts:?}");
    assert_eq!(counts.get("light"), Some(&10), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_gives_a_returning_server_a_small_share_then_an_equal_one() {
    let alpha = Backend::named("alpha").await;
    let bravo = Backend::named("bravo").await;
    let servers = [("alpha", alpha.addr, ""), ("bravo", bravo.addr, "")];
    let (proxy, front) =
        start_pool("balance = \"round_robin\"\nslow_start = \"2s\"", &servers).await;
    assert_eq!(
        proxy.server("app", "bravo").await.effective_weight,
        1.0,
        "servers at startup take their full share"
    );

    proxy.set_state("app", "bravo", "drain").await;
    proxy.set_state("app", "bravo", "ready").await;
    let ramping = tally(front, 20).await;
    let returned = ramping.get("bravo").copied().unwrap_or(0);
    assert!(returned <= 5, "bravo just came back: {ramping:?}");

    wait_until("bravo's effective weight to reach its weight", || async {
        proxy.server("app", "bravo").await.effective_weight == 1.0
    })
    .await;
    assert_eq!(
        scrape(
            &proxy,
            "switchyard_server_effective_weight",
            &[("pool", "app"), ("server", "bravo")]
        )
        .await,
        1.0
    );
    let after = tally(front, 20).await;
    assert_eq!(after.get("alpha"), Some(&10), "{after:?}");
    assert_eq!(after.get("bravo"), Some(&10), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_sends_new_connections_to_the_idle_server() {
    let alpha = Backend::named("alpha").await;
    let bravo = Backend::named("bravo").await;
    let servers = [("alpha", alpha.addr, ""), ("bravo", bravo.addr, "")];
    let (proxy, front) = start_pool(r#"balance = "least_conn""#, &servers).await;

    let (first, picked) = hold(front).await;
    let other = if picked == "alpha" { "bravo" } else { "alpha" };
    // Keep the other server out while a second connection lands on the first-picked one.
    proxy.set_state("app", other, "drain").await;
    let (second, again) = hold(front).await;
    assert_eq!(again, picked);
    proxy.set_state("app", other, "ready").await;
    wait_until("two sessions on the first-picked server", || async {
        proxy.server("app", &picked).await.active == 2
    })
    .await;

    // 2 vs 0, then 2 vs 1: both new connections go to the idle server.
    let (third, name) = hold(front).await;
    assert_eq!(name, other);
    let (fourth, name) = hold(front).await;
    assert_eq!(name, other);

    // Free the first-picked server: now it is the idle one.
    drop((first, second));
    wait_until("the first-picked server to be idle", || async {
        proxy.server("app", &picked).await.active == 0
    })
    .await;
    let (_fifth, name) = hold(front).await;
    assert_eq!(name, picked);
    let (_sixth, name) = hold(front).await;
    assert_eq!(name, picked);
    drop((third, fourth));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_gives_both_servers_traffic() {
    let alpha = Backend::named("alpha").await;
    let bravo = Backend::named("bravo").await;
    let servers = [("alpha", alpha.addr, ""), ("bravo", bravo.addr, "")];
    let (_proxy, front) = start_pool(r#"balance = "random""#, &servers).await;
    let counts = tally(front, 100).await;
    assert_eq!(counts.values().sum::<usize>(), 100);
    assert!(counts.get("alpha").is_some_and(|&n| n > 0), "{counts:?}");
    assert!(counts.get("bravo").is_some_and(|&n| n > 0), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_hash_is_sticky_and_moves_only_while_the_server_is_out() {
    let backends = [
        Backend::named("alpha").await,
        Backend::named("bravo").await,
        Backend::named("charlie").await,
    ];
    let servers: Vec<_> = ["alpha", "bravo", "charlie"]
        .iter()
        .zip(&backends)
        .map(|(name, b)| (*name, b.addr, ""))
        .collect();
    let (proxy, front) = start_pool(r#"balance = "source_hash""#, &servers).await;

    let counts = tally(front, 20).await;
    assert_eq!(
        counts.len(),
        1,
        "one client address, one server: {counts:?}"
    );
    let sticky = counts.keys().next().expect("a server").clone();

    proxy.set_state("app", &sticky, "maint").await;
    let moved = tally(front, 20).await;
    assert_eq!(moved.len(), 1, "still sticky, on another server: {moved:?}");
    assert!(!moved.contains_key(&sticky), "{moved:?}");

    proxy.set_state("app", &sticky, "ready").await;
    let back = tally(front, 20).await;
    assert_eq!(back.get(&sticky), Some(&20), "{back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_takes_over_while_the_primary_is_down_and_gives_back() {
    let primary = Backend::named("primary").await;
    let primary_addr = primary.addr;
    let backup = Backend::named("backup").await;
    let servers = [
        ("primary", primary.addr, ""),
        ("backup", backup.addr, "backup = true"),
    ];
    let (proxy, front) = start_pool(
        r#"health = { check = "tcp", interval = "100ms" }"#,
        &servers,
    )
    .await;
    proxy.wait_pool_checked_up("app").await;
    assert_eq!(tally(front, 10).await.get("primary"), Some(&10));

    drop(primary);
    proxy.wait_state("app", "primary", "down").await;
    assert_eq!(tally(front, 10).await.get("backup"), Some(&10));

    // Restart it on the same address once the old listening socket is gone.
    wait_until("the primary's port to be free", || async {
        std::net::TcpListener::bind(primary_addr).is_ok()
    })
    .await;
    let _primary = Backend::named_at(primary_addr, "primary").await;
    proxy.wait_state("app", "primary", "up").await;
    assert_eq!(tally(front, 10).await.get("primary"), Some(&10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connects_are_redispatched_to_another_server() {
    let live = Backend::named("live").await;
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let servers = [("dead", dead, ""), ("live", live.addr, "")];
    let (proxy, front) = start_pool("retries = 1", &servers).await;

    for n in 0..20 {
        assert_eq!(first_line(front).await, "live", "connection {n}");
    }
    let dead_status = proxy.server("app", "dead").await;
    assert!(dead_status.connect_errors > 0, "{dead_status:?}");
    assert_eq!(dead_status.total, 0);
    assert_eq!(proxy.server("app", "live").await.connect_errors, 0);
    let line = wait_access(&proxy, "a redispatched connection", |l| {
        field(l, "server") == "live"
    })
    .await;
    assert_ne!(field(&line, "termination"), "connect_failed");
}
