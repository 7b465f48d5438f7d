//! Switchyard logging in to a PostgreSQL server itself, with no client on the other end:
//! for proxy-side authentication in session mode and for every server connection the
//! transaction pooler opens.
//!
//! The answer to each authentication request comes from a [`ServerCredential`] taken from
//! the configuration (a password, a stored md5 hash) or recovered from the client's SCRAM
//! proof. A client's own cleartext password is never an input here; a cleartext request is
//! answered only with a configured password, which is the server operator's choice to send.

use tokio::io::{AsyncRead, AsyncWrite};

use super::codec::{self, AuthRequest, CodecError, Message, Startup, read_message};
use super::errors::{error_field, sqlstate};
use crate::auth::md5;
use crate::auth::scram::{self, ClientExchange, Credential, Keys};
use crate::config::MessageLimits;

/// What switchyard proves to a server on a user's behalf.
#[derive(Clone)]
pub enum ServerCredential {
    /// A configured password: answers cleartext, md5 and SCRAM-SHA-256.
    Password(String),
    /// Keys recovered from the client's SCRAM proof: answer SCRAM-SHA-256 only, and only
    /// a server storing the same secret.
    ScramKeys(Keys),
    /// A stored `md5<hex>` hash: answers md5 only.
    Md5Hash(String),
    /// Nothing: only servers that trust the user (AuthenticationOk straight away).
    None,
}

impl std::fmt::Debug for ServerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Each variant is as good as the password against some server: never print it.
        f.write_str(match self {
            Self::Password(_) => "Password(..)",
            Self::ScramKeys(_) => "ScramKeys(..)",
            Self::Md5Hash(_) => "Md5Hash(..)",
            Self::None => "None",
        })
    }
}

/// A server connection ready for queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedIn {
    /// ParameterStatus values in the order the server sent them (`server_version`,
    /// `client_encoding`...), to replay to clients.
    pub parameters: Vec<(String, String)>,
    /// The backend's process id (BackendKeyData), for cancelling its queries.
    pub process_id: u32,
    /// The backend's cancel key (4 bytes, up to 256 in protocol 3.2).
    pub secret_key: Vec<u8>,
}

/// Why a login failed. `sqlstate` is the server's when it refused with an ErrorResponse
/// (so a client can be told exactly that); `None` when the connection or the exchange
/// failed on switchyard's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginError {
    /// The server's SQLSTATE, if the server sent an ErrorResponse.
    pub sqlstate: Option<String>,
    /// What happened, safe to log and to show a client (never secret material).
    pub message: String,
}

impl LoginError {
    fn local(message: impl Into<String>) -> Self {
        Self {
            sqlstate: None,
            message: message.into(),
        }
    }

