//! TLS on postgres listeners, against real PostgreSQL servers and psql: every client
//! sslmode against every listener `client_tls` mode, and every pool `sslmode` against a
//! TLS-only server (`hostssl`, the managed-database case) and a plaintext-only one, plus a
//! wrong host name and an untrusted CA. Certificates come from a CA made in the test.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use support::SSLMODES;
use support::certs::TestCa;
use support::config::Config;
use support::ops::listener_addr;
use support::postgres::{
    PASSWORD, PgCluster, PgOptions, cancelled_sleep, connect, psql, select_over, stderr,
    tls_listener,
};

/// psql `SELECT 1` with `sslmode` and `channel_binding`, trusting `ca`; whether it worked
/// and what it said.
fn psql_with(
    address: SocketAddr,
    database: &str,
    (sslmode, channel_binding): (&str, &str),
    ca: &Path,
) -> (bool, String) {
    let ca = ca.display().to_string();
    let output = psql(
        address,
        "postgres",
        database,
        "SELECT 1",
        &[
            ("PGSSLMODE", sslmode),
            ("PGCHANNELBINDING", channel_binding),
            ("PGSSLROOTCERT", ca.as_str()),
            ("PGPASSWORD", PASSWORD),
        ],
    );
    (output.status.success(), stderr(&output))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_client_sslmode_against_every_listener_mode() {
    let certs = tempfile::tempdir().expect("dir");
    let ca = TestCa::new("switchyard test CA");
    let ca_file = ca.write(certs.path(), "ca.pem");
    let (cert, key) = ca.issue(&["127.0.0.1"], "proxy", certs.path(), "proxy");
    let pg = PgCluster::start(&PgOptions::default());
    let config = Config::new()
        .protocol("postgres")
        .server("pg", pg.address(), "")
        .section(&tls_listener("disabled", &cert, &key, "disabled"))
        .section(&tls_listener("optional", &cert, &key, "optional"))
        .section(&tls_listener("required", &cert, &key, "required"));
    let (proxy, _) = config.start().await;
    for (listener, works) in [
        ("disabled", [true, true, true, false, false, false]),
        ("optional", [true; 6]),
        ("required", [false, true, true, true, true, true]),
    ] {
        let address = listener_addr(&proxy, listener).await;
        for (sslmode, expected) in SSLMODES.iter().zip(works) {
            let (ok, said) = psql_with(address, "postgres", (sslmode, "prefer"), &ca_file);
            assert_eq!(ok, expected, "sslmode={sslmode} on {listener}: {said}");
            if listener == "required" && *sslmode == "disable" {
                assert!(said.contains("SSL required"), "{said}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_upstream_sslmode_against_tls_only_and_plaintext_servers() {
    let certs = tempfile::tempdir().expect("dir");
    let ca = TestCa::new("switchyard test CA");
    let ca_file = ca.write(certs.path(), "ca.pem");
    let other_ca = TestCa::new("someone else's CA").write(certs.path(), "other-ca.pem");
    let (proxy_cert, proxy_key) = ca.issue(&["127.0.0.1"], "proxy", certs.path(), "proxy");
    let server_dir = tempfile::tempdir().expect("dir");
    let server_tls = ca.issue(&["127.0.0.1"], "db", server_dir.path(), "server");
    // The managed-database case: TLS only (`hostssl`) and SCRAM, which over TLS offers
    // SCRAM-SHA-256-PLUS.
    let tls_only = PgCluster::start(&PgOptions {
        auth: Some("scram-sha-256"),
        ssl: Some(server_tls),
        ssl_only: true,
        ..PgOptions::default()
    });
    let plain = PgCluster::start(&PgOptions::default());

    let mut config = Config::new()
        .protocol("postgres")
        .server("plain", plain.address(), "")
        .listener(&format!(
            "tls = {{ certs = [{{ cert = \"{}\", key = \"{}\" }}] }}",
            proxy_cert.display(),
            proxy_key.display()
        ));
    let mut pools = Vec::new();
    for (server, address) in [("tls", tls_only.address()), ("plain", plain.address())] {
        for mode in SSLMODES {
            pools.push((
                format!("{server}-{mode}"),
                address,
                format!(
                    "sslmode = \"{mode}\", root_cert = \"{}\"",
                    ca_file.display()
                ),
            ));
        }
    }
    pools.push((
        "wrong-name".into(),
        tls_only.address(),
        format!(
            "sslmode = \"verify-full\", root_cert = \"{}\", sni = \"db.example.com\"",
            ca_file.display()
        ),
    ));
    pools.push((
        "untrusted".into(),
        tls_only.address(),
        format!(
            "sslmode = \"verify-ca\", root_cert = \"{}\"",
            other_ca.display()
        ),
    ));
    for (name, address, tls) in &pools {
        config = config
            .listener(&format!(
                "  [[listener.routes]]\n  database = \"{name}\"\n  pool = \"{name}\"\n  rewrite_database = \"postgres\"\n"
            ))
            .section(&format!(
                "[[pool]]\nname = \"{name}\"\nupstream_tls = {{ {tls} }}\nservers = [ {{ address = \"{address}\" }} ]\n"
            ));
    }
    // The health check speaks the pool's sslmode too.
    config = config.section(&format!(
        "[[pool]]\nname = \"checked\"\nupstream_tls = {{ sslmode = \"require\" }}\n\
         health = {{ check = \"postgres\", password = \"{PASSWORD}\", interval = \"200ms\" }}\n\
         servers = [ {{ name = \"db\", address = \"{}\" }} ]\n",
        tls_only.address()
    ));
    let (proxy, front) = config.start().await;

    let expected = [
        ("tls-disable", false),
        ("tls-allow", true),
        ("tls-prefer", true),
        ("tls-require", true),
        ("tls-verify-ca", true),
        ("tls-verify-full", true),
        ("plain-disable", true),
        ("plain-allow", true),
        ("plain-prefer", true),
        ("plain-require", false),
        ("plain-verify-ca", false),
        ("plain-verify-full", false),
        ("wrong-name", false),
        ("untrusted", false),
    ];
    for (database, works) in expected {
        let (ok, said) = psql_with(front, database, ("disable", "prefer"), &ca_file);
        assert_eq!(ok, works, "{database}: {said}");
        if database.starts_with("plain-verify") || database == "plain-require" {
            assert!(said.contains("does not support TLS"), "{database}: {said}");
        }
    }
    // TLS on both sides: channel binding cannot work through a proxy that ends both TLS
    // sessions, so SCRAM-SHA-256-PLUS is not offered and a client that requires channel
    // binding is refused cleanly by its own driver; one that does not use it gets in.
    let (ok, said) = psql_with(front, "tls-require", ("require", "require"), &ca_file);
    assert!(!ok);
    assert!(said.contains("did not offer"), "{said}");
    let (ok, said) = psql_with(front, "tls-require", ("require", "disable"), &ca_file);
    assert!(ok, "{said}");

    // A cancel reaches the server of a TLS pool (the proxy speaks the pool's sslmode).
    let client = connect(front, "postgres", "tls-require")
        .await
        .expect("connect");
    let error = cancelled_sleep(client, &tls_only).await;
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{error}");

    proxy.wait_health("checked", "db", "up").await;
    assert_eq!(proxy.server("checked", "db").await.role, "primary");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificate_cn_routes_and_direct_tls_works() {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use std::os::unix::fs::PermissionsExt;

    let certs = tempfile::tempdir().expect("dir");
    let ca = TestCa::new("switchyard test CA");
    let ca_file = ca.write(certs.path(), "ca.pem");
    let (cert, key) = ca.issue(&["127.0.0.1"], "proxy", certs.path(), "proxy");
    let (client_cert, client_key) =
        ca.issue(&["tenant-a.example"], "tenant-a", certs.path(), "client");
    std::fs::set_permissions(&client_key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let pg = PgCluster::start(&PgOptions {
        databases: vec!["tenant_a_db"],
        ..PgOptions::default()
    });
    let (_proxy, front) = Config::new()
        .protocol("postgres")
        .server("pg", pg.address(), "")
        .listener(&format!(
            "tls = {{ certs = [{{ cert = \"{}\", key = \"{}\" }}], client_ca = \"{}\", \
             client_auth = \"optional\", alpn = [\"postgresql\"] }}\n\
             [[listener.routes]]\nclient_cn = \"tenant-*\"\npool = \"app\"\n\
             rewrite_database = \"tenant_a_db\"",
            cert.display(),
            key.display(),
            ca_file.display()
        ))
        .start()
        .await;

    let with_cert = psql(
        front,
        "postgres",
        "postgres",
        "SELECT current_database()",
        &[
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", &ca_file.display().to_string()),
            ("PGSSLCERT", &client_cert.display().to_string()),
            ("PGSSLKEY", &client_key.display().to_string()),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&with_cert.stdout).trim(),
        "tenant_a_db",
        "{}",
        stderr(&with_cert)
    );
    let without = psql(
        front,
        "postgres",
        "postgres",
        "SELECT current_database()",
        &[("PGSSLMODE", "require")],
    );
    assert_eq!(
        String::from_utf8_lossy(&without.stdout).trim(),
        "postgres",
        "{}",
        stderr(&without)
    );

    // PostgreSQL 17's direct TLS: a ClientHello first, ALPN `postgresql`, no SSLRequest.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&ca_file).expect("CA"))
        .expect("root");
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"postgresql".to_vec()];
    let stream = tokio::net::TcpStream::connect(front)
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, stream)
        .await
        .expect("direct TLS handshake");
    assert_eq!(
        select_over(stream, 7)
            .await
            .expect("startup over direct TLS"),
        7
    );
}
