//! The proxy's session with a mail server: connect (a server of the pool, following
//! reloads), read the banner, EHLO as the proxy, pass the client on with `XCLIENT` when the
//! pool asks, open each transaction with MAIL and its first RCPT (in one write to a server
//! offering PIPELINING), then one reply per command, each read whole.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tokio_util::either::Either;

use super::reply::{self, BadReply, Reply};
use crate::config::SslMode;
use crate::observe::Termination;
use crate::tls::UpstreamTls;
use crate::upstream::{
    ConnectError, Lease, LeaseError, Pool, Server, ServerStream, Stage, following_reloads,
    record_failure, secure_upstream, server_host,
};

/// A conversation with a mail server: commands sent, replies read whole one at a time
/// (the sessions clients' transactions go through, and the `smtp` health check).
pub struct Conversation {
    /// `None` only during the STARTTLS handshake.
    stream: Option<ServerStream>,
    /// Bytes read past the last reply taken.
    buffer: Vec<u8>,
    timeout: Duration,
    /// Bytes written to the server.
    pub bytes_out: u64,
    /// Bytes read from it.
    pub bytes_in: u64,
}

/// A server session of the pool that clients' transactions go through.
pub struct ServerSession {
    /// The conversation.
    pub conversation: Conversation,
    /// The pool it belongs to.
    pub pool: Arc<Pool>,
    /// The server.
    pub server: Arc<Server>,
    /// Whether its EHLO reply offered `CHUNKING` (BDAT).
    pub chunking: bool,
    /// Whether its EHLO reply offered `PIPELINING` (RFC 2920): a transaction's MAIL and
    /// first RCPT then go in one write, saving a round trip per message.
    pub pipelining: bool,
    /// The AUTH mechanisms its EHLO reply offered (empty for none).
    pub auth: String,
    _lease: Lease,
}

/// Why a server session failed: how the client's connection ends, and what it is told.
#[derive(Debug)]
pub struct Failure {
    /// How the client's connection ends.
    pub termination: Termination,
    /// The detail for the log.
    pub detail: String,
}

impl Failure {
    fn new(termination: Termination, detail: impl Into<String>) -> Self {
        Self {
            termination,
            detail: detail.into(),
        }
    }

    /// The reply the client gets: the session ends (`421`).
    pub fn reply(&self, hostname: &str) -> String {
        let why = match self.termination {
            Termination::NoServer | Termination::QueueFull | Termination::QueueTimeout => {
                "4.3.0 No mail server available"
            }
            Termination::ServerTimeout => "4.4.2 Mail server timed out",
            Termination::ServerRefused => "4.4.0 Mail server refused the session",
            Termination::ServerTlsFailed => "4.7.0 TLS to the mail server failed",
            Termination::ServerLoginFailed => {
                "4.7.0 Your login cannot be carried to a new mail server session, log in again"
            }
            _ => "4.4.1 Mail server unreachable",
        };
        format!("421 {why} ({hostname}), closing connection\r\n")
    }

    /// A new server session for a client that authenticated cannot be told who it is
    /// (`why`): rather than submit its mail unauthenticated, the session ends, and the
    /// client logs in again on a new connection.
    pub fn login_not_carried(why: &str) -> Self {
        Self::new(
            Termination::ServerLoginFailed,
            format!("the client's login cannot be carried to a new server session: {why}"),
        )
    }
}

/// What the proxy tells a server about the client it opens a session for.
pub struct Opening<'a> {
    /// The proxy's name (its EHLO).
    pub hostname: &'a str,
    /// The client.
    pub client: SocketAddr,
    /// The client's HELO/EHLO name.
    pub helo: &'a str,
    /// Whether the client spoke ESMTP (EHLO).
    pub esmtp: bool,
    /// The address the client reached (for a PROXY header).
    pub destination: SocketAddr,
    /// The name the client logged in as, when it authenticated before this session was
    /// opened: sent as `XCLIENT LOGIN`, without which the session is refused (see
    /// [`Failure::login_not_carried`]). `None` for a client that has not authenticated, or
    /// whose AUTH this session is opened to relay: the server then learns the name from
    /// the AUTH itself.
    pub login: Option<&'a str>,
}