    /// The FATAL ErrorResponse a client should get for this failure: the server's own
    /// SQLSTATE when it refused, else connection_failure (08006).
    pub fn to_client(&self) -> Vec<u8> {
        let code = self
            .sqlstate
            .as_deref()
            .unwrap_or(sqlstate::CONNECTION_FAILURE);
        super::errors::fatal(code, &self.message)
    }
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sqlstate {
            Some(code) => write!(f, "{} (SQLSTATE {code})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for LoginError {}

impl From<CodecError> for LoginError {
    fn from(error: CodecError) -> Self {
        Self::local(format!("server login failed: {error}"))
    }
}

/// One authentication request (`R` message) in the detail a login needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// AuthenticationOk.
    Ok,
    /// AuthenticationCleartextPassword.
    Cleartext,
    /// AuthenticationMD5Password with its salt.
    Md5([u8; 4]),
    /// AuthenticationSASL with the mechanisms offered.
    Sasl(Vec<String>),
    /// AuthenticationSASLContinue with the server-first-message.
    SaslContinue(Vec<u8>),
    /// AuthenticationSASLFinal with the server-final-message.
    SaslFinal(Vec<u8>),
    /// Kerberos, GSS, SSPI...: not something switchyard can answer.
    Unsupported(u32),
}

/// Parses an `R` message body.
pub fn parse_request(body: &[u8]) -> Result<Request, CodecError> {
    let (code, rest) = body
        .split_first_chunk::<4>()
        .ok_or(CodecError::Malformed("short authentication request"))?;
    Ok(match u32::from_be_bytes(*code) {
        0 | 3 if !rest.is_empty() => {
            return Err(CodecError::Malformed("authentication request with a body"));
        }
        0 => Request::Ok,
        3 => Request::Cleartext,
        5 => Request::Md5(
            rest.try_into()
                .map_err(|_| CodecError::Malformed("md5 salt length"))?,
        ),
        10 => match codec::parse_auth(body)? {
            AuthRequest::Sasl(mechanisms) => Request::Sasl(mechanisms),
            _ => return Err(CodecError::Malformed("SASL request")),
        },
        11 => Request::SaslContinue(rest.to_vec()),
        12 => Request::SaslFinal(rest.to_vec()),
        other => Request::Unsupported(other),
    })
}

/// Where a login's SCRAM exchange stands; the server must prove itself before
/// AuthenticationOk counts.
enum Scram {
    NotStarted,
    Started(ClientExchange),
    Verified,
}

/// Sends `startup`, answers AuthenticationOk / CleartextPassword / MD5Password / SASL
/// (SCRAM-SHA-256; never -PLUS, since switchyard does not bind to the server's TLS) with
/// `credential`, collects ParameterStatus and BackendKeyData, and returns at ReadyForQuery.
/// The stream may already be TLS (`tls::secure_server` does the SSLRequest part before).
/// An ErrorResponse from the server becomes a [`LoginError`] with its SQLSTATE.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    server: &mut S,
    startup: &Startup,
    credential: &ServerCredential,
    limits: &MessageLimits,
) -> Result<LoggedIn, LoginError> {
    let user = startup.param("user").unwrap_or_default();
    let mut sent = startup.encode();
    let mut scram = Scram::NotStarted;
    let mut authenticated = false;
    let mut parameters = Vec::new();
    let mut key = None;
    loop {
        if !sent.is_empty() {
            crate::net::send_all(server, &sent)
                .await
                .map_err(|e| LoginError::local(format!("server login failed: {e}")))?;
            sent.clear();
        }
        let message = read_message(server, limits.message).await?;
        match message.tag {
            b'R' if authenticated => return Err(unexpected(&message)),
            b'R' => match parse_request(&message.body)? {
                Request::Ok => {
                    if matches!(scram, Scram::Started(_)) {
                        return Err(LoginError::local(
                            "the server skipped the end of the SCRAM exchange",
                        ));
                    }
                    authenticated = true;
                }
                Request::Cleartext => sent = password(cleartext(credential, user)?),
                Request::Md5(salt) => sent = password(md5_answer(credential, user, salt)?),
                Request::Sasl(mechanisms) => {
                    if !mechanisms.iter().any(|m| m == scram::MECHANISM) {
                        return Err(LoginError::local(format!(
                            "the server offers no SASL mechanism switchyard supports ({})",
                            mechanisms.join(", ")
                        )));
                    }
                    let (exchange, first) = ClientExchange::start(scram_credential(credential)?)
                        .map_err(scram_failed)?;
                    scram = Scram::Started(exchange);
                    sent = sasl_initial_response(first.as_bytes());
                }
                Request::SaslContinue(data) => {
                    let Scram::Started(exchange) = &mut scram else {
                        return Err(unexpected(&message));
                    };
                    let reply = exchange.respond(&data).map_err(scram_failed)?;
                    sent = Message {
                        tag: b'p',
                        body: reply.into_bytes(),
                    }
                    .encode();
                }
                Request::SaslFinal(data) => {
                    let Scram::Started(exchange) = &scram else {
                        return Err(unexpected(&message));
                    };
                    exchange.finish(&data).map_err(scram_failed)?;
                    scram = Scram::Verified;
                }
                Request::Unsupported(code) => {
                    return Err(LoginError::local(format!(
                        "the server asks for authentication method {code}, which switchyard does not support"
                    )));
                }
            },
            b'S' if authenticated => {
                let (name, rest) = codec::cstring(&message.body)?;
                let (value, _) = codec::cstring(rest)?;
                parameters.push((name.to_string(), value.to_string()));
            }
            b'K' if authenticated && key.is_none() => {
                key = Some(codec::parse_backend_key(&message.body)?);
            }
            b'Z' if authenticated => {
                // A server that sends no BackendKeyData cannot be cancelled; PostgreSQL
                // always sends one, so a missing key is a protocol error here.
                let (process_id, secret_key) = key.ok_or_else(|| {
                    LoginError::local("the server sent no BackendKeyData before ReadyForQuery")
                })?;
                return Ok(LoggedIn {
                    parameters,
                    process_id,
                    secret_key,
                });
            }
            b'E' => {
                return Err(LoginError {
                    sqlstate: error_field(&message.body, b'C').map(str::to_string),
                    message: error_field(&message.body, b'M')
                        .unwrap_or("the server refused the login")
                        .to_string(),
                });
            }
            // NoticeResponse, and NegotiateProtocolVersion (the server speaks an older
            // minor version or ignores `_pq_` options): nothing to answer.
            b'N' | b'v' => {}
            _ => return Err(unexpected(&message)),
        }
    }
}

fn unexpected(message: &Message) -> LoginError {
    LoginError::local(format!(
        "server login failed: unexpected message '{}' during authentication",
        char::from(message.tag).escape_default()
    ))
}

fn scram_failed(error: scram::ScramError) -> LoginError {
    LoginError::local(format!(
        "SCRAM authentication with the server failed: {error}"
    ))
}

fn no_credential(method: &str, user: &str) -> LoginError {
    LoginError::local(format!(
        "the server asks for {method} authentication of user \"{user}\", and switchyard has no credential for it that fits"
    ))
}

fn cleartext<'a>(credential: &'a ServerCredential, user: &str) -> Result<&'a str, LoginError> {
    match credential {
        ServerCredential::Password(password) => Ok(password),
        _ => Err(no_credential("password", user)),
    }
}

