//! SMTP through the proxy, with real clients (swaks, Python smtplib, raw sockets for exact
//! framing) and real servers (aiosmtpd recording each message's hash, Postfix's
//! smtp-sink): messages arrive byte-identical, envelopes route by recipient domain, XCLIENT
//! reaches the server, framing and limits hold.

mod support;

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use support::config::Config;
use support::ops::{field, number, wait_terminations};
use support::smtp::{
    Aiosmtpd, SmtpSink, SmtplibTls, sha256_hex, smtplib_send, smtplib_send_over, swaks,
};
use support::tls::Pki;
use support::{DEADLINE, Proxy, wait_until};

/// The name the proxy greets with in these tests.
const HOSTNAME: &str = "mx.switchyard.test";

/// A proxy whose smtp listener `front`, with `keys`, sends to pool `app` whose one server
/// `mail` is at `server`.
async fn start_with_keys(server: SocketAddr, keys: &str) -> (Proxy, SocketAddr) {
    start_with_keys_and_pool(server, keys, "").await
}

/// `start_with_keys` with the pool's extra keys `pool`.
async fn start_with_keys_and_pool(
    server: SocketAddr,
    keys: &str,
    pool: &str,
) -> (Proxy, SocketAddr) {
    Config::new()
        .protocol("smtp")
        .listener(keys)
        .pool(pool)
        .server("mail", server, "")
        .start()
        .await
}

/// A proxy whose listener `front` (smtp) sends to pool `app` with one server at `server`.
async fn start(server: SocketAddr, listener_extra: &str, pool_extra: &str) -> (Proxy, SocketAddr) {
    Config::new()
        .protocol("smtp")
        .listener(&format!(
            "smtp = {{ hostname = \"{HOSTNAME}\", max_message_bytes = 30000000 }}\n{listener_extra}"
        ))
        .pool(pool_extra)
        .server("mail", server, "")
        .start()
        .await
}

/// The access log's message lines so far.
fn message_lines(proxy: &Proxy) -> Vec<Value> {
    proxy
        .stdout()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| field(line, "kind") == "smtp_message")
        .collect()
}

/// Waits for `count` message lines in the access log.
async fn wait_message_lines(proxy: &Proxy, count: usize) -> Vec<Value> {
    wait_until(&format!("{count} message log lines"), || async {
        message_lines(proxy).len() >= count
    })
    .await;
    message_lines(proxy)
}

/// Sends `body` with smtplib from s@example.net to `recipients` through `front`, and
/// asserts that no recipient was refused.
async fn send_ok(front: SocketAddr, recipients: &[&str], options: &[&str], body: &[u8]) {
    let report = smtplib_send(
        front,
        "127.0.0.1",
        "s@example.net",
        recipients,
        options,
        body,
    )
    .await;
    assert_eq!(
        report["refused"],
        serde_json::json!({}),
        "{recipients:?}: {report}"
    );
}

/// `send_ok` without MAIL options, over TLS as `tls` says.
async fn send_ok_over(
    front: SocketAddr,
    tls: Option<SmtplibTls<'_>>,
    recipients: &[&str],
    body: &[u8],
) {
    let report = smtplib_send_over(
        front,
        tls,
        "127.0.0.1",
        "s@example.net",
        recipients,
        &[],
        body,
    )
    .await;
    assert_eq!(
        report["refused"],
        serde_json::json!({}),
        "{recipients:?}: {report}"
    );
}

/// A client on a raw socket: the exact bytes it sends, one reply read whole at a time.
struct Raw<S = TcpStream> {
    stream: S,
    buffer: Vec<u8>,
}

impl Raw {
    /// Connects and reads the greeting.
    async fn connect(front: SocketAddr) -> (Self, String) {
        let stream = TcpStream::connect(front).await.expect("connect");
        let mut raw = Self {
            stream,
            buffer: Vec::new(),
        };
        let greeting = raw.reply().await;
        (raw, greeting)
    }