/// Opens a session on a server of `pool` (or of the pool `reroute` gives when a reload
/// retired it): connect, banner, EHLO, and XCLIENT with a second EHLO when the pool has
/// `send_xclient` and the server offers it.
pub async fn open(
    pool: Arc<Pool>,
    reroute: impl Fn() -> Option<Arc<Pool>>,
    opening: &Opening<'_>,
) -> Result<ServerSession, Failure> {
    let client = opening.client;
    let (pool, attempt) = following_reloads(
        pool,
        |pool| pool,
        reroute,
        |pool| async move { crate::upstream::connect(&pool, client).await },
    )
    .await;
    let upstream = attempt.map_err(|error| {
        let termination = match &error {
            ConnectError::Lease(LeaseError::NoServer) => Termination::NoServer,
            ConnectError::Lease(LeaseError::QueueFull) => Termination::QueueFull,
            ConnectError::Lease(LeaseError::QueueTimeout) => Termination::QueueTimeout,
            ConnectError::Failed { .. } => Termination::ConnectFailed,
        };
        Failure::new(termination, format!("pool {}: {error}", pool.name))
    })?;
    let server = upstream.lease.server().clone();
    let header = super::super::proxy_preamble(
        pool.send_proxy_protocol,
        client,
        || opening.destination,
        None,
    );
    let (conversation, mut ehlo) =
        greet(&pool, &server, upstream.stream, &header, opening.hostname).await?;
    let mut session = ServerSession {
        conversation,
        pool,
        server,
        chunking: false,
        pipelining: false,
        auth: String::new(),
        _lease: upstream.lease,
    };
    let xclient = if session.pool.smtp.send_xclient {
        let offered = reply::extension(&ehlo, "XCLIENT");
        if offered.is_none() {
            tracing::warn!(pool = %session.pool.name, server = %session.server.name, "send_xclient: the server does not offer XCLIENT");
        }
        offered
    } else {
        None
    };
    if opening.login.is_some() {
        let why = match &xclient {
            Some(offered) if offers(offered, "LOGIN") => None,
            Some(_) => Some("the server's XCLIENT does not take LOGIN"),
            None if session.pool.smtp.send_xclient => Some("the server does not offer XCLIENT"),
            None => Some("the pool does not have send_xclient"),
        };
        if let Some(why) = why {
            return Err(Failure::login_not_carried(why));
        }
    }
    if let Some(offered) = xclient {
        let command = xclient_command(opening, &offered);
        // Postfix's smtpd greets again (220), its smtp-sink says 250.
        let (answer, _) = session.conversation.command(command.as_bytes()).await?;
        if !answer.is_positive() {
            return Err(Failure::new(
                Termination::ServerRefused,
                format!("XCLIENT answered {}", answer.code),
            ));
        }
        ehlo = session.conversation.hello(opening.helo).await?;
    }
    session.chunking = reply::extension(&ehlo, "CHUNKING").is_some();
    session.pipelining = reply::extension(&ehlo, "PIPELINING").is_some();
    session.auth = reply::extension(&ehlo, "AUTH").unwrap_or_default();
    Ok(session)
}

/// Opens the conversation on a fresh connection to `server`: `header` (a PROXY header, or
/// nothing) in clear, TLS from the first byte when the pool's `sslmode` asks for it without
/// `starttls`, the `220` banner, `EHLO hostname`, and STARTTLS when the pool asks for it.
/// Returns the conversation and the EHLO reply in force.
pub async fn greet(
    pool: &Pool,
    server: &Server,
    stream: TcpStream,
    header: &[u8],
    hostname: &str,
) -> Result<(Conversation, Vec<u8>), Failure> {
    let tls = pool
        .tls
        .clone()
        .filter(|tls| tls.mode().asks_for_tls(false));
    let stream = match &tls {
        Some(tls) if !tls.starttls() => {
            match Box::pin(secure_upstream(pool, server, stream, header)).await {
                Ok(stream) => stream,
                Err(error) => {
                    record_failure(pool, server, Stage::Tls, &error);
                    return Err(Failure::new(
                        Termination::ServerTlsFailed,
                        error.to_string(),
                    ));
                }
            }
        }
        _ => {
            let mut stream = stream;
            if let Err(error) = stream.write_all(header).await {
                return Err(io_failure(&error));
            }
            Either::Left(stream)
        }
    };
    let mut conversation = Conversation {
        stream: Some(stream),
        buffer: Vec::new(),
        timeout: pool.timeouts.server,
        bytes_out: header.len() as u64,
        bytes_in: 0,
    };
    let (banner, _) = conversation.reply().await?;
    if banner.code != 220 {
        return Err(Failure::new(
            Termination::ServerRefused,
            format!("banner {}", banner.code),
        ));
    }
    let mut ehlo = conversation.hello(hostname).await?;
    if let Some(tls) = tls.filter(|tls| tls.starttls()) {
        ehlo = conversation
            .start_tls(&tls, pool, server, &ehlo, hostname)
            .await?;
    }
    Ok((conversation, ehlo))
}

