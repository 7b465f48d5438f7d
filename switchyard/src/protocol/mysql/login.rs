//! Switchyard logging in to a MySQL/MariaDB server as a client: for the `mysql` health
//! check now, and for the server connections of proxy-side authentication and pooling.
//!
//! The server speaks first (HandshakeV10). TLS follows the pool's `sslmode` with libpq's
//! meaning, mapped onto MySQL's in-protocol upgrade: `disable` never sends an SSLRequest;
//! `allow` logs in over plaintext and only a retry after the server refused that login asks
//! for TLS ([`retries_with_tls`]); `prefer` asks when the greeting offers `CLIENT_SSL` and
//! stays in plaintext otherwise; `require`, `verify-ca` and `verify-full` fail when the
//! server does not offer TLS, and verify as the TLS module does. Then the
//! HandshakeResponse41 answers the greeting's plugin, and AuthSwitchRequest and
//! AuthMoreData are followed to the OK or ERR.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::either::Either;

use super::auth::{Plugin, caching_sha2, ed25519, native};
use super::auth_switch::{AUTH_MORE_DATA, AUTH_SWITCH, AuthSwitch, parse_more_data};
use super::err::{ERR, ErrPacket};
use super::errors::{ClientLibrary, ProxyError};
use super::flags::capabilities as cap;
use super::handshake::Handshake;
use super::ok::{OK, OkPacket};
use super::packet::{CodecError, PacketReader, write_packet};
use super::response::{ClientHead, HandshakeResponse};
use crate::config::SslMode;
use crate::tls::UpstreamTls;

/// A server connection: plaintext or TLS over the stream switchyard connected (boxed, as
/// in `upstream::ServerStream`).
pub type MysqlStream<S> = Either<S, Box<tokio_rustls::client::TlsStream<S>>>;

/// What switchyard proves to a server on a user's behalf.
#[derive(Clone)]
pub enum Credential {
    /// A configured password (empty: none): answers every plugin, including full
    /// authentication of `caching_sha2_password`.
    Password(String),
    /// `SHA1(password)`, recovered from a client's `mysql_native_password` answer:
    /// answers `mysql_native_password` only.
    NativeStage1([u8; 20]),
    /// `SHA256(password)`, recovered from a client's `caching_sha2_password` fast-path
    /// answer: answers that plugin's fast path only.
    Sha2Stage1([u8; 32]),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Each variant logs in as the user somewhere: never print it.
        f.write_str(match self {
            Self::Password(_) => "Password(..)",
            Self::NativeStage1(_) => "NativeStage1(..)",
            Self::Sha2Stage1(_) => "Sha2Stage1(..)",
        })
    }
}

/// Who logs in, and how.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    /// The user name.
    pub user: String,
    /// The proof.
    pub credential: Credential,
    /// The default database; `None` logs in without one.
    pub database: Option<String>,
    /// The capabilities wanted (e.g. [`cap::LOGIN`], or what a client negotiated with the
    /// proxy); the server's offer is intersected with them. `CLIENT_SSL`,
    /// `CLIENT_CONNECT_WITH_DB` and `CLIENT_CONNECT_ATTRS` are set as needed.
    pub capabilities: u32,
    /// Connection attributes sent when the server takes them (`program_name`...).
    pub attributes: Vec<(String, String)>,
    /// The longest packet accepted from the server, and announced as max packet size.
    pub max_packet: usize,
    /// The session's character set (collation id), as a client sends it.
    pub charset: u8,
}

/// A logged-in server connection, ready for commands.
#[derive(Debug)]
pub struct ServerConnection<S> {
    /// The stream, TLS or not.
    pub stream: MysqlStream<S>,
    /// What was read from the server and not yet taken (empty after the login's OK).
    pub reader: PacketReader,
    /// What the login found out.
    pub session: Session,
}

/// What a login found out about the server and the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The server's thread id (for `KILL`).
    pub connection_id: u32,
    /// The server's version string.
    pub server_version: String,
    /// What the server offered.
    pub server_capabilities: u32,
    /// MariaDB's extended capabilities the server offered (0 for MySQL).
    pub mariadb_capabilities: u32,
    /// What the session uses (offer and request intersected): how packets read.
    pub capabilities: u32,
    /// Status flags from the login's OK.
    pub status: u16,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The plugin that authenticated.
    pub auth_plugin: Plugin,
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The connection failed or closed.
    #[error("connection to the server failed: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent something that is not the protocol.
    #[error("{0}")]
    Codec(CodecError),
    /// The TLS handshake failed.
    #[error("TLS handshake (sslmode={mode}): {error}")]
    Tls {
        /// The pool's sslmode.
        mode: &'static str,
        /// What failed.
        error: std::io::Error,
    },
    /// TLS is required and the server does not offer it.
    #[error("the server does not support TLS (sslmode={0})")]
    TlsUnavailable(&'static str),
    /// The server refused with an ERR packet (access denied, unknown database...).
    #[error("the server refused the login: {0}")]
    Server(ErrPacket),
    /// The server asked for something switchyard does not do (a plugin, pre-4.1).
    #[error("{0}")]
    Unsupported(String),
}

