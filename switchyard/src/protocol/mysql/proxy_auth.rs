//! Proxy-side authentication: switchyard checks the client's password against `[[user]]`
//! itself, as a MySQL server would, then logs in to the server on the client's behalf
//! ([`super::login`]) with the user's `server_password` (or `password`).
//!
//! The client's first answer is bound to the proxy's own greeting scramble, so no switch
//! is needed when the client answered with the listener's plugin; otherwise it is sent an
//! AuthSwitchRequest to it. `mysql_native_password` checks the SHA-1 scramble.
//! `caching_sha2_password` checks the fast-path SHA-256 scramble (switchyard knows every
//! password, so its "cache" is always warm) and answers fast-auth success; when the fast
//! path fails it does what a MySQL server does for a user it has not cached: full
//! authentication, where the client sends the password itself — in clear over TLS, else
//! encrypted under switchyard's RSA public key ([`ServerRsaKey`]), which the client asks
//! for first. A client that will not ask for the key ends the exchange itself (MySQL's
//! client reports 2061 "Authentication requires secure connection").

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::auth::caching_sha2::{self, RsaKeyPair};
use super::auth::native;
use super::auth_switch::{AuthSwitch, more_data};
use super::errors::ProxyError;
use super::handshake::Handshake;
use super::packet::{CodecError, PacketReader, write_packet};
use super::response::HandshakeResponse;
use crate::config::{Config, MysqlAuth};

/// The users a mysql listener with proxy-side authentication accepts: name → (password
/// clients prove, password switchyard logs in to servers with).
#[derive(Debug, Default)]
pub struct MysqlUsers {
    users: HashMap<String, (String, String)>,
}

impl MysqlUsers {
    /// The `[[user]]` entries with a `password` (the stored-hash forms are PostgreSQL's),
    /// their secrets resolved.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let mut users = HashMap::new();
        for user in &config.users {
            let Some(password) = &user.password else {
                continue;
            };
            let password = crate::secret::resolve(password)
                .map_err(|e| format!("user `{}`: {e}", user.name))?;
            let server = match &user.server_password {
                Some(spec) => crate::secret::resolve(spec)
                    .map_err(|e| format!("user `{}`: {e}", user.name))?,
                None => password.clone(),
            };
            users.insert(user.name.clone(), (password, server));
        }
        Ok(Self { users })
    }
}

/// switchyard's RSA key pair for `caching_sha2_password` full authentication over
/// plaintext: made when a client first needs it (most never do: only a failed fast path
/// leads there), then kept for the process's life, across reloads.
#[derive(Debug, Default)]
pub struct ServerRsaKey {
    pair: tokio::sync::OnceCell<Arc<RsaKeyPair>>,
}

impl ServerRsaKey {
    /// A holder with `pair` in it already.
    pub fn with(pair: RsaKeyPair) -> Self {
        Self {
            pair: tokio::sync::OnceCell::new_with(Some(Arc::new(pair))),
        }
    }

    /// The key pair, generated off the async workers on first use.
    pub async fn get(&self) -> Result<Arc<RsaKeyPair>, String> {
        self.pair
            .get_or_try_init(|| async {
                tokio::task::spawn_blocking(RsaKeyPair::generate)
                    .await
                    .map_err(|e| format!("generating an RSA key: {e}"))?
                    .map(Arc::new)
            })
            .await
            .cloned()
    }
}

/// Why proxy-side authentication did not let the client in.
#[derive(Debug)]
pub enum Denied {
    /// The client closed or sent a malformed packet.
    Codec(CodecError),
    /// A wrong password or unknown user: the client gets `error` (ERR 1045); `why` is for
    /// the log.
    Refused {
        /// What the client is told.
        error: ProxyError,
        /// What was wrong.
        why: String,
    },
}

/// What a client's login is checked with.
#[derive(Debug)]
pub struct Verifier<'a> {
    /// The listener's method (its plugin).
    pub method: MysqlAuth,
    /// `[[user]]`.
    pub users: &'a MysqlUsers,
    /// The proxy's greeting, with the scramble the client's answers are bound to.
    pub greeting: &'a Handshake,
    /// The client's address as MySQL shows it in "Access denied for user …".
    pub host: &'a str,
    /// Whether the client connection is TLS (full authentication takes the password in
    /// clear then).
    pub secure: bool,
    /// The key full authentication over plaintext uses.
    pub rsa: &'a ServerRsaKey,
}