/// Postfix's `XCLIENT` with the attributes the server offers (`offered`, its EHLO
/// keyword's parameters): ADDR, PORT, NAME (no reverse lookup is made: unavailable), HELO,
/// PROTO, and LOGIN for a client that authenticated before the session; values in xtext.
///
/// It is sent once, right after the proxy's EHLO and before any AUTH it relays: Postfix
/// takes XCLIENT without LOGIN as a logout, and once ADDR is sent the proxy is usually no
/// longer allowed another XCLIENT. So the AUTH a session is opened for is relayed after it,
/// and the server learns the name from that AUTH; LOGIN stands in for an AUTH only on a
/// later session, which the proxy cannot authenticate itself.
fn xclient_command(opening: &Opening<'_>, offered: &str) -> String {
    let addr = match opening.client.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("IPV6:{ip}"),
    };
    let proto = if opening.esmtp { "ESMTP" } else { "SMTP" };
    let port = opening.client.port().to_string();
    let attributes = [
        ("ADDR", Some(addr.as_str())),
        ("PORT", Some(port.as_str())),
        ("NAME", Some("[UNAVAILABLE]")),
        ("HELO", Some(opening.helo)),
        ("PROTO", Some(proto)),
        ("LOGIN", opening.login),
    ];
    let mut command = String::from("XCLIENT");
    for (name, value) in attributes {
        if let Some(value) = value.filter(|_| offers(offered, name)) {
            command.push_str(&format!(" {name}={}", xtext(value)));
        }
    }
    command.push_str("\r\n");
    command
}

/// Whether an XCLIENT offer (its EHLO keyword's parameters) names `attribute`.
fn offers(offered: &str, attribute: &str) -> bool {
    offered
        .split_ascii_whitespace()
        .any(|o| o.eq_ignore_ascii_case(attribute))
}

/// RFC 3461 xtext: `+`, `=`, controls, space and non-ASCII as `+HH`.
fn xtext(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'!'..=b'~' if b != b'+' && b != b'=' => (b as char).to_string(),
            _ => format!("+{b:02X}"),
        })
        .collect()
}

/// How a server answered the MAIL and first RCPT that open a transaction.
#[derive(Debug, PartialEq, Eq)]
pub enum Begun {
    /// MAIL was accepted: the transaction is open. The server's reply to the RCPT.
    Open(Reply, Vec<u8>),
    /// MAIL was refused: its reply, which answers the client's RCPT (the client's MAIL
    /// had the proxy's own `250`). The server's reply to a pipelined RCPT (a `503` for
    /// want of a MAIL) was read and dropped, so that later replies stay paired with their
    /// commands; after a `421` the server is closing, and none is waited for.
    Refused(Reply, Vec<u8>),
}

impl Conversation {
    /// Opens a transaction with the client's MAIL line `mail` and its first RCPT line
    /// `rcpt`: both in one write when the server offered PIPELINING (`pipelining`), else
    /// the RCPT only once MAIL is accepted. One reply is read per command sent, in order.
    pub async fn begin(
        &mut self,
        mail: &[u8],
        rcpt: &[u8],
        pipelining: bool,
    ) -> Result<Begun, Failure> {
        if pipelining {
            self.send(&[mail, rcpt].concat()).await?;
        } else {
            self.send(mail).await?;
        }
        let (answer, bytes) = self.reply().await?;
        if !answer.is_positive() {
            if pipelining && !answer.is_closing() {
                self.reply().await?;
            }
            return Ok(Begun::Refused(answer, bytes));
        }
        if !pipelining {
            self.send(rcpt).await?;
        }
        let (answer, bytes) = self.reply().await?;
        Ok(Begun::Open(answer, bytes))
    }

