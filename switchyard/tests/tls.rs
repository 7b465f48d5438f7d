//! TLS termination on `tcp` listeners with real clients (rustls, curl, openssl s_client):
//! certificates chosen by SNI, strict SNI, ALPN, mutual TLS, protocol and cipher policy,
//! session resumption, and certificate reload with a connection open.

mod support;

use std::net::SocketAddr;
use std::process::Command;

use support::backends::{Backend, read_line};
use support::config::Config;
use support::ops::{read_until_closed, round_trip};
use support::tls::{CertFiles, Pki, connect, peer_cn};
use support::{Proxy, wait_until};

/// `[listener.tls]` with `certs` (in order) and extra keys.
fn tls_section(certs: &[&CertFiles], extra: &str) -> String {
    let pairs: Vec<String> = certs
        .iter()
        .map(|c| {
            format!(
                r#"{{ cert = "{}", key = "{}" }}"#,
                c.cert.display(),
                c.key.display()
            )
        })
        .collect();
    format!("[listener.tls]\ncerts = [{}]\n{extra}", pairs.join(", "))
}

/// A proxy terminating TLS with `certs` in front of `backend`.
async fn start_tls(certs: &[&CertFiles], extra: &str, backend: &Backend) -> (Proxy, SocketAddr) {
    Config::new()
        .server("echo", backend.addr, "")
        .listener(&tls_section(certs, extra))
        .start()
        .await
}

