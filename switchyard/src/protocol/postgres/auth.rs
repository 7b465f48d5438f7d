//! Clients authenticating to switchyard (listener `auth` other than `passthrough`):
//! SCRAM-SHA-256 (never -PLUS: the client's TLS ends here, so there is nothing to bind
//! to), md5, cleartext (TLS only) and trust, against `[[user]]` entries or users a pool's
//! `auth_query` fetches from a server. Success yields the credential switchyard then logs
//! in to servers with (login.rs).
//!
//! Like PostgreSQL, a wrong password and an unknown user get the same FATAL 28P01 after a
//! full exchange (a mock one for unknown users), so the answer does not reveal which user
//! names exist; the reason goes to the log line only, never a password or secret.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::auth_cache::AnswerCache;
use super::cancel::Registration;
use super::codec::{self, CodecError, Message, Startup, with_length};
use super::errors::{fatal, sqlstate};
use super::login::{ServerCredential, login};
use super::startup::{Refusal, ServerLink, StartupBytes};
use crate::auth::md5;
use crate::auth::scram::{self, ScramSecret, ServerExchange, constant_time_eq};
use crate::config::{AuthQueryConfig, Config, MessageLimits, PostgresAuth};
use crate::observe::Termination;
use crate::upstream::Pool;

/// SQLSTATE invalid_password, as PostgreSQL reports any failed password check.
const INVALID_PASSWORD: &str = "28P01";
/// How long a user an `auth_query` found is reused before asking a server again.
const AUTH_QUERY_TTL: Duration = Duration::from_secs(30);
/// How long an `auth_query`'s "no such user" is reused: short, so a user created on the
/// server can log in soon, long enough that a client trying names does not reach the
/// server for each try.
const AUTH_QUERY_NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Longest an `auth_query` (connect, login, query) may take.
const AUTH_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most cached `auth_query` answers per pool; the least recently used go first, so a
/// client trying endless user names cannot grow it without bound.
const AUTH_QUERY_CACHE: usize = 10_000;

/// What switchyard knows about one user's password.
#[derive(Debug, Clone, Default)]
struct UserSecret {
    password: Option<String>,
    scram: Option<ScramSecret>,
    md5: Option<String>,
    server_password: Option<String>,
}

impl UserSecret {
    /// From the stored value of PostgreSQL's `pg_shadow.passwd` (or an `auth_query`): a
    /// SCRAM secret, an md5 hash or (very old servers) the password itself.
    fn from_stored(stored: &str) -> Result<Self, String> {
        if stored.starts_with("SCRAM-SHA-256$") {
            let scram = ScramSecret::parse(stored).map_err(|e| e.to_string())?;
            Ok(Self {
                scram: Some(scram),
                ..Self::default()
            })
        } else if md5::is_stored(stored) {
            Ok(Self {
                md5: Some(stored.to_string()),
                ..Self::default()
            })
        } else {
            Self::from_password(stored.to_string())
        }
    }

    fn from_password(password: String) -> Result<Self, String> {
        let scram = ScramSecret::from_password(&password).map_err(|e| e.to_string())?;
        Ok(Self {
            password: Some(password),
            scram: Some(scram),
            ..Self::default()
        })
    }

    fn from_config(user: &crate::config::UserConfig) -> Result<Self, String> {
        let mut secret = match (&user.password, &user.scram_secret, &user.md5) {
            (Some(password), None, None) => Self::from_password(crate::secret::resolve(password)?)?,
            (None, Some(scram), None) => Self {
                scram: Some(ScramSecret::parse(scram).map_err(|e| e.to_string())?),
                ..Self::default()
            },
            (None, None, Some(hash)) if md5::is_stored(hash) => Self {
                md5: Some(hash.clone()),
                ..Self::default()
            },
            (None, None, Some(_)) => return Err("`md5` must be `md5` and 32 hex digits".into()),
            _ => return Err("needs exactly one of `password`, `scram_secret`, `md5`".into()),
        };
        secret.server_password = user
            .server_password
            .as_deref()
            .map(crate::secret::resolve)
            .transpose()?;
        Ok(secret)
    }

    /// The configured password for servers, if any: `server_password`, else `password`.
    fn configured_server_password(&self) -> Option<ServerCredential> {
        self.server_password
            .as_ref()
            .or(self.password.as_ref())
            .map(|p| ServerCredential::Password(p.clone()))
    }

