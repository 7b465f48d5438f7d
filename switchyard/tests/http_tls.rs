//! TLS on `http` listeners and to HTTPS servers, over real sockets: curl (HTTP/1.1, HTTP/2
//! by ALPN, client certificates) and a hyper client on rustls against in-test hyper
//! backends; certificates made in the test by the `support::tls` CA.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::Request;
use support::config::Config;
use support::http::{HttpBackend, curl, full, send_on};
use support::ops::{number, scrape, wait_access};
use support::tls::{CertFiles, Pki, connect, server_config};
use support::{Proxy, wait_until};

const HOST: &str = "shop.example.com";

fn header_line<'a>(description: &'a str, name: &str) -> Option<&'a str> {
    description
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
}

/// The `tls` table for the `front` listener serving `cert`, plus `extra` keys.
fn tls_keys(cert: &CertFiles, extra: &str) -> String {
    format!(
        "tls = {{ certs = [{{ cert = {:?}, key = {:?} }}]{extra} }}",
        cert.cert, cert.key
    )
}

/// An `http` listener terminating TLS with `tls` in front of `backend`.
async fn https_proxy(backend: SocketAddr, tls: &str) -> (Proxy, SocketAddr) {
    http_proxy(backend, tls, "").await
}

/// An `http` listener with `listener` keys over pool `app` (with `pool` keys) whose one
/// server is `backend`.
async fn http_proxy(backend: SocketAddr, listener: &str, pool: &str) -> (Proxy, SocketAddr) {
    Config::new()
        .protocol("http")
        .listener(listener)
        .pool(pool)
        .server("a1", backend, "")
        .start()
        .await
}

/// A test CA, its certificate for `HOST`, a describing backend, and an `http` listener
/// terminating TLS with that certificate and `tls_extra` keys in front of it.
async fn shop(tls_extra: &str) -> (Pki, HttpBackend, Proxy, SocketAddr) {
    let pki = Pki::new("Test CA");
    let cert = pki.issue("shop", HOST, &[HOST]);
    let backend = HttpBackend::describe().await;
    let (proxy, front) = https_proxy(backend.addr, &tls_keys(&cert, tls_extra)).await;
    (pki, backend, proxy, front)
}

/// curl arguments reaching `front` as `https://shop.example.com:PORT/` with `ca` trusted.
fn curl_args(front: SocketAddr, ca: &std::path::Path) -> Vec<String> {
    vec![
        "--cacert".into(),
        ca.display().to_string(),
        "--resolve".into(),
        format!("{HOST}:{}:127.0.0.1", front.port()),
        format!("https://{HOST}:{}/tls?q=1", front.port()),
    ]
}