fn md5_answer(
    credential: &ServerCredential,
    user: &str,
    salt: [u8; 4],
) -> Result<String, LoginError> {
    let stored = match credential {
        ServerCredential::Password(password) => md5::stored(user, password),
        ServerCredential::Md5Hash(hash) => hash.clone(),
        _ => return Err(no_credential("md5", user)),
    };
    md5::answer(&stored, salt).ok_or_else(|| no_credential("md5", user))
}

fn scram_credential(credential: &ServerCredential) -> Result<Credential, LoginError> {
    match credential {
        ServerCredential::Password(password) => Ok(Credential::Password(password.clone())),
        ServerCredential::ScramKeys(keys) => Ok(Credential::Keys(keys.clone())),
        _ => Err(LoginError::local(
            "the server asks for SCRAM-SHA-256 authentication, and switchyard has no password or SCRAM secret for the user",
        )),
    }
}

/// A PasswordMessage carrying a NUL-terminated string.
fn password(text: impl AsRef<str>) -> Vec<u8> {
    let mut body = text.as_ref().as_bytes().to_vec();
    body.push(0);
    codec::with_length(Some(b'p'), &body)
}

/// SASLInitialResponse: mechanism, then the client-first-message with its length.
fn sasl_initial_response(first: &[u8]) -> Vec<u8> {
    let mut body = scram::MECHANISM.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&(first.len() as u32).to_be_bytes());
    body.extend_from_slice(first);
    codec::with_length(Some(b'p'), &body)
}