    /// The TLS handshake (after `220` to STARTTLS), verifying `HOSTNAME` against `pki`.
    async fn into_tls(self, pki: &Pki) -> Raw<tokio_rustls::client::TlsStream<TcpStream>> {
        assert!(
            self.buffer.is_empty(),
            "nothing after the 220 before the handshake"
        );
        let name = rustls_pki_types::ServerName::try_from(HOSTNAME).expect("name");
        let stream = tokio_rustls::TlsConnector::from(pki.client(None, &[]))
            .connect(name, self.stream)
            .await
            .expect("TLS handshake after STARTTLS");
        Raw {
            stream,
            buffer: Vec::new(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next reply, all its lines; empty when the proxy closed the connection.
    async fn reply(&mut self) -> String {
        let mut lines = String::new();
        loop {
            let line = match self.line().await {
                Some(line) => line,
                None => return lines,
            };
            lines.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return lines;
            }
        }
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk))
                .await
                .expect("a reply within the deadline")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// MAIL FROM, RCPT TO and DATA for a message from s@example.net to r@example.com,
    /// each answered as it should be (250, 250, 354).
    async fn start_message(&mut self) {
        self.expect(&[
            ("MAIL FROM:<s@example.net>", "250"),
            ("RCPT TO:<r@example.com>", "250"),
            ("DATA", "354"),
        ])
        .await;
    }

    /// Sends each command and checks that its reply starts as given.
    async fn expect(&mut self, exchanges: &[(&str, &str)]) {
        for (command, expected) in exchanges {
            let reply = self.command(command).await;
            assert!(reply.starts_with(expected), "{command}: {reply}");
        }
    }

    /// Sends `command` and returns its reply.
    async fn command(&mut self, command: &str) -> String {
        self.send(format!("{command}\r\n").as_bytes()).await;
        self.reply().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_messages_arrive_byte_identical() {
    let server = Aiosmtpd::start("aiosmtpd-a", false).await;
    let (proxy, front) = start(server.addr, "", "").await;
    let messages: [(&str, &str, &[&str], &[u8]); 3] = [
        (
            "sender@example.net",
            "dots@example.com",
            &[],
            b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nafter a lone dot line\r\n.\r\n",
        ),
        (
            "sender@example.net",
            "eight@example.com",
            &["BODY=8BITMIME"],
            "Subject: 8bit\r\n\r\nGr\u{fc}\u{df}e, \u{65e5}\u{672c}\r\n\x7f\x01 end\r\n".as_bytes(),
        ),
        (
            "j\u{f6}rg@b\u{fc}cher.example",
            "\u{f1}and\u{fa}@example.com",
            &["SMTPUTF8", "BODY=8BITMIME"],
            "Subject: utf8\r\n\r\nF\u{fc}r dich.\r\n".as_bytes(),
        ),
    ];
    for (i, (from, to, options, body)) in messages.iter().enumerate() {
        let report = smtplib_send(front, "127.0.0.1", from, &[to], options, body).await;
        assert_eq!(report["refused"], serde_json::json!({}), "{report}");
        let received = server.wait_received(i + 1).await;
        let record = &received[i];
        assert_eq!(
            record["sha256"],
            sha256_hex(body),
            "message {i} changed on the way"
        );
        assert_eq!(record["from"], *from);
        assert_eq!(record["rcpt"], serde_json::json!([to]));
        assert_eq!(record["helo"], HOSTNAME, "the proxy says EHLO as itself");
    }
    let lines = wait_message_lines(&proxy, 3).await;
    // Each message came on a connection of its own, perhaps on another worker, and the
    // access log keeps order only within a worker: the lines are matched by sender.
    for (from, ..) in &messages {
        let line = lines
            .iter()
            .find(|line| field(line, "from") == *from)
            .unwrap_or_else(|| panic!("no access log line from {from}: {lines:?}"));
        assert_eq!(number(line, "reply"), 250);
        assert_eq!(field(line, "helo"), "client.example");
        assert_eq!(number(line, "recipients"), 1);
        assert_eq!(field(line, "server"), "mail");
        assert!(field(line, "queue_id").starts_with('Q'), "{line}");
    }
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(
            "switchyard_smtp_messages_total{listener=\"front\",pool=\"app\",class=\"2xx\"} 3"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_pipelines_a_message_through() {
    let server = Aiosmtpd::start("aiosmtpd-a", false).await;
    let (_proxy, front) = start(server.addr, "", "").await;
    // swaks ends the last line itself (CRLF, then the dot line).
    let body = b"Subject: swaks\r\n\r\n.a leading dot\r\nline two";
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("body.eml");
    std::fs::write(&path, body).expect("write body");
    let data = format!("@{}", path.display());
    let (ok, output) = swaks(
        front,
        &[
            "--from",
            "s@example.net",
            "--to",
            "r@example.com",
            "--pipeline",
            "--data",
            &data,
        ],
    )
    .await;
    assert!(ok, "{output}");
    assert!(
        output.contains(&format!("220 {HOSTNAME} ESMTP")),
        "{output}"
    );
    assert!(output.contains("250-PIPELINING"), "{output}");
    let received = server.wait_received(1).await;
    let sent = [&body[..], b"\r\n"].concat();
    assert_eq!(received[0]["sha256"], sha256_hex(&sent), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_envelope_of_a_hundred_recipients_in_one_packet() {
    let server = Aiosmtpd::start("aiosmtpd-a", false).await;
    let (proxy, front) = start(server.addr, "", "").await;
    let (mut client, greeting) = Raw::connect(front).await;
    assert_eq!(greeting, format!("220 {HOSTNAME} ESMTP\r\n"));
    let ehlo = client.command("EHLO client.example").await;
    for extension in [
        "PIPELINING",
        "SIZE 30000000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ] {
        assert!(
            ehlo.contains(&format!("250-{extension}\r\n"))
                || ehlo.contains(&format!("250 {extension}\r\n")),
            "{ehlo}"
        );
    }
    assert!(
        !ehlo.contains("STARTTLS"),
        "no STARTTLS without tls: {ehlo}"
    );
    let mut envelope = String::from("MAIL FROM:<s@example.net>\r\n");
    for i in 0..100 {
        envelope.push_str(&format!("RCPT TO:<r{i}@example.com>\r\n"));
    }
    envelope.push_str("DATA\r\n");
    client.send(envelope.as_bytes()).await;
    assert!(client.reply().await.starts_with("250 2.1.0"));
    for i in 0..100 {
        let reply = client.reply().await;
        assert!(reply.starts_with("250"), "recipient {i}: {reply}");
    }
    assert!(client.reply().await.starts_with("354"));
    // The body, its end and the next command in one packet.
    let body = b"Subject: many\r\n\r\nhello\r\n";
    let mut packet = body.to_vec();
    packet.extend_from_slice(b".\r\nQUIT\r\n");
    client.send(&packet).await;
    let done = client.reply().await;
    assert!(done.starts_with("250 2.0.0 Ok: queued as Q"), "{done}");
    assert_eq!(client.reply().await, "221 2.0.0 Bye\r\n");
    let received = server.wait_received(1).await;
    assert_eq!(received[0]["rcpt"].as_array().map(Vec::len), Some(100));
    assert_eq!(received[0]["sha256"], sha256_hex(body));
    let lines = wait_message_lines(&proxy, 1).await;
    assert_eq!(number(&lines[0], "recipients"), 100);
}

/// To a server offering PIPELINING the proxy sends the client's MAIL and its first RCPT in
/// one write. A MAIL the server refuses answers that RCPT (the client's MAIL had the
/// proxy's `250`), the server's `503` to the RCPT is never passed on, and every later reply
/// stays paired with its command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_refused_by_a_pipelining_server_answers_the_first_rcpt() {
    let server = Aiosmtpd::start_with("aiosmtpd-pipelining", "pipelining", None).await;
    let (proxy, front) = start(server.addr, "", "").await;
    let (mut client, _) = Raw::connect(front).await;
    client.expect(&[("EHLO client.example", "250")]).await;
    client
        .send(
            b"MAIL FROM:<refused@example.net>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nRSET\r\n",
        )
        .await;
    assert_eq!(client.reply().await, "250 2.1.0 Ok\r\n");
    for _ in ["a", "b"] {
        assert_eq!(
            client.reply().await,
            "550 5.7.1 <refused@example.net>: Sender address rejected\r\n"
        );
    }
    assert!(client.reply().await.starts_with("554 5.5.1"), "DATA");
    assert!(client.reply().await.starts_with("250"), "RSET");
    // The same server session takes the next transactions; each ends with its message.
    let body = b"Subject: after a refusal\r\n\r\nhi\r\n";
    for _ in 0..2 {
        client.start_message().await;
        client.send(body).await;
        client
            .expect(&[
                (".", "250 2.0.0 Ok: queued"),
                ("RCPT TO:<c@example.com>", "503 5.5.1"),
            ])
            .await;
    }
    assert_eq!(client.command("QUIT").await, "221 2.0.0 Bye\r\n");
    let received = server.wait_received(2).await;
    assert!(
        received
            .iter()
            .all(|r| r["from"] == "s@example.net" && r["sha256"] == sha256_hex(body)),
        "{received:?}"
    );
    let lines = wait_message_lines(&proxy, 2).await;
    assert!(lines.iter().all(|l| number(l, "reply") == 250), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_chunks_with_last_arrive_whole() {
    // aiosmtpd has no CHUNKING: the proxy sends the chunks on as one DATA body.
    let server = Aiosmtpd::start("aiosmtpd-a", false).await;
    let (proxy, front) = start(server.addr, "", "").await;
    let (mut client, _) = Raw::connect(front).await;
    assert!(
        client
            .command("EHLO client.example")
            .await
            .contains("CHUNKING")
    );
    let first: &[u8] = b"Subject: bdat\r\n\r\n.a dot line\r\n.\r\nBDAT 5\r\n";
    let last: &[u8] = b"tail\r\n..two\r\n";
    let mut packet = b"MAIL FROM:<s@example.net>\r\nRCPT TO:<r@example.com>\r\n".to_vec();
    packet.extend_from_slice(format!("BDAT {}\r\n", first.len()).as_bytes());
    packet.extend_from_slice(first);
    packet.extend_from_slice(format!("BDAT {} LAST\r\n", last.len()).as_bytes());
    packet.extend_from_slice(last);
    client.send(&packet).await;
    assert!(client.reply().await.starts_with("250 2.1.0"));
    assert!(client.reply().await.starts_with("250"));
    let chunk = client.reply().await;
    assert_eq!(
        chunk,
        format!("250 2.0.0 {} octets received\r\n", first.len())
    );
    let done = client.reply().await;
    assert!(done.starts_with("250 2.0.0 Ok: queued as"), "{done}");
    let received = server.wait_received(1).await;
    assert_eq!(received[0]["sha256"], sha256_hex(&[first, last].concat()));
    let lines = wait_message_lines(&proxy, 1).await;
    assert_eq!(number(&lines[0], "size"), (first.len() + last.len()) as u64);

    // Over the size limit in chunks: refused, the session goes on.
    let (proxy, front) = start_with_keys(server.addr, "smtp = { max_message_bytes = 100 }").await;
    let (mut client, _) = Raw::connect(front).await;
    assert!(
        client
            .command("EHLO client.example")
            .await
            .starts_with("250")
    );
    assert!(
        client
            .command("MAIL FROM:<s@example.net>")
            .await
            .starts_with("250")
    );
    assert!(
        client
            .command("RCPT TO:<r@example.com>")
            .await
            .starts_with("250")
    );
    let chunk = format!("{}\r\n", "c".repeat(58));
    client.send(format!("BDAT 60\r\n{chunk}").as_bytes()).await;
    assert!(client.reply().await.starts_with("250"));
    client
        .send(format!("BDAT 60 LAST\r\n{chunk}").as_bytes())
        .await;
    assert!(client.reply().await.starts_with("552 5.3.4"));
    client.send(b"BDAT 3 LAST\r\nabc").await;
    assert!(client.reply().await.starts_with("503 5.5.1"));
    assert!(client.command("NOOP").await.starts_with("250"));
    let lines = wait_message_lines(&proxy, 1).await;
    assert_eq!(number(&lines[0], "reply"), 552);
    assert_eq!(server.received().len(), 1, "nothing more delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_25_mib_message_arrives_whole() {
    let server = Aiosmtpd::start("aiosmtpd-a", false).await;
    let (proxy, front) = start(server.addr, "", "").await;
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    let mut i = 0u64;
    while body.len() < 25 * 1024 * 1024 {
        // Lines of varied length, some starting with a dot.
        let line = format!(
            "{}{}\r\n",
            if i % 7 == 0 { "." } else { "" },
            "x".repeat((i % 900) as usize)
        );
        body.extend_from_slice(line.as_bytes());
        i += 1;
    }
    send_ok(front, &["r@example.com"], &[], &body).await;
    let received = server.wait_received(1).await;
    assert_eq!(received[0]["size"], body.len());
    assert_eq!(received[0]["sha256"], sha256_hex(&body));
    let lines = wait_message_lines(&proxy, 1).await;
    assert!(number(&lines[0], "size") >= body.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_route_by_domain_and_a_mixed_envelope_gets_451() {
    let default = Aiosmtpd::start("aiosmtpd-default", false).await;
    let org = Aiosmtpd::start("aiosmtpd-org", false).await;
    let (proxy, front) = Config::new()
        .protocol("smtp")
        .listener(&format!(
            r#"smtp = {{ hostname = "{HOSTNAME}" }}
[[listener.routes]]
domain = "Example.ORG"
pool = "org"
[[listener.routes]]
domain = "*.b{}cher.example"
pool = "org""#,
            '\u{fc}'
        ))
        .server("default", default.addr, "")
        .section(&format!(
            "[[pool]]\nname = \"org\"\nservers = [{{ name = \"org\", address = \"{}\" }}]\n",
            org.addr
        ))
        .start()
        .await;
    let body = b"Subject: routed\r\n\r\nhi\r\n";
    for to in ["a@example.org", "b@EXAMPLE.Org"] {
        send_ok(front, &[to], &[], body).await;
    }
    // A Unicode domain below the route's, and its A-label form: compared in one form.
    let unicode = "c@mail.B\u{dc}CHER.example";
    send_ok(front, &[unicode], &["SMTPUTF8"], body).await;
    send_ok(front, &["d@mx.xn--bcher-kva.example"], &[], body).await;
    send_ok(front, &["e@example.com"], &[], body).await;
    // The first recipient picks the server; one routing elsewhere waits for its own
    // transaction.
    let report = smtplib_send(
        front,
        "127.0.0.1",
        "s@example.net",
        &["f@example.org", "g@example.com", "h@example.org"],
        &[],
        body,
    )
    .await;
    let refused = &report["refused"]["g@example.com"];
    assert_eq!(refused[0], 451, "{report}");
    assert!(
        refused[1].as_str().is_some_and(|t| t.starts_with("4.3.0")),
        "{report}"
    );
    let at_org = org.wait_received(5).await;
    let rcpts: Vec<&Value> = at_org.iter().map(|r| &r["rcpt"]).collect();
    assert_eq!(
        rcpts,
        [
            &serde_json::json!(["a@example.org"]),
            &serde_json::json!(["b@EXAMPLE.Org"]),
            &serde_json::json!([unicode]),
            &serde_json::json!(["d@mx.xn--bcher-kva.example"]),
            &serde_json::json!(["f@example.org", "h@example.org"]),
        ]
    );
    let at_default = default.wait_received(1).await;
    assert_eq!(at_default.len(), 1);
    assert_eq!(at_default[0]["rcpt"], serde_json::json!(["e@example.com"]));
    let lines = wait_message_lines(&proxy, 6).await;
    assert_eq!(
        lines.iter().filter(|l| field(l, "pool") == "org").count(),
        5,
        "{lines:?}"
    );
}

/// A pool with `resolver` keyed by `{domain}` (a map file): each transaction goes to the
/// servers of the answer for its first recipient's domain (in A-label form, lower case);
/// recipients whose domains are answered with the same servers share it, one answered with
/// others gets 451, a domain without an answer 550.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_pool_routes_each_transaction_by_its_first_recipient_domain() {
    let a = Aiosmtpd::start("aiosmtpd-a", false).await;
    let b = Aiosmtpd::start("aiosmtpd-b", false).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let map = dir.path().join("domains.toml");
    let answer = |server: &Aiosmtpd, tenant: &str| {
        format!(
            "servers = [{{ address = \"{}\" }}]\ntenant = \"{tenant}\"\n",
            server.addr
        )
    };
    std::fs::write(
        &map,
        format!(
            "[\"a.example\"]\n{}[\"xn--bcher-kva.example\"]\n{}[\"b.example\"]\n{}",
            answer(&a, "ta"),
            answer(&a, "ta"),
            answer(&b, "tb")
        ),
    )
    .expect("write the map");
    let (proxy, front) = Config::new()
        .protocol("smtp")
        .listener(&format!("smtp = {{ hostname = \"{HOSTNAME}\" }}"))
        .pool("resolver = \"domains\"\nkey = \"{domain}\"")
        .section(&format!(
            "[[resolver]]\nname = \"domains\"\nkind = \"map\"\nfile = {:?}\nallow_private = [\"127.0.0.0/8\"]",
            map.display().to_string()
        ))
        .start()
        .await;
    let body = b"Subject: resolved\r\n\r\nhi\r\n";
    // Two domains answered with the same server: one transaction.
    let unicode = "u@B\u{dc}cher.example";
    send_ok(front, &["r@a.example", unicode], &["SMTPUTF8"], body).await;
    send_ok(front, &["r@b.example"], &[], body).await;
    // The first recipient's answer holds for the transaction.
    let (mut client, _) = Raw::connect(front).await;
    client
        .expect(&[
            ("EHLO client.example", "250"),
            ("MAIL FROM:<s@example.net>", "250"),
            ("RCPT TO:<x@A.Example>", "250"),
            ("RCPT TO:<y@b.example>", "451 4.3.0"),
            ("RCPT TO:<z@c.example>", "550 5.7.1"),
            ("RCPT TO:<postmaster>", "550 5.7.1"),
            ("DATA", "354"),
        ])
        .await;
    client.send(body).await;
    assert!(client.command(".").await.starts_with("250 2.0.0"));
    assert!(client.command("QUIT").await.starts_with("221"));
    let at_a = a.wait_received(2).await;
    let rcpts: Vec<&Value> = at_a.iter().map(|r| &r["rcpt"]).collect();
    assert_eq!(
        rcpts,
        [
            &serde_json::json!(["r@a.example", unicode]),
            &serde_json::json!(["x@A.Example"]),
        ]
    );
    let at_b = b.wait_received(1).await;
    assert_eq!(at_b.len(), 1);
    assert_eq!(at_b[0]["rcpt"], serde_json::json!(["r@b.example"]));
    assert!(
        at_a.iter()
            .chain(&at_b)
            .all(|r| r["sha256"] == sha256_hex(body))
    );
    // Usage is accounted to the answer's tenant.
    let tenants = || {
        support::ops::access_lines(&proxy)
            .iter()
            .filter_map(|line| line["tenant"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    wait_until("three sessions in the access log", || async {
        tenants().len() == 3
    })
    .await;
    let mut seen = tenants();
    seen.sort();
    assert_eq!(seen, ["ta", "ta", "tb"]);
}

/// A proxy whose default pool `app` is resolved per recipient domain by a webhook nobody
/// answers (a closed port), with listener keys `listener` and further `sections`.
async fn start_unreachable_resolver(listener: &str, sections: &str) -> (Proxy, SocketAddr) {
    let closed = support::free_port();
    Config::new()
        .protocol("smtp")
        .listener(listener)
        .pool("resolver = \"hook\"\nkey = \"{domain}\"")
        .section(&format!(
            "[[resolver]]\nname = \"hook\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{closed}/resolve\"\nallow_private = [\"127.0.0.0/8\"]\n{sections}"
        ))
        .start()
        .await
}

/// A recipient whose domain the resolver cannot answer for (it is down, nothing cached)
/// gets a temporary error with an enhanced code, `451 4.3.0` as Postfix answers a failed
/// table lookup, so that the client tries it again later; the proxy logs one line for it,
/// and the session goes on: a recipient routed elsewhere still gets its message through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_resolver_defers_the_recipient_and_the_session_goes_on() {
    let fixed = Aiosmtpd::start("aiosmtpd-fixed", false).await;
    let (proxy, front) = start_unreachable_resolver(
        &format!(
            "smtp = {{ hostname = \"{HOSTNAME}\" }}\n[[listener.routes]]\ndomain = \"fixed.example\"\npool = \"fixed\""
        ),
        &format!(
            "[[pool]]\nname = \"fixed\"\nservers = [{{ name = \"fixed\", address = \"{}\" }}]\n",
            fixed.addr
        ),
    )
    .await;
    let (mut client, _) = Raw::connect(front).await;
    client
        .expect(&[
            ("EHLO client.example", "250"),
            ("MAIL FROM:<s@example.net>", "250"),
        ])
        .await;
    assert_eq!(
        client.command("RCPT TO:<r@tenant.example>").await,
        "451 4.3.0 <r@tenant.example>: Temporary lookup failure\r\n"
    );
    client
        .expect(&[
            ("NOOP", "250"),
            ("RCPT TO:<r@fixed.example>", "250"),
            ("DATA", "354"),
        ])
        .await;
    let body = b"Subject: past an outage\r\n\r\nhi\r\n";
    client.send(body).await;
    assert!(client.command(".").await.starts_with("250 2.0.0"));
    assert_eq!(client.command("QUIT").await, "221 2.0.0 Bye\r\n");
    let received = fixed.wait_received(1).await;
    assert_eq!(received[0]["rcpt"], serde_json::json!(["r@fixed.example"]));
    assert_eq!(received[0]["sha256"], sha256_hex(body));
    let lines = wait_message_lines(&proxy, 1).await;
    assert_eq!(number(&lines[0], "recipients"), 1);
    let deferred: Vec<String> = proxy
        .stderr()
        .lines()
        .filter(|line| line.contains("recipient not resolved"))
        .map(str::to_string)
        .collect();
    assert_eq!(deferred.len(), 1, "{deferred:?}");
    assert!(
        deferred[0].contains("pool=app") && deferred[0].contains("resolver unavailable"),
        "{deferred:?}"
    );
    wait_terminations(&proxy, &[("client_closed", 1)]).await;
}

/// AUTH is relayed to a server of the listener's pool before any recipient is known; a
/// pool resolved per recipient domain has no servers until then, so its listener offers no
/// AUTH, even over TLS, and refuses the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_withheld_when_the_listener_pool_is_resolved_per_recipient() {
    let pki = Pki::new("smtp test CA");
    let (_proxy, front) =
        start_unreachable_resolver(&tls_listener(&pki, "starttls = \"optional\""), "").await;
    let (mut client, _) = Raw::connect(front).await;
    assert!(
        client
            .command("EHLO client.example")
            .await
            .contains("STARTTLS")
    );
    assert!(client.command("STARTTLS").await.starts_with("220"));
    let mut client = client.into_tls(&pki).await;
    let ehlo = client.command("EHLO client.example").await;
    assert!(ehlo.starts_with("250-"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert_eq!(
        client.command("AUTH PLAIN AGFsaWNlAHNlY3JldA==").await,
        "502 5.5.1 Error: command not offered\r\n"
    );
    client
        .expect(&[("NOOP", "250"), ("MAIL FROM:<s@example.net>", "250")])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xclient_tells_the_server_who_the_client_is() {
    let server = Aiosmtpd::start("aiosmtpd-x", true).await;
    let (_proxy, front) = start(server.addr, "", "send_xclient = true").await;
    // The client comes from 127.0.0.2; the proxy reaches the server from 127.0.0.1.
    let body = b"Subject: x\r\n\r\nhi\r\n";
    let report = smtplib_send(
        front,
        "127.0.0.2",
        "s@example.net",
        &["r@example.com"],
        &[],
        body,
    )
    .await;
    assert_eq!(report["refused"], serde_json::json!({}), "{report}");
    let received = server.wait_received(1).await;
    let xclient = received[0]["xclient"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for attribute in [
        "ADDR=127.0.0.2",
        "NAME=[UNAVAILABLE]",
        "HELO=client.example",
        "PROTO=ESMTP",
    ] {
        assert!(xclient.contains(attribute), "{xclient}");
    }
    assert!(xclient.contains("PORT="), "{xclient}");
    assert_eq!(
        received[0]["helo"], "client.example",
        "EHLO again, as the client"
    );
    assert_eq!(received[0]["sha256"], sha256_hex(body));

    // Or a PROXY v2 header ahead of the session.
    let proxied = Aiosmtpd::start_with("aiosmtpd-proxy", "proxy", None).await;
    let (_proxy, front) = start(proxied.addr, "", "send_proxy_protocol = \"v2\"").await;
    let report = smtplib_send(
        front,
        "127.0.0.2",
        "s@example.net",
        &["r@example.com"],
        &[],
        body,
    )
    .await;
    assert_eq!(report["refused"], serde_json::json!({}), "{report}");
    assert_eq!(
        proxied.wait_received(1).await[0]["proxy_source"],
        "127.0.0.2"
    );

    // Postfix's smtp-sink offers XCLIENT with fewer attributes and answers it with 250.
    let sink = SmtpSink::start().await;
    let (_proxy, front) = start(sink.addr, "", "send_xclient = true").await;
    send_ok(front, &["r@example.com"], &[], body).await;
    let logged = tokio::time::timeout(DEADLINE, async {
        while !sink.log().contains(": QUIT") {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(logged.is_ok(), "smtp-sink logged: {}", sink.log());
    assert!(
        sink.log()
            .contains("XCLIENT NAME=[UNAVAILABLE] HELO=client.example"),
        "{}",
        sink.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_over_long_input_gets_smtp_answers() {
    let server = Aiosmtpd::start("aiosmtpd-a", false).await;
    let (proxy, front) = start_with_keys(
        server.addr,
        &format!("smtp = {{ hostname = \"{HOSTNAME}\", max_message_bytes = 2000 }}"),
    )
    .await;
    let (mut client, _) = Raw::connect(front).await;
    client
        .expect(&[
            ("MAIL FROM:<s@example.net>", "503 5.5.1"),
            ("EHLO client.example", "250-"),
            ("XYZZY", "500 5.5.1"),
            ("RCPT TO:<r@example.com>", "503 5.5.1"),
            ("VRFY root", "502 5.5.1"),
            ("NOOP", "250 2.0.0"),
            ("MAIL FROM:<s@example.net> SIZE=5000", "552 5.3.4"),
            ("DATA", "503 5.5.1"),
        ])
        .await;

    // A body over the limit is read to its end and refused; the session goes on.
    client.start_message().await;
    let line = format!("{}\r\n", "y".repeat(98));
    client.send(line.repeat(40).as_bytes()).await;
    assert!(client.command(".").await.starts_with("552 5.3.4"));
    // A text line over 1,000 bytes, then a bare LF.
    for bad in [format!("{}\r\n", "z".repeat(1200)), "a\nb\r\n".to_string()] {
        client.start_message().await;
        client.send(bad.as_bytes()).await;
        assert!(client.command(".").await.starts_with("554 5.6.0"));
    }
    // Then a good message on the same connection.
    client.start_message().await;
    client.send(b"Subject: ok\r\n\r\nfine\r\n").await;
    assert!(client.command(".").await.starts_with("250 2.0.0"));
    let received = server.wait_received(1).await;
    assert_eq!(
        received[0]["sha256"],
        sha256_hex(b"Subject: ok\r\n\r\nfine\r\n")
    );
    let lines = wait_message_lines(&proxy, 4).await;
    let codes: Vec<u64> = lines.iter().map(|l| number(l, "reply")).collect();
    assert_eq!(codes, [552, 554, 554, 250]);

    // A command line over 512 bytes ends the session.
    let long = format!("NOOP {}", "n".repeat(600));
    let reply = client.command(&long).await;
    assert!(reply.starts_with("500 5.5.2"), "{reply}");
    assert_eq!(client.reply().await, "", "closed after the over-long line");
    assert_eq!(server.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_an_idle_client_421() {
    let server = Aiosmtpd::start("aiosmtpd-a", false).await;
    let (mut proxy, front) = start(server.addr, "", "").await;
    let (mut client, _) = Raw::connect(front).await;
    assert!(
        client
            .command("EHLO client.example")
            .await
            .starts_with("250")
    );
    proxy.signal("TERM");
    let reply = client.reply().await;
    assert!(reply.starts_with("421 4.3.2"), "{reply}");
    proxy.wait_exit().await;
}

/// The envelope is the SMTP login: a client must have a recipient routed to a server
/// within `timeouts.login` of its accept (`421 4.4.2` else), and one address may have only
/// `max_logins_per_address` connections before that at once (`421 4.7.0` for one more). A
/// client past its envelope has only the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_envelope_has_a_deadline_and_each_address_a_cap_before_it() {
    let server = Aiosmtpd::start("aiosmtpd-a", false).await;
    let (proxy, front) = start(
        server.addr,
        "timeouts = { login = \"1s\" }\nmax_logins_per_address = 2",
        "",
    )
    .await;
    // A client whose envelope has chosen the server no longer counts nor has a deadline.
    let (mut enveloped, _) = Raw::connect(front).await;
    enveloped
        .expect(&[
            ("EHLO client.example", "250"),
            ("MAIL FROM:<s@example.net>", "250"),
            ("RCPT TO:<r@example.com>", "250"),
        ])
        .await;
    // Two clients go silent: one after the greeting, one after EHLO.
    let (silent, _) = Raw::connect(front).await;
    let (mut greeted, _) = Raw::connect(front).await;
    assert!(
        greeted
            .command("EHLO client.example")
            .await
            .starts_with("250")
    );
    // A third from the same address is refused in place of the greeting.
    let (mut third, refusal) = Raw::connect(front).await;
    assert_eq!(
        refusal,
        format!("421 4.7.0 {HOSTNAME} Error: too many connections from your address\r\n")
    );
    assert_eq!(third.reply().await, "", "closed after the refusal");
    // The silent two are told and closed at their deadline (the idle timeout is 10 min).
    for mut client in [silent, greeted] {
        let reply = client.reply().await;
        assert_eq!(
            reply,
            format!("421 4.4.2 {HOSTNAME} Error: timeout exceeded\r\n")
        );
        assert_eq!(client.reply().await, "", "closed after the 421");
    }
    // The enveloped client's deadline, had it kept one, came before theirs: it sends on.
    enveloped.expect(&[("DATA", "354")]).await;
    enveloped.send(b"Subject: late\r\n\r\nstill here\r\n").await;
    assert!(enveloped.command(".").await.starts_with("250 2.0.0"));
    assert_eq!(
        server.wait_received(1).await[0]["sha256"],
        sha256_hex(b"Subject: late\r\n\r\nstill here\r\n")
    );
    // The slots came back: another client sends a message.
    send_ok(
        front,
        &["r@example.com"],
        &[],
        b"Subject: next\r\n\r\nok\r\n",
    )
    .await;
    server.wait_received(2).await;
    wait_terminations(&proxy, &[("login_timeout", 2), ("too_many_logins", 1)]).await;
}

/// Listener keys serving a certificate for `HOSTNAME` (and 127.0.0.1) from `pki`, with
/// `smtp` keys.
fn tls_listener(pki: &Pki, smtp: &str) -> String {
    let cert = pki.issue("mx", HOSTNAME, &[HOSTNAME, "127.0.0.1"]);
    format!(
        "tls = {{ certs = [{{ cert = {:?}, key = {:?} }}] }}\nsmtp = {{ hostname = \"{HOSTNAME}\", {smtp} }}",
        cert.cert, cert.key
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_drops_what_was_pipelined_after_it() {
    let server = Aiosmtpd::start("aiosmtpd-a", false).await;
    let pki = Pki::new("smtp test CA");
    let (_proxy, front) =
        start_with_keys(server.addr, &tls_listener(&pki, "starttls = \"optional\"")).await;
    let (mut client, _) = Raw::connect(front).await;
    let ehlo = client.command("EHLO client.example").await;
    assert!(ehlo.ends_with("250 STARTTLS\r\n"), "{ehlo}");
    // CVE-2011-0411: commands sent in clear behind STARTTLS must not run after it.
    client
        .send(b"STARTTLS\r\nMAIL FROM:<injected@example.net>\r\nRSET\r\n")
        .await;
    assert_eq!(client.reply().await, "220 2.0.0 Ready to start TLS\r\n");
    let mut client = client.into_tls(&pki).await;
    let ehlo = client.command("EHLO client.example").await;
    assert!(ehlo.starts_with(&format!("250-{HOSTNAME}\r\n")), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "offered once: {ehlo}");
    assert!(
        client
            .command("RCPT TO:<r@example.com>")
            .await
            .starts_with("503 5.5.1"),
        "the pipelined MAIL was dropped"
    );
    assert!(client.command("STARTTLS").await.starts_with("502"));
    client.start_message().await;
    let body = b"Subject: tls\r\n\r\nsecret\r\n";
    client.send(body).await;
    assert!(client.command(".").await.starts_with("250 2.0.0"));
    let received = server.wait_received(1).await;
    assert_eq!(received[0]["sha256"], sha256_hex(body));
    assert_eq!(received[0]["from"], "s@example.net");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_starttls_and_implicit_tls() {
    let server = Aiosmtpd::start("aiosmtpd-a", false).await;
    let pki = Pki::new("smtp test CA");
    let (_proxy, front) =
        start_with_keys(server.addr, &tls_listener(&pki, "starttls = \"required\"")).await;
    let (mut client, _) = Raw::connect(front).await;
    assert!(
        client
            .command("EHLO client.example")
            .await
            .contains("STARTTLS")
    );
    let refused = client.command("MAIL FROM:<s@example.net>").await;
    assert_eq!(refused, "530 5.7.0 Must issue a STARTTLS command first\r\n");
    let body = b"Subject: required\r\n\r\nover TLS\r\n";
    send_ok_over(
        front,
        Some(("starttls", &pki.ca, "")),
        &["r@example.com"],
        body,
    )
    .await;
    assert_eq!(server.wait_received(1).await[0]["sha256"], sha256_hex(body));

    let (_proxy, front) =
        start_with_keys(server.addr, &tls_listener(&pki, "implicit_tls = true")).await;
    let body = b"Subject: implicit\r\n\r\nport 465 style\r\n";
    send_ok_over(
        front,
        Some(("implicit", &pki.ca, "")),
        &["r@example.com"],
        body,
    )
    .await;
    assert_eq!(server.wait_received(2).await[1]["sha256"], sha256_hex(body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_by_starttls_or_from_the_first_byte_and_require_never_falls_back() {
    let pki = Pki::new("smtp server CA");
    let cert = pki.issue("server", "server.test", &["server.test", "127.0.0.1"]);
    let body = b"Subject: upstream tls\r\n\r\nhi\r\n";
    let send = |front| {
        smtplib_send(
            front,
            "127.0.0.1",
            "s@example.net",
            &["r@example.com"],
            &[],
            body,
        )
    };

    // STARTTLS to a server that requires it, the chain and name verified.
    let starttls = Aiosmtpd::start_with("aiosmtpd-starttls", "", Some(("starttls", &cert))).await;
    let pool = format!(
        "upstream_tls = {{ sslmode = \"verify-full\", root_cert = {:?}, starttls = true }}",
        pki.ca
    );
    let (_proxy, front) = start(starttls.addr, "", &pool).await;
    let report = send(front).await;
    assert_eq!(report["refused"], serde_json::json!({}), "{report}");
    let received = starttls.wait_received(1).await;
    assert_eq!(received[0]["tls"], true);
    assert_eq!(received[0]["sha256"], sha256_hex(body));

    // TLS from the first byte (port 465 style).
    let implicit = Aiosmtpd::start_with("aiosmtpd-implicit", "", Some(("implicit", &cert))).await;
    let pool = format!(
        "upstream_tls = {{ sslmode = \"verify-full\", root_cert = {:?} }}",
        pki.ca
    );
    let (_proxy, front) = start(implicit.addr, "", &pool).await;
    let report = send(front).await;
    assert_eq!(report["refused"], serde_json::json!({}), "{report}");
    assert_eq!(implicit.wait_received(1).await[0]["tls"], true);

    // A server without STARTTLS: `require` fails the message, `prefer` goes on in clear.
    let plain = Aiosmtpd::start("aiosmtpd-plain", false).await;
    let (proxy, front) = start(
        plain.addr,
        "",
        "upstream_tls = { sslmode = \"require\", starttls = true }",
    )
    .await;
    let report = send(front).await;
    assert_eq!(report["refused"]["r@example.com"][0], 421, "{report}");
    assert!(
        report["refused"]["r@example.com"][1]
            .as_str()
            .is_some_and(|t| t.starts_with("4.7.0")),
        "{report}"
    );
    let line = support::ops::wait_access(&proxy, "the refused session", |l| {
        field(l, "termination") == "server_tls_failed"
    })
    .await;
    assert_eq!(field(&line, "listener"), "front");
    let (_proxy, front) = start(
        plain.addr,
        "",
        "upstream_tls = { sslmode = \"prefer\", starttls = true }",
    )
    .await;
    let report = send(front).await;
    assert_eq!(report["refused"], serde_json::json!({}), "{report}");
    let received = plain.wait_received(1).await;
    assert_eq!(received.len(), 1, "only the prefer message arrived");
    assert_eq!(received[0]["tls"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smtp_health_check_greets_and_upgrades_as_sessions_do() {
    let health = "health = { check = \"smtp\", interval = \"200ms\", rise = 1, fall = 1 }";
    let server = Aiosmtpd::start("aiosmtpd-a", false).await;
    let (proxy, _front) = start(server.addr, "", health).await;
    proxy.wait_health("app", "mail", "up").await;
    drop(server);
    proxy.wait_health("app", "mail", "down").await;

    // STARTTLS required by the pool: up where the server offers it, down where it does not.
    let pki = Pki::new("smtp server CA");
    let cert = pki.issue("server", "server.test", &["server.test", "127.0.0.1"]);
    let starttls = Aiosmtpd::start_with("aiosmtpd-starttls", "", Some(("starttls", &cert))).await;
    let plain = Aiosmtpd::start("aiosmtpd-plain", false).await;
    let pool = format!("{health}\nupstream_tls = {{ sslmode = \"require\", starttls = true }}");
    let (proxy, _front) = Config::new()
        .protocol("smtp")
        .pool(&pool)
        .servers(&[("tls", starttls.addr, ""), ("clear", plain.addr, "")])
        .start()
        .await;
    proxy.wait_health("app", "tls", "up").await;
    proxy.wait_health("app", "clear", "down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_relayed_over_tls_only_and_binds_the_session_to_its_server() {
    let submission = Aiosmtpd::start_with("aiosmtpd-auth", "auth", None).await;
    let org = Aiosmtpd::start("aiosmtpd-org", false).await;
    let pki = Pki::new("smtp test CA");
    let (_proxy, front) = Config::new()
        .protocol("smtp")
        .listener(&format!(
            "{}\n[[listener.routes]]\ndomain = \"example.org\"\npool = \"org\"",
            tls_listener(&pki, "starttls = \"optional\"")
        ))
        .server("submission", submission.addr, "")
        .section(&format!(
            "[[pool]]\nname = \"org\"\nservers = [{{ name = \"org\", address = \"{}\" }}]\n",
            org.addr
        ))
        .start()
        .await;
    // In clear: not offered, and refused.
    let (mut client, _) = Raw::connect(front).await;
    assert!(!client.command("EHLO client.example").await.contains("AUTH"));
    let refused = client.command("AUTH PLAIN AGFsaWNlAHNlY3JldA==").await;
    assert!(refused.starts_with("538 5.7.11"), "{refused}");

    // Over TLS: relayed; a recipient another route names still goes to the server the
    // client logged in to.
    let body = b"Subject: submitted\r\n\r\nhi\r\n";
    let report = smtplib_send_over(
        front,
        Some(("starttls", &pki.ca, "alice:secret")),
        "127.0.0.1",
        "alice@example.net",
        &["r@example.org"],
        &[],
        body,
    )
    .await;
    assert_eq!(report["refused"], serde_json::json!({}), "{report}");
    let received = submission.wait_received(1).await;
    assert_eq!(received[0]["authenticated"], true);
    assert_eq!(received[0]["sha256"], sha256_hex(body));
    assert!(org.received().is_empty());
    let report = smtplib_send_over(
        front,
        Some(("starttls", &pki.ca, "alice:wrong")),
        "127.0.0.1",
        "alice@example.net",
        &["r@example.org"],
        &[],
        body,
    )
    .await;
    assert_eq!(report["error"][0], 535, "{report}");
}

/// Listener keys with STARTTLS and a 2,000-byte message limit.
fn small_messages_over_tls(pki: &Pki) -> String {
    tls_listener(pki, "starttls = \"optional\", max_message_bytes = 2000")
}

/// Over TLS: EHLO, STARTTLS, EHLO, `AUTH PLAIN` as alice; a message through; then one over
/// the limit, refused, which closes the server session. Returns the client for the next.
async fn log_in_and_lose_the_server_session(
    front: SocketAddr,
    pki: &Pki,
) -> Raw<tokio_rustls::client::TlsStream<TcpStream>> {
    let (mut client, _) = Raw::connect(front).await;
    client
        .expect(&[("EHLO client.example", "250"), ("STARTTLS", "220")])
        .await;
    let mut client = client.into_tls(pki).await;
    client
        .expect(&[
            ("EHLO client.example", "250"),
            ("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "235"),
        ])
        .await;
    client.start_message().await;
    client.send(b"Subject: first\r\n\r\nhi\r\n").await;
    assert!(client.command(".").await.starts_with("250 2.0.0"));
    client.start_message().await;
    client
        .send(format!("{}\r\n", "y".repeat(98)).repeat(30).as_bytes())
        .await;
    assert!(client.command(".").await.starts_with("552 5.3.4"));
    client
}

/// The AUTH a session is opened for is relayed after the session's XCLIENT (which carries
/// no LOGIN: Postfix would take one after the AUTH as a logout). When that session ends (a
/// refused message closes it) the next one cannot be authenticated by the proxy, which
/// keeps no password: `XCLIENT LOGIN=<name>` tells the server who the client logged in as.
/// Where XCLIENT cannot carry it, the client is told `421 4.7.0` rather than have its mail
/// go through an unauthenticated session, and logs in again on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_server_session_of_an_authenticated_client_is_told_its_login_by_xclient() {
    let pki = Pki::new("smtp test CA");
    let submission =
        Aiosmtpd::start_with("aiosmtpd-submission", "auth,xclient,pipelining", None).await;
    let (_proxy, front) = start_with_keys_and_pool(
        submission.addr,
        &small_messages_over_tls(&pki),
        "send_xclient = true",
    )
    .await;
    let mut client = log_in_and_lose_the_server_session(front, &pki).await;
    client.start_message().await;
    let body = b"Subject: after the refusal\r\n\r\nstill alice\r\n";
    client.send(body).await;
    assert!(client.command(".").await.starts_with("250 2.0.0"));
    let received = submission.wait_received(2).await;
    let xclient = |i: usize| {
        received[i]["xclient"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(!xclient(0).contains("LOGIN"), "{}", xclient(0));
    assert!(xclient(1).contains(" LOGIN=alice"), "{}", xclient(1));
    for record in &received {
        assert_eq!(record["authenticated"], true, "{record}");
        assert_eq!(record["login"], "alice", "{record}");
        assert_eq!(record["helo"], "client.example", "{record}");
    }
    assert_eq!(received[1]["sha256"], sha256_hex(body));

    // Without send_xclient the login cannot follow: 421, and the connection is closed.
    let plain = Aiosmtpd::start_with("aiosmtpd-auth", "auth", None).await;
    let (proxy, front) =
        start_with_keys_and_pool(plain.addr, &small_messages_over_tls(&pki), "").await;
    let mut client = log_in_and_lose_the_server_session(front, &pki).await;
    client.expect(&[("MAIL FROM:<s@example.net>", "250")]).await;
    let refused = client.command("RCPT TO:<r@example.com>").await;
    assert!(refused.starts_with("421 4.7.0"), "{refused}");
    assert_eq!(client.reply().await, "", "closed after the 421");
    assert_eq!(plain.wait_received(1).await.len(), 1);
    wait_terminations(&proxy, &[("server_login_failed", 1)]).await;
}