    /// The md5 stored form, from the hash or the password.
    fn md5_stored(&self, user: &str) -> Option<String> {
        self.md5
            .clone()
            .or_else(|| self.password.as_ref().map(|p| md5::stored(user, p)))
    }
}

/// An `auth_query` and where its answers are cached.
#[derive(Debug)]
struct AuthQuery {
    config: AuthQueryConfig,
    password: Option<String>,
    cache: AnswerCache<UserSecret>,
}

/// The users clients may authenticate as: the `[[user]]` table, then each pool's
/// `auth_query`. Built (secrets resolved) when the config is loaded or reloaded.
#[derive(Debug, Default)]
pub struct Users {
    table: HashMap<String, Arc<UserSecret>>,
    queries: HashMap<String, AuthQuery>,
}

impl Users {
    /// Resolves every user's secrets and each pool's `auth_query` password.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let mut table = HashMap::new();
        for user in &config.users {
            let secret =
                UserSecret::from_config(user).map_err(|e| format!("user `{}`: {e}", user.name))?;
            table.insert(user.name.clone(), Arc::new(secret));
        }
        let mut queries = HashMap::new();
        for pool in &config.pools {
            if let Some(query) = &pool.database.auth_query {
                let password = query
                    .password
                    .as_deref()
                    .map(crate::secret::resolve)
                    .transpose()
                    .map_err(|e| format!("pool `{}` auth_query: {e}", pool.name))?;
                queries.insert(
                    pool.name.clone(),
                    AuthQuery {
                        config: query.clone(),
                        password,
                        cache: AnswerCache::new(
                            AUTH_QUERY_CACHE,
                            AUTH_QUERY_TTL,
                            AUTH_QUERY_NEGATIVE_TTL,
                        ),
                    },
                );
            }
        }
        Ok(Self { table, queries })
    }

    /// Whether the config has `[[user]]` entries (listeners then authenticate clients by
    /// default).
    pub fn has_users(&self) -> bool {
        !self.table.is_empty()
    }

    /// The user's secret: from the table, else from `pool`'s `auth_query` (cached; one
    /// query at a time per user). `Err` when the query could not be run.
    async fn lookup(&self, user: &str, pool: &Pool) -> Result<Option<Arc<UserSecret>>, String> {
        if let Some(secret) = self.table.get(user) {
            return Ok(Some(secret.clone()));
        }
        let Some(query) = self.queries.get(&pool.name) else {
            return Ok(None);
        };
        let fetch = || async {
            tokio::time::timeout(AUTH_QUERY_TIMEOUT, run_auth_query(pool, query, user))
                .await
                .map_err(|_| format!("no answer within {AUTH_QUERY_TIMEOUT:?}"))?
        };
        query.cache.get_or_fetch(user, fetch).await
    }
}

/// Runs `query` on the first server of `pool` that answers.
async fn run_auth_query(
    pool: &Pool,
    query: &AuthQuery,
    user: &str,
) -> Result<Option<UserSecret>, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .user(&query.config.user)
        .dbname(&query.config.database)
        .application_name("switchyard-auth-query")
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    if let Some(password) = &query.password {
        config.password(password);
    }
    let mut failure = "the pool has no server available".to_string();
    for server in pool.servers.iter().filter(|s| s.is_available()) {
        let (client, connection) = match super::check::connect(pool, server, &config).await {
            Ok(connected) => connected,
            Err(error) => {
                failure = format!("server {}: {error}", server.name);
                continue;
            }
        };
        let row = client.query_opt(&query.config.query, &[&user]).await;
        drop(client);
        let _ = connection.await;
        let stored = row
            .map_err(|e| format!("auth_query on server {}: {e}", server.name))?
            .map(|row| row.try_get::<_, Option<String>>(1))
            .transpose()
            .map_err(|e| format!("auth_query's second column: {e}"))?
            .flatten();
        return stored.as_deref().map(UserSecret::from_stored).transpose();
    }
    Err(failure)
}

/// A client that proved who it is.
#[derive(Debug)]
pub struct Authenticated {
    /// The user name it authenticated as.
    pub user: String,
    /// What to log in to servers with on its behalf.
    pub credential: ServerCredential,
}