impl From<CodecError> for LoginError {
    fn from(error: CodecError) -> Self {
        match error {
            CodecError::Io(error) => Self::Io(error),
            other => Self::Codec(other),
        }
    }
}

impl LoginError {
    /// The ERR packet a client (of `library`) should get for this failure: the server's
    /// own when it refused, else "can't connect" to server `on` with the reason.
    pub fn to_client(&self, library: ClientLibrary, on: &str) -> ErrPacket {
        match self {
            Self::Server(err) => err.clone(),
            other => ProxyError::CantConnect {
                library,
                on: on.to_string(),
                reason: other.to_string(),
            }
            .to_err(),
        }
    }
}

/// Whether `allow`'s second attempt (over TLS) follows a failed first one: the server
/// refused the plaintext login (e.g. `require_secure_transport`, or a user that `REQUIRE
/// SSL`), as libpq retries after a refused plaintext startup.
pub fn retries_with_tls(tls: Option<&UpstreamTls>, error: &LoginError) -> bool {
    tls.is_some_and(|tls| tls.mode() == SslMode::Allow) && matches!(error, LoginError::Server(_))
}

/// Logs in over `stream` (just connected, nothing sent): reads the greeting, upgrades to
/// TLS per `tls`'s sslmode (`retry`: `allow`'s second attempt, which asks for it; `host`:
/// the name verified and sent as SNI), answers the authentication exchange with
/// `options.credential`, and returns at the server's OK.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    tls: Option<&UpstreamTls>,
    host: &str,
    retry: bool,
    options: &LoginOptions,
) -> Result<ServerConnection<S>, LoginError> {
    let greeted = greet(stream, tls, host, retry, options.max_packet, |handshake| {
        let mut capabilities =
            options.capabilities & handshake.capabilities & !cap::SSL | cap::REQUIRED;
        if options.database.is_some() && handshake.capabilities & cap::CONNECT_WITH_DB != 0 {
            capabilities |= cap::CONNECT_WITH_DB;
        }
        if !options.attributes.is_empty() && handshake.capabilities & cap::CONNECT_ATTRS != 0 {
            capabilities |= cap::CONNECT_ATTRS;
        }
        ClientHead {
            capabilities,
            max_packet: u32::try_from(options.max_packet).unwrap_or(u32::MAX),
            charset: options.charset,
            mariadb_capabilities: 0,
        }
    })
    .await?;
    let Greeted {
        mut stream,
        mut reader,
        handshake,
        head,
        sequence,
    } = greeted;
    let capabilities = head.capabilities;
    let secure = matches!(stream, Either::Right(_));
    let mut plugin = first_plugin(&handshake.auth_plugin, &options.credential);
    let mut nonce = handshake.scramble.clone();
    let response = HandshakeResponse {
        head,
        user: options.user.clone(),
        auth_response: answer(plugin, &nonce, &options.credential, &options.user)?,
        database: options
            .database
            .clone()
            .filter(|_| capabilities & cap::CONNECT_WITH_DB != 0),
        auth_plugin: Some(plugin.name().to_string()),
        attributes: options.attributes.clone(),
    };
    write_packet(&mut stream, sequence, &response.encode()).await?;
    let mut switched = false;
    let mut awaiting_key = false;
    loop {
        let packet = reader.read(&mut stream).await?;
        let reply = match packet.header() {
            Some(OK) => {
                let ok = OkPacket::parse(&packet.payload, head.capabilities)?;
                return Ok(ServerConnection {
                    stream,
                    reader,
                    session: Session {
                        connection_id: handshake.connection_id,
                        server_version: handshake.server_version,
                        server_capabilities: handshake.capabilities,
                        mariadb_capabilities: handshake.mariadb_capabilities,
                        capabilities: head.capabilities,
                        status: ok.status,
                        tls: secure,
                        auth_plugin: plugin,
                    },
                });
            }
            Some(ERR) => return Err(LoginError::Server(ErrPacket::parse(&packet.payload)?)),
            Some(AUTH_SWITCH) if !switched => {
                switched = true;
                let switch = AuthSwitch::parse(&packet.payload)?;
                plugin = Plugin::from_name(&switch.plugin).ok_or_else(|| {
                    LoginError::Unsupported(format!(
                        "the server asks for authentication plugin {}, which switchyard does not support",
                        switch.plugin
                    ))
                })?;
                nonce = switch.data;
                answer(plugin, &nonce, &options.credential, &options.user)?
            }
            Some(AUTH_MORE_DATA) if plugin == Plugin::CachingSha2 => {
                let data = parse_more_data(&packet.payload)?;
                match data {
                    _ if awaiting_key => {
                        awaiting_key = false;
                        let password = full_auth_password(&options.credential, &options.user)?;
                        caching_sha2::encrypt_password(password, &nonce, data)
                            .map_err(LoginError::Unsupported)?
                    }
                    [caching_sha2::FAST_AUTH_SUCCESS] => continue,
                    [caching_sha2::PERFORM_FULL_AUTH] => {
                        let password = full_auth_password(&options.credential, &options.user)?;
                        if secure {
                            let mut sent = password.to_vec();
                            sent.push(0);
                            sent
                        } else {
                            awaiting_key = true;
                            vec![caching_sha2::REQUEST_PUBLIC_KEY]
                        }
                    }
                    _ => return Err(CodecError::Malformed("caching_sha2_password data").into()),
                }
            }
            _ => {
                return Err(
                    CodecError::Malformed("unexpected packet during authentication").into(),
                );
            }
        };
        write_packet(&mut stream, packet.next(), &reply).await?;
    }
}