    /// Sends bytes to the server.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(Failure::new(
                Termination::ServerError,
                "no server connection",
            ));
        };
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => {
                self.bytes_out += bytes.len() as u64;
                Ok(())
            }
            Ok(Err(error)) => Err(io_failure(&error)),
            Err(_) => Err(Failure::new(Termination::ServerTimeout, "write timed out")),
        }
    }

    /// Reads the server's next reply, whole: its code and its bytes.
    pub async fn reply(&mut self) -> Result<(Reply, Vec<u8>), Failure> {
        loop {
            match reply::frame(&self.buffer) {
                Ok(Some(reply)) => {
                    let bytes: Vec<u8> = self.buffer.drain(..reply.len).collect();
                    return Ok((reply, bytes));
                }
                Ok(None) => {}
                Err(error @ (BadReply::NoCode | BadReply::TooLong)) => {
                    return Err(Failure::new(Termination::ServerError, error.to_string()));
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                return Err(Failure::new(
                    Termination::ServerError,
                    "no server connection",
                ));
            };
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout(self.timeout, stream.read(&mut chunk)).await;
            match read {
                Ok(Ok(0)) => {
                    return Err(Failure::new(Termination::ServerClosed, "server closed"));
                }
                Ok(Ok(n)) => {
                    self.bytes_in += n as u64;
                    self.buffer.extend_from_slice(&chunk[..n]);
                }
                Ok(Err(error)) => return Err(io_failure(&error)),
                Err(_) => {
                    return Err(Failure::new(Termination::ServerTimeout, "reply timed out"));
                }
            }
        }
    }

    /// Sends a command line and reads its reply.
    pub async fn command(&mut self, line: &[u8]) -> Result<(Reply, Vec<u8>), Failure> {
        self.send(line).await?;
        self.reply().await
    }

    /// EHLO as `name`; the reply must be positive.
    pub async fn hello(&mut self, name: &str) -> Result<Vec<u8>, Failure> {
        let (answer, bytes) = self.command(format!("EHLO {name}\r\n").as_bytes()).await?;
        if !answer.is_positive() {
            return Err(Failure::new(
                Termination::ServerRefused,
                format!("EHLO answered {}", answer.code),
            ));
        }
        Ok(bytes)
    }

    /// STARTTLS after the server's EHLO reply `ehlo`, then EHLO again as `hostname`;
    /// returns the EHLO reply in force. A server that does not offer it (or refuses it)
    /// keeps the session in plaintext only under `sslmode = "prefer"`: `require` and the
    /// verifying modes fail the session rather than fall back.
    async fn start_tls(
        &mut self,
        tls: &UpstreamTls,
        pool: &Pool,
        server: &Server,
        ehlo: &[u8],
        hostname: &str,
    ) -> Result<Vec<u8>, Failure> {
        let refusal = if reply::extension(ehlo, "STARTTLS").is_none() {
            Some("the server does not offer STARTTLS".to_string())
        } else {
            let (answer, _) = self.command(b"STARTTLS\r\n").await?;
            (answer.code != 220).then(|| format!("STARTTLS answered {}", answer.code))
        };
        if let Some(why) = refusal {
            if tls.mode() == SslMode::Prefer {
                tracing::debug!(pool = %pool.name, server = %server.name, why, "sslmode=prefer: the mail server session stays in plaintext");
                return Ok(ehlo.to_vec());
            }
            return Err(Failure::new(
                Termination::ServerTlsFailed,
                format!("{why} (sslmode={})", tls.mode().as_str()),
            ));
        }
        // Bytes the server sent after its 220 came before the handshake: unauthenticated.
        if !self.buffer.is_empty() {
            return Err(Failure::new(
                Termination::ServerTlsFailed,
                "the server sent bytes after its 220 to STARTTLS",
            ));
        }
        let Some(Either::Left(stream)) = self.stream.take() else {
            return Err(Failure::new(
                Termination::ServerTlsFailed,
                "not a plaintext session",
            ));
        };
        let host = server_host(server);
        let handshake =
            tokio::time::timeout(pool.timeouts.connect, tls.handshake(stream, &host)).await;
        let error = match handshake {
            Ok(Ok(stream)) => {
                self.stream = Some(Either::Right(stream));
                return self.hello(hostname).await;
            }
            Ok(Err(error)) => error,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timeout"),
        };
        record_failure(pool, server, Stage::Tls, &error);
        Err(Failure::new(
            Termination::ServerTlsFailed,
            format!("TLS handshake (sslmode={}): {error}", tls.mode().as_str()),
        ))
    }

    /// Ends the session politely: QUIT, its reply not waited for.
    pub async fn quit(&mut self) {
        let _ = self.send(b"QUIT\r\n").await;
        if let Some(stream) = self.stream.as_mut() {
            let _ = stream.shutdown().await;
        }
    }
}