/// Authenticates the client with `method` against `users` (and `pool`'s `auth_query`).
/// Success sends nothing yet: AuthenticationOk opens the [`welcome`], so that the client
/// gets its whole login answer in one write (one segment, one wake-up). `encrypted`: the
/// client connection is TLS (required for cleartext). Failures get FATAL 28P01 (the same
/// for a wrong password and an unknown user) and a [`Refusal`] `auth_failed` whose detail
/// says why. `Passthrough` is refused (FATAL 28000): a relaying caller does not call this.
pub async fn authenticate_client<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    startup: &Startup,
    method: PostgresAuth,
    users: &Users,
    pool: &Pool,
    encrypted: bool,
    limits: &MessageLimits,
) -> Result<Authenticated, Refusal> {
    let Some(user) = startup.param("user").map(str::to_string) else {
        let message = "no PostgreSQL user name specified in startup packet";
        return Err(refuse(
            client,
            sqlstate::INVALID_AUTHORIZATION,
            Termination::BadStartup,
            message,
        )
        .await);
    };
    let secret = match method {
        // Relaying is the caller's job; here it must not pass for trust.
        PostgresAuth::Passthrough => {
            let message = "authentication is relayed to the server on this listener";
            let code = sqlstate::INVALID_AUTHORIZATION;
            return Err(refuse(client, code, Termination::AuthFailed, message).await);
        }
        PostgresAuth::Trust => users.table.get(&user).cloned(),
        _ => match users.lookup(&user, pool).await {
            Ok(secret) => secret,
            Err(error) => {
                let message = format!("could not look up user \"{user}\": {error}");
                let code = sqlstate::CONNECTION_FAILURE;
                return Err(refuse(client, code, Termination::AuthQueryFailed, &message).await);
            }
        },
    };
    let mut exchange = Exchange {
        client,
        limit: limits.startup_message,
        user: &user,
    };
    let verified = match method {
        PostgresAuth::Trust | PostgresAuth::Passthrough => Ok(secret
            .as_deref()
            .and_then(UserSecret::configured_server_password)),
        PostgresAuth::Cleartext => exchange.cleartext(secret.as_deref(), encrypted).await?,
        PostgresAuth::Md5 => exchange.md5(secret.as_deref()).await?,
        PostgresAuth::ScramSha256 => exchange.scram(secret.as_deref()).await?,
    };
    match verified {
        Ok(credential) => Ok(Authenticated {
            credential: credential.unwrap_or(ServerCredential::None),
            user,
        }),
        Err(reason) => {
            let message = format!("password authentication failed for user \"{user}\"");
            let _ = crate::net::send_all(&mut exchange.client, &fatal(INVALID_PASSWORD, &message))
                .await;
            Err(Refusal::new(
                Termination::AuthFailed,
                format!("user \"{user}\", {}: {reason}", method.as_str()),
            ))
        }
    }
}

/// The outcome of a completed exchange: the server credential (when the exchange yields
/// one), or why the client failed.
type Verified = Result<Option<ServerCredential>, &'static str>;