/// A server connection after its greeting, at the point where the HandshakeResponse41
/// is due: over TLS when the sslmode asked for it.
#[derive(Debug)]
pub struct Greeted<S> {
    /// The stream, TLS or not.
    pub stream: MysqlStream<S>,
    /// What was read from the server and not yet taken.
    pub reader: PacketReader,
    /// The server's greeting.
    pub handshake: Handshake,
    /// The head the HandshakeResponse41 carries: what `head_for` chose, with `CLIENT_SSL`
    /// when the connection is TLS.
    pub head: ClientHead,
    /// The sequence id of the HandshakeResponse41.
    pub sequence: u8,
}

/// Reads the greeting on `stream` (just connected, nothing sent; an ERR there is the
/// server refusing before any handshake) and upgrades to TLS per `tls`'s sslmode (`retry`:
/// `allow`'s second attempt, which asks for it; `host`: the name verified and sent as SNI),
/// sending an SSLRequest with the head `head_for` makes from the greeting. Shared by
/// switchyard's own logins and the relayed logins of client sessions.
pub async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    tls: Option<&UpstreamTls>,
    host: &str,
    retry: bool,
    max_packet: usize,
    head_for: impl FnOnce(&Handshake) -> ClientHead,
) -> Result<Greeted<S>, LoginError> {
    let mut reader = PacketReader::new(max_packet);
    let mut plain = stream;
    let greeting = reader.read(&mut plain).await?;
    if greeting.header() == Some(ERR) {
        // Too many connections, host blocked...: refused before any handshake.
        return Err(LoginError::Server(ErrPacket::parse(&greeting.payload)?));
    }
    let handshake = Handshake::parse(&greeting.payload)?;
    if handshake.capabilities & cap::REQUIRED != cap::REQUIRED {
        return Err(LoginError::Unsupported(format!(
            "the server ({}) does not speak the 4.1 protocol",
            handshake.server_version
        )));
    }
    let mut head = head_for(&handshake);
    let mut sequence = greeting.next();
    let stream: MysqlStream<S> = match tls.filter(|tls| tls.mode().asks_for_tls(retry)) {
        Some(tls) if handshake.capabilities & cap::SSL != 0 => {
            sequence = write_packet(&mut plain, sequence, &head.ssl_request()).await?;
            if reader.has_partial() {
                // Bytes the server sent before TLS would be unauthenticated.
                return Err(CodecError::Malformed("server data before the TLS handshake").into());
            }
            head.capabilities |= cap::SSL;
            let secured = tls.handshake(plain, host).await;
            Either::Right(secured.map_err(|error| LoginError::Tls {
                mode: tls.mode().as_str(),
                error,
            })?)
        }
        Some(tls) if tls.mode() != SslMode::Prefer => {
            return Err(LoginError::TlsUnavailable(tls.mode().as_str()));
        }
        _ => Either::Left(plain),
    };
    Ok(Greeted {
        stream,
        reader,
        handshake,
        head,
        sequence,
    })
}

