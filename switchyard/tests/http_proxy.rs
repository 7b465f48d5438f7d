//! The HTTP reverse proxy over real sockets: curl (HTTP/1.1, h2c, chunked upload,
//! `--compressed`) and a hyper client against in-test hyper backends; forwarding headers,
//! keep-alive reuse, error statuses and retries, routing, access log and metrics.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use http_body_util::BodyExt;
use hyper::{Request, Response};
use support::config::Config;
use support::http::{HttpBackend, curl, full, get, raw, send};
use support::ops::{field, number, scrape, wait_access};
use support::{Proxy, free_port, wait_until};

/// An `http` listener over pool `app` with these servers; extra listener/pool keys.
async fn http_proxy(
    servers: &[(&str, SocketAddr)],
    listener: &str,
    pool: &str,
) -> (Proxy, SocketAddr) {
    let mut config = Config::new().protocol("http").listener(listener).pool(pool);
    for (name, addr) in servers {
        config = config.server(name, *addr, "");
    }
    config.start().await
}

fn header_line<'a>(description: &'a str, name: &str) -> Option<&'a str> {
    description
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http11_and_h2c_reach_the_backend_with_forwarding_headers() {
    let backend = HttpBackend::describe().await;
    let (_proxy, front) = http_proxy(&[("a1", backend.addr)], "", "").await;
    let url = format!("http://{front}/path?q=1");
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let text = curl(&[
            version,
            "-H",
            "Host: shop.example.com",
            "-H",
            "Connection: X-Hop",
            "-H",
            "X-Hop: secret",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "X-Forwarded-For: 203.0.113.9",
            "-H",
            "X-Client-Cert-CN: forged",
            &url,
        ])
        .await;
        assert!(
            text.starts_with("GET /path?q=1 HTTP/1.1\n"),
            "{version}: {text}"
        );
        assert_eq!(
            header_line(&text, "host"),
            Some("shop.example.com"),
            "{text}"
        );
        assert_eq!(
            header_line(&text, "x-forwarded-for"),
            Some("203.0.113.9, 127.0.0.1"),
            "{text}"
        );
        assert_eq!(header_line(&text, "x-forwarded-proto"), Some("http"));
        assert_eq!(
            header_line(&text, "x-forwarded-host"),
            Some("shop.example.com")
        );
        assert_eq!(header_line(&text, "x-request-id").map(str::len), Some(32));
        // curl itself drops connection-specific headers over HTTP/2.
        let hop = if version == "--http1.1" {
            "x-hop"
        } else {
            "keep-alive"
        };
        for gone in [hop, "keep-alive", "x-client-cert-cn", "forwarded"] {
            assert_eq!(
                header_line(&text, gone),
                None,
                "{version}: {gone} in {text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_header_and_host_rewrite_when_configured() {
    let backend = HttpBackend::describe().await;
    let (_proxy, front) = http_proxy(
        &[("a1", backend.addr)],
        "http = { forwarded = true }",
        "preserve_host = false",
    )
    .await;
    let answer = get(front, "/", &[("x-request-id", "given-id")]).await;
    assert_eq!(answer.status, 200);
    let backend_host = backend.addr.to_string();
    assert_eq!(
        header_line(&answer.body, "host"),
        Some(backend_host.as_str())
    );
    assert_eq!(
        header_line(&answer.body, "forwarded"),
        Some("for=127.0.0.1;proto=http;host=example.com")
    );
    assert_eq!(header_line(&answer.body, "x-request-id"), Some("given-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_server_connections() {
    let backend = HttpBackend::describe().await;
    let (_proxy, front) = http_proxy(&[("a1", backend.addr)], "", "").await;
    for _ in 0..10 {
        assert_eq!(get(front, "/", &[]).await.status, 200);
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 10);
    let connections = backend.accepted.load(Ordering::SeqCst);
    assert!(
        connections < 10,
        "{connections} server connections for 10 requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_server_connection_is_honoured() {
    let backend = HttpBackend::describe().await;
    // One worker: idle server connections are per worker, and the count below assumes
    // every request can reuse the previous one's connection.
    let (_proxy, front) = Config::new()
        .top("workers = 1")
        .protocol("http")
        .pool("keep_alive = { max_requests = 2 }")
        .server("a1", backend.addr, "")
        .start()
        .await;
    for _ in 0..6 {
        assert_eq!(get(front, "/", &[]).await.status, 200);
    }
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_server_connections_close_when_the_server_is_drained() {
    let backend = HttpBackend::describe().await;
    let (proxy, front) = http_proxy(&[("a1", backend.addr)], "", "").await;
    assert_eq!(get(front, "/", &[]).await.status, 200);
    assert_eq!(backend.open.load(Ordering::SeqCst), 1, "kept idle");
    proxy.set_state("app", "a1", "drain").await;
    wait_until("idle connection closed", || async {
        backend.open.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(
        get(front, "/", &[]).await.status,
        503,
        "drained: no new requests"
    );
}

/// The server's idle connections now: (all, parked ones).
async fn idle_server_connections(proxy: &Proxy) -> (f64, f64) {
    let labels = [("pool", "app"), ("server", "a1")];
    (
        scrape(proxy, "switchyard_server_connections_idle", &labels).await,
        scrape(proxy, "switchyard_server_connections_parked", &labels).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_connection_is_parked_reused_and_closed_on_drain() {
    let backend = HttpBackend::describe().await;
    let (proxy, front) = Config::new()
        .top("workers = 1")
        .protocol("http")
        .server("a1", backend.addr, "")
        .start()
        .await;
    for round in 1..=2 {
        assert_eq!(get(front, "/", &[]).await.status, 200);
        wait_until("the idle server connection parked", || async {
            idle_server_connections(&proxy).await == (1.0, 1.0)
        })
        .await;
        assert_eq!(backend.requests.load(Ordering::SeqCst), round);
        assert_eq!(
            backend.accepted.load(Ordering::SeqCst),
            1,
            "the parked socket carries the next request"
        );
    }
    proxy.set_state("app", "a1", "drain").await;
    // The idle count falls just after the socket is closed: the server may see the close
    // first.
    wait_until("parked connection closed and no longer counted", || async {
        backend.open.load(Ordering::SeqCst) == 0
            && idle_server_connections(&proxy).await == (0.0, 0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_its_server_closed_is_not_reused() {
    // A keep-alive server that answers each connection's requests until told to close
    // its connections.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    // Closing: a generation number, moved on to close the connections made before.
    let (close, closing) = tokio::sync::watch::channel(0u32);
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    // Connections the server has closed on being told to.
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted_closed = closed.clone();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut stream, _) = listener.accept().await.expect("accept");
            counted.fetch_add(1, Ordering::SeqCst);
            let mut closing = closing.clone();
            let born = *closing.borrow();
            let closed = counted_closed.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    tokio::select! {
                        read = stream.read(&mut buf) => match read {
                            Ok(n) if n > 0 => {
                                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if stream.write_all(answer).await.is_err() {
                                    return;
                                }
                            }
                            _ => return,
                        },
                        () = async { drop(closing.wait_for(|now| *now != born).await) } => {
                            drop(stream);
                            closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            });
        }
    });
    let (proxy, front) = Config::new()
        .top("workers = 1")
        .protocol("http")
        .server("a1", addr, "")
        .start()
        .await;
    assert_eq!(get(front, "/", &[]).await.status, 200);
    wait_until("the idle server connection parked", || async {
        idle_server_connections(&proxy).await == (1.0, 1.0)
    })
    .await;
    close.send_modify(|generation| *generation += 1);
    // Its FIN is then in the proxy's socket before the next request is sent.
    wait_until("the server closed its connection", || {
        std::future::ready(closed.load(Ordering::SeqCst) == 1)
    })
    .await;
    assert_eq!(
        get(front, "/", &[]).await.status,
        200,
        "on a new connection"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_and_compressed_download_stream_through() {
    const GZIP_HELLO: &[u8] = &[
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xcb, 0x48, 0xcd, 0xc9, 0xc9,
        0x57, 0x48, 0xce, 0xcf, 0x2d, 0x28, 0x4a, 0x2d, 0x2e, 0x4e, 0x4d, 0x51, 0x28, 0xcf, 0x2f,
        0xca, 0x49, 0xe1, 0x02, 0x00, 0xc0, 0x01, 0x55, 0x93, 0x17, 0x00, 0x00, 0x00,
    ];
    let backend = HttpBackend::start(|request: Request<hyper::body::Incoming>| async move {
        if request.uri().path() == "/gz" {
            let mut response = Response::new(full(GZIP_HELLO));
            response
                .headers_mut()
                .insert("content-encoding", "gzip".parse().expect("value"));
            return response;
        }
        let chunked = request.headers().get("transfer-encoding").is_some();
        let body = request
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Response::new(full(format!("chunked={chunked} length={}", body.len())))
    })
    .await;
    let (proxy, front) = http_proxy(&[("a1", backend.addr)], "", "").await;
    let dir = &proxy.dir;
    let upload = dir.path().join("upload.bin");
    std::fs::write(&upload, vec![b'x'; 300_000]).expect("write upload");
    let url = format!("http://{front}/up");
    let text = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", upload.display()),
        &url,
    ])
    .await;
    assert_eq!(text, "chunked=true length=300000");
    let text = curl(&["--compressed", &format!("http://{front}/gz")]).await;
    assert_eq!(text, "hello compressed world\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_set_cookie_headers_keep_their_order() {
    let backend = HttpBackend::start(|_| async {
        let mut response = Response::new(full("ok"));
        for cookie in ["a=1", "b=2", "c=3"] {
            response
                .headers_mut()
                .append("set-cookie", cookie.parse().expect("value"));
        }
        response
    })
    .await;
    let (_proxy, front) = http_proxy(&[("a1", backend.addr)], "", "").await;
    let answer = get(front, "/", &[]).await;
    let cookies: Vec<_> = answer.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2", "c=3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_have_short_bodies_by_accept() {
    let slow = HttpBackend::start(|_| async {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        Response::new(full("late"))
    })
    .await;
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let up = HttpBackend::describe().await;
    let config = Config::new()
        .protocol("http")
        .listener("http = { max_body_bytes = 10 }")
        .pool("timeouts = { server = \"300ms\" }")
        .server("slow", slow.addr, "")
        .top(&format!(
            r#"
[[pool]]
name = "dead"
servers = [ {{ name = "d1", address = "{dead}" }} ]

[[pool]]
name = "retry"
servers = [ {{ name = "d1", address = "{dead}" }}, {{ name = "ok", address = "{}" }} ]

[[pool]]
name = "off"
servers = [ {{ name = "o1", address = "{}" }} ]
"#,
            up.addr, up.addr
        ))
        .listener(
            r#"
  [[listener.routes]]
  path_prefix = "/dead"
  pool = "dead"
  [[listener.routes]]
  path_prefix = "/retry"
  pool = "retry"
  [[listener.routes]]
  path_prefix = "/off"
  pool = "off""#,
        );
    let (proxy, front) = config.start().await;
    proxy.set_state("off", "o1", "maint").await;

    let answer = get(front, "/off", &[("accept", "application/json")]).await;
    assert_eq!(answer.status, 503);
    assert_eq!(
        answer.body,
        "{\"error\":\"no server available\",\"status\":503}\n"
    );
    let answer = get(front, "/off", &[]).await;
    assert_eq!(answer.body, "503 no server available\n");

    assert_eq!(get(front, "/dead", &[]).await.status, 502);
    assert_eq!(get(front, "/slow", &[]).await.status, 504);
    // GET is retried on the other server; POST is not.
    for _ in 0..4 {
        assert_eq!(get(front, "/retry", &[]).await.status, 200);
    }
    let mut posts = Vec::new();
    for _ in 0..4 {
        let request = Request::post("/retry").header("host", "x").body(full("p"));
        posts.push(send(front, request.expect("request")).await.status);
    }
    assert!(posts.contains(&502), "{posts:?}");

    let request = Request::post("/retry")
        .header("host", "x")
        .body(full("far too long a body"));
    assert_eq!(send(front, request.expect("request")).await.status, 413);
    let long_header = "v".repeat(40 * 1024);
    let answer = raw(
        front,
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {long_header}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    let answer = raw(front, b"GET / HTTP/1.1\r\nHost x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_path_header_and_method_with_header_rules() {
    let default = HttpBackend::describe().await;
    let api = HttpBackend::describe().await;
    let config = Config::new()
        .protocol("http")
        .server("d1", default.addr, "")
        .top(&format!(
            "[[pool]]\nname = \"api\"\nservers = [ {{ name = \"a1\", address = \"{}\" }} ]\n",
            api.addr
        ))
        .listener(
            r#"
  [[listener.routes]]
  host = "*.api.example.com"
  path_prefix = "/v1"
  pool = "api"
  request_headers = { set = { "x-env" = "prod" }, remove = ["x-debug"], add = { "x-tag" = "api" } }
  response_headers = { set = { "x-served-by" = "api" } }
  [[listener.routes]]
  method = "DELETE"
  headers = { "x-canary" = "1" }
  pool = "api""#,
        );
    let (_proxy, front) = config.start().await;
    let to_api = get(
        front,
        "/v1/items",
        &[
            ("host", "EU.Api.Example.com:8080"),
            ("x-debug", "1"),
            ("x-env", "dev"),
        ],
    )
    .await;
    assert_eq!(api.requests.load(Ordering::SeqCst), 1, "{}", to_api.body);
    assert_eq!(header_line(&to_api.body, "x-env"), Some("prod"));
    assert_eq!(header_line(&to_api.body, "x-debug"), None);
    assert_eq!(header_line(&to_api.body, "x-tag"), Some("api"));
    assert_eq!(to_api.headers["x-served-by"], "api");
    get(front, "/v2/items", &[("host", "eu.api.example.com")]).await;
    assert_eq!(default.requests.load(Ordering::SeqCst), 1);
    let delete = Request::delete("/x")
        .header("host", "x")
        .header("x-canary", "1")
        .body(full(""));
    send(front, delete.expect("request")).await;
    assert_eq!(api.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_gets_an_access_log_line_and_metrics() {
    let backend = HttpBackend::describe().await;
    let (proxy, front) = http_proxy(&[("a1", backend.addr)], "", "").await;
    assert_eq!(
        get(front, "/logged?x=1", &[("user-agent", "tester/1")])
            .await
            .status,
        200
    );
    let line = wait_access(&proxy, "request line", |l| {
        l.get("path").and_then(|p| p.as_str()) == Some("/logged?x=1")
    })
    .await;
    assert_eq!(field(&line, "method"), "GET");
    assert_eq!(number(&line, "status"), 200);
    assert_eq!(field(&line, "pool"), "app");
    assert_eq!(field(&line, "server"), "a1");
    assert_eq!(field(&line, "termination"), "ok");
    assert_eq!(field(&line, "user_agent"), "tester/1");
    assert!(number(&line, "bytes_out") > 0);
    assert!(line.get("ttfb_ms").is_some_and(|t| t.is_u64()));
    let requests = scrape(
        &proxy,
        "switchyard_http_requests_total",
        &[
            ("listener", "front"),
            ("pool", "app"),
            ("server", "a1"),
            ("code", "2xx"),
        ],
    )
    .await;
    assert_eq!(requests, 1.0);
    let observed = scrape(
        &proxy,
        "switchyard_http_request_duration_seconds_count",
        &[("listener", "front")],
    )
    .await;
    assert_eq!(observed, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_checks_use_method_host_status_range_and_body() {
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let backend = {
        let (healthy, seen) = (healthy.clone(), seen.clone());
        HttpBackend::start(move |request: Request<hyper::body::Incoming>| {
            let (healthy, seen) = (healthy.clone(), seen.clone());
            async move {
                let host = request
                    .headers()
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                seen.lock().expect("lock").push(format!(
                    "{} {} {host}",
                    request.method(),
                    request.uri()
                ));
                let body = if healthy.load(Ordering::SeqCst) {
                    "status: ready"
                } else {
                    "status: starting"
                };
                let mut response = Response::new(full(body));
                *response.status_mut() = hyper::StatusCode::ACCEPTED;
                response
            }
        })
        .await
    };
    let (proxy, _front) = http_proxy(
        &[("a1", backend.addr)],
        "",
        r#"health = { check = "http", path = "/ready", method = "POST", host = "health.internal", expect_status = "202-204", body_contains = "ready", interval = "100ms", fall = 1, rise = 1 }"#,
    )
    .await;
    proxy.wait_health("app", "a1", "up").await;
    assert!(
        seen.lock()
            .expect("lock")
            .iter()
            .all(|r| r == "POST /ready health.internal"),
        "{:?}",
        seen.lock().expect("lock")
    );
    healthy.store(false, Ordering::SeqCst);
    proxy.wait_health("app", "a1", "down").await;
    let last = proxy.server("app", "a1").await.check.unwrap_or_default();
    assert!(last.contains("does not contain"), "{last}");
    healthy.store(true, Ordering::SeqCst);
    proxy.wait_health("app", "a1", "up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_log_format_lines() {
    let backend = HttpBackend::describe().await;
    let (proxy, front) = Config::new()
        .top("[log]\nformat = \"combined\"")
        .protocol("http")
        .server("a1", backend.addr, "")
        .start()
        .await;
    let answer = get(
        front,
        "/clf",
        &[("referer", "http://r.example/"), ("user-agent", "ua/2")],
    )
    .await;
    assert_eq!(answer.status, 200);
    let length = answer.body.len();
    wait_until("combined line", || async {
        proxy.stdout().lines().any(|line| {
            line.starts_with("127.0.0.1 - - [")
                && line.contains(&format!(
                    "\"GET /clf HTTP/1.1\" 200 {length} \"http://r.example/\" \"ua/2\" duration_ms="
                ))
                && line.contains("pool=app server=a1 termination=ok")
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_source_becomes_the_forwarded_client() {
    let backend = HttpBackend::describe().await;
    let (proxy, front) =
        http_proxy(&[("a1", backend.addr)], "proxy_protocol = \"accept\"", "").await;
    let answer = raw(
        front,
        b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 80\r\nGET /pp HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(
        answer.contains("x-forwarded-for: 198.51.100.7\n"),
        "{answer}"
    );
    let line = wait_access(&proxy, "pp line", |l| {
        l.get("path").and_then(|p| p.as_str()) == Some("/pp")
    })
    .await;
    assert_eq!(field(&line, "client"), "198.51.100.7:40000");
}