/// Checks the client's login (`response`, at sequence id `sequence`) with `verifier`.
/// Returns the password to log in to servers with and the sequence id of the proxy's
/// next packet to the client (its OK, once the server login is done). A refusal is
/// returned with its ERR packet's sequence id for the caller to send.
pub async fn authenticate<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    reader: &mut PacketReader,
    verifier: &Verifier<'_>,
    response: &HandshakeResponse,
    sequence: u8,
) -> Result<(String, u8), (Denied, u8)> {
    let mut exchange = Exchange {
        client,
        reader,
        next: sequence.wrapping_add(1),
    };
    let greeting = verifier.greeting;
    let plugin = match verifier.method {
        MysqlAuth::CachingSha2Password => caching_sha2::NAME,
        _ => native::NAME,
    };
    let answer = if response.auth_plugin.as_deref() == Some(plugin) {
        response.auth_response.clone()
    } else {
        let mut data = greeting.scramble.clone();
        data.push(0);
        let switch = AuthSwitch {
            plugin: plugin.to_string(),
            data,
        };
        exchange.send(&switch.encode()).await?;
        exchange.receive().await?
    };
    let user = verifier.users.users.get(&response.user);
    let password = user.map(|(password, _)| password.as_bytes());
    let verdict = match verifier.method {
        MysqlAuth::CachingSha2Password => {
            caching_sha2_verdict(&mut exchange, verifier, password, &answer).await?
        }
        _ => native_verdict(&greeting.scramble, password, &answer),
    };
    match (verdict, user) {
        (Ok(()), Some((_, server_password))) => Ok((server_password.clone(), exchange.next)),
        (verdict, _) => {
            let error = ProxyError::AccessDenied {
                user: response.user.clone(),
                host: verifier.host.to_string(),
                using_password: !answer.is_empty(),
            };
            let why = verdict.err().unwrap_or_default();
            Err((Denied::Refused { error, why }, exchange.next))
        }
    }
}

/// Whether the password is proven; if not, why (for the log).
type Verdict = Result<(), String>;

/// The verdict on a user not in `[[user]]`.
fn no_such_user() -> Verdict {
    Err("no such user in [[user]]".to_string())
}

/// The verdict when the user's password or the client's answer is empty (an empty answer
/// proves an empty password only); `None` when neither is.
fn when_empty(password: &[u8], answer: &[u8]) -> Option<Verdict> {
    match (password.is_empty(), answer.is_empty()) {
        (true, true) => Some(Ok(())),
        (false, true) => Some(Err("no password sent".to_string())),
        (true, false) => Some(Err("a password sent for a user without one".to_string())),
        (false, false) => None,
    }
}

/// `mysql_native_password`: the SHA-1 scramble.
fn native_verdict(scramble: &[u8], password: Option<&[u8]>, answer: &[u8]) -> Verdict {
    let Some(password) = password else {
        return no_such_user();
    };
    if let Some(verdict) = when_empty(password, answer) {
        return verdict;
    }
    let stored = native::stage2(&native::stage1(password));
    match native::verify(&stored, scramble, answer) {
        Some(_) => Ok(()),
        None => Err("wrong password".to_string()),
    }
}

/// `caching_sha2_password`: the fast path, else full authentication (for an unknown user
/// too, so that the exchange does not tell which users exist).
async fn caching_sha2_verdict<C: AsyncRead + AsyncWrite + Unpin>(
    exchange: &mut Exchange<'_, C>,
    verifier: &Verifier<'_>,
    password: Option<&[u8]>,
    answer: &[u8],
) -> Result<Verdict, (Denied, u8)> {
    let stored = password.map(|p| caching_sha2::stage2(&caching_sha2::stage1(p)));
    match password.zip(stored.as_ref()) {
        Some((password, stored)) => {
            if let Some(verdict) = when_empty(password, answer) {
                return Ok(verdict);
            }
            if caching_sha2::verify(stored, &verifier.greeting.scramble, answer).is_some() {
                exchange
                    .send(&more_data(&[caching_sha2::FAST_AUTH_SUCCESS]))
                    .await?;
                return Ok(Ok(()));
            }
        }
        None if answer.is_empty() => return Ok(no_such_user()),
        None => {}
    }
    exchange
        .send(&more_data(&[caching_sha2::PERFORM_FULL_AUTH]))
        .await?;
    let reply = exchange.receive().await?;
    let (sent, how) = if verifier.secure {
        (Ok(reply), "over TLS")
    } else {
        (
            plaintext_password(exchange, verifier, reply).await?,
            "with RSA",
        )
    };
    Ok(match (sent, &stored) {
        (Err(why), _) => Err(why),
        (Ok(_), None) => no_such_user(),
        (Ok(sent), Some(stored)) => match caching_sha2::verify_cleartext(stored, &sent) {
            Some(_) => Ok(()),
            None => Err(format!("wrong password in full authentication {how}")),
        },
    })
}

