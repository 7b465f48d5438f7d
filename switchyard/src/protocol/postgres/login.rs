//! Switchyard logging in to a PostgreSQL server itself, with no client on the other end:
//! for proxy-side authentication in session mode and for every server connection the
//! transaction pooler opens.
//!
//! The answer to each authentication request comes from a [`ServerCredential`] taken from
//! the configuration (a password, a stored md5 hash) or recovered from the client's SCRAM
//! proof. A client's own cleartext password is never an input here; a cleartext request is
//! answered only with a configured password, which is the server operator's choice to send.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

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
            server
                .write_all(&sent)
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
