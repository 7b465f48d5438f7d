//! switchyard logging in to real MariaDB servers (`protocol::mysql::login`) over real
//! sockets, with every sslmode against a TLS server, a plaintext one and one that
//! requires secure transport; and the `mysql` health check reading primary, replica and
//! replica lag from a real GTID replica.

mod support;

use std::path::Path;
use std::sync::Arc;

use switchyard::config::load_str;
use switchyard::health::Check;
use switchyard::protocol::mysql::auth::Plugin;
use switchyard::protocol::mysql::check::{MysqlHealthCheck, connect};
use switchyard::protocol::mysql::flags::capabilities;
use switchyard::protocol::mysql::login::{Credential, LoginError, LoginOptions, login};
use switchyard::protocol::mysql::query::{QueryResult, query};
use switchyard::upstream::{Pool, ServerRole};
use tokio::net::TcpStream;

use support::SSLMODES;
use support::certs::TestCa;
use support::mysql::{ED25519_USER, MONITOR_USER, MariaDb, MyOptions, NATIVE_USER};
use support::wait_until;

/// A pool of `servers` with `upstream_tls` (if any) and a `mysql` health check as the
/// monitor user.
fn pool(servers: &[&MariaDb], upstream_tls: &str) -> Arc<Pool> {
    let servers: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{{ name = \"db{i}\", address = \"{}\" }}", s.address()))
        .collect();
    let text = format!(
        "[[pool]]\nname = \"my\"\nservers = [ {} ]\n{upstream_tls}\n\
         health = {{ check = \"mysql\", user = \"{}\", password = \"{}\" }}\n",
        servers.join(", "),
        MONITOR_USER.0,
        MONITOR_USER.1
    );
    let config = load_str(Path::new("t.toml"), &text).expect("valid config");
    Arc::new(Pool::new(&config.pools[0]).expect("pool"))
}

fn tls_keys(mode: &str, root_cert: &Path, extra: &str) -> String {
    format!(
        "upstream_tls = {{ sslmode = \"{mode}\", root_cert = \"{}\"{extra} }}",
        root_cert.display()
    )
}

fn options(user: (&str, &str)) -> LoginOptions {
    LoginOptions {
        user: user.0.to_string(),
        credential: Credential::Password(user.1.to_string()),
        database: None,
        capabilities: capabilities::LOGIN,
        attributes: vec![("program_name".into(), "mysql_login test".into())],
        max_packet: 1 << 20,
        charset: switchyard::protocol::mysql::handshake::UTF8MB4_GENERAL_CI,
    }
}

