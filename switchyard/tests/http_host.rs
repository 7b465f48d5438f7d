//! The authority a request is routed by is the one its server is told (issue 27), over
//! raw sockets and hand-written HTTP/2 frames: requests whose authority is missing,
//! repeated, invalid or contradictory are refused with 400 before routing; an absolute-form
//! target's authority replaces `Host`; `CONNECT` gets 405; `OPTIONS *` passes; hosts match
//! routes whatever their case, port, trailing dot or IDNA form.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use hyper::Response;
use support::config::Config;
use support::http::{HttpBackend, full, get, h2_raw, raw};
use support::ops::{field, number, wait_access};

/// A backend answering `NAME host=.. xfh=.. authority=.. target=..`: every `Host` field it
/// got (comma-separated), `X-Forwarded-Host`, the target's authority (what an HTTP/2
/// server gets as `:authority`) and the target.
async fn naming(name: &'static str) -> HttpBackend {
    HttpBackend::start(move |request| async move {
        let text = |name: &str| {
            let values: Vec<String> = request
                .headers()
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            values.join(",")
        };
        let authority = request.uri().authority().map(|a| a.to_string());
        let path = request.uri().path_and_query().map(|p| p.to_string());
        Response::new(full(format!(
            "{name} host={} xfh={} authority={} target={}",
            text("host"),
            text("x-forwarded-host"),
            authority.unwrap_or_default(),
            path.unwrap_or_default(),
        )))
    })
    .await
}

/// A proxy whose `http` listener routes `a.example` and `*.Bücher.example.` (Unicode and
/// a trailing dot, as written in the config) to pool `a`, `h2.example` to pool `h2` (an
/// HTTP/2 server) and everything else to the default pool `app`.
struct Rig {
    proxy: support::Proxy,
    front: SocketAddr,
    a: HttpBackend,
    h2: HttpBackend,
    default: HttpBackend,
}

impl Rig {
    async fn start() -> Rig {
        let (a, h2, default) = (
            naming("a").await,
            naming("h2").await,
            naming("default").await,
        );
        let (proxy, front) = Config::new()
            .protocol("http")
            .server("d1", default.addr, "")
            .top(&format!(
                r#"
[[pool]]
name = "a"
servers = [ {{ name = "a1", address = "{}" }} ]

[[pool]]
name = "h2"
http_version = "2"
servers = [ {{ name = "h1", address = "{}" }} ]
"#,
                a.addr, h2.addr
            ))
            .listener(
                r#"
  [[listener.routes]]
  host = "a.example"
  pool = "a"
  [[listener.routes]]
  host = "*.Bücher.example."
  pool = "a"
  [[listener.routes]]
  host = "h2.example"
  pool = "h2""#,
            )
            .start()
            .await;
        Rig {
            proxy,
            front,
            a,
            h2,
            default,
        }
    }

    /// Requests the three backends received.
    fn served(&self) -> [usize; 3] {
        [&self.a, &self.h2, &self.default].map(|b| b.requests.load(Ordering::SeqCst))
    }
}