/// The plugin the HandshakeResponse41 answers with: the greeting's when the credential
/// can answer it, else the one the credential can (as clients answer with their default
/// plugin); the server switches if the user needs another.
fn first_plugin(offered: &str, credential: &Credential) -> Plugin {
    match credential {
        Credential::Password(_) => Plugin::from_name(offered).unwrap_or(Plugin::Native),
        Credential::NativeStage1(_) => Plugin::Native,
        Credential::Sha2Stage1(_) => Plugin::CachingSha2,
    }
}

/// The answer to `plugin`'s challenge `nonce` with `credential`.
fn answer(
    plugin: Plugin,
    nonce: &[u8],
    credential: &Credential,
    user: &str,
) -> Result<Vec<u8>, LoginError> {
    Ok(match (plugin, credential) {
        (Plugin::Native, Credential::Password(password)) => {
            native::answer(password.as_bytes(), nonce)
        }
        (Plugin::Native, Credential::NativeStage1(stage1)) => {
            native::scramble_with_stage1(stage1, native::nonce(nonce)).to_vec()
        }
        (Plugin::CachingSha2, Credential::Password(password)) => {
            caching_sha2::answer(password.as_bytes(), nonce)
        }
        (Plugin::CachingSha2, Credential::Sha2Stage1(stage1)) => {
            caching_sha2::scramble_with_stage1(stage1, nonce).to_vec()
        }
        (Plugin::Ed25519, Credential::Password(password)) => {
            ed25519::sign(password.as_bytes(), nonce).to_vec()
        }
        (plugin, _) => {
            return Err(LoginError::Unsupported(format!(
                "the server asks for {} authentication of user \"{user}\", and switchyard has no credential for it that fits",
                plugin.name()
            )));
        }
    })
}