struct Exchange<'a, S> {
    client: &'a mut S,
    limit: usize,
    user: &'a str,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Exchange<'_, S> {
    async fn cleartext(
        &mut self,
        secret: Option<&UserSecret>,
        encrypted: bool,
    ) -> Result<Verified, Refusal> {
        if !encrypted {
            let message = "cleartext password authentication requires SSL";
            return Err(refuse(
                self.client,
                sqlstate::INVALID_AUTHORIZATION,
                Termination::TlsRequired,
                message,
            )
            .await);
        }
        send(self.client, &with_length(Some(b'R'), &3u32.to_be_bytes())).await?;
        let reply = self.read().await?;
        let password = match parse_password(&reply.body) {
            Ok(password) => password,
            Err(error) => return Err(self.malformed(error).await),
        };
        let Some(secret) = secret else {
            return Ok(Err("unknown user"));
        };
        let matches = match (&secret.password, &secret.scram, &secret.md5) {
            (Some(expected), _, _) => constant_time_eq(expected.as_bytes(), password.as_bytes()),
            (None, Some(scram), _) => scram.matches_password(password),
            (None, None, Some(hash)) => {
                constant_time_eq(md5::stored(self.user, password).as_bytes(), hash.as_bytes())
            }
            (None, None, None) => false,
        };
        if !matches {
            return Ok(Err("wrong password"));
        }
        // The client's password, now verified, may go to the server (and nowhere else).
        Ok(Ok(Some(
            secret
                .configured_server_password()
                .unwrap_or_else(|| ServerCredential::Password(password.to_string())),
        )))
    }

    async fn md5(&mut self, secret: Option<&UserSecret>) -> Result<Verified, Refusal> {
        let mut salt = [0u8; 4];
        salt.fill_with(|| fastrand::u8(..));
        let mut request = 5u32.to_be_bytes().to_vec();
        request.extend_from_slice(&salt);
        send(self.client, &with_length(Some(b'R'), &request)).await?;
        let reply = self.read().await?;
        let answer = match parse_password(&reply.body) {
            Ok(answer) => answer.to_string(),
            Err(error) => return Err(self.malformed(error).await),
        };
        let Some(secret) = secret else {
            return Ok(Err("unknown user"));
        };
        let Some(stored) = secret.md5_stored(self.user) else {
            return Ok(Err(
                "the user has only a SCRAM secret, which md5 cannot check",
            ));
        };
        let expected = md5::answer(&stored, salt).unwrap_or_default();
        if !constant_time_eq(expected.as_bytes(), answer.as_bytes()) {
            return Ok(Err("wrong password"));
        }
        Ok(Ok(Some(
            secret
                .configured_server_password()
                .unwrap_or(ServerCredential::Md5Hash(stored)),
        )))
    }

    async fn scram(&mut self, secret: Option<&UserSecret>) -> Result<Verified, Refusal> {
        let known = secret.and_then(|s| s.scram.as_ref());
        // Unknown users (and users with only an md5 hash) get a mock exchange that fails at
        // the proof, as PostgreSQL does.
        let mock;
        let scram_secret = match known {
            Some(known) => known,
            None => {
                mock = mock_secret();
                &mock
            }
        };
        let offer = codec::sasl_request([scram::MECHANISM.to_string()].iter());
        send(self.client, &offer.encode()).await?;
        let initial = self.read().await?;
        let first = match parse_sasl_initial(&initial.body) {
            Ok((mechanism, first)) if mechanism == scram::MECHANISM => first,
            Ok(_) => {
                return Err(self
                    .malformed(CodecError::Malformed("unknown SASL mechanism"))
                    .await);
            }
            Err(error) => return Err(self.malformed(error).await),
        };
        let exchange = match ServerExchange::start(scram_secret, first) {
            Ok(exchange) => exchange,
            Err(error) => return Err(self.scram_error(&error).await),
        };
        let mut body = 11u32.to_be_bytes().to_vec();
        body.extend_from_slice(exchange.server_first().as_bytes());
        send(self.client, &with_length(Some(b'R'), &body)).await?;
        let last = self.read().await?;
        let (server_final, keys) = match exchange.verify(&last.body) {
            Ok(verified) => verified,
            Err(scram::ScramError::BadProof) => {
                return Ok(Err(match (secret, known) {
                    (None, _) => "unknown user",
                    (Some(_), None) => "the user has only an md5 hash, which SCRAM cannot check",
                    _ => "wrong password",
                }));
            }
            Err(error) => return Err(self.scram_error(&error).await),
        };
        let mut body = 12u32.to_be_bytes().to_vec();
        body.extend_from_slice(server_final.as_bytes());
        send(self.client, &with_length(Some(b'R'), &body)).await?;
        let configured = secret.and_then(UserSecret::configured_server_password);
        Ok(Ok(Some(
            configured.unwrap_or(ServerCredential::ScramKeys(keys)),
        )))
    }

    /// The client's next message, which must be a `p` (password/SASL) message.
    async fn read(&mut self) -> Result<Message, Refusal> {
        match codec::read_message(self.client, self.limit).await {
            Ok(message) if message.tag == b'p' => Ok(message),
            Ok(_) => Err(self
                .malformed(CodecError::Malformed("expected a password message"))
                .await),
            Err(CodecError::Io(error)) => Err(Refusal::new(Termination::ClientClosed, error)),
            Err(error) => Err(self.malformed(error).await),
        }
    }

    async fn malformed(&mut self, error: CodecError) -> Refusal {
        self.violation("invalid authentication message", error)
            .await
    }

    async fn scram_error(&mut self, error: &scram::ScramError) -> Refusal {
        self.violation("SCRAM authentication failed", error).await
    }

    /// FATAL 08P01 for a client that broke the exchange.
    async fn violation(&mut self, what: &str, error: impl std::fmt::Display) -> Refusal {
        let message = format!("{what}: {error}");
        let code = sqlstate::PROTOCOL_VIOLATION;
        refuse(self.client, code, Termination::BadMessage, &message).await
    }
}