/// Full authentication over plaintext: the public key to a client that asks for it
/// (`reply` is [`caching_sha2::REQUEST_PUBLIC_KEY`]), then its password, decrypted. A
/// client that had the key already sends the password at once.
async fn plaintext_password<C: AsyncRead + AsyncWrite + Unpin>(
    exchange: &mut Exchange<'_, C>,
    verifier: &Verifier<'_>,
    reply: Vec<u8>,
) -> Result<Result<Vec<u8>, String>, (Denied, u8)> {
    let pair = match verifier.rsa.get().await {
        Ok(pair) => pair,
        Err(error) => return Ok(Err(error)),
    };
    let sealed = if reply == [caching_sha2::REQUEST_PUBLIC_KEY] {
        exchange
            .send(&more_data(pair.public_pem().as_bytes()))
            .await?;
        exchange.receive().await?
    } else {
        reply
    };
    let scramble = verifier.greeting.scramble.clone();
    let opened =
        tokio::task::spawn_blocking(move || pair.decrypt_password(&scramble, &sealed)).await;
    Ok(opened
        .ok()
        .flatten()
        .ok_or_else(|| "the RSA-encrypted password did not decrypt".to_string()))
}

/// The client side of the exchange, with the sequence id of the proxy's next packet.
struct Exchange<'a, C> {
    client: &'a mut C,
    reader: &'a mut PacketReader,
    next: u8,
}