async fn curl_with(extra: &[&str], front: SocketAddr, ca: &std::path::Path) -> String {
    let mut args: Vec<&str> = extra.to_vec();
    let base = curl_args(front, ca);
    args.extend(base.iter().map(String::as_str));
    curl(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_tls_speaks_http11_and_h2_by_alpn() {
    let (pki, _backend, proxy, front) = shop("").await;
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let text = curl_with(
            &[
                flag,
                "-w",
                "version=%{http_version}",
                "-H",
                "X-Client-Cert-CN: forged",
            ],
            front,
            &pki.ca,
        )
        .await;
        assert!(
            text.starts_with("GET /tls?q=1 HTTP/1.1\n"),
            "{flag}: {text}"
        );
        assert!(
            text.ends_with(&format!("version={version}")),
            "{flag}: {text}"
        );
        assert_eq!(header_line(&text, "x-forwarded-proto"), Some("https"));
        assert_eq!(header_line(&text, "x-client-cert-cn"), None, "{text}");
    }
    // The access log names the protocol the client spoke.
    let line = wait_access(&proxy, "an HTTP/2 request", |l| l["protocol"] == "HTTP/2.0").await;
    assert_eq!(number(&line, "status"), 200);
}

/// curl with `flag` presenting `alice`'s certificate and claiming to be `admin` in a
/// header; the backend must see `alice`. Returns what it saw.
async fn curl_as_alice(
    alice: &CertFiles,
    flag: &str,
    front: SocketAddr,
    ca: &std::path::Path,
) -> String {
    let (cert, key) = (
        alice.cert.display().to_string(),
        alice.key.display().to_string(),
    );
    let args = [
        flag,
        "-H",
        "X-Client-Cert-CN: admin",
        "--cert",
        &cert,
        "--key",
        &key,
    ];
    let text = curl_with(&args, front, ca).await;
    assert_eq!(
        header_line(&text, "x-client-cert-cn"),
        Some("alice"),
        "{text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_become_headers_and_forgeries_are_stripped() {
    let pki = Pki::new("Test CA");
    let cert = pki.issue("shop", HOST, &[HOST]);
    let alice = pki.issue("alice", "alice", &["alice.example.com"]);
    let backend = HttpBackend::describe().await;
    let optional = format!(", client_ca = {:?}, client_auth = \"optional\"", pki.ca);
    let (_proxy, front) = https_proxy(backend.addr, &tls_keys(&cert, &optional)).await;
    for flag in ["--http1.1", "--http2"] {
        let text = curl_as_alice(&alice, flag, front, &pki.ca).await;
        let subject = header_line(&text, "x-client-cert-subject").unwrap_or_default();
        assert!(subject.contains("CN=alice"), "{text}");
        assert_eq!(
            header_line(&text, "x-client-cert-san"),
            Some("DNS:alice.example.com"),
            "{text}"
        );
        // Optional: no certificate is fine, and a claimed identity does not pass.
        let text = curl_with(&[flag, "-H", "X-Client-Cert-CN: admin"], front, &pki.ca).await;
        assert_eq!(header_line(&text, "x-client-cert-cn"), None, "{text}");
        assert_eq!(header_line(&text, "x-forwarded-proto"), Some("https"));
    }

    let required = format!(", client_ca = {:?}, client_auth = \"required\"", pki.ca);
    let (proxy, front) = https_proxy(backend.addr, &tls_keys(&cert, &required)).await;
    curl_as_alice(&alice, "--http2", front, &pki.ca).await;
    let before = backend.requests.load(std::sync::atomic::Ordering::SeqCst);
    let refused = tokio::process::Command::new("curl")
        .arg("-s")
        .args(curl_args(front, &pki.ca))
        .output()
        .await
        .expect("run curl");
    assert!(
        !refused.status.success(),
        "no client certificate must be refused"
    );
    wait_until("the refused handshake logged", || async {
        proxy.stderr().contains("TLS handshake failed")
    })
    .await;
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::SeqCst),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_client_on_rustls_gets_h2_or_http11_as_offered() {
    let pki = Pki::new("Test CA");
    let cert = pki.issue("shop", HOST, &[HOST]);
    let alice = pki.issue("alice", "alice", &[]);
    let backend = HttpBackend::describe().await;
    let optional = format!(", client_ca = {:?}, client_auth = \"optional\"", pki.ca);
    let (_proxy, front) = https_proxy(backend.addr, &tls_keys(&cert, &optional)).await;
    for alpn in ["h2", "http/1.1"] {
        let stream = connect(front, HOST, pki.client(Some(&alice), &[alpn]))
            .await
            .expect("TLS handshake");
        let agreed = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        assert_eq!(agreed.as_deref(), Some(alpn.as_bytes()));
        let mut request = Request::get("/hyper");
        if alpn == "h2" {
            request = request.uri(format!("https://{HOST}/hyper"));
        } else {
            request = request.header("host", HOST);
        }
        let answer = send_on(
            stream,
            alpn == "h2",
            request.body(full("")).expect("request"),
        )
        .await;
        assert_eq!(answer.status, 200, "{alpn}: {}", answer.body);
        assert!(
            answer.body.starts_with("GET /hyper HTTP/1.1\n"),
            "{}",
            answer.body
        );
        assert_eq!(header_line(&answer.body, "x-client-cert-cn"), Some("alice"));
        assert_eq!(header_line(&answer.body, "host"), Some(HOST));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_sni_refuses_unknown_names() {
    let (pki, _backend, proxy, front) = shop(", strict_sni = true").await;
    let client: Arc<_> = pki.client(None, &["h2"]);
    assert!(
        connect(front, "other.example.com", client.clone())
            .await
            .is_err()
    );
    wait_until("the refused handshake logged", || async {
        proxy.stderr().contains("TLS handshake failed")
    })
    .await;
    let stream = connect(front, HOST, client).await.expect("known name");
    let request = Request::get(format!("https://{HOST}/"))
        .body(full(""))
        .expect("request");
    assert_eq!(send_on(stream, true, request).await.status, 200);
}

/// A plaintext `http` listener in front of `backend` with these pool keys.
async fn proxy_to_https(backend: SocketAddr, pool: &str) -> (Proxy, SocketAddr) {
    http_proxy(backend, "", pool).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_servers_by_sslmode() {
    let pki = Pki::new("Backend CA");
    let cert = pki.issue("backend", "backend.test", &["backend.test", "127.0.0.1"]);
    let backend = HttpBackend::describe_tls(server_config(&cert, None, &["h2", "http/1.1"])).await;
    let root = format!("root_cert = {:?}", pki.ca);

    // verify-full: the chain and the address (an IP SAN) check out, HTTP/1.1 or HTTP/2 by ALPN.
    for (version, line) in [("1.1", "GET / HTTP/1.1"), ("2", "GET https://")] {
        let pool = format!(
            "http_version = \"{version}\"\nupstream_tls = {{ sslmode = \"verify-full\", {root} }}"
        );
        let (_proxy, front) = proxy_to_https(backend.addr, &pool).await;
        let answer = support::http::get(front, "/", &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.body.starts_with(line), "{version}: {}", answer.body);
    }
    let h2 = format!(
        "http_version = \"2\"\nupstream_tls = {{ sslmode = \"verify-full\", {root}, sni = \"backend.test\" }}"
    );
    let (_proxy, front) = proxy_to_https(backend.addr, &h2).await;
    let answer = support::http::get(front, "/", &[]).await;
    assert!(answer.body.contains("HTTP/2.0"), "{}", answer.body);

    // verify-full with a name the certificate does not carry: 502, and the log says why.
    let wrong = format!(
        "retries = 0\nupstream_tls = {{ sslmode = \"verify-full\", {root}, sni = \"wrong.test\" }}"
    );
    let (proxy, front) = proxy_to_https(backend.addr, &wrong).await;
    assert_eq!(support::http::get(front, "/", &[]).await.status, 502);
    wait_until("the refusal logged", || async {
        let log = proxy.stderr();
        log.contains("sslmode=verify-full")
            && log.contains("certificate not valid for name \"wrong.test\"")
    })
    .await;

    // require: encrypted, not verified, so a certificate from an unknown CA is fine.
    let untrusted = Pki::new("Unknown CA");
    let odd = untrusted.issue("odd", "odd.test", &["odd.test"]);
    let other = HttpBackend::describe_tls(server_config(&odd, None, &["http/1.1"])).await;
    let (_proxy, front) =
        proxy_to_https(other.addr, "upstream_tls = { sslmode = \"require\" }").await;
    assert_eq!(support::http::get(front, "/", &[]).await.status, 200);
    let strict = format!("upstream_tls = {{ sslmode = \"verify-ca\", {root} }}");
    let (_proxy, front) = proxy_to_https(other.addr, &strict).await;
    assert_eq!(support::http::get(front, "/", &[]).await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_tls_server_connection_carries_the_next_request() {
    let pki = Pki::new("Backend CA");
    let cert = pki.issue("backend", "backend.test", &["backend.test", "127.0.0.1"]);
    let backend = HttpBackend::describe_tls(server_config(&cert, None, &["http/1.1"])).await;
    // One worker: idle server connections are kept per worker.
    let (proxy, front) = Config::new()
        .top("workers = 1")
        .protocol("http")
        .pool(&format!(
            "upstream_tls = {{ sslmode = \"verify-full\", root_cert = {:?} }}",
            pki.ca
        ))
        .server("a1", backend.addr, "")
        .start()
        .await;
    let labels = [("pool", "app"), ("server", "a1")];
    for round in 1..=2 {
        let answer = support::http::get(front, "/", &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        wait_until("the idle TLS connection parked", || async {
            scrape(&proxy, "switchyard_server_connections_parked", &labels).await == 1.0
        })
        .await;
        assert_eq!(backend.requests.load(Ordering::SeqCst), round);
    }
    assert_eq!(
        backend.accepted.load(Ordering::SeqCst),
        1,
        "one TLS session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_servers_requiring_a_client_certificate_get_the_pools() {
    let pki = Pki::new("Backend CA");
    let cert = pki.issue("backend", "backend.test", &["127.0.0.1"]);
    let proxy_cert = pki.issue("proxy", "switchyard", &[]);
    let backend =
        HttpBackend::describe_tls(server_config(&cert, Some(&pki.ca), &["http/1.1"])).await;
    let with_cert = format!(
        "upstream_tls = {{ sslmode = \"verify-full\", root_cert = {:?}, client_cert = {:?}, client_key = {:?} }}",
        pki.ca, proxy_cert.cert, proxy_cert.key
    );
    let (_proxy, front) = proxy_to_https(backend.addr, &with_cert).await;
    assert_eq!(support::http::get(front, "/", &[]).await.status, 200);
    let without = format!(
        "retries = 0\nupstream_tls = {{ sslmode = \"verify-full\", root_cert = {:?} }}",
        pki.ca
    );
    let (_proxy, front) = proxy_to_https(backend.addr, &without).await;
    assert_eq!(support::http::get(front, "/", &[]).await.status, 502);
}