/// A secret no password matches, for mock exchanges.
fn mock_secret() -> ScramSecret {
    let random = || std::array::from_fn(|_| fastrand::u8(..));
    ScramSecret {
        iterations: scram::DEFAULT_ITERATIONS,
        salt: random().to_vec(),
        stored_key: random(),
        server_key: random(),
    }
}

async fn send<S: AsyncWrite + Unpin>(client: &mut S, bytes: &[u8]) -> Result<(), Refusal> {
    crate::net::send_all(client, bytes)
        .await
        .map_err(|e| Refusal::new(Termination::ClientError, e))
}

async fn refuse<S: AsyncWrite + Unpin>(
    client: &mut S,
    code: &str,
    reason: Termination,
    message: &str,
) -> Refusal {
    let _ = crate::net::send_all(client, &fatal(code, message)).await;
    Refusal::new(reason, message)
}

/// A PasswordMessage body: one NUL-terminated string (a password or an md5 answer).
pub fn parse_password(body: &[u8]) -> Result<&str, CodecError> {
    match codec::cstring(body)? {
        (text, []) => Ok(text),
        _ => Err(CodecError::Malformed("bytes after the password")),
    }
}

/// A SASLInitialResponse body: the mechanism and the client-first-message.
pub fn parse_sasl_initial(body: &[u8]) -> Result<(&str, &[u8]), CodecError> {
    let (mechanism, rest) = codec::cstring(body)?;
    let (length, data) = rest
        .split_first_chunk::<4>()
        .ok_or(CodecError::Malformed("short SASLInitialResponse"))?;
    if i32::from_be_bytes(*length) < 0 {
        return Err(CodecError::Malformed("SASLInitialResponse without data"));
    }
    if u32::from_be_bytes(*length) as usize != data.len() {
        return Err(CodecError::Malformed("SASLInitialResponse data length"));
    }
    Ok((mechanism, data))
}

/// Logs in to the server for an authenticated client (`login`), registers a cancel key
/// for the server's backend and sends the client the `welcome`. A server's refusal reaches
/// the client as that FATAL error, with the server's SQLSTATE; on `sslmode=allow`'s
/// plaintext attempt it is returned as `retry_tls` instead, as the relayed startup does.
pub async fn log_in_for<C, S>(
    client: &mut C,
    server: &mut S,
    startup: &Startup,
    credential: &ServerCredential,
    limits: &MessageLimits,
    link: ServerLink<'_>,
) -> Result<(Option<Registration>, StartupBytes), Refusal>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    match login(server, startup, credential, limits).await {
        Ok(logged_in) => {
            let issued =
                link.table
                    .register(link.cancel, logged_in.process_id, &logged_in.secret_key);
            let greeting = welcome(
                |out| put_parameter_statuses(out, &logged_in.parameters),
                issued.pid,
                &issued.key,
            );
            send(client, &greeting).await?;
            let bytes = StartupBytes {
                to_server: 0,
                to_client: greeting.len() as u64,
            };
            Ok((Some(issued), bytes))
        }
        Err(error) if link.may_retry && error.sqlstate.is_some() => {
            Err(Refusal::new(Termination::PlaintextRefused, error.message))
        }
        Err(error) => {
            let _ = crate::net::send_all(client, &error.to_client()).await;
            Err(Refusal::new(Termination::ServerRefused, error))
        }
    }
}

/// The answer to a login switchyard authenticated: AuthenticationOk, the ParameterStatus
/// messages `statuses` writes, BackendKeyData (the key switchyard gives the client), then
/// ReadyForQuery idle — what the client would have seen from the server.
/// Written in place, in one buffer, sent in one write: a pooled login sends it every time.
pub fn welcome(statuses: impl FnOnce(&mut Vec<u8>), pid: u32, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(WELCOME_BYTES);
    codec::put_message(&mut out, Some(b'R'), &[&0u32.to_be_bytes()]);
    statuses(&mut out);
    codec::put_message(&mut out, Some(b'K'), &[&pid.to_be_bytes(), key]);
    codec::put_message(&mut out, Some(b'Z'), &[b"I"]);
    out
}

/// Appends a ParameterStatus message: the parameter `name` is `value`.
pub fn put_parameter_status(out: &mut Vec<u8>, name: &str, value: &str) {
    codec::put_message(
        out,
        Some(b'S'),
        &[name.as_bytes(), b"\0", value.as_bytes(), b"\0"],
    );
}

