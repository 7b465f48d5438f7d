//! Proxy-side authentication on postgres listeners (`auth`, `[[user]]`, `auth_query`),
//! against a real PostgreSQL whose pg_hba says `md5` (so SCRAM-stored roles log in with
//! SCRAM-SHA-256 and md5-stored roles with md5) and real clients (psql, tokio-postgres):
//! clients authenticate to switchyard, and switchyard logs in to the server itself.
//! (libpq 15 has no `require_auth`; which request each method sends is checked by the unit
//! tests in protocol/postgres/auth.rs.)

mod support;

use std::net::SocketAddr;

use support::certs::TestCa;
use support::config::Config;
use support::ops::{field, listener_addr, wait_access};
use support::postgres::{
    PASSWORD, PgCluster, PgOptions, cancelled_sleep, connect, connect_with, psql, startup_packet,
    stderr, tls_listener,
};
use support::wait_until;

/// A cluster authenticating TCP clients with md5/SCRAM (by how each role's password is
/// stored), with roles:
/// - `alice` / `alice-pw`, `bob` / `bob-pw`, `erin` / `erin-pw`: SCRAM-stored;
/// - `carol` / `carol-pw`: md5-stored;
/// - `dave` / `dave-server-pw`: SCRAM-stored (clients use `dave-client-pw`).
fn cluster() -> PgCluster {
    let pg = PgCluster::start(&PgOptions {
        auth: Some("md5"),
        ..PgOptions::default()
    });
    pg.psql_local(
        "CREATE ROLE alice LOGIN PASSWORD 'alice-pw'; \
         CREATE ROLE bob LOGIN PASSWORD 'bob-pw'; \
         CREATE ROLE erin LOGIN PASSWORD 'erin-pw'; \
         CREATE ROLE dave LOGIN PASSWORD 'dave-server-pw'; \
         SET password_encryption = 'md5'; \
         CREATE ROLE carol LOGIN PASSWORD 'carol-pw';",
    );
    pg
}

/// What the server stores for `role`.
fn stored(pg: &PgCluster, role: &str) -> String {
    pg.psql_local(&format!(
        "SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"
    ))
}

/// The `[[user]]` table: alice by password, bob by the server's SCRAM secret, carol by the
/// server's md5 hash, dave with a different server password, postgres by password.
fn users(pg: &PgCluster) -> String {
    format!(
        r#"
[[user]]
name = "alice"
password = "alice-pw"

[[user]]
name = "bob"
scram_secret = "{bob}"

[[user]]
name = "carol"
md5 = "{carol}"

[[user]]
name = "dave"
password = "dave-client-pw"
server_password = "dave-server-pw"

[[user]]
name = "postgres"
password = "{PASSWORD}"
"#,
        bob = stored(pg, "bob"),
        carol = stored(pg, "carol"),
    )
}

/// A postgres listener over pool `app` with `auth` and extra keys.
fn listener(name: &str, auth: &str, extra: &str) -> String {
    format!(
        r#"
[[listener]]
name = "{name}"
listen = "127.0.0.1:0"
protocol = "postgres"
pool = "app"
auth = "{auth}"
{extra}
"#
    )
}

/// psql as `user` with `password` (and more libpq environment): `current_user` or what
/// psql said on failure.
fn psql_as(
    address: SocketAddr,
    user: &str,
    password: &str,
    env: &[(&str, &str)],
) -> Result<String, String> {
    let mut env = env.to_vec();
    env.push(("PGPASSWORD", password));
    let output = psql(address, user, "postgres", "SELECT current_user", &env);
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(stderr(&output))
    }
}