fn io_failure(error: &io::Error) -> Failure {
    Failure::new(Termination::ServerError, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xclient_names_only_offered_attributes_in_xtext() {
        let mut opening = Opening {
            hostname: "proxy.example",
            client: "192.0.2.7:4711".parse().expect("address"),
            helo: "client host+1",
            esmtp: true,
            destination: "192.0.2.1:25".parse().expect("address"),
            login: None,
        };
        assert_eq!(
            xclient_command(&opening, "NAME ADDR PROTO HELO PORT LOGIN"),
            "XCLIENT ADDR=192.0.2.7 PORT=4711 NAME=[UNAVAILABLE] HELO=client+20host+2B1 PROTO=ESMTP\r\n"
        );
        assert_eq!(
            xclient_command(&opening, "ADDR"),
            "XCLIENT ADDR=192.0.2.7\r\n"
        );
        opening.login = Some("j\u{f6}rg+mail@example.org");
        assert_eq!(
            xclient_command(&opening, "ADDR login"),
            "XCLIENT ADDR=192.0.2.7 LOGIN=j+C3+B6rg+2Bmail@example.org\r\n"
        );
        assert_eq!(
            xclient_command(&opening, "ADDR"),
            "XCLIENT ADDR=192.0.2.7\r\n",
            "a LOGIN the server does not take is not sent (the session is refused instead)"
        );
    }

    const MAIL: &[u8] = b"MAIL FROM:<s@example.net>\r\n";
    const RCPT: &[u8] = b"RCPT TO:<r@example.com>\r\n";
    const RSET: &[u8] = b"RSET\r\n";

    /// A conversation with a scripted server on a loopback socket, and the server's task
    /// (its assertions fail the test when it is awaited).
    async fn scripted<Script, Done>(script: Script) -> (Conversation, tokio::task::JoinHandle<()>)
    where
        Script: FnOnce(Peer) -> Done + Send + 'static,
        Done: Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            script(Peer {
                socket,
                read: Vec::new(),
            })
            .await;
        });
        let stream = TcpStream::connect(address).await.expect("connect");
        let conversation = Conversation {
            stream: Some(Either::Left(stream)),
            buffer: Vec::new(),
            timeout: Duration::from_secs(5),
            bytes_out: 0,
            bytes_in: 0,
        };
        (conversation, server)
    }

    /// The scripted server's side.
    struct Peer {
        socket: TcpStream,
        read: Vec<u8>,
    }

    impl Peer {
        /// Reads until `count` whole lines have come and returns what came, exactly: a
        /// command the proxy sent early would show as more.
        async fn lines(&mut self, count: usize) -> Vec<u8> {
            while self.read.iter().filter(|&&b| b == b'\n').count() < count {
                let mut chunk = [0u8; 1024];
                let n = self.socket.read(&mut chunk).await.expect("read");
                assert!(n > 0, "the proxy closed early");
                self.read.extend_from_slice(&chunk[..n]);
            }
            std::mem::take(&mut self.read)
        }

        async fn say(&mut self, replies: &[u8]) {
            self.socket.write_all(replies).await.expect("write");
        }
    }

    fn reply_of(bytes: &[u8]) -> (Reply, Vec<u8>) {
        let reply = reply::frame(bytes).ok().flatten().expect("a whole reply");
        (reply, bytes.to_vec())
    }

    #[tokio::test]
    async fn a_pipelining_server_gets_mail_and_rcpt_in_one_write() {
        let (mut conversation, server) = scripted(|mut peer| async move {
            // Nothing is answered until both commands are in: sent one after the other's
            // reply, they would never be.
            assert_eq!(peer.lines(2).await, [MAIL, RCPT].concat());
            peer.say(b"250-2.1.0 Ok\r\n").await;
            peer.say(b"250 2.1.0 sender ok\r\n250 2.1.5 Ok\r\n").await;
        })
        .await;
        let begun = conversation.begin(MAIL, RCPT, true).await.expect("begun");
        assert_eq!(
            begun,
            Begun::Open(
                reply_of(b"250 2.1.5 Ok\r\n").0,
                b"250 2.1.5 Ok\r\n".to_vec()
            )
        );
        server.await.expect("server script");
    }

    #[tokio::test]
    async fn a_refused_pipelined_mail_answers_the_rcpt_and_its_503_is_dropped() {
        let (mut conversation, server) = scripted(|mut peer| async move {
            assert_eq!(peer.lines(2).await, [MAIL, RCPT].concat());
            peer.say(b"550 5.7.1 Sender rejected\r\n503 5.5.1 Error: need MAIL command\r\n")
                .await;
            assert_eq!(peer.lines(1).await, RSET);
            peer.say(b"250 2.0.0 Ok\r\n").await;
        })
        .await;
        let refusal = b"550 5.7.1 Sender rejected\r\n";
        let (reply, bytes) = reply_of(refusal);
        assert_eq!(
            conversation.begin(MAIL, RCPT, true).await.expect("begun"),
            Begun::Refused(reply, bytes)
        );
        // The next command gets its own reply, not the RCPT's 503.
        let (reset, bytes) = conversation.command(RSET).await.expect("RSET");
        assert_eq!((reset.code, bytes), (250, b"250 2.0.0 Ok\r\n".to_vec()));
        server.await.expect("server script");
    }

    #[tokio::test]
    async fn after_a_421_to_mail_no_reply_to_the_rcpt_is_waited_for() {
        let (mut conversation, server) = scripted(|mut peer| async move {
            assert_eq!(peer.lines(2).await, [MAIL, RCPT].concat());
            peer.say(b"421 4.3.2 Shutting down\r\n").await;
            // Held open, silent, until the proxy lets go.
            let mut rest = Vec::new();
            let _ = peer.socket.read_to_end(&mut rest).await;
        })
        .await;
        let started = std::time::Instant::now();
        let begun = conversation.begin(MAIL, RCPT, true).await.expect("begun");
        let (reply, bytes) = reply_of(b"421 4.3.2 Shutting down\r\n");
        assert_eq!(begun, Begun::Refused(reply, bytes));
        assert!(started.elapsed() < conversation.timeout, "did not wait");
        drop(conversation);
        server.await.expect("server script");
    }

    #[tokio::test]
    async fn without_pipelining_rcpt_waits_for_mail_and_follows_no_refusal() {
        let (mut conversation, server) = scripted(|mut peer| async move {
            assert_eq!(peer.lines(1).await, MAIL, "RCPT only after MAIL's reply");
            peer.say(b"250 2.1.0 Ok\r\n").await;
            assert_eq!(peer.lines(1).await, RCPT);
            peer.say(b"550 5.1.1 No such user\r\n").await;
            assert_eq!(peer.lines(1).await, RSET);
            peer.say(b"250 2.0.0 Ok\r\n").await;
            assert_eq!(peer.lines(1).await, MAIL);
            peer.say(b"452 4.3.1 Insufficient system storage\r\n").await;
            assert_eq!(peer.lines(1).await, RSET, "no RCPT after a refused MAIL");
            peer.say(b"250 2.0.0 Ok\r\n").await;
        })
        .await;
        let (reply, bytes) = reply_of(b"550 5.1.1 No such user\r\n");
        assert_eq!(
            conversation.begin(MAIL, RCPT, false).await.expect("begun"),
            Begun::Open(reply, bytes),
            "the transaction is open; the RCPT has its own refusal"
        );
        conversation.command(RSET).await.expect("RSET");
        let (reply, bytes) = reply_of(b"452 4.3.1 Insufficient system storage\r\n");
        assert_eq!(
            conversation.begin(MAIL, RCPT, false).await.expect("begun"),
            Begun::Refused(reply, bytes)
        );
        conversation.command(RSET).await.expect("RSET");
        server.await.expect("server script");
    }
}
