//! `protocol = "postgres"` against real PostgreSQL clusters and real clients (psql,
//! tokio-postgres): routing and rewrites, authentication passed through, cancel, roles and
//! failover, and the errors the proxy answers itself.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::config::Config;
use support::ops::listener_addr;
use support::postgres::{
    PASSWORD, PgCluster, PgOptions, cancelled_sleep, connect, pgbench, psql, psql_ok, select_over,
    stderr,
};
use support::{Proxy, free_port, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A postgres listener `front` over pool `app` with the given servers.
fn pg_config(servers: &[(&str, SocketAddr)]) -> Config {
    servers.iter().fold(
        Config::new().protocol("postgres"),
        |config, (name, address)| config.server(name, *address, ""),
    )
}

/// The SQLSTATE of a failed connect.
async fn connect_error_code(address: SocketAddr, user: &str, database: &str) -> String {
    match connect(address, user, database).await {
        Ok(_) => panic!("connect to {database} as {user} should fail"),
        Err(error) => error
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| format!("no SQLSTATE: {error}")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_and_tokio_postgres_run_queries_through_the_proxy() {
    let pg = PgCluster::start(&PgOptions::default());
    let (proxy, front) = pg_config(&[("pg", pg.address())]).start().await;
    assert_eq!(
        psql_ok(front, "postgres", "postgres", "SELECT 40 + 2"),
        "42"
    );
    let client = connect(front, "postgres", "postgres")
        .await
        .expect("connect");
    let row = client
        .query_one("SELECT $1::text || 'b'", &[&"a"])
        .await
        .expect("extended query protocol");
    assert_eq!(row.get::<_, String>(0), "ab");
    drop(client);
    let server = proxy.server("app", "pg").await;
    assert!(server.bytes_in > 0 && server.bytes_out > 0, "{server:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_and_md5_authentication_pass_through() {
    for auth in ["scram-sha-256", "md5"] {
        let pg = PgCluster::start(&PgOptions {
            auth: Some(auth),
            ..PgOptions::default()
        });
        if auth == "md5" {
            pg.psql_local(
                "SET password_encryption = 'md5'; ALTER ROLE postgres PASSWORD 'sekret-pw'",
            );
        }
        let (_proxy, front) = pg_config(&[("pg", pg.address())]).start().await;
        assert_eq!(
            psql_ok(front, "postgres", "postgres", "SELECT current_user"),
            "postgres",
            "{auth}"
        );
        let wrong = psql(
            front,
            "postgres",
            "postgres",
            "SELECT 1",
            &[("PGPASSWORD", "wrong")],
        );
        assert!(!wrong.status.success());
        assert!(
            stderr(&wrong).contains("password authentication failed"),
            "{auth}: {}",
            stderr(&wrong)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_database_user_and_application_name_with_rewrites() {
    let pg = PgCluster::start(&PgOptions {
        databases: vec!["abc123", "reports"],
        ..PgOptions::default()
    });
    pg.psql_local("CREATE ROLE tenant LOGIN");
    let (_proxy, front) = pg_config(&[("main", pg.address())])
        .routes_only()
        .listener(
            r#"
  [[listener.routes]]
  database = "db-abc123"
  pool = "app"
  rewrite_database = "abc123"
  rewrite_user = "tenant"

  [[listener.routes]]
  user = "postgres"
  application_name = "report*"
  pool = "app"
  rewrite_database = "reports"

  [[listener.routes]]
  database = "post*"
  pool = "app"
"#,
        )
        .start()
        .await;
    assert_eq!(
        psql_ok(
            front,
            "postgres",
            "db-abc123",
            "SELECT current_database() || ' ' || current_user"
        ),
        "abc123 tenant"
    );
    let reports = psql(
        front,
        "postgres",
        "anything",
        "SELECT current_database()",
        &[("PGAPPNAME", "reporting")],
    );
    assert_eq!(String::from_utf8_lossy(&reports.stdout).trim(), "reports");
    assert_eq!(
        psql_ok(front, "postgres", "postgres", "SELECT current_database()"),
        "postgres"
    );
    let unrouted = psql(front, "postgres", "other", "SELECT 1", &[]);
    assert!(!unrouted.status.success());
    assert!(
        stderr(&unrouted).contains("no route for database \"other\""),
        "{}",
        stderr(&unrouted)
    );
    assert_eq!(
        connect_error_code(front, "postgres", "other").await,
        "3D000"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_the_server_through_the_proxy() {
    let pg = PgCluster::start(&PgOptions::default());
    let (_proxy, front) = pg_config(&[("pg", pg.address())]).start().await;
    let client = connect(front, "postgres", "postgres")
        .await
        .expect("connect");
    // The key the client holds is the proxy's: the cancel goes to the proxy's listener.
    let error = cancelled_sleep(client, &pg).await;
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{error}");

    // An unknown key is dropped silently: the proxy closes without an answer.
    let mut stream = TcpStream::connect(front).await.expect("connect");
    stream
        .write_all(&[0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 1, 1, 2, 3, 4])
        .await
        .expect("write");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("read");
    assert!(rest.is_empty());
}

/// Sends `bytes` as a client's first packets and returns everything the proxy answers
/// until it closes.
async fn answer_to(front: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(front).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    answer
}

/// A client that sends its startup, a query and Terminate in one write, waiting for
/// nothing, gets the query run and answered, as from the server itself: the proxy reads
/// the opening through a buffer and puts back what came after it, and a transaction pool
/// answers what came before a Terminate before it ends the session (it used to end it at
/// once, so the query never ran). In session mode and in a transaction pool (which logs
/// the client in itself).
#[tokio::test(flavor = "multi_thread")]
async fn a_query_sent_with_the_startup_and_terminate_is_answered() {
    let pg = PgCluster::start(&PgOptions::default());
    let mut packets = support::postgres::startup_packet("postgres");
    let query = b"SELECT 41 + 1\0";
    packets.push(b'Q');
    packets.extend_from_slice(&(query.len() as u32 + 4).to_be_bytes());
    packets.extend_from_slice(query);
    packets.extend_from_slice(b"X\0\0\0\x04");
    for (mode, listener, pool) in [
        ("session", "", ""),
        (
            "transaction",
            "auth = \"trust\"",
            "pool_mode = \"transaction\"",
        ),
    ] {
        let (_proxy, front) = pg_config(&[("pg", pg.address())])
            .listener(listener)
            .pool(pool)
            .start()
            .await;
        let answer = answer_to(front, &packets).await;
        assert_eq!(answer.first(), Some(&b'R'), "{mode}: {answer:?}");
        // The DataRow: one column of two bytes, "42".
        assert!(
            answer.windows(8).any(|w| w == b"\0\x01\0\0\0\x0242"),
            "{mode}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
}

/// Terminate after extended-protocol messages with no Sync behind them: the server would
/// hold their answers until a Sync that never comes, so the pool ends the session at
/// once, and the one server connection is cleaned and serves the next client.
#[tokio::test(flavor = "multi_thread")]
async fn terminate_after_unsynced_messages_ends_the_session_at_once() {
    let pg = PgCluster::start(&PgOptions::default());
    let (_proxy, front) = pg_config(&[("pg", pg.address())])
        .listener("auth = \"trust\"")
        .pool("pool_mode = \"transaction\"\npool_size = 1")
        .start()
        .await;
    let mut packets = support::postgres::startup_packet("postgres");
    for (tag, body) in [
        (b'P', &b"\0SELECT 1\0\0\0"[..]),
        (b'B', b"\0\0\0\0\0\0\0\0"),
        (b'E', b"\0\0\0\0\0"),
        (b'X', b""),
    ] {
        packets.push(tag);
        packets.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        packets.extend_from_slice(body);
    }
    let answer = tokio::time::timeout(Duration::from_secs(20), answer_to(front, &packets))
        .await
        .expect("the session ended");
    assert_eq!(answer.first(), Some(&b'R'));
    assert_eq!(psql_ok(front, "postgres", "postgres", "SELECT 2"), "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_startup_packets_get_protocol_errors() {
    let pg = PgCluster::start(&PgOptions::default());
    let (proxy, front) = pg_config(&[("pg", pg.address())]).start().await;
    let too_long = answer_to(front, &[0, 0, 0x40, 0, 0, 3, 0, 0]).await;
    assert_eq!(too_long.first(), Some(&b'E'));
    assert!(String::from_utf8_lossy(&too_long).contains("C08P01"));
    let unterminated = answer_to(front, b"\x00\x00\x00\x0d\x00\x03\x00\x00user\x00").await;
    assert!(String::from_utf8_lossy(&unterminated).contains("C08P01"));
    let version_2 = answer_to(front, b"\x00\x00\x00\x09\x00\x02\x00\x00\x00").await;
    assert!(String::from_utf8_lossy(&version_2).contains("C0A000"));
    // GSSENCRequest then SSLRequest: both answered `N`, then a bad startup.
    let mut packets = vec![0, 0, 0, 8, 4, 210, 22, 48, 0, 0, 0, 8, 4, 210, 22, 47];
    packets.extend_from_slice(&[0, 0, 0, 3]);
    let answer = answer_to(front, &packets).await;
    assert_eq!(&answer[..2], b"NN");
    assert_eq!(answer.get(2), Some(&b'E'));
    // The proxy is unharmed.
    assert_eq!(psql_ok(front, "postgres", "postgres", "SELECT 1"), "1");
    let listener = proxy
        .listeners()
        .await
        .into_iter()
        .find(|l| l.name == "front")
        .expect("front");
    assert!(listener.total >= 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_failure_and_missing_role_are_fatal_errors() {
    let closed = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (_proxy, front) = pg_config(&[("gone", closed)]).start().await;
    assert_eq!(
        connect_error_code(front, "postgres", "postgres").await,
        "08006"
    );

    let pg = PgCluster::start(&PgOptions::default());
    let (_proxy, front) = pg_config(&[("pg", pg.address())])
        .listener("role = \"replica\"\nreplica_fallback = false")
        .pool(r#"health = { check = "postgres", interval = "200ms" }"#)
        .start()
        .await;
    let output = psql(front, "postgres", "postgres", "SELECT 1", &[]);
    assert!(
        stderr(&output).contains("no replica available"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        connect_error_code(front, "postgres", "postgres").await,
        "57P03"
    );
}

/// Which server answered: `t` from a replica, `f` from a primary.
fn in_recovery(front: SocketAddr) -> String {
    psql_ok(front, "postgres", "postgres", "SELECT pg_is_in_recovery()")
}

#[tokio::test(flavor = "multi_thread")]
async fn rw_and_ro_listeners_follow_roles_and_failover() {
    let mut primary = PgCluster::start(&PgOptions {
        auth: Some("scram-sha-256"),
        ..PgOptions::default()
    });
    let replica = primary.replica();
    let config = pg_config(&[("a", primary.address()), ("b", replica.address())])
        .listener(r#"role = "primary""#)
        .pool(r#"health = { check = "postgres", password = "env:PG_CHECK_PASSWORD", interval = "200ms", fall = 2, rise = 1 }"#)
        .section(
            r#"[[listener]]
name = "ro"
listen = "127.0.0.1:0"
protocol = "postgres"
pool = "app"
role = "replica""#,
        );
    let proxy =
        Proxy::start_with_env(&config.build(), None, &[("PG_CHECK_PASSWORD", PASSWORD)]).await;
    let (rw, ro) = (
        listener_addr(&proxy, "front").await,
        listener_addr(&proxy, "ro").await,
    );
    wait_until("roles known", || async {
        proxy.server("app", "a").await.role == "primary"
            && proxy.server("app", "b").await.role == "replica"
    })
    .await;
    assert!(proxy.server("app", "b").await.replica_lag.is_some());
    assert!(
        proxy
            .metrics()
            .await
            .contains("switchyard_server_primary{pool=\"app\",server=\"a\"} 1")
    );
    let (ok, status, said) = proxy.ctl(&["status"]);
    assert!(ok, "{said}");
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("b") && l.contains(" replica ")),
        "{status}"
    );
    for _ in 0..3 {
        assert_eq!(in_recovery(rw), "f");
        assert_eq!(in_recovery(ro), "t");
    }

    // A session on the replica is cut when its role changes.
    let held = connect(ro, "postgres", "postgres")
        .await
        .expect("ro session");
    replica.promote();
    primary.stop();
    wait_until("rw to follow the promoted replica", || async {
        proxy.server("app", "b").await.role == "primary"
            && proxy.server("app", "a").await.health == "down"
    })
    .await;
    assert_eq!(in_recovery(rw), "f");
    assert_eq!(
        psql_ok(rw, "postgres", "postgres", "SELECT inet_server_port()"),
        replica.port.to_string()
    );
    wait_until("the session on the promoted server to be cut", || async {
        held.is_closed()
    })
    .await;
    // No replica left: the ro listener falls back to the primary.
    assert_eq!(in_recovery(ro), "f");
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_3_2_and_pq_options_reach_the_server_which_negotiates() {
    let pg = PgCluster::start(&PgOptions::default());
    let (_proxy, front) = pg_config(&[("pg", pg.address())]).start().await;
    let startup = switchyard::protocol::postgres::codec::Startup {
        version: switchyard::protocol::postgres::codec::PROTOCOL_3_2,
        params: vec![
            ("user".into(), "postgres".into()),
            ("_pq_.not_a_real_option".into(), "1".into()),
        ],
    };
    let mut stream = TcpStream::connect(front).await.expect("connect");
    stream.write_all(&startup.encode()).await.expect("write");
    // PostgreSQL 15 speaks 3.0: its NegotiateProtocolVersion (`v`) comes back through the
    // proxy untouched, naming the option it does not know, and the startup goes on.
    let mut tag = [0u8; 1];
    stream.read_exact(&mut tag).await.expect("read");
    assert_eq!(&tag, b"v");
    let length = stream.read_u32().await.expect("length") as usize;
    let mut body = vec![0; length - 4];
    stream.read_exact(&mut body).await.expect("body");
    assert_eq!(
        &body[..4],
        &[0, 3, 0, 0],
        "newest minor version the server speaks"
    );
    assert!(String::from_utf8_lossy(&body).contains("_pq_.not_a_real_option"));
    stream.read_exact(&mut tag).await.expect("read");
    assert_eq!(&tag, b"R", "authentication follows");
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_runs_through_the_proxy_in_session_mode() {
    let pg = PgCluster::start(&PgOptions {
        auth: Some("scram-sha-256"),
        ..PgOptions::default()
    });
    let (proxy, front) = pg_config(&[("pg", pg.address())]).start().await;
    let init = pgbench(front, &["-i", "-q", "-s", "1"]);
    assert!(init.status.success(), "{}", stderr(&init));
    let run = pgbench(front, &["-n", "-c", "4", "-j", "2", "-t", "50"]);
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{report}{}", stderr(&run));
    assert!(
        report.contains("number of transactions actually processed: 200/200"),
        "{report}"
    );
    assert!(
        proxy.server("app", "pg").await.total >= 5,
        "init + 4 sessions"
    );
}

/// A server in front of `upstream` that takes a PROXY v1 line off each connection, keeps
/// it in `lines`, and relays the rest: stands for a PROXY-aware server (PgBouncer).
async fn proxy_header_recorder(
    upstream: SocketAddr,
) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = lines.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut line = Vec::new();
                while !line.ends_with(b"\r\n") {
                    match client.read_u8().await {
                        Ok(byte) => line.push(byte),
                        Err(_) => return,
                    }
                }
                seen.lock()
                    .expect("lines")
                    .push(String::from_utf8_lossy(&line).into_owned());
                if let Ok(mut server) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (address, lines)
}

/// The one line the recorder saw (a PROXY header): there must be exactly one.
fn only_line(lines: &std::sync::Mutex<Vec<String>>) -> String {
    let sent = lines.lock().expect("lines").clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    sent.into_iter().next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_in_from_a_balancer_and_out_to_the_server() {
    let pg = PgCluster::start(&PgOptions::default());
    let (recorder, lines) = proxy_header_recorder(pg.address()).await;
    let (proxy, front) = pg_config(&[("pg", recorder)])
        .listener(r#"proxy_protocol = "accept""#)
        .pool(r#"send_proxy_protocol = "v1""#)
        .start()
        .await;
    let mut stream = TcpStream::connect(front).await.expect("connect");
    stream
        .write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 6432\r\n")
        .await
        .expect("PROXY header");
    assert_eq!(
        select_over(stream, 5)
            .await
            .expect("startup after the PROXY header"),
        5
    );
    let sent = only_line(&lines);
    assert!(
        sent.starts_with("PROXY TCP4 203.0.113.7 127.0.0.1 40000 6432"),
        "the balancer's client address goes on: {sent:?}"
    );
    wait_until("the session's log line", || async {
        proxy.stdout().contains("203.0.113.7")
    })
    .await;
}

/// Without a PROXY header in, the header sent out names the address the client reached on
/// the proxy's own socket (looked up only for the header).
#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_out_names_the_address_the_client_reached() {
    let pg = PgCluster::start(&PgOptions::default());
    let (recorder, lines) = proxy_header_recorder(pg.address()).await;
    let (_proxy, front) = pg_config(&[("pg", recorder)])
        .pool(r#"send_proxy_protocol = "v1""#)
        .start()
        .await;
    let stream = TcpStream::connect(front).await.expect("connect");
    let client = stream.local_addr().expect("client address");
    assert_eq!(select_over(stream, 5).await.expect("select"), 5);
    let sent = only_line(&lines);
    let expected = format!(
        "PROXY TCP4 {} {} {} {}",
        client.ip(),
        front.ip(),
        client.port(),
        front.port()
    );
    assert!(sent.starts_with(&expected), "{sent:?} against {expected}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_accepted_before_a_reload_follows_the_new_pool() {
    let pg = PgCluster::start(&PgOptions::default());
    let (proxy, front) = pg_config(&[("old", pg.address())]).start().await;
    // Accepted on the old settings, but the startup comes after the reload.
    let held = TcpStream::connect(front).await.expect("connect");
    wait_until("the connection to be accepted", || async {
        proxy
            .listeners()
            .await
            .iter()
            .any(|l| l.name == "front" && l.total >= 1)
    })
    .await;
    let old_line = format!(r#"name = "old", address = "{}""#, pg.address());
    let new_line = format!(r#"name = "new", address = "localhost:{}""#, pg.port);
    let text = std::fs::read_to_string(proxy.config_path()).expect("config");
    assert!(text.contains(&old_line), "{text}");
    std::fs::write(proxy.config_path(), text.replace(&old_line, &new_line)).expect("write");
    let (status, body) = proxy.post("/api/v1/reload", "").await;
    assert_eq!(status, 200, "{body}");

    assert_eq!(
        select_over(held, 3)
            .await
            .expect("the startup finds the new pool's server"),
        3
    );
    assert_eq!(proxy.server("app", "new").await.total, 1);
}