/// Logs in to the pool's first server with the pool's sslmode (as the health check
/// does, `allow` retrying over TLS); returns whether the session is TLS, as the server
/// sees it (`Ssl_cipher`) and as the login reported it (they must agree).
async fn tls_login(pool: &Pool, user: (&str, &str)) -> Result<bool, String> {
    let mut connection = connect(pool, &pool.servers[0], &options(user)).await?;
    let Ok(QueryResult::Rows(status)) =
        query(&mut connection, "SHOW SESSION STATUS LIKE 'Ssl_cipher'").await
    else {
        panic!("SHOW STATUS answers rows");
    };
    let cipher = status
        .value(&status.rows[0], &["Value"])
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        connection.session.tls,
        !cipher.is_empty(),
        "cipher {cipher:?}"
    );
    Ok(connection.session.tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_against_a_tls_server_then_with_secure_transport_required() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("mysql test CA");
    let ca_path = ca.write(dir.path(), "ca.pem");
    let other_ca = TestCa::new("another CA").write(dir.path(), "other.pem");
    let (cert, key) = ca.issue(&["127.0.0.1", "localhost"], "mariadb", dir.path(), "server");
    let server = MariaDb::start(&MyOptions {
        tls: Some((cert, key, ca_path.clone())),
    });

    for mode in SSLMODES {
        let pool = pool(&[&server], &tls_keys(mode, &ca_path, ""));
        let tls = tls_login(&pool, NATIVE_USER)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(tls, !matches!(mode, "disable" | "allow"), "{mode}");
    }
    // Verification failures: an unknown CA, a name the certificate does not have.
    let wrong_ca = pool(&[&server], &tls_keys("verify-ca", &other_ca, ""));
    let error = tls_login(&wrong_ca, NATIVE_USER)
        .await
        .expect_err("unknown CA");
    assert!(error.contains("TLS handshake"), "{error}");
    let wrong_name = ", sni = \"db.example.com\"";
    let error = tls_login(
        &pool(&[&server], &tls_keys("verify-full", &ca_path, wrong_name)),
        NATIVE_USER,
    )
    .await
    .expect_err("wrong name");
    assert!(error.contains("TLS handshake"), "{error}");
    assert_eq!(
        tls_login(
            &pool(&[&server], &tls_keys("verify-ca", &ca_path, wrong_name)),
            NATIVE_USER
        )
        .await,
        Ok(true),
        "verify-ca does not check the name"
    );

    // ed25519 over TLS, and the server's own refusal of a wrong password.
    let require = pool(&[&server], &tls_keys("require", &ca_path, ""));
    let connection = connect(&require, &require.servers[0], &options(ED25519_USER))
        .await
        .expect("ed25519");
    assert_eq!(connection.session.auth_plugin, Plugin::Ed25519);
    let stream = TcpStream::connect(server.address()).await.expect("connect");
    let wrong = options((NATIVE_USER.0, "wrong"));
    let Err(LoginError::Server(err)) =
        login(stream, require.tls.as_deref(), "127.0.0.1", false, &wrong).await
    else {
        panic!("a wrong password is refused by the server");
    };
    assert_eq!((err.code, err.sqlstate.as_str()), (1045, "28000"), "{err}");

    // Plaintext refused: `disable` fails with the server's error (MariaDB says 1045 where
    // MySQL says 3159), `allow` retries over TLS, the others were TLS anyway.
    server.sql("SET GLOBAL require_secure_transport = ON");
    for mode in SSLMODES {
        let pool = pool(&[&server], &tls_keys(mode, &ca_path, ""));
        let result = tls_login(&pool, NATIVE_USER).await;
        if mode == "disable" {
            let error = result.expect_err("plaintext refused");
            assert!(error.contains("1045"), "{error}");
        } else {
            assert_eq!(result, Ok(true), "{mode}");
        }
    }
    let allow = pool(&[&server], &tls_keys("allow", &ca_path, ""));
    let stream = TcpStream::connect(server.address()).await.expect("connect");
    let first = login(
        stream,
        allow.tls.as_deref(),
        "127.0.0.1",
        false,
        &options(NATIVE_USER),
    )
    .await;
    assert!(
        matches!(first, Err(LoginError::Server(_))),
        "allow's first attempt is plaintext"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_server_sslmodes_and_the_health_check_on_a_primary_and_its_replica() {
    let primary = MariaDb::start(&MyOptions::default());
    let replica = primary.replica();
    let ca = tempfile::tempdir().expect("temp dir");
    let ca_path = TestCa::new("unused CA").write(ca.path(), "ca.pem");

    // A server that offers no TLS: the modes that require it fail rather than fall back.
    for mode in SSLMODES {
        let pool = pool(&[&primary], &tls_keys(mode, &ca_path, ""));
        let result = tls_login(&pool, ED25519_USER).await;
        match mode {
            "disable" | "allow" | "prefer" => assert_eq!(result, Ok(false), "{mode}"),
            _ => {
                let error = result.expect_err(mode);
                assert!(error.contains("does not support TLS"), "{mode}: {error}");
            }
        }
    }

    // `allow` retries a refused login over TLS; a server without TLS cannot take the
    // retry, and the first refusal is what is reported.
    let allow = pool(&[&primary], &tls_keys("allow", &ca_path, ""));
    let error = connect(
        &allow,
        &allow.servers[0],
        &options((NATIVE_USER.0, "wrong")),
    )
    .await
    .expect_err("wrong password");
    assert!(error.contains("1045"), "{error}");

    // Roles, and a caught-up replica's lag.
    let pool = pool(&[&primary, &replica], "");
    let health = pool.health.clone().expect("health");
    let (db0, db1) = (&pool.servers[0], &pool.servers[1]);
    MysqlHealthCheck
        .check(&pool, db0, &health)
        .await
        .expect("primary checked");
    MysqlHealthCheck
        .check(&pool, db1, &health)
        .await
        .expect("replica checked");
    assert_eq!(db0.role(), ServerRole::Primary);
    assert_eq!(db0.replica_lag(), None);
    assert_eq!(db1.role(), ServerRole::Replica);
    let lag = db1.replica_lag().expect("a replica's lag");
    assert_eq!((lag.bytes, lag.seconds), (0, 0.0), "caught up");

    // A delayed replica: the primary's write is received and not applied.
    replica.sql("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 3600; START SLAVE");
    primary.sql("INSERT INTO app.t (v) VALUES (1)");
    wait_until(
        "the replica to report relay log not yet applied",
        || async {
            MysqlHealthCheck
                .check(&pool, db1, &health)
                .await
                .expect("replica checked");
            db1.replica_lag().is_some_and(|lag| lag.bytes > 0)
        },
    )
    .await;
    assert_eq!(db1.role(), ServerRole::Replica);
    // A stopped SQL thread: the lag is unknown.
    replica.sql("STOP SLAVE SQL_THREAD");
    MysqlHealthCheck
        .check(&pool, db1, &health)
        .await
        .expect("replica checked");
    assert_eq!((db1.role(), db1.replica_lag()), (ServerRole::Replica, None));
    // Promotion: read-only off makes it a primary.
    replica.sql("STOP SLAVE; SET GLOBAL read_only = OFF");
    MysqlHealthCheck
        .check(&pool, db1, &health)
        .await
        .expect("promoted checked");
    assert_eq!(db1.role(), ServerRole::Primary);

    // A monitor password the server refuses fails the check with the server's error.
    primary.sql(&format!(
        "ALTER USER '{}'@'%' IDENTIFIED BY 'changed'",
        MONITOR_USER.0
    ));
    let error = MysqlHealthCheck
        .check(&pool, db0, &health)
        .await
        .expect_err("refused");
    assert!(error.contains("1045"), "{error}");
}