/// The password itself, for caching_sha2_password's full authentication.
fn full_auth_password<'a>(credential: &'a Credential, user: &str) -> Result<&'a [u8], LoginError> {
    match credential {
        Credential::Password(password) => Ok(password.as_bytes()),
        _ => Err(LoginError::Unsupported(format!(
            "the server needs the password of user \"{user}\" (caching_sha2_password full authentication), and switchyard only has its hash"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use rsa::pkcs8::EncodePublicKey;
    use rsa::{Oaep, RsaPrivateKey};
    use tokio::io::{AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::protocol::mysql::auth_switch::more_data;
    use crate::protocol::mysql::handshake::UTF8MB4_GENERAL_CI;
    use crate::protocol::mysql::packet::packet;
    use crate::protocol::mysql::testdata::{
        CLI_ED25519_CLIENT, CLI_ED25519_SERVER, CLI_NATIVE_CLIENT, CLI_NATIVE_SERVER,
        CLI_WRONG_PASSWORD_SERVER, packets,
    };

    fn options(user: &str, credential: Credential) -> LoginOptions {
        LoginOptions {
            user: user.into(),
            credential,
            database: Some("mysql".into()),
            capabilities: cap::LOGIN,
            attributes: vec![("program_name".into(), "switchyard-test".into())],
            max_packet: 1 << 20,
            charset: UTF8MB4_GENERAL_CI,
        }
    }

    /// Logs in against a server that plays back `server` (captured bytes) regardless of
    /// what it is sent; returns the result and the client's packets.
    async fn replay(
        server: &[u8],
        options: &LoginOptions,
    ) -> (Result<Session, LoginError>, Vec<Vec<u8>>) {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        theirs.write_all(server).await.expect("write");
        drop(theirs.shutdown().await);
        let result = login(ours, None, "localhost", false, options)
            .await
            .map(|c| c.session);
        let mut sent = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut theirs, &mut sent).await;
        let sent = packets(&sent)
            .into_iter()
            .map(|p| p.payload.to_vec())
            .collect();
        (result, sent)
    }

    #[tokio::test]
    async fn native_login_against_captured_mariadb_answers_as_the_cli_did() {
        let cli = HandshakeResponse::parse(&packets(CLI_NATIVE_CLIENT)[0].payload).expect("cli");
        let (result, sent) = replay(
            CLI_NATIVE_SERVER,
            &options("native_user", Credential::Password("native-pw".into())),
        )
        .await;
        let session = result.expect("logged in");
        assert_eq!(session.connection_id, 6);
        assert!(session.server_version.contains("MariaDB"));
        assert_eq!(session.auth_plugin, Plugin::Native);
        assert!(!session.tls);
        let ours = HandshakeResponse::parse(&sent[0]).expect("our response");
        assert_eq!(
            ours.auth_response, cli.auth_response,
            "same scramble answer as the CLI"
        );
        assert_eq!(ours.database.as_deref(), Some("mysql"));
        assert_eq!(ours.attribute("program_name"), Some("switchyard-test"));
        let caps = ours.head.capabilities;
        assert_eq!(caps & (cap::SSL | cap::COMPRESS), 0);
        assert_ne!(caps & cap::DEPRECATE_EOF, 0);
        // The first hash recovered from a client answers just as well.
        let stage1 = Credential::NativeStage1(native::stage1(b"native-pw"));
        let (result, sent) = replay(CLI_NATIVE_SERVER, &options("native_user", stage1)).await;
        assert!(result.is_ok());
        assert_eq!(
            HandshakeResponse::parse(&sent[0])
                .expect("ours")
                .auth_response,
            cli.auth_response
        );
    }

    #[tokio::test]
    async fn ed25519_switch_is_answered_with_the_clis_signature() {
        let (result, sent) = replay(
            CLI_ED25519_SERVER,
            &options("ed_user", Credential::Password("ed-pw".into())),
        )
        .await;
        assert_eq!(result.expect("logged in").auth_plugin, Plugin::Ed25519);
        assert_eq!(sent[1], packets(CLI_ED25519_CLIENT)[1].payload.to_vec());
        let (result, _) = replay(
            CLI_ED25519_SERVER,
            &options("ed_user", Credential::NativeStage1([0; 20])),
        )
        .await;
        assert!(
            matches!(result, Err(LoginError::Unsupported(_))),
            "a hash cannot sign"
        );
    }

    #[tokio::test]
    async fn a_refusal_is_the_servers_err() {
        let (result, _) = replay(
            CLI_WRONG_PASSWORD_SERVER,
            &options("native_user", Credential::Password("wrong".into())),
        )
        .await;
        let Err(LoginError::Server(err)) = result else {
            panic!("refused: {result:?}");
        };
        assert_eq!((err.code, err.sqlstate.as_str()), (1045, "28000"));
        let library = ClientLibrary::Other;
        let to_client = LoginError::Server(err.clone()).to_client(library, "db");
        assert_eq!(to_client, err);
        let cut = LoginError::Io(std::io::ErrorKind::UnexpectedEof.into());
        let cut = cut.to_client(library, "db");
        assert_eq!((cut.code, cut.sqlstate.as_str()), (2003, "08S01"));
        assert!(
            cut.message
                .starts_with("Can't connect to MySQL server on 'db' (connection"),
            "{cut}"
        );
    }

    /// What the scripted caching_sha2_password server does after the fast-path answer.
    #[derive(Clone, Copy, PartialEq)]
    enum Sha2Server {
        FastAuth,
        FullAuthRsa,
    }

    /// A MySQL 8-style server holding `password`'s caching_sha2_password: checks the
    /// fast-path answer, then answers per `mode` (the full path with an RSA key).
    async fn sha2_server(mut stream: DuplexStream, password: &str, mode: Sha2Server) -> bool {
        let mut reader = PacketReader::new(1 << 20);
        let greeting = Handshake {
            server_version: "8.0.36".into(),
            connection_id: 42,
            scramble: b"abcdefghijklmnopqrst".to_vec(),
            capabilities: cap::PROXY,
            mariadb_capabilities: 0,
            charset: 255,
            status: 2,
            auth_plugin: caching_sha2::NAME.into(),
        };
        let _ = stream.write_all(&packet(0, &greeting.encode())).await;
        let Ok(login) = reader.read(&mut stream).await else {
            return false;
        };
        let Ok(response) = HandshakeResponse::parse(&login.payload) else {
            return false;
        };
        let stored = caching_sha2::stage2(&caching_sha2::stage1(password.as_bytes()));
        if caching_sha2::verify(&stored, &greeting.scramble, &response.auth_response).is_none() {
            let _ = stream
                .write_all(&packet(
                    2,
                    &ErrPacket {
                        code: 1045,
                        sqlstate: "28000".into(),
                        message: "denied".into(),
                    }
                    .encode(),
                ))
                .await;
            return false;
        }
        let ok = OkPacket {
            status: 2,
            ..OkPacket::default()
        }
        .encode(OK, response.head.capabilities);
        if mode == Sha2Server::FastAuth {
            let _ = stream
                .write_all(&[packet(2, &more_data(&[3])), packet(3, &ok)].concat())
                .await;
            return true;
        }
        let _ = stream.write_all(&packet(2, &more_data(&[4]))).await;
        let Ok(request) = reader.read(&mut stream).await else {
            return false;
        };
        assert_eq!(
            &request.payload[..],
            &[caching_sha2::REQUEST_PUBLIC_KEY],
            "plaintext asks for the key"
        );
        let key = RsaPrivateKey::new(&mut rand_core::OsRng, 1024).expect("key");
        let pem = key
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .expect("pem");
        let _ = stream
            .write_all(&packet(4, &more_data(pem.as_bytes())))
            .await;
        let Ok(sealed) = reader.read(&mut stream).await else {
            return false;
        };
        let opened = key
            .decrypt(Oaep::new::<sha1::Sha1>(), &sealed.payload)
            .expect("decrypt");
        let plain: Vec<u8> = opened
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ greeting.scramble[i % 20])
            .collect();
        assert_eq!(plain, [password.as_bytes(), b"\0"].concat());
        let _ = stream.write_all(&packet(6, &ok)).await;
        true
    }

    async fn sha2_login(credential: Credential, mode: Sha2Server) -> Result<Session, LoginError> {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(sha2_server(theirs, "s3cret", mode));
        let result = login(ours, None, "localhost", false, &options("app", credential)).await;
        let _ = server.await;
        result.map(|c| c.session)
    }

    #[tokio::test]
    async fn caching_sha2_fast_path_and_full_authentication_over_rsa() {
        for mode in [Sha2Server::FastAuth, Sha2Server::FullAuthRsa] {
            let session = sha2_login(Credential::Password("s3cret".into()), mode)
                .await
                .expect("logged in");
            assert_eq!(
                (session.connection_id, session.auth_plugin),
                (42, Plugin::CachingSha2)
            );
        }
        let stage1 = Credential::Sha2Stage1(caching_sha2::stage1(b"s3cret"));
        assert!(
            sha2_login(stage1.clone(), Sha2Server::FastAuth)
                .await
                .is_ok()
        );
        assert!(
            matches!(
                sha2_login(stage1, Sha2Server::FullAuthRsa).await,
                Err(LoginError::Unsupported(_))
            ),
            "full authentication needs the password"
        );
        assert!(matches!(
            sha2_login(Credential::Password("wrong".into()), Sha2Server::FastAuth).await,
            Err(LoginError::Server(_))
        ));
    }

    #[test]
    fn the_first_answer_uses_a_plugin_the_credential_can_answer() {
        let password = Credential::Password(String::new());
        assert_eq!(
            first_plugin("caching_sha2_password", &password),
            Plugin::CachingSha2
        );
        assert_eq!(
            first_plugin("auth_gssapi_client", &password),
            Plugin::Native
        );
        let native = Credential::NativeStage1([0; 20]);
        assert_eq!(
            first_plugin("caching_sha2_password", &native),
            Plugin::Native
        );
        let sha2 = Credential::Sha2Stage1([0; 32]);
        assert_eq!(
            first_plugin("mysql_native_password", &sha2),
            Plugin::CachingSha2
        );
    }

    #[test]
    fn which_modes_ask_for_tls() {
        for (mode, first, retry) in [
            (SslMode::Disable, false, false),
            (SslMode::Allow, false, true),
            (SslMode::Prefer, true, true),
            (SslMode::Require, true, true),
            (SslMode::VerifyCa, true, true),
            (SslMode::VerifyFull, true, true),
        ] {
            assert_eq!(mode.asks_for_tls(false), first, "{mode:?}");
            assert_eq!(mode.asks_for_tls(true), retry, "{mode:?}");
        }
    }

    /// The stable-run twin of the fuzz targets: mutated captured server traffic ends in a
    /// login or an error, never a panic or a hang.
    #[tokio::test]
    async fn mutated_server_traffic_fails_cleanly() {
        let mut mutator = crate::testing::Mutator::new();
        let seeds = [
            CLI_NATIVE_SERVER,
            CLI_ED25519_SERVER,
            CLI_WRONG_PASSWORD_SERVER,
        ];
        let options = options("native_user", Credential::Password("native-pw".into()));
        for round in 0..2_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            mutator.mutate(&mut input);
            let _ = replay(&input, &options).await;
        }
    }
}
