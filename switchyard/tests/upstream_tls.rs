//! `upstream_tls` on tcp pools: every `sslmode` against a TLS backend, a plaintext backend,
//! a TLS backend with the wrong name and one signed by an untrusted CA; health checks over
//! the same TLS settings.

mod support;

use std::net::SocketAddr;

use support::backends::{Backend, read_line};
use support::config::Config;
use support::tls::{Pki, tls_backend, tls_backend_with};
use support::{Proxy, wait_until};

/// The four kinds of backend every mode is tried against.
struct Backends {
    good: Backend,
    plain: Backend,
    wrong_name: Backend,
    untrusted: Backend,
    pki: Pki,
}

async fn backends() -> Backends {
    let pki = Pki::new("Trusted CA");
    let other = Pki::new("Untrusted CA");
    let good = pki.issue("good", "backend", &["127.0.0.1", "backend.test"]);
    let wrong = pki.issue("wrong", "other", &["other.test"]);
    let untrusted = other.issue("untrusted", "backend", &["127.0.0.1"]);
    Backends {
        good: tls_backend(&good, "good").await,
        plain: Backend::named("plain").await,
        wrong_name: tls_backend(&wrong, "wrong_name").await,
        untrusted: tls_backend(&untrusted, "untrusted").await,
        // Kept alive: the untrusted CA's files are not needed after issuing.
        pki,
    }
}

/// One listener and pool per backend, all with `sslmode = mode`.
fn matrix_config(b: &Backends, mode: &str) -> String {
    let mut text = String::from("[admin]\nlisten = \"{admin}\"\n");
    for (name, backend) in [
        ("good", &b.good),
        ("plain", &b.plain),
        ("wrong_name", &b.wrong_name),
        ("untrusted", &b.untrusted),
    ] {
        text.push_str(&format!(
            r#"
[[listener]]
name = "{name}"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "{name}"

[[pool]]
name = "{name}"
servers = [{{ address = "{addr}" }}]
[pool.upstream_tls]
sslmode = "{mode}"
root_cert = "{ca}"
"#,
            addr = backend.addr,
            ca = b.pki.ca.display(),
        ));
    }
    text
}

/// What a client of the proxy sees: the backend's name, or `None` when the connection is
/// closed without it (or with bytes that are not a name). The client speaks first, so that a TLS backend reached in plaintext
/// sees bytes that are not a ClientHello and closes.
async fn reach(front: SocketAddr) -> Option<String> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(front)
        .await
        .expect("connect");
    stream.write_all(b"hello\n").await.expect("write");
    let line = read_line(&mut stream).await;
    // A TLS backend reached in plaintext answers with an alert record, not a name.
    let is_name = !line.is_empty() && line.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    is_name.then_some(line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_against_every_backend() {
    let b = backends().await;
    // (mode, [good, plain, wrong_name, untrusted]) and, for refusals, the logged reason.
    let ok = Ok::<&str, &str>;
    // A plaintext connection to a TLS backend: the backend's handshake fails on the
    // client's bytes and it closes without a word.
    let closed: Result<&str, &str> = Err("");
    let matrix = [
        ("disable", [closed, ok("plain"), closed, closed]),
        ("allow", [closed, ok("plain"), closed, closed]),
        (
            "prefer",
            [ok("good"), ok("plain"), ok("wrong_name"), ok("untrusted")],
        ),
        (
            "require",
            [
                ok("good"),
                Err("sslmode=require"),
                ok("wrong_name"),
                ok("untrusted"),
            ],
        ),
        (
            "verify-ca",
            [
                ok("good"),
                Err("sslmode=verify-ca"),
                ok("wrong_name"),
                Err("UnknownIssuer: the server's certificate is not signed by a CA"),
            ],
        ),
        (
            "verify-full",
            [
                ok("good"),
                Err("sslmode=verify-full"),
                Err("the server's certificate does not name the server switchyard connected to"),
                Err("UnknownIssuer: the server's certificate is not signed by a CA"),
            ],
        ),
    ];
    for (mode, expected) in matrix {
        let proxy = Proxy::start(&matrix_config(&b, mode)).await;
        for (listener, expect) in ["good", "plain", "wrong_name", "untrusted"]
            .iter()
            .zip(expected)
        {
            let front = support::ops::listener_addr(&proxy, listener).await;
            let got = reach(front).await;
            match expect {
                Ok(name) => assert_eq!(got.as_deref(), Some(name), "{mode} / {listener}"),
                Err(reason) => {
                    assert_eq!(got, None, "{mode} / {listener} must not connect");
                    if !reason.is_empty() {
                        wait_until(&format!("{mode} / {listener} logs `{reason}`"), || async {
                            proxy.stderr().lines().any(|line| {
                                line.contains(reason) && line.contains(&format!("pool={listener} "))
                            })
                        })
                        .await;
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_override_client_certificate_and_alpn() {
    let pki = Pki::new("Trusted CA");
    let server = pki.issue("server", "other", &["other.test"]);
    let client = pki.issue("proxy-client", "switchyard", &[]);
    let backend = tls_backend_with(&server, "strict", Some(&pki.ca), &["h2", "x-test"]).await;
    let upstream = |client_keys: &str| {
        format!(
            "upstream_tls = {{ sslmode = \"verify-full\", root_cert = \"{}\", sni = \"other.test\", alpn = [\"x-test\"]{client_keys} }}",
            pki.ca.display()
        )
    };
    let with_cert = format!(
        ", client_cert = \"{}\", client_key = \"{}\"",
        client.cert.display(),
        client.key.display()
    );
    let (_proxy, front) = Config::new()
        .server("b", backend.addr, "")
        .pool(&upstream(&with_cert))
        .start()
        .await;
    let mut stream = tokio::net::TcpStream::connect(front)
        .await
        .expect("connect");
    // `sni` is both sent and verified (the address is 127.0.0.1, the certificate names
    // other.test); the backend saw the ALPN offer and the proxy's client certificate.
    assert_eq!(read_line(&mut stream).await, "strict");
    assert_eq!(read_line(&mut stream).await, "alpn=x-test");
    assert_eq!(read_line(&mut stream).await, "client=switchyard");

    // Without the client certificate the backend refuses the proxy. In TLS 1.3 the server
    // judges the client certificate after the client's side of the handshake is done, so
    // the refusal arrives as an alert on the first read: the session ends as a server error.
    let (proxy, front) = Config::new()
        .server("b", backend.addr, "")
        .pool(&upstream(""))
        .start()
        .await;
    assert_eq!(reach(front).await, None);
    wait_until("the refusal is logged", || async {
        proxy.stderr().contains("server_error")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_use_the_pool_tls() {
    let b = backends().await;
    let (proxy, _front) = Config::new()
        .servers(&[("good", b.good.addr, ""), ("plain", b.plain.addr, "")])
        .pool(&format!(
            "health = {{ check = \"tcp\", interval = \"100ms\", fall = 1, rise = 1 }}\nupstream_tls = {{ sslmode = \"verify-full\", root_cert = \"{}\" }}",
            b.pki.ca.display()
        ))
        .start()
        .await;
    proxy.wait_health("app", "good", "up").await;
    proxy.wait_health("app", "plain", "down").await;
}