/// tokio-postgres as `user` with `password`: `current_user`, or the SQLSTATE and message.
async fn tokio_postgres_as(
    address: SocketAddr,
    user: &str,
    database: &str,
    password: &str,
) -> Result<String, (String, String)> {
    match connect_with(address, user, database, password).await {
        Ok(client) => {
            let row = client
                .query_one("SELECT current_user::text", &[])
                .await
                .map_err(|e| (String::new(), e.to_string()))?;
            Ok(row.get::<_, String>(0))
        }
        Err(error) => {
            let code = error.code().map(|c| c.code().to_string());
            let message = error
                .as_db_error()
                .map(|e| e.message().to_string())
                .unwrap_or_else(|| error.to_string());
            Err((code.unwrap_or_default(), message))
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_log_in_to_switchyard_which_logs_in_to_the_server() {
    let pg = cluster();
    let config = Config::new()
        .protocol("postgres")
        .server("pg", pg.address(), "")
        .section(&users(&pg))
        .section(&listener("md5", "md5", ""))
        .section(&listener("trust", "trust", ""));
    // `front` has no `auth`: with `[[user]]` entries it defaults to scram-sha-256.
    let (proxy, front) = config.start().await;
    let md5 = listener_addr(&proxy, "md5").await;
    let trust = listener_addr(&proxy, "trust").await;

    // SCRAM-SHA-256 from the client; switchyard logs in with the configured password
    // (alice), the keys recovered from the client's proof (bob: only the server's secret
    // is configured) or the server password (dave). Both clients, every user.
    for (user, password) in [
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
        ("dave", "dave-client-pw"),
    ] {
        assert_eq!(psql_as(front, user, password, &[]).as_deref(), Ok(user));
        assert_eq!(
            tokio_postgres_as(front, user, "postgres", password).await,
            Ok(user.to_string())
        );
    }
    // md5 from the client, against a stored md5 hash (switchyard answers the server's md5
    // with the hash) and against a password (the server then asks for SCRAM).
    for (user, password) in [("carol", "carol-pw"), ("alice", "alice-pw")] {
        assert_eq!(psql_as(md5, user, password, &[]).as_deref(), Ok(user));
        assert_eq!(
            tokio_postgres_as(md5, user, "postgres", password).await,
            Ok(user.to_string())
        );
    }
    // trust: no password asked; the server still gets the configured one.
    assert_eq!(psql_as(trust, "alice", "", &[]).as_deref(), Ok("alice"));

    // A wrong password and an unknown user look the same: 28P01, same message shape.
    let failed = |user: &str| {
        (
            "28P01".to_string(),
            format!("password authentication failed for user \"{user}\""),
        )
    };
    for address in [front, md5] {
        assert_eq!(
            tokio_postgres_as(address, "alice", "postgres", "wrong").await,
            Err(failed("alice"))
        );
        assert_eq!(
            tokio_postgres_as(address, "mallory", "postgres", "alice-pw").await,
            Err(failed("mallory"))
        );
        // dave's server password is not his password here.
        assert_eq!(
            tokio_postgres_as(address, "dave", "postgres", "dave-server-pw").await,
            Err(failed("dave"))
        );
    }
    // carol is stored as md5 only: SCRAM cannot check her.
    assert_eq!(
        tokio_postgres_as(front, "carol", "postgres", "carol-pw").await,
        Err(failed("carol"))
    );
    let said = psql_as(front, "alice", "wrong", &[]).expect_err("wrong password");
    assert!(
        said.contains("password authentication failed for user \"alice\""),
        "{said}"
    );

    // A login the server refuses reaches the client as the server's error.
    let (code, message) = tokio_postgres_as(front, "alice", "nosuchdb", "alice-pw")
        .await
        .expect_err("no such database");
    assert_eq!(code, "3D000", "{message}");
    assert!(message.contains("\"nosuchdb\" does not exist"), "{message}");

    // Cancel goes through switchyard's key to the server's backend.
    let client = connect(front, "postgres", "postgres").await.expect("login");
    let error = cancelled_sleep(client, &pg).await;
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{error}");
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_query_finds_users_not_in_the_table_and_a_reload_adds_users() {
    let pg = cluster();
    let config = Config::new()
        .protocol("postgres")
        .listener(r#"auth = "scram-sha-256""#)
        .pool(&format!(
            r#"auth_query = {{ user = "postgres", password = "{PASSWORD}" }}"#
        ))
        .server("pg", pg.address(), "")
        .section(&listener("md5", "md5", ""));
    let (proxy, front) = config.start().await;
    let md5 = listener_addr(&proxy, "md5").await;
    // erin is only on the server: her SCRAM secret is fetched, checked, and the recovered
    // keys log her in (the second time from the cache).
    for _ in 0..2 {
        assert_eq!(
            tokio_postgres_as(front, "erin", "postgres", "erin-pw").await,
            Ok("erin".to_string())
        );
    }
    assert_eq!(
        psql_as(front, "erin", "erin-pw", &[]).as_deref(),
        Ok("erin")
    );
    // carol's md5 hash is fetched: md5 from the client, md5 with the hash to the server.
    assert_eq!(
        psql_as(md5, "carol", "carol-pw", &[]).as_deref(),
        Ok("carol")
    );
    let failed = |user: &str| {
        Err((
            "28P01".to_string(),
            format!("password authentication failed for user \"{user}\""),
        ))
    };
    assert_eq!(
        tokio_postgres_as(front, "erin", "postgres", "wrong-pw-3141").await,
        failed("erin")
    );
    assert_eq!(
        tokio_postgres_as(front, "nobody", "postgres", "x").await,
        failed("nobody")
    );
    // One log line with the reason, never the password.
    let line = wait_access(&proxy, "a failed login", |line| {
        field(line, "termination") == "auth_failed"
    })
    .await;
    assert_eq!(field(&line, "listener"), "front");
    wait_until("the refusal logged", || async {
        proxy.stderr().contains("wrong password")
    })
    .await;
    assert!(!proxy.stderr().contains("wrong-pw-3141"));
    assert!(!proxy.stdout().contains("wrong-pw-3141"));

    // A reload that puts erin in the table with another client password: the table wins,
    // and switchyard logs in to the server with her server password.
    let table = r#"
[[user]]
name = "erin"
password = "erin-new-pw"
server_password = "erin-pw"
"#;
    let text = config.clone().section(table).build();
    std::fs::write(
        proxy.config_path(),
        text.replace("{admin}", support::ADMIN_LISTEN),
    )
    .expect("rewrite config");
    let (status, body) = proxy.post("/api/v1/reload", "").await;
    assert_eq!(status, 200, "{body}");
    let summary: serde_json::Value = serde_json::from_str(&body).expect("summary");
    assert_eq!(summary["settings"], serde_json::json!(["user"]), "{body}");
    assert_eq!(
        tokio_postgres_as(front, "erin", "postgres", "erin-new-pw").await,
        Ok("erin".to_string())
    );
    assert_eq!(
        tokio_postgres_as(front, "erin", "postgres", "erin-pw").await,
        failed("erin")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cleartext_passwords_only_over_tls() {
    let certs = tempfile::tempdir().expect("dir");
    let ca = TestCa::new("switchyard test CA");
    let (cert, key) = ca.issue(&["127.0.0.1"], "proxy", certs.path(), "proxy");
    let pg = cluster();
    let (proxy, _) = Config::new()
        .protocol("postgres")
        .server("pg", pg.address(), "")
        .section(&users(&pg))
        .section(&(tls_listener("clear", &cert, &key, "required") + "auth = \"cleartext\"\n"))
        .start()
        .await;
    let clear = listener_addr(&proxy, "clear").await;
    let tls = [("PGSSLMODE", "require")];
    // A password user, a SCRAM-secret user (checked against the secret, then the client's
    // verified password logs in to the server) and an md5-hash user.
    for (user, password) in [
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
        ("carol", "carol-pw"),
    ] {
        assert_eq!(psql_as(clear, user, password, &tls).as_deref(), Ok(user));
    }
    let said = psql_as(clear, "bob", "wrong", &tls).expect_err("wrong password");
    assert!(
        said.contains("password authentication failed for user \"bob\""),
        "{said}"
    );
    let said = psql_as(clear, "alice", "alice-pw", &[]).expect_err("plaintext");
    assert!(said.contains("SSL required"), "{said}");
}

/// A server taking TLS only (`hostssl`) and SCRAM (which over TLS also offers
/// SCRAM-SHA-256-PLUS), with its certificate issued by a test CA written to `certs`: the CA
/// file to verify it with, and the server.
fn tls_only_cluster(certs: &std::path::Path) -> (std::path::PathBuf, PgCluster) {
    let ca = TestCa::new("switchyard test CA");
    let ca_file = ca.write(certs, "ca.pem");
    let server_tls = ca.issue(&["127.0.0.1"], "db", certs, "server");
    let pg = PgCluster::start(&PgOptions {
        auth: Some("scram-sha-256"),
        ssl: Some(server_tls),
        ssl_only: true,
        ..PgOptions::default()
    });
    (ca_file, pg)
}

#[tokio::test(flavor = "multi_thread")]
async fn switchyard_logs_in_over_upstream_tls_and_retries_with_tls_for_allow() {
    let certs = tempfile::tempdir().expect("dir");
    let (ca_file, pg) = tls_only_cluster(certs.path());
    let user = format!("[[user]]\nname = \"postgres\"\npassword = \"{PASSWORD}\"\n");
    let full = format!(
        "[[pool]]\nname = \"full\"\nupstream_tls = {{ sslmode = \"verify-full\", root_cert = \"{}\" }}\n\
         servers = [ {{ address = \"{}\" }} ]\n",
        ca_file.display(),
        pg.address()
    );
    let (_proxy, front) = Config::new()
        .protocol("postgres")
        // `allow`: plaintext first, refused by pg_hba, then again with TLS.
        .pool(r#"upstream_tls = { sslmode = "allow" }"#)
        .server("pg", pg.address(), "")
        .listener(
            "  [[listener.routes]]\n  database = \"full\"\n  pool = \"full\"\n  rewrite_database = \"postgres\"\n",
        )
        .section(&full)
        .section(&user)
        .start()
        .await;
    for database in ["postgres", "full"] {
        assert_eq!(
            tokio_postgres_as(front, "postgres", database, PASSWORD).await,
            Ok("postgres".to_string()),
            "{database}"
        );
    }
    let client = connect(front, "postgres", "full").await.expect("login");
    let error = cancelled_sleep(client, &pg).await;
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_pool_connections_over_upstream_tls_serve_clients_on_every_worker() {
    let certs = tempfile::tempdir().expect("dir");
    let (ca_file, pg) = tls_only_cluster(certs.path());
    let user = format!("[[user]]\nname = \"postgres\"\npassword = \"{PASSWORD}\"\n");
    // Two server connections for many clients spread over both workers: a connection a
    // worker opened keeps being leased by clients of the other, and moves to it. A moved
    // socket is not yet known writable, so a write leaves its TLS records buffered: this
    // stalled until every write to a server or client was flushed.
    let (_proxy, front) = Config::new()
        .protocol("postgres")
        .top("workers = 2")
        .pool(&format!(
            "pool_mode = \"transaction\"\npool_size = 2\n\
             upstream_tls = {{ sslmode = \"verify-full\", root_cert = \"{}\" }}",
            ca_file.display()
        ))
        .server("pg", pg.address(), "")
        .section(&user)
        .start()
        .await;
    let mut clients = Vec::new();
    for n in 0..24_i32 {
        clients.push(tokio::spawn(async move {
            let client = connect(front, "postgres", "postgres").await.expect("login");
            for i in 0..20_i32 {
                let row = client
                    .query_one("SELECT $1::int + $2::int, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[&n, &i])
                    .await
                    .expect("query");
                assert_eq!(row.get::<_, i32>(0), n + i);
                assert!(row.get::<_, bool>(1), "the server connection is TLS");
            }
        }));
    }
    for client in clients {
        client.await.expect("client");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logins_have_a_deadline_and_each_address_a_cap_on_logins_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let pg = cluster();
    let (proxy, front) = Config::new()
        .protocol("postgres")
        .listener("timeouts = { login = \"1s\" }\nmax_logins_per_address = 3")
        .server("pg", pg.address(), "")
        .section(&users(&pg))
        .start()
        .await;
    // Three clients send their startup and then never answer the password request: each
    // holds a login slot of 127.0.0.1.
    let mut mute = Vec::new();
    for _ in 0..3 {
        let mut client = TcpStream::connect(front).await.expect("connect");
        client
            .write_all(&startup_packet("alice"))
            .await
            .expect("startup");
        let mut kind = [0u8; 1];
        client.read_exact(&mut kind).await.expect("auth request");
        assert_eq!(&kind, b"R", "the proxy asks for a password");
        mute.push(client);
    }
    // A fourth login from the same address is refused at once, with PostgreSQL's error.
    let mut fourth = TcpStream::connect(front).await.expect("connect");
    let refused =
        String::from_utf8_lossy(&support::ops::read_until_closed(&mut fourth).await).into_owned();
    assert!(
        refused.contains("53300") && refused.contains("too many connections logging in"),
        "{refused}"
    );
    // The silent three are cut at the login deadline (10 minutes of `timeouts.client`
    // before), with PostgreSQL's error since they speak the protocol.
    for client in &mut mute {
        let answer =
            String::from_utf8_lossy(&support::ops::read_until_closed(client).await).into_owned();
        assert!(
            answer.contains("08P01") && answer.contains("login timeout"),
            "{answer}"
        );
    }
    // A client that sends nothing, and one that sends half a startup packet, are closed at
    // the deadline too.
    let mut silent = TcpStream::connect(front).await.expect("connect");
    let mut half = TcpStream::connect(front).await.expect("connect");
    half.write_all(&startup_packet("alice")[..6])
        .await
        .expect("half a startup");
    assert!(
        support::ops::read_until_closed(&mut silent)
            .await
            .is_empty()
    );
    assert!(support::ops::read_until_closed(&mut half).await.is_empty());
    // The slots came back: a real client logs in.
    assert_eq!(
        psql_as(front, "alice", "alice-pw", &[]).as_deref(),
        Ok("alice")
    );
    support::ops::wait_terminations(&proxy, &[("login_timeout", 5), ("too_many_logins", 1)]).await;
}