/// Runs a command to completion; returns (success, stdout + stderr).
fn run(program: &str, args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    let output = child.wait_with_output().expect("wait");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// `openssl s_client` against `front` with extra arguments; returns (success, output).
fn s_client(front: SocketAddr, pki: &Pki, args: &[&str]) -> (bool, String) {
    let connect = front.to_string();
    let ca = pki.ca.display().to_string();
    let mut all = vec!["s_client", "-connect", &connect, "-CAfile", &ca];
    all.extend_from_slice(args);
    run("openssl", &all, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_certificate_by_exact_and_wildcard_names() {
    let pki = Pki::new("Test CA");
    let default = pki.issue("default", "default.test", &["default.test"]);
    let exact = pki.issue("a", "a.test", &["a.test"]);
    let wildcard = pki.issue("wild", "wild.b.test", &["*.b.test"]);
    let backend = Backend::echo().await;
    let (_proxy, front) = start_tls(&[&default, &exact, &wildcard], "", &backend).await;

    for (sni, cn) in [
        ("a.test", "a.test"),
        ("x.b.test", "wild.b.test"),
        ("default.test", "default.test"),
        ("unknown.test", "default.test"),
    ] {
        // Unknown names get the default certificate; the client's name check then fails
        // for them, which is what a non-strict listener means.
        let client = pki.client(None, &[]);
        match connect(front, sni, client).await {
            Ok(mut stream) => {
                assert_eq!(peer_cn(&stream), cn, "SNI {sni}");
                assert_eq!(round_trip(&mut stream, b"hello").await, b"hello");
            }
            Err(error) => {
                assert_eq!(sni, "unknown.test", "{sni}: {error}");
                assert!(error.to_string().contains("not valid for name"), "{error}");
            }
        }
    }
    // No SNI (an IP address as the server name): the default certificate.
    let (ok, out) = s_client(front, &pki, &["-noservername"]);
    assert!(ok, "{out}");
    assert!(out.contains("CN = default.test"), "{out}");
    // openssl sends the SNI it is told and sees the matching certificate.
    let (ok, out) = s_client(front, &pki, &["-servername", "a.test"]);
    assert!(ok, "{out}");
    assert!(out.contains("subject=CN = a.test"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_sni_refuses_unknown_names() {
    let pki = Pki::new("Test CA");
    let exact = pki.issue("a", "a.test", &["a.test"]);
    let backend = Backend::echo().await;
    let (proxy, front) = start_tls(&[&exact], "strict_sni = true", &backend).await;
    let error = connect(front, "unknown.test", pki.client(None, &[]))
        .await
        .expect_err("unknown name refused");
    assert!(
        error.to_string().to_lowercase().contains("alert"),
        "{error}"
    );
    let mut stream = connect(front, "a.test", pki.client(None, &[]))
        .await
        .expect("known name");
    assert_eq!(round_trip(&mut stream, b"ok").await, b"ok");
    wait_until("the failed handshake is logged", || async {
        proxy.stderr().contains("TLS handshake failed")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_uses_the_server_order() {
    let pki = Pki::new("Test CA");
    let cert = pki.issue("a", "a.test", &["a.test"]);
    let backend = Backend::echo().await;
    let (_proxy, front) = start_tls(&[&cert], r#"alpn = ["h2", "http/1.1"]"#, &backend).await;
    let stream = connect(front, "a.test", pki.client(None, &["http/1.1", "h2"]))
        .await
        .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let stream = connect(front, "a.test", pki.client(None, &["http/1.1"]))
        .await
        .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_required_and_optional() {
    let pki = Pki::new("Test CA");
    let server = pki.issue("a", "a.test", &["a.test"]);
    let client_cert = pki.issue("client", "alice", &["alice.example"]);
    let stranger_pki = Pki::new("Other CA");
    let stranger = stranger_pki.issue("stranger", "mallory", &[]);
    let backend = Backend::echo().await;
    let ca = format!(r#"client_ca = "{}""#, pki.ca.display());

    let (_proxy, front) = start_tls(
        &[&server],
        &format!("{ca}\nclient_auth = \"required\""),
        &backend,
    )
    .await;
    let mut stream = connect(front, "a.test", pki.client(Some(&client_cert), &[]))
        .await
        .expect("client certificate accepted");
    assert_eq!(round_trip(&mut stream, b"mtls").await, b"mtls");
    // TLS 1.3 reports a refused client certificate after the client's handshake is done:
    // the first read sees the alert and no echo comes back.
    for client in [None, Some(&stranger)] {
        if let Ok(mut stream) = connect(front, "a.test", pki.client(client, &[])).await {
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(b"x").await;
            assert!(read_until_closed(&mut stream).await.is_empty());
        }
    }
    let (_proxy, front) = start_tls(
        &[&server],
        &format!("{ca}\nclient_auth = \"optional\""),
        &backend,
    )
    .await;
    for client in [None, Some(&client_cert)] {
        let mut stream = connect(front, "a.test", pki.client(client, &[]))
            .await
            .expect("optional client certificate");
        assert_eq!(round_trip(&mut stream, b"opt").await, b"opt");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_sni_and_client_certificate() {
    let pki = Pki::new("Test CA");
    let server = pki.issue("a", "a.test", &["a.test"]);
    let client_cert = pki.issue("client", "alice", &[]);
    let backend = Backend::http_status(|| "200 OK").await;
    let ca = format!(
        "client_ca = \"{}\"\nclient_auth = \"required\"",
        pki.ca.display()
    );
    let (_proxy, front) = start_tls(&[&server], &ca, &backend).await;
    let port = front.port().to_string();
    let resolve = format!("a.test:{port}:127.0.0.1");
    let url = format!("https://a.test:{port}/");
    let ca_path = pki.ca.display().to_string();
    let cert = client_cert.cert.display().to_string();
    let key = client_cert.key.display().to_string();
    let base = [
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--resolve",
        &resolve,
        "--cacert",
        &ca_path,
    ];
    let mut with_cert = base.to_vec();
    with_cert.extend_from_slice(&["--cert", &cert, "--key", &key, &url]);
    let (ok, out) = run("curl", &with_cert, "");
    assert!(ok && out.contains("200"), "{out}");
    let mut without = base.to_vec();
    without.push(&url);
    let (ok, out) = run("curl", &without, "");
    assert!(!ok, "refused without a client certificate: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls12_and_13_with_forward_secret_suites() {
    let pki = Pki::new("Test CA");
    let cert = pki.issue("a", "a.test", &["a.test"]);
    let backend = Backend::echo().await;
    let (_proxy, front) = start_tls(&[&cert], "", &backend).await;
    // SECLEVEL=0 lets this OpenSSL offer the old protocols at all, so a failure is the
    // proxy's refusal.
    for version in ["-tls1", "-tls1_1"] {
        let (ok, out) = s_client(
            front,
            &pki,
            &[
                version,
                "-cipher",
                "DEFAULT@SECLEVEL=0",
                "-servername",
                "a.test",
            ],
        );
        assert!(!ok, "{version} accepted: {out}");
        // rustls answers a ClientHello without TLS 1.2/1.3 with a handshake_failure alert.
        assert!(out.contains("alert handshake failure"), "{version}: {out}");
        assert!(out.contains("Cipher is (NONE)"), "{version}: {out}");
    }
    for cipher in [
        "AES128-SHA256",
        "AES256-GCM-SHA384",
        "DHE-RSA-AES128-GCM-SHA256",
    ] {
        let (ok, out) = s_client(
            front,
            &pki,
            &["-tls1_2", "-cipher", cipher, "-servername", "a.test"],
        );
        assert!(!ok, "{cipher} accepted: {out}");
        assert!(out.contains("handshake failure"), "{cipher}: {out}");
    }
    let (ok, out) = s_client(
        front,
        &pki,
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "-servername",
            "a.test",
        ],
    );
    assert!(ok && out.contains("Verify return code: 0"), "{out}");
    let (ok, out) = s_client(front, &pki, &["-tls1_3", "-servername", "a.test"]);
    assert!(ok && out.contains("TLSv1.3"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_with_tickets_and_ids() {
    let pki = Pki::new("Test CA");
    let cert = pki.issue("a", "a.test", &["a.test"]);
    // A backend that closes at once: with -ign_eof, s_client reads until the proxy closes,
    // so it has seen the session tickets sent after the handshake.
    let backend = Backend::start("127.0.0.1:0", |stream| async move { drop(stream) }).await;
    let (_proxy, front) = start_tls(&[&cert], "", &backend).await;
    let session = pki.dir.path().join("session.pem");
    let session = session.display().to_string();
    // TLS 1.3 tickets, TLS 1.2 tickets, TLS 1.2 session IDs (-no_ticket).
    for args in [&["-tls1_3"][..], &["-tls1_2"], &["-tls1_2", "-no_ticket"]] {
        let mut first = args.to_vec();
        first.extend_from_slice(&["-servername", "a.test", "-ign_eof", "-sess_out", &session]);
        let (ok, out) = s_client(front, &pki, &first);
        assert!(ok && out.contains("New, "), "{args:?}: {out}");
        let mut second = args.to_vec();
        second.extend_from_slice(&["-servername", "a.test", "-ign_eof", "-sess_in", &session]);
        let (ok, out) = s_client(front, &pki, &second);
        assert!(
            ok && out.contains("Reused, "),
            "{args:?} not resumed: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_certificates_and_keeps_connections() {
    let pki = Pki::new("Test CA");
    let first = pki.issue("first", "a.test", &["a.test"]);
    let backend = Backend::named("backend").await;
    // The listener reads the files at a fixed path that the test rewrites.
    let live = CertFiles {
        cert: pki.dir.path().join("live.pem"),
        key: pki.dir.path().join("live.key"),
    };
    std::fs::copy(&first.cert, &live.cert).expect("copy");
    std::fs::copy(&first.key, &live.key).expect("copy");
    let (proxy, front) = Config::new()
        .server("backend", backend.addr, "")
        .listener(&tls_section(&[&live], ""))
        .start()
        .await;
    let mut open = connect(front, "a.test", pki.client(None, &[]))
        .await
        .expect("handshake");
    assert_eq!(read_line(&mut open).await, "backend");
    let serial = |stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        stream
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c[0].to_vec())
    };
    let before = serial(&open);

    let second = pki.issue("second", "a.test", &["a.test", "new.a.test"]);
    std::fs::copy(&second.cert, &live.cert).expect("copy");
    std::fs::copy(&second.key, &live.key).expect("copy");
    proxy.signal("HUP");
    wait_until("new connections get the new certificate", || async {
        match connect(front, "a.test", pki.client(None, &[])).await {
            Ok(stream) => serial(&stream) != before,
            Err(_) => false,
        }
    })
    .await;
    // The connection opened before the reload still works.
    assert_eq!(round_trip(&mut open, b"still here").await, b"still here");

    // A broken file: the reload is refused, the certificate in use stays.
    std::fs::write(&live.cert, "not a certificate").expect("write");
    proxy.signal("HUP");
    wait_until("the broken certificate is reported", || async {
        proxy.stderr().contains("reload refused") && proxy.stderr().contains("live.pem")
    })
    .await;
    let stream = connect(front, "new.a.test", pki.client(None, &[]))
        .await
        .expect("the second certificate is still served");
    assert_eq!(peer_cn(&stream), "a.test");
    assert_eq!(round_trip(&mut open, b"and now").await, b"and now");
}

/// A backend that reads a PROXY v2 header and answers with its TLVs, one
/// `type=value` per line (the SSL TLV as `client,verify` then its sub-TLVs), then `end`.
async fn tlv_reporting_backend() -> Backend {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    Backend::start(
        "127.0.0.1:0",
        |mut stream: tokio::net::TcpStream| async move {
            let mut header = vec![0u8; 16];
            if stream.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
            header.resize(16 + len, 0);
            if stream.read_exact(&mut header[16..]).await.is_err() {
                return;
            }
            let mut report = String::new();
            match ppp::v2::Header::try_from(&header[..]) {
                Ok(parsed) => {
                    for tlv in parsed.tlvs().flatten() {
                        let value = &tlv.value;
                        if tlv.kind == 0x20 {
                            report.push_str(&format!(
                                "ssl={},{}\n",
                                value[0],
                                value[1..5].iter().map(|b| u32::from(*b)).sum::<u32>()
                            ));
                            let mut rest = &value[5..];
                            while rest.len() >= 3 {
                                let n = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
                                let text = String::from_utf8_lossy(&rest[3..3 + n]);
                                report.push_str(&format!("{:#x}={text}\n", rest[0]));
                                rest = &rest[3 + n..];
                            }
                        } else {
                            report.push_str(&format!(
                                "{:#x}={}\n",
                                tlv.kind,
                                String::from_utf8_lossy(value)
                            ));
                        }
                    }
                }
                Err(error) => report.push_str(&format!("bad {error:?}\n")),
            }
            report.push_str("end\n");
            let _ = stream.write_all(report.as_bytes()).await;
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_reaches_the_backend_as_proxy_v2_tlvs() {
    let pki = Pki::new("Test CA");
    let server = pki.issue("a", "a.test", &["a.test"]);
    let client_cert = pki.issue("client", "alice", &["alice.example"]);
    let backend = tlv_reporting_backend().await;
    let (_proxy, front) = Config::new()
        .server("tlv", backend.addr, "")
        .pool(r#"send_proxy_protocol = "v2""#)
        .listener(&tls_section(
            &[&server],
            &format!(
                "client_ca = \"{}\"\nclient_auth = \"optional\"\nalpn = [\"x-test\"]",
                pki.ca.display()
            ),
        ))
        .start()
        .await;
    let mut lines = Vec::new();
    let mut stream = connect(front, "a.test", pki.client(Some(&client_cert), &["x-test"]))
        .await
        .expect("handshake");
    loop {
        let line = read_line(&mut stream).await;
        if line == "end" || line.is_empty() {
            break;
        }
        lines.push(line);
    }
    assert_eq!(
        lines,
        [
            "0x1=x-test",
            "0x2=a.test",
            "ssl=7,0",
            "0x21=TLSv1.3",
            "0x22=alice",
            "0x23=TLS13_AES_256_GCM_SHA384",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_routes_by_sni_and_forwards_untouched_bytes() {
    let pki = Pki::new("Test CA");
    let a = support::tls::tls_backend(&pki.issue("a", "a.test", &["a.test"]), "alpha").await;
    let b = support::tls::tls_backend(&pki.issue("b", "b.test", &["*.b.test"]), "beta").await;
    let config = format!(
        r#"
[admin]
listen = "{{admin}}"

[[listener]]
name = "front"
listen = "127.0.0.1:0"
protocol = "tcp"
tls_passthrough = true
[[listener.routes]]
sni = "a.test"
pool = "a"
[[listener.routes]]
sni = "*.b.test"
pool = "b"

[[pool]]
name = "a"
servers = [{{ address = "{a}" }}]

[[pool]]
name = "b"
servers = [{{ address = "{b}" }}]
"#,
        a = a.addr,
        b = b.addr
    );
    let proxy = Proxy::start(&config).await;
    let front = support::ops::listener_addr(&proxy, "front").await;
    // The client verifies the backend's own certificate: the TLS session is end to end.
    for (sni, name, cn) in [
        ("a.test", "alpha", "a.test"),
        ("x.b.test", "beta", "b.test"),
    ] {
        let mut stream = connect(front, sni, pki.client(None, &[]))
            .await
            .expect("end-to-end handshake");
        assert_eq!(peer_cn(&stream), cn);
        assert_eq!(read_line(&mut stream).await, name);
        assert_eq!(round_trip(&mut stream, b"through").await, b"through");
    }
    // No route for the name, and not TLS at all: closed before any server.
    assert!(
        connect(front, "c.test", pki.client(None, &[]))
            .await
            .is_err()
    );
    let mut plain = tokio::net::TcpStream::connect(front)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    assert!(read_until_closed(&mut plain).await.is_empty());
    wait_until("both refusals are logged", || async {
        let log = proxy.stderr();
        log.contains("no route") && log.contains("no TLS ClientHello")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_pkcs1_and_ec_sec1_keys_from_openssl() {
    let dir = tempfile::tempdir().expect("dir");
    let path = |name: &str| dir.path().join(name).display().to_string();
    // An RSA key in PKCS#1 ("BEGIN RSA PRIVATE KEY") and an EC key in SEC1 ("BEGIN EC
    // PRIVATE KEY"), each with a self-signed certificate for its name.
    for (args, name) in [
        (
            vec!["genrsa", "-traditional", "-out", &path("rsa.key"), "2048"],
            "rsa",
        ),
        (
            vec![
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &path("ec.key"),
            ],
            "ec",
        ),
    ] {
        let (ok, out) = run("openssl", &args, "");
        assert!(ok, "{out}");
        let key = path(&format!("{name}.key"));
        let subject = format!("/CN={name}.test");
        let san = format!("subjectAltName=DNS:{name}.test");
        let (ok, out) = run(
            "openssl",
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &key,
                "-out",
                &path(&format!("{name}.pem")),
                "-days",
                "2",
                "-subj",
                &subject,
                "-addext",
                &san,
            ],
            "",
        );
        assert!(ok, "{out}");
    }
    let rsa_key = std::fs::read_to_string(path("rsa.key")).expect("read");
    assert!(
        rsa_key.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "{rsa_key}"
    );
    let ec_key = std::fs::read_to_string(path("ec.key")).expect("read");
    assert!(
        ec_key.starts_with("-----BEGIN EC PRIVATE KEY-----"),
        "{ec_key}"
    );

    let files = |name: &str| CertFiles {
        cert: dir.path().join(format!("{name}.pem")),
        key: dir.path().join(format!("{name}.key")),
    };
    let backend = Backend::echo().await;
    let (_proxy, front) = start_tls(&[&files("rsa"), &files("ec")], "", &backend).await;
    for name in ["rsa", "ec"] {
        let servername = format!("{name}.test");
        let cafile = path(&format!("{name}.pem"));
        let (ok, out) = run(
            "openssl",
            &[
                "s_client",
                "-connect",
                &front.to_string(),
                "-servername",
                &servername,
                "-CAfile",
                &cafile,
                "-verify_return_error",
            ],
            "",
        );
        assert!(ok && out.contains("Verify return code: 0"), "{name}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_client_certificate_is_refused_with_a_reason_in_words() {
    // The common way to make a client certificate, `openssl x509 -req` without an
    // extensions file, gives an X.509 v1 certificate, which WebPKI refuses.
    let dir = tempfile::tempdir().expect("dir");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let steps: [Vec<String>; 3] = [
        [
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &path("ca.key"),
            "-out",
            &path("ca.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=Operators CA",
        ]
        .map(String::from)
        .to_vec(),
        [
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &path("alice.key"),
            "-out",
            &path("alice.csr"),
            "-subj",
            "/CN=alice",
        ]
        .map(String::from)
        .to_vec(),
        [
            "x509",
            "-req",
            "-in",
            &path("alice.csr"),
            "-CA",
            &path("ca.pem"),
            "-CAkey",
            &path("ca.key"),
            "-out",
            &path("alice.pem"),
            "-days",
            "2",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for args in &steps {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out) = run("openssl", &args, "");
        assert!(ok, "{out}");
    }
    let pki = Pki::new("Test CA");
    let server = pki.issue("a", "a.test", &["a.test"]);
    let backend = Backend::echo().await;
    let extra = format!(
        "client_ca = \"{}\"\nclient_auth = \"required\"",
        path("ca.pem")
    );
    let (proxy, front) = start_tls(&[&server], &extra, &backend).await;
    let (ok, out) = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &front.to_string(),
            "-servername",
            "a.test",
            "-cert",
            &path("alice.pem"),
            "-key",
            &path("alice.key"),
        ],
        "hello\n",
    );
    assert!(
        !out.contains("hello"),
        "no echo for a refused certificate: {ok} {out}"
    );
    wait_until("the log says why the certificate was refused", || async {
        proxy
            .stderr()
            .contains("the client's certificate is X.509 v1; v3 with extensions is required")
    })
    .await;
}