/// The body of a raw HTTP/1.1 answer.
fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_one_valid_host_get_400_before_routing() {
    let rig = Rig::start().await;
    let refused: &[(&str, &[u8])] = &[
        ("no Host", b"GET / HTTP/1.1\r\n\r\n"),
        (
            "a.example then b.example",
            b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        ),
        (
            "b.example then a.example",
            b"GET / HTTP/1.1\r\nHost: b.example\r\nHost: a.example\r\n\r\n",
        ),
        ("userinfo", b"GET / HTTP/1.1\r\nHost: b@a.example\r\n\r\n"),
        ("space", b"GET / HTTP/1.1\r\nHost: a.example b\r\n\r\n"),
        ("port", b"GET / HTTP/1.1\r\nHost: a.example:99999\r\n\r\n"),
        ("empty", b"GET / HTTP/1.1\r\nHost:\r\n\r\n"),
        (
            "ftp target",
            b"GET ftp://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
        ),
        (
            "userinfo in the target",
            b"GET http://b@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
        ),
        (
            "absolute form without Host",
            b"GET http://a.example/ HTTP/1.1\r\n\r\n",
        ),
    ];
    for (what, request) in refused {
        let answer = raw(rig.front, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{what}: {answer:?}"
        );
        assert!(
            answer.contains("connection: close\r\n"),
            "{what}: {answer:?}"
        );
    }
    assert!(body(&raw(rig.front, refused[1].1).await).contains("more than one Host field"));
    assert_eq!(rig.served(), [0, 0, 0], "nothing reached a server");
    let line = wait_access(&rig.proxy, "refusal line", |l| {
        l.get("termination").and_then(|t| t.as_str()) == Some("bad_host")
    })
    .await;
    assert_eq!(number(&line, "status"), 400);
    assert!(line["pool"].is_null(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_replaces_host_for_routing_and_server() {
    let rig = Rig::start().await;
    let answer = raw(
        rig.front,
        b"GET http://A.example./x?q=1 HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(
        body(&answer),
        "a host=a.example xfh=a.example authority= target=/x?q=1"
    );
    let line = wait_access(&rig.proxy, "absolute-form line", |l| {
        l.get("path").and_then(|p| p.as_str()) == Some("/x?q=1")
    })
    .await;
    assert_eq!(field(&line, "host"), "a.example");
    assert_eq!(field(&line, "pool"), "a");
    // The other way round: Host names pool `a`, the target another authority.
    let answer = raw(
        rig.front,
        b"GET http://b.example/ HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        body(&answer),
        "default host=b.example xfh=b.example authority= target=/"
    );
    // To an HTTP/2 server the authority goes as `:authority`, with no `host` field.
    let answer = raw(
        rig.front,
        b"GET http://h2.example/ HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        body(&answer),
        "h2 host= xfh=h2.example authority=h2.example target=/"
    );
    assert_eq!(rig.served(), [1, 1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_gets_405_from_the_proxy_and_is_never_forwarded() {
    let rig = Rig::start().await;
    // A request pipelined behind the CONNECT is not served either: the connection ends.
    let answer = raw(
        rig.front,
        b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\nGET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("\r\nallow: GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH\r\n"),
        "{answer}"
    );
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert_eq!(rig.served(), [0, 0, 0]);
    let line = wait_access(&rig.proxy, "405 line", |l| {
        l.get("termination").and_then(|t| t.as_str()) == Some("method_not_allowed")
    })
    .await;
    assert_eq!(field(&line, "method"), "CONNECT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_asterisk_is_forwarded_as_is() {
    let rig = Rig::start().await;
    let answer = raw(
        rig.front,
        b"OPTIONS * HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(
        body(&answer),
        "a host=a.example xfh=a.example authority= target=*"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_match_routes_whatever_their_case_port_trailing_dot_or_idna_form() {
    let rig = Rig::start().await;
    let cases = [
        ("A.Example.:8080", "a host=a.example:8080"),
        ("a.example.", "a host=a.example"),
        // The route is written `*.Bücher.example.` in the config.
        (
            "shop.XN--BCHER-KVA.example",
            "a host=shop.xn--bcher-kva.example",
        ),
        (
            "xn--bcher-kva.example",
            "default host=xn--bcher-kva.example",
        ),
        ("b.example", "default host=b.example"),
    ];
    for (host, served) in cases {
        let answer = get(rig.front, "/", &[("host", host)]).await;
        assert_eq!(answer.status, 200, "{host}: {}", answer.body);
        assert!(answer.body.starts_with(served), "{host}: {}", answer.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_authority_and_host_must_agree() {
    let rig = Rig::start().await;
    let base = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut fields = base.to_vec();
        fields.extend_from_slice(extra);
        fields
    };
    for (what, fields) in [
        (
            ":authority a.example, host b.example",
            with(&[(":authority", "a.example"), ("host", "b.example")]),
        ),
        (
            ":authority b.example, host a.example",
            with(&[(":authority", "b.example"), ("host", "a.example")]),
        ),
        ("neither", with(&[])),
    ] {
        let answer = h2_raw(rig.front, &fields).await;
        assert_eq!(answer.status, Some(400), "{what}: {answer:?}");
    }
    assert_eq!(rig.served(), [0, 0, 0]);
    for (what, fields) in [
        (":authority only", with(&[(":authority", "a.example")])),
        ("host only", with(&[("host", "a.example")])),
        (
            "both, the same authority",
            with(&[(":authority", "A.example"), ("host", "a.example.")]),
        ),
    ] {
        let answer = h2_raw(rig.front, &fields).await;
        assert_eq!(answer.status, Some(200), "{what}: {answer:?}");
        assert_eq!(
            answer.body, "a host=a.example xfh=a.example authority= target=/",
            "{what}"
        );
    }
}