/// The ParameterStatus messages of `parameters`, for [`welcome`].
pub fn put_parameter_statuses(out: &mut Vec<u8>, parameters: &[(String, String)]) {
    for (name, value) in parameters {
        put_parameter_status(out, name, value);
    }
}

/// Room for the usual [`welcome`]: PostgreSQL 15 reports 14 parameters in about 330 bytes.
const WELCOME_BYTES: usize = 512;

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::protocol::postgres::login::tests::{MD5_CLIENT, MD5_SERVER, replay, startup_of};
    use crate::protocol::postgres::startup::tests::CLIENT_SAYS;

    /// The SASLInitialResponse psql 15 sent (captured, in startup.rs's SCRAM login).
    fn psql_sasl_initial() -> &'static [u8] {
        &CLIENT_SAYS[5..5 + 0x36 - 4]
    }

    /// The PasswordMessage psql 15 sent for md5 (captured, in login.rs).
    fn psql_md5_password() -> &'static [u8] {
        let password = &MD5_CLIENT[0x3e..];
        &password[5..]
    }

    #[test]
    fn captured_client_messages_parse() {
        let (mechanism, first) = parse_sasl_initial(psql_sasl_initial()).expect("SASL");
        assert_eq!(mechanism, "SCRAM-SHA-256");
        assert_eq!(first, b"n,,n=,r=jWERqqq/4QxxkIurfS8RkPkv");
        assert_eq!(
            parse_password(psql_md5_password()).ok(),
            Some("md5a974cf536b58d9ea5d62b0168f656995")
        );
        for bad in [
            &b"SCRAM-SHA-256\0\xff\xff\xff\xff"[..],
            b"SCRAM-SHA-256\0\0\0\0\x09n,,",
            b"x",
        ] {
            assert!(parse_sasl_initial(bad).is_err(), "{bad:?}");
        }
        assert!(parse_password(b"pw\0extra").is_err());
        assert!(parse_password(b"pw").is_err());
    }

    /// The stable-run twin of the fuzz target over the client's authentication messages.
    #[test]
    fn mutated_client_messages_parse_or_fail_cleanly() {
        let mut mutator = crate::testing::Mutator::new();
        let seeds = [psql_sasl_initial(), psql_md5_password()];
        for round in 0..20_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            mutator.mutate(&mut input);
            if let Ok((_, data)) = parse_sasl_initial(&input) {
                assert!(data.len() < input.len());
            }
            if let Ok(text) = parse_password(&input) {
                assert_eq!(text.len() + 1, input.len());
            }
        }
    }

    #[tokio::test]
    async fn welcome_is_what_the_server_said_from_authentication_ok_on() {
        let startup = startup_of(MD5_CLIENT);
        let credential = ServerCredential::Password("secret".into());
        let (logged_in, _) = replay(MD5_SERVER, &startup, credential).await;
        let logged_in = logged_in.expect("captured login");
        // What follows the MD5 request (13 bytes).
        let from_ok = &MD5_SERVER[13..];
        assert_eq!(
            welcome(
                |out| put_parameter_statuses(out, &logged_in.parameters),
                logged_in.process_id,
                &logged_in.secret_key
            ),
            from_ok
        );
    }

    /// The one server of the tests' pools (never connected to).
    const TEST_SERVERS: &str = "servers = [{ address = \"127.0.0.1:1\" }]";

    fn users(toml: &str) -> Users {
        let text = crate::testing::postgres_config("", TEST_SERVERS, toml);
        let config = crate::testing::load_config(&text).expect("valid");
        Users::from_config(&config).expect("users")
    }

    /// A config of one pool and nothing else.
    fn pool_only() -> String {
        format!("[[pool]]\nname = \"p\"\n{TEST_SERVERS}\n")
    }

    fn test_pool() -> Pool {
        let config = crate::testing::load_config(&pool_only()).expect("pool");
        Pool::new(&config.pools[0]).expect("pool")
    }

    /// Starts `authenticate_client` for `user` and returns the authentication request code
    /// it sends first.
    async fn first_request(method: PostgresAuth, encrypted: bool) -> u32 {
        let users = users("[[user]]\nname = \"u\"\npassword = \"pw\"\n");
        let pool = test_pool();
        let startup = startup_of(MD5_CLIENT);
        let (mut ours, mut client) = tokio::io::duplex(4096);
        let limits = MessageLimits::default();
        let proxy = authenticate_client(
            &mut ours, &startup, method, &users, &pool, encrypted, &limits,
        );
        let read = async {
            let tag = client.read_u8().await.expect("tag");
            let _length = client.read_u32().await.expect("length");
            let code = client.read_u32().await.expect("code");
            drop(client);
            (tag, code)
        };
        let (_, (tag, code)) = tokio::join!(proxy, read);
        assert_eq!(tag, b'R');
        code
    }

    #[tokio::test]
    async fn each_method_sends_its_own_request() {
        assert_eq!(first_request(PostgresAuth::ScramSha256, false).await, 10);
        assert_eq!(first_request(PostgresAuth::Md5, false).await, 5);
        assert_eq!(first_request(PostgresAuth::Cleartext, true).await, 3);
    }

    /// Runs `authenticate_client` over plaintext for a client that answers nothing: its
    /// outcome and everything it sent.
    async fn unanswered(method: PostgresAuth) -> (Result<Authenticated, Refusal>, Vec<u8>) {
        let users = users("");
        let pool = test_pool();
        let startup = startup_of(MD5_CLIENT);
        let (mut ours, mut client) = tokio::io::duplex(4096);
        let limits = MessageLimits::default();
        let outcome =
            authenticate_client(&mut ours, &startup, method, &users, &pool, false, &limits).await;
        drop(ours);
        let mut said = Vec::new();
        client.read_to_end(&mut said).await.expect("read");
        (outcome, said)
    }

    /// Trust asks nothing, and its AuthenticationOk waits for the welcome.
    #[tokio::test]
    async fn trust_sends_nothing_before_the_welcome() {
        let (trusted, said) = unanswered(PostgresAuth::Trust).await;
        assert_eq!(trusted.expect("trusted").user, "md5user");
        assert_eq!(said, b"");
    }

    #[tokio::test]
    async fn cleartext_is_refused_over_plaintext_before_any_password() {
        let (refused, said) = unanswered(PostgresAuth::Cleartext).await;
        assert_eq!(
            refused.expect_err("plaintext").reason,
            Termination::TlsRequired
        );
        assert!(String::from_utf8_lossy(&said).contains("C28000\0"));
    }

    fn config_errors(toml: &str) -> String {
        match crate::testing::load_config(toml) {
            Ok(_) => String::new(),
            Err(errors) => errors.to_string(),
        }
    }

    #[test]
    fn validation_names_the_key() {
        let listener = |keys: &str| crate::testing::postgres_config(keys, TEST_SERVERS, "");
        let base = pool_only();
        let errors = config_errors(&listener("auth = \"cleartext\""));
        assert!(
            errors.contains("t.toml:6: listener[0].auth: `cleartext`"),
            "{errors}"
        );
        let errors = config_errors(&listener("auth = \"md5\""));
        assert!(errors.contains("needs `[[user]]` entries"), "{errors}");
        assert_eq!(config_errors(&listener("auth = \"trust\"")), "");
        let tcp = listener("auth = \"trust\"").replace("\"postgres\"", "\"tcp\"");
        let errors = config_errors(&tcp);
        assert!(
            errors.contains(
                "listener[0].auth: not a key of tcp listeners; it belongs to postgres listeners"
            ),
            "{errors}"
        );
        let errors = config_errors(&format!(
            "{base}[[user]]\nname = \"u\"\npassword = \"a\"\nmd5 = \"md5x\"\n\
             [[user]]\nname = \"v\"\nscram_secret = \"SCRAM-SHA-256$x\"\n\
             [[user]]\nname = \"v\"\npassword = \"env:SWITCHYARD_TEST_UNSET_VAR\"\n"
        ));
        for expected in [
            "user[0]: needs exactly one of",
            "user[0].md5: must be `md5`",
            "user[1].scram_secret: not a SCRAM-SHA-256 secret",
            "user[2].name: user `v` is defined twice",
            "user[2].password: environment variable SWITCHYARD_TEST_UNSET_VAR is not set",
        ] {
            assert!(errors.contains(expected), "{expected} in {errors}");
        }
        let errors = config_errors(&format!(
            "{base}auth_query = {{ user = \"\", query = \"SELECT 1\" }}\n"
        ));
        assert!(
            errors.contains("pool[0].auth_query.user: must not be empty"),
            "{errors}"
        );
        assert!(
            errors.contains("pool[0].auth_query.query: must take"),
            "{errors}"
        );
    }
}