impl<C: AsyncRead + AsyncWrite + Unpin> Exchange<'_, C> {
    async fn send(&mut self, payload: &[u8]) -> Result<(), (Denied, u8)> {
        self.next = write_packet(self.client, self.next, payload)
            .await
            .map_err(|e| (Denied::Codec(e.into()), self.next))?;
        Ok(())
    }

    async fn receive(&mut self) -> Result<Vec<u8>, (Denied, u8)> {
        let packet = self
            .reader
            .read(self.client)
            .await
            .map_err(|e| (Denied::Codec(e), self.next))?;
        self.next = packet.next();
        Ok(packet.payload.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::protocol::mysql::Packet;
    use crate::protocol::mysql::packet::packet;
    use crate::protocol::mysql::response::ClientHead;
    use crate::protocol::mysql::testdata::{
        CLI_SHA2_RSA_CLIENT, CLI_SHA2_RSA_SERVER, PYMYSQL_SHA2_RSA_CLIENT, SHA2_RSA_SCRAMBLE,
        SHA2_RSA_TEST_KEY, packets,
    };

    fn users() -> MysqlUsers {
        let mut users = MysqlUsers::default();
        for (name, password, server) in [("u", "pw", "server-pw"), ("sha2_user", "sha2-pw", "s")] {
            users
                .users
                .insert(name.into(), (password.into(), server.into()));
        }
        users
    }

    fn response(plugin: &str, answer: Vec<u8>) -> HandshakeResponse {
        HandshakeResponse {
            head: ClientHead {
                capabilities: crate::protocol::mysql::flags::capabilities::LOGIN,
                max_packet: 1 << 24,
                charset: 45,
                mariadb_capabilities: 0,
            },
            user: "u".into(),
            auth_response: answer,
            database: None,
            auth_plugin: Some(plugin.into()),
            attributes: Vec::new(),
        }
    }

    /// Checks `response` (sent with sequence id 1) with `verifier`, the client's later
    /// packets (`replies`, framed) already sent; returns the outcome and what the proxy
    /// sent the client.
    async fn run(
        verifier: &Verifier<'_>,
        response: &HandshakeResponse,
        replies: &[u8],
    ) -> (Result<(String, u8), (Denied, u8)>, Vec<Packet>) {
        let (mut peer, mut ours) = tokio::io::duplex(1 << 16);
        peer.write_all(replies).await.expect("write");
        let mut reader = PacketReader::new(1 << 16);
        let result = authenticate(&mut ours, &mut reader, verifier, response, 1).await;
        drop(ours);
        let mut sent = Vec::new();
        peer.read_to_end(&mut sent).await.expect("read");
        (result, packets(&sent))
    }

    fn refusal(result: Result<(String, u8), (Denied, u8)>) -> (u16, String, u8) {
        match result {
            Err((Denied::Refused { error, why }, next)) => (error.code(), why, next),
            Err((Denied::Codec(e), _)) => panic!("{e}"),
            Ok((password, _)) => panic!("let in, with {password}"),
        }
    }

    #[tokio::test]
    async fn native_and_the_fast_path_check_the_scramble() {
        let greeting = Handshake::for_proxy("8.0.36", 1, false, native::NAME).expect("random");
        let (users, rsa) = (users(), ServerRsaKey::default());
        let verifier = |method| Verifier {
            method,
            users: &users,
            greeting: &greeting,
            host: "127.0.0.1",
            secure: false,
            rsa: &rsa,
        };
        let native = verifier(MysqlAuth::MysqlNativePassword);
        let answer = |password: &str| native::answer(password.as_bytes(), &greeting.scramble);
        let (result, sent) = run(&native, &response(native::NAME, answer("pw")), &[]).await;
        assert_eq!(result.expect("let in"), ("server-pw".to_string(), 2));
        assert!(
            sent.is_empty(),
            "no switch, nothing sent yet (the OK follows the server's)"
        );
        let (result, _) = run(&native, &response(native::NAME, answer("wrong")), &[]).await;
        assert_eq!(refusal(result), (1045, "wrong password".into(), 2));
        let mut unknown = response(native::NAME, answer("pw"));
        unknown.user = "nobody".into();
        let (result, _) = run(&native, &unknown, &[]).await;
        assert_eq!(refusal(result).1, "no such user in [[user]]");
        let (result, _) = run(&native, &response(native::NAME, Vec::new()), &[]).await;
        assert_eq!(refusal(result).1, "no password sent");

        // The client answered native: caching_sha2_password switches it, then takes the
        // fast path and says so.
        let sha2 = verifier(MysqlAuth::CachingSha2Password);
        let again = caching_sha2::answer(b"pw", &greeting.scramble);
        let login = response(native::NAME, answer("pw"));
        let (result, sent) = run(&sha2, &login, &packet(3, &again)).await;
        assert_eq!(result.expect("let in"), ("server-pw".to_string(), 5));
        let switch = AuthSwitch::parse(&sent[0].payload).expect("switch");
        assert_eq!(switch.plugin, caching_sha2::NAME);
        assert_eq!(&switch.data[..20], &greeting.scramble[..]);
        assert_eq!(
            &sent[1].payload[..],
            more_data(&[caching_sha2::FAST_AUTH_SUCCESS])
        );
    }

    #[tokio::test]
    async fn full_authentication_over_tls_takes_the_password_in_clear() {
        let greeting = Handshake::for_proxy("8.0.36", 1, true, caching_sha2::NAME).expect("random");
        let (users, rsa) = (users(), ServerRsaKey::default());
        let verifier = Verifier {
            method: MysqlAuth::CachingSha2Password,
            users: &users,
            greeting: &greeting,
            host: "127.0.0.1",
            secure: true,
            rsa: &rsa,
        };
        // A fast-path answer that does not verify (as for a user a server has not cached),
        // then the password itself, NUL-terminated as clients send it over TLS.
        let stale = caching_sha2::answer(b"pw", b"another scramble....");
        let login = response(caching_sha2::NAME, stale.clone());
        let (result, sent) = run(&verifier, &login, &packet(3, b"pw\0")).await;
        assert_eq!(result.expect("let in"), ("server-pw".to_string(), 4));
        assert_eq!(sent.len(), 1);
        assert_eq!(
            &sent[0].payload[..],
            more_data(&[caching_sha2::PERFORM_FULL_AUTH])
        );
        assert_eq!(sent[0].sequence, 2);
        let (result, _) = run(&verifier, &login, &packet(3, b"wrong\0")).await;
        assert_eq!(
            refusal(result),
            (
                1045,
                "wrong password in full authentication over TLS".into(),
                4
            )
        );
        // An unknown user goes through full authentication too.
        let mut unknown = login.clone();
        unknown.user = "nobody".into();
        let (result, sent) = run(&verifier, &unknown, &packet(3, b"pw\0")).await;
        assert_eq!(refusal(result).1, "no such user in [[user]]");
        assert_eq!(sent.len(), 1, "asked for the password");
    }

    #[tokio::test]
    async fn full_authentication_over_plaintext_serves_the_rsa_key_to_the_cli_and_pymysql() {
        let mut greeting =
            Handshake::for_proxy("8.0.36", 1, false, caching_sha2::NAME).expect("random");
        greeting.scramble = SHA2_RSA_SCRAMBLE.to_vec();
        let users = users();
        let rsa = ServerRsaKey::with(RsaKeyPair::from_pkcs8_pem(SHA2_RSA_TEST_KEY).expect("key"));
        let verifier = Verifier {
            method: MysqlAuth::CachingSha2Password,
            users: &users,
            greeting: &greeting,
            host: "127.0.0.1",
            secure: false,
            rsa: &rsa,
        };
        // The public key as the scripted server sent it (`openssl rsa -pubout`).
        let captured_key = packets(CLI_SHA2_RSA_SERVER)[2].payload.to_vec();
        for capture in [CLI_SHA2_RSA_CLIENT, PYMYSQL_SHA2_RSA_CLIENT] {
            let sent = packets(capture);
            let mut login = HandshakeResponse::parse(&sent[0].payload).expect("login");
            assert_eq!(login.user, "sha2_user");
            // The captured fast-path answer is right; bent, it makes the proxy ask for the
            // password, as the scripted server did.
            login.auth_response[0] ^= 1;
            // The request for the key (sequence 3) and the encrypted password (5), as sent.
            let replies = sent[1..3]
                .iter()
                .flat_map(|p| packet(p.sequence, &p.payload))
                .collect::<Vec<u8>>();
            let (result, answered) = run(&verifier, &login, &replies).await;
            assert_eq!(result.expect("let in"), ("s".to_string(), 6));
            assert_eq!(
                &answered[0].payload[..],
                more_data(&[caching_sha2::PERFORM_FULL_AUTH])
            );
            assert_eq!(answered[1].sequence, 4);
            assert_eq!(
                answered[1].payload, captured_key,
                "the same PEM as OpenSSL's"
            );

            // A wrong password decrypts and is refused; bytes that do not decrypt too.
            let mut other = login.clone();
            other.user = "u".into();
            let (result, _) = run(&verifier, &other, &replies).await;
            assert_eq!(
                refusal(result),
                (
                    1045,
                    "wrong password in full authentication with RSA".into(),
                    6
                )
            );
            let mut bent = sent[2].payload.to_vec();
            bent[7] ^= 1;
            let replies = [packet(3, &sent[1].payload), packet(5, &bent)].concat();
            let (result, _) = run(&verifier, &login, &replies).await;
            assert_eq!(
                refusal(result).1,
                "the RSA-encrypted password did not decrypt"
            );
        }
        // A client that holds the key already sends the encrypted password at once.
        let pem = rsa.get().await.expect("key").public_pem().to_string();
        let sealed =
            caching_sha2::encrypt_password(b"pw", SHA2_RSA_SCRAMBLE, pem.as_bytes()).expect("rsa");
        let login = response(caching_sha2::NAME, vec![7; 32]);
        let (result, answered) = run(&verifier, &login, &packet(3, &sealed)).await;
        assert_eq!(result.expect("let in"), ("server-pw".to_string(), 4));
        assert_eq!(answered.len(), 1, "no key sent");
    }

    #[tokio::test]
    async fn a_key_is_generated_once_when_first_needed() {
        let rsa = ServerRsaKey::default();
        let first = rsa.get().await.expect("generated");
        let again = rsa.get().await.expect("kept");
        assert!(Arc::ptr_eq(&first, &again));
        assert!(first.public_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
    }
}