#[cfg(test)]
pub(crate) mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::auth::scram::{ScramSecret, ServerExchange};
    use codec::{StartupPacket, parse_startup, read_startup};

    // psql 15 ↔ PostgreSQL 15.18 over TCP with sslmode=disable, captured with a recording
    // relay, up to the server's first ReadyForQuery.

    /// pg_hba `md5`, role `md5user` with password `secret` stored as md5.
    pub(crate) const MD5_SERVER: &[u8] = b"R\x00\x00\x00\x0c\x00\x00\x00\x05V\xdd\x82\xd8R\x00\x00\x00\x08\x00\x00\x00\x00S\x00\x00\x00\x1aapplication_name\x00psql\x00S\x00\x00\x00\x19client_encoding\x00UTF8\x00S\x00\x00\x00\x17DateStyle\x00ISO, MDY\x00S\x00\x00\x00&default_transaction_read_only\x00off\x00S\x00\x00\x00\x17in_hot_standby\x00off\x00S\x00\x00\x00\x19integer_datetimes\x00on\x00S\x00\x00\x00\x1bIntervalStyle\x00postgres\x00S\x00\x00\x00\x15is_superuser\x00off\x00S\x00\x00\x00\x19server_encoding\x00UTF8\x00S\x00\x00\x002server_version\x0015.18 (Debian 15.18-0+deb12u1)\x00S\x00\x00\x00\"session_authorization\x00md5user\x00S\x00\x00\x00#standard_conforming_strings\x00on\x00S\x00\x00\x00\x15TimeZone\x00Etc/UTC\x00K\x00\x00\x00\x0c\x00\x00\x09\x9bI\xd9f\x10Z\x00\x00\x00\x05I";
    pub(crate) const MD5_CLIENT: &[u8] = b"\x00\x00\x00>\x00\x03\x00\x00user\x00md5user\x00database\x00postgres\x00application_name\x00psql\x00\x00p\x00\x00\x00(md5a974cf536b58d9ea5d62b0168f656995\x00";
    /// `SELECT rolpassword FROM pg_authid WHERE rolname = 'md5user'` on that server.
    const MD5_STORED: &str = "md52aea419619857e8a27f0f7aa641db0c6";

    /// pg_hba `password`, role `clearuser` with password `secret`.
    const CLEARTEXT_SERVER: &[u8] = b"R\x00\x00\x00\x08\x00\x00\x00\x03R\x00\x00\x00\x08\x00\x00\x00\x00S\x00\x00\x00\x1aapplication_name\x00psql\x00S\x00\x00\x00\x19client_encoding\x00UTF8\x00S\x00\x00\x00\x17DateStyle\x00ISO, MDY\x00S\x00\x00\x00&default_transaction_read_only\x00off\x00S\x00\x00\x00\x17in_hot_standby\x00off\x00S\x00\x00\x00\x19integer_datetimes\x00on\x00S\x00\x00\x00\x1bIntervalStyle\x00postgres\x00S\x00\x00\x00\x15is_superuser\x00off\x00S\x00\x00\x00\x19server_encoding\x00UTF8\x00S\x00\x00\x002server_version\x0015.18 (Debian 15.18-0+deb12u1)\x00S\x00\x00\x00$session_authorization\x00clearuser\x00S\x00\x00\x00#standard_conforming_strings\x00on\x00S\x00\x00\x00\x15TimeZone\x00Etc/UTC\x00K\x00\x00\x00\x0c\x00\x00\x09\x9fQ\x99\xacjZ\x00\x00\x00\x05I";
    const CLEARTEXT_CLIENT: &[u8] = b"\x00\x00\x00@\x00\x03\x00\x00user\x00clearuser\x00database\x00postgres\x00application_name\x00psql\x00\x00p\x00\x00\x00\x0bsecret\x00";

    /// `md5user` asking for database `nosuchdb`: refused after authentication.
    const NO_DATABASE_SERVER: &[u8] = b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x99\xa2$\xabR\x00\x00\x00\x08\x00\x00\x00\x00E\x00\x00\x00]SFATAL\x00VFATAL\x00C3D000\x00Mdatabase \"nosuchdb\" does not exist\x00Fpostinit.c\x00L948\x00RInitPostgres\x00\x00";
    const NO_DATABASE_CLIENT: &[u8] = b"\x00\x00\x00>\x00\x03\x00\x00user\x00md5user\x00database\x00nosuchdb\x00application_name\x00psql\x00\x00p\x00\x00\x00(md53f391def07ebe7e1f2cde82047d7cafc\x00";

    pub(crate) fn startup_of(client_bytes: &[u8]) -> Startup {
        let length = u32::from_be_bytes([
            client_bytes[0],
            client_bytes[1],
            client_bytes[2],
            client_bytes[3],
        ]) as usize;
        match parse_startup(&client_bytes[4..length]) {
            Ok(StartupPacket::Startup(startup)) => startup,
            other => panic!("captured startup: {other:?}"),
        }
    }

    /// Replays `server_says` to `login` and returns its result and every byte it sent.
    pub(crate) async fn replay(
        server_says: &[u8],
        startup: &Startup,
        credential: ServerCredential,
    ) -> (Result<LoggedIn, LoginError>, Vec<u8>) {
        let (mut ours, mut fake) = tokio::io::duplex(8192);
        fake.write_all(server_says).await.expect("server bytes");
        let result = login(&mut ours, startup, &credential, &MessageLimits::default()).await;
        drop(ours);
        let mut sent = Vec::new();
        fake.read_to_end(&mut sent).await.expect("read");
        (result, sent)
    }

    #[tokio::test]
    async fn md5_from_a_password_or_the_stored_hash_sends_what_psql_sent() {
        let startup = startup_of(MD5_CLIENT);
        for credential in [
            ServerCredential::Password("secret".into()),
            ServerCredential::Md5Hash(MD5_STORED.into()),
        ] {
            let (result, sent) = replay(MD5_SERVER, &startup, credential).await;
            assert_eq!(sent, MD5_CLIENT);
            let logged_in = result.expect("logged in");
            assert_eq!(logged_in.process_id, 0x099b);
            assert_eq!(logged_in.secret_key, b"I\xd9f\x10");
            assert_eq!(logged_in.parameters.len(), 13);
            assert_eq!(
                logged_in.parameters[9],
                (
                    "server_version".to_string(),
                    "15.18 (Debian 15.18-0+deb12u1)".to_string()
                )
            );
        }
    }

    #[tokio::test]
    async fn cleartext_sends_the_configured_password() {
        let startup = startup_of(CLEARTEXT_CLIENT);
        let credential = ServerCredential::Password("secret".into());
        let (result, sent) = replay(CLEARTEXT_SERVER, &startup, credential).await;
        assert_eq!(sent, CLEARTEXT_CLIENT);
        assert_eq!(result.expect("logged in").process_id, 0x099f);
    }

    #[tokio::test]
    async fn a_credential_that_does_not_fit_sends_nothing() {
        let startup = startup_of(CLEARTEXT_CLIENT);
        for credential in [
            ServerCredential::Md5Hash(MD5_STORED.into()),
            ServerCredential::None,
        ] {
            let (result, sent) = replay(CLEARTEXT_SERVER, &startup, credential).await;
            let error = result.expect_err("no password to send");
            assert_eq!(error.sqlstate, None);
            assert!(error.message.contains("clearuser"), "{error}");
            assert_eq!(sent, CLEARTEXT_CLIENT[..0x40], "only the startup");
        }
        let keys = ServerCredential::ScramKeys(Keys::derive("secret", b"salt", 4096));
        let (result, _) = replay(MD5_SERVER, &startup_of(MD5_CLIENT), keys).await;
        assert!(result.is_err(), "SCRAM keys cannot answer md5");
    }

    #[tokio::test]
    async fn the_servers_error_keeps_its_sqlstate() {
        let startup = startup_of(NO_DATABASE_CLIENT);
        let credential = ServerCredential::Password("secret".into());
        let (result, sent) = replay(NO_DATABASE_SERVER, &startup, credential).await;
        assert_eq!(sent, NO_DATABASE_CLIENT);
        let error = result.expect_err("refused");
        assert_eq!(error.sqlstate.as_deref(), Some("3D000"));
        assert_eq!(error.message, "database \"nosuchdb\" does not exist");
        let to_client = error.to_client();
        assert!(String::from_utf8_lossy(&to_client).contains("C3D000\0"));
    }

    /// What the scripted SCRAM server should do wrong, if anything.
    #[derive(Clone, Copy, PartialEq)]
    enum Twist {
        None,
        SkipFinal,
        BadSignature,
    }

    /// A server holding `secret` that runs SCRAM-SHA-256 with switchyard's own server side
    /// (the nonces are random, so no capture can be replayed here; the integration tests log
    /// in to a real PostgreSQL).
    async fn scram_server(mut stream: DuplexStream, secret: ScramSecret, twist: Twist) -> bool {
        let limit = MessageLimits::default().message;
        let Ok(_startup) = read_startup(&mut stream, limit).await else {
            return false;
        };
        let offer = codec::sasl_request(
            [
                "SCRAM-SHA-256-PLUS".to_string(),
                scram::MECHANISM.to_string(),
            ]
            .iter(),
        );
        let _ = stream.write_all(&offer.encode()).await;
        let Ok(initial) = read_message(&mut stream, limit).await else {
            return false;
        };
        let Ok((mechanism, rest)) = codec::cstring(&initial.body) else {
            return false;
        };
        assert_eq!(mechanism, scram::MECHANISM, "never -PLUS");
        let exchange = ServerExchange::start(&secret, &rest[4..]).expect("client-first");
        let mut body = 11u32.to_be_bytes().to_vec();
        body.extend_from_slice(exchange.server_first().as_bytes());
        let _ = stream
            .write_all(&codec::with_length(Some(b'R'), &body))
            .await;
        let Ok(last) = read_message(&mut stream, limit).await else {
            return false;
        };
        let Ok((server_final, _)) = exchange.verify(&last.body) else {
            let error = super::super::errors::fatal("28P01", "password authentication failed");
            let _ = stream.write_all(&error).await;
            return false;
        };
        let mut reply = Vec::new();
        if twist != Twist::SkipFinal {
            let signature = match twist {
                Twist::BadSignature => format!("v={}", "A".repeat(43) + "="),
                _ => server_final,
            };
            let mut body = 12u32.to_be_bytes().to_vec();
            body.extend_from_slice(signature.as_bytes());
            reply.extend(codec::with_length(Some(b'R'), &body));
        }
        reply.extend(codec::with_length(Some(b'R'), &[0, 0, 0, 0]));
        reply.extend(codec::with_length(
            Some(b'S'),
            b"server_version\x0015.18\x00",
        ));
        reply.extend(codec::backend_key(77, &[1, 2, 3, 4]).encode());
        reply.extend(codec::with_length(Some(b'Z'), b"I"));
        let _ = stream.write_all(&reply).await;
        true
    }

    async fn scram_login(
        credential: ServerCredential,
        secret: &ScramSecret,
        twist: Twist,
    ) -> Result<LoggedIn, LoginError> {
        let (mut ours, theirs) = tokio::io::duplex(8192);
        let server = tokio::spawn(scram_server(theirs, secret.clone(), twist));
        let startup = startup_of(MD5_CLIENT);
        let result = login(&mut ours, &startup, &credential, &MessageLimits::default()).await;
        drop(ours);
        let _ = server.await;
        result
    }

    #[tokio::test]
    async fn scram_with_a_password_or_the_recovered_keys() {
        let secret = ScramSecret::from_password("secret").expect("secret");
        let keys = Keys::derive("secret", &secret.salt, secret.iterations);
        for credential in [
            ServerCredential::Password("secret".into()),
            ServerCredential::ScramKeys(keys),
        ] {
            let logged_in = scram_login(credential, &secret, Twist::None)
                .await
                .expect("logged in");
            assert_eq!(logged_in.process_id, 77);
            assert_eq!(logged_in.secret_key, [1, 2, 3, 4]);
            assert_eq!(
                logged_in.parameters,
                [("server_version".to_string(), "15.18".to_string())]
            );
        }
        let wrong = ServerCredential::Password("wrong".into());
        let error = scram_login(wrong, &secret, Twist::None)
            .await
            .expect_err("wrong password");
        assert_eq!(error.sqlstate.as_deref(), Some("28P01"));
    }

    #[tokio::test]
    async fn a_server_that_does_not_prove_its_secret_is_refused() {
        let secret = ScramSecret::from_password("secret").expect("secret");
        for twist in [Twist::SkipFinal, Twist::BadSignature] {
            let credential = ServerCredential::Password("secret".into());
            let error = scram_login(credential, &secret, twist)
                .await
                .expect_err("no server proof");
            assert_eq!(error.sqlstate, None);
        }
    }

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(
            parse_request(&MD5_SERVER[5..13]).ok(),
            Some(Request::Md5([0x56, 0xdd, 0x82, 0xd8]))
        );
        assert_eq!(parse_request(&[0, 0, 0, 3]).ok(), Some(Request::Cleartext));
        assert_eq!(
            parse_request(&[0, 0, 0, 7]).ok(),
            Some(Request::Unsupported(7))
        );
        assert_eq!(
            parse_request(b"\x00\x00\x00\x0cv=abc").ok(),
            Some(Request::SaslFinal(b"v=abc".to_vec()))
        );
        for bad in [
            &b""[..],
            &[0, 0, 0, 5, 1, 2, 3],
            &[0, 0, 0, 0, 1],
            &[0, 0, 0, 10, b'x'],
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
    }

    /// The stable-run twin of the fuzz target: mutated captured server replies end in a
    /// login or an error, never a panic or a hang.
    #[tokio::test]
    async fn mutated_server_replies_fail_cleanly() {
        let mut mutator = crate::testing::Mutator::new();
        let startup = startup_of(MD5_CLIENT);
        let seeds = [MD5_SERVER, CLEARTEXT_SERVER, NO_DATABASE_SERVER];
        for round in 0..3_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            mutator.mutate(&mut input);
            let _ = parse_request(&input[5.min(input.len())..]);
            let credential = ServerCredential::Password("secret".into());
            let (ours, mut fake) = tokio::io::duplex(16384);
            fake.write_all(&input).await.expect("write");
            drop(fake.shutdown().await);
            let mut ours = ours;
            let _ = login(&mut ours, &startup, &credential, &MessageLimits::default()).await;
        }
    }
}
