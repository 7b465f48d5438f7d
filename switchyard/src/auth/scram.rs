//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, both ways, without I/O.
//!
//! Switchyard is the server when a client authenticates to it, and the client when it
//! authenticates to a database server on the client's behalf. The secret can be PostgreSQL's
//! stored form (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, from
//! `pg_authid.rolpassword` or the config), which is enough to verify a client; verifying a
//! client also recovers its `ClientKey`, which together with `ServerKey` lets the proxy log in
//! to a server holding the same secret, without ever knowing the password (as PgBouncer does).
//!
//! Hand-written on top of the RustCrypto primitives because the proxy must see and rewrite the
//! messages (channel-binding flags, nonces) byte by byte; no maintained crate offers the server
//! side with stored secrets.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The mechanism name in AuthenticationSASL and SASLInitialResponse.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Iterations for secrets derived here, PostgreSQL's default.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Most iterations a server may ask of the client side: more would let a hostile server
/// stall a worker for seconds (PostgreSQL's default is 4096).
const MAX_ITERATIONS: u32 = 1_000_000;
/// Client and server nonce length in random bytes (PostgreSQL uses 18).
const NONCE_BYTES: usize = 18;

type Key = [u8; 32];

/// Why an exchange failed; the message is safe to log (it never contains secret material).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message did not follow RFC 5802's grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding, which this exchange does not offer.
    #[error("channel binding is not supported here")]
    ChannelBinding,
    /// The nonce in the final message is not the one agreed.
    #[error("SCRAM nonce mismatch")]
    Nonce,
    /// Wrong password.
    #[error("password authentication failed")]
    BadProof,
    /// The server's signature does not prove it knows the secret.
    #[error("the server's SCRAM signature is wrong")]
    BadServerSignature,
    /// The stored secret is not PostgreSQL's SCRAM-SHA-256 form.
    #[error("not a SCRAM-SHA-256 secret")]
    BadSecret,
    /// The operating system's random source failed.
    #[error("no randomness available")]
    Random,
}

/// A SCRAM-SHA-256 verifier: what a server stores for a user.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// Salt, raw bytes.
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: Key,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Key,
}

impl std::fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are as good as the password against this proxy: never print them.
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramSecret {
    /// Parses PostgreSQL's stored form.
    pub fn parse(text: &str) -> Result<Self, ScramError> {
        let rest = text
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::BadSecret)?;
        let (params, keys) = rest.split_once('$').ok_or(ScramError::BadSecret)?;
        let (iterations, salt) = params.split_once(':').ok_or(ScramError::BadSecret)?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::BadSecret)?;
        let iterations = iterations.parse().map_err(|_| ScramError::BadSecret)?;
        if iterations == 0 {
            return Err(ScramError::BadSecret);
        }
        Ok(Self {
            iterations,
            salt: BASE64.decode(salt).map_err(|_| ScramError::BadSecret)?,
            stored_key: decode_key(stored).ok_or(ScramError::BadSecret)?,
            server_key: decode_key(server).ok_or(ScramError::BadSecret)?,
        })
    }

    /// Derives a secret from a password with a fresh random salt.
    pub fn from_password(password: &str) -> Result<Self, ScramError> {
        let mut salt = vec![0u8; 16];
        getrandom::fill(&mut salt).map_err(|_| ScramError::Random)?;
        Ok(Keys::derive(password, &salt, DEFAULT_ITERATIONS).secret(salt, DEFAULT_ITERATIONS))
    }

    /// Whether `password` is the one this secret was made from (for cleartext logins
    /// checked against a stored secret).
    pub fn matches_password(&self, password: &str) -> bool {
        let keys = Keys::derive(password, &self.salt, self.iterations);
        let stored: Key = Sha256::digest(keys.client_key).into();
        constant_time_eq(&stored, &self.stored_key)
    }

    /// PostgreSQL's stored form of this secret.
    pub fn to_stored(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

/// The keys a client proves knowledge of; from a password, or recovered from a client's
/// proof by [`ServerExchange::verify`].
#[derive(Clone)]
pub struct Keys {
    client_key: Key,
    server_key: Key,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys { .. }")
    }
}

impl Keys {
    /// SaltedPassword = Hi(SASLprep(password), salt, i), then the client and server keys.
    /// Like PostgreSQL, a password SASLprep refuses is used as raw bytes.
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Self {
        let prepared = stringprep::saslprep(password)
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| password.to_string());
        let mut salted: Key = [0; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(prepared.as_bytes(), salt, iterations, &mut salted);
        Self {
            client_key: hmac(&salted, b"Client Key"),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    fn secret(&self, salt: Vec<u8>, iterations: u32) -> ScramSecret {
        ScramSecret {
            iterations,
            salt,
            stored_key: Sha256::digest(self.client_key).into(),
            server_key: self.server_key,
        }
    }
}

/// The server side of one exchange: `start` with the client's SASLInitialResponse data,
/// send `server_first`, then `verify` the client's final message and send the returned
/// server-final message.
#[derive(Debug)]
pub struct ServerExchange {
    secret: ScramSecret,
    nonce: String,
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
}

impl ServerExchange {
    /// Parses client-first-message. Channel binding (`p=`) is refused; `y` (the client could
    /// bind but thinks the server cannot) is accepted since this exchange offers no
    /// `-PLUS` mechanism.
    pub fn start(secret: &ScramSecret, client_first: &[u8]) -> Result<Self, ScramError> {
        let text = std::str::from_utf8(client_first)
            .map_err(|_| ScramError::Malformed("client-first is not UTF-8"))?;
        let (gs2_header, bare) = split_gs2_header(text)?;
        let client_nonce = attribute(bare, 'r').ok_or(ScramError::Malformed("no client nonce"))?;
        if client_nonce.is_empty() || !is_printable(client_nonce) {
            return Err(ScramError::Malformed("bad client nonce"));
        }
        let nonce = format!("{client_nonce}{}", random_nonce()?);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&secret.salt),
            secret.iterations
        );
        Ok(Self {
            secret: secret.clone(),
            nonce,
            client_first_bare: bare.to_string(),
            server_first,
            gs2_header: gs2_header.to_string(),
        })
    }

    /// server-first-message, for AuthenticationSASLContinue.
    pub fn server_first(&self) -> &str {
        &self.server_first
    }

    /// Checks client-final-message. On success returns the server-final-message (for
    /// AuthenticationSASLFinal) and the client's keys, usable to log in to servers that hold
    /// the same secret.
    pub fn verify(&self, client_final: &[u8]) -> Result<(String, Keys), ScramError> {
        let text = std::str::from_utf8(client_final)
            .map_err(|_| ScramError::Malformed("client-final is not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let binding = attribute(without_proof, 'c').ok_or(ScramError::Malformed("no binding"))?;
        if BASE64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::ChannelBinding);
        }
        if attribute(without_proof, 'r') != Some(self.nonce.as_str()) {
            return Err(ScramError::Nonce);
        }
        let proof = decode_key(proof).ok_or(ScramError::Malformed("bad proof"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let client_key: Key = std::array::from_fn(|i| proof[i] ^ signature[i]);
        let stored: Key = Sha256::digest(client_key).into();
        if !constant_time_eq(&stored, &self.secret.stored_key) {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok((
            format!("v={}", BASE64.encode(server_signature)),
            Keys {
                client_key,
                server_key: self.secret.server_key,
            },
        ))
    }
}

/// The client side of one exchange, for logging in to a database server.
#[derive(Debug)]
pub struct ClientExchange {
    credential: Credential,
    client_first_bare: String,
    expected_server_signature: Option<Key>,
}

/// What the client side proves knowledge of.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A password (salted with whatever the server says).
    Password(String),
    /// Keys recovered from a client; valid only against a server storing the same secret.
    Keys(Keys),
}

impl ClientExchange {
    /// Starts an exchange; returns it and the client-first-message for SASLInitialResponse.
    /// The user name is left empty, as libpq does: PostgreSQL takes it from the startup.
    pub fn start(credential: Credential) -> Result<(Self, String), ScramError> {
        let client_first_bare = format!("n=,r={}", random_nonce()?);
        let message = format!("n,,{client_first_bare}");
        Ok((
            Self {
                credential,
                client_first_bare,
                expected_server_signature: None,
            },
            message,
        ))
    }

    /// Answers server-first-message with client-final-message.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(server_first)
            .map_err(|_| ScramError::Malformed("server-first is not UTF-8"))?;
        let nonce = attribute(text, 'r').ok_or(ScramError::Malformed("no nonce"))?;
        let own = attribute(&self.client_first_bare, 'r').unwrap_or_default();
        if !nonce.starts_with(own) || nonce.len() == own.len() {
            return Err(ScramError::Nonce);
        }
        let salt = attribute(text, 's')
            .and_then(|s| BASE64.decode(s).ok())
            .ok_or(ScramError::Malformed("bad salt"))?;
        let iterations: u32 = attribute(text, 'i')
            .and_then(|i| i.parse().ok())
            .filter(|&i| (1..=MAX_ITERATIONS).contains(&i))
            .ok_or(ScramError::Malformed("bad iteration count"))?;
        let keys = match &self.credential {
            Credential::Password(password) => Keys::derive(password, &salt, iterations),
            Credential::Keys(keys) => keys.clone(),
        };
        let without_proof = format!("c={},r={nonce}", BASE64.encode("n,,"));
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let stored: Key = Sha256::digest(keys.client_key).into();
        let signature = hmac(&stored, auth_message.as_bytes());
        let proof: Key = std::array::from_fn(|i| keys.client_key[i] ^ signature[i]);
        self.expected_server_signature = Some(hmac(&keys.server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)))
    }

    /// Checks server-final-message: the server must prove it knows the secret too.
    pub fn finish(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let text = std::str::from_utf8(server_final)
            .map_err(|_| ScramError::Malformed("server-final is not UTF-8"))?;
        if attribute(text, 'e').is_some() {
            return Err(ScramError::BadProof);
        }
        let signature = attribute(text, 'v')
            .and_then(decode_key)
            .ok_or(ScramError::Malformed("no server signature"))?;
        match &self.expected_server_signature {
            Some(expected) if constant_time_eq(expected, &signature) => Ok(()),
            _ => Err(ScramError::BadServerSignature),
        }
    }
}

/// Splits `gs2-header` (`n,,` / `y,,` / with an authzid) from client-first-message-bare.
fn split_gs2_header(text: &str) -> Result<(&str, &str), ScramError> {
    let flag = text
        .chars()
        .next()
        .ok_or(ScramError::Malformed("empty message"))?;
    match flag {
        'n' | 'y' => {}
        'p' => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed("bad GS2 flag")),
    }
    let first = text
        .find(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    let second = text[first + 1..]
        .find(',')
        .map(|i| first + 1 + i)
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    let authzid = &text[first + 1..second];
    if !(authzid.is_empty() || authzid.starts_with("a=")) {
        return Err(ScramError::Malformed("bad GS2 header"));
    }
    Ok((&text[..=second], &text[second + 1..]))
}

/// The value of attribute `name` (`name=value`) in a comma-separated SCRAM message.
fn attribute(message: &str, name: char) -> Option<&str> {
    message.split(',').find_map(|part| {
        let mut chars = part.chars();
        (chars.next() == Some(name) && chars.next() == Some('=')).then(|| &part[2..])
    })
}

/// Printable ASCII except `,`, as RFC 5802 requires of nonces.
fn is_printable(text: &str) -> bool {
    text.bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn random_nonce() -> Result<String, ScramError> {
    let mut bytes = [0u8; NONCE_BYTES];
    getrandom::fill(&mut bytes).map_err(|_| ScramError::Random)?;
    Ok(BASE64.encode(bytes))
}

fn decode_key(text: &str) -> Option<Key> {
    BASE64.decode(text).ok()?.try_into().ok()
}

fn hmac(key: &[u8], message: &[u8]) -> Key {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Compares secrets in time independent of where they differ (only their lengths leak).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 §3: user "user", password "pencil".
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_secret() -> ScramSecret {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        Keys::derive("pencil", &salt, 4096).secret(salt, 4096)
    }

    #[test]
    fn server_verifies_the_rfc_7677_exchange() {
        let secret = rfc_secret();
        let mut exchange = ServerExchange::start(&secret, RFC_CLIENT_FIRST.as_bytes()).unwrap();
        // Replay the RFC's server nonce so the proof in the vector applies.
        exchange.nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into();
        exchange.server_first = RFC_SERVER_FIRST.into();
        let (server_final, _) = exchange.verify(RFC_CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(server_final, RFC_SERVER_FINAL);
        let wrong = RFC_CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
        assert!(exchange.verify(wrong.as_bytes()).is_err());
    }

    #[test]
    fn client_and_server_agree_with_a_password_and_with_recovered_keys() {
        let secret = ScramSecret::from_password("s3cret").unwrap();
        let run = |credential| -> Result<Keys, ScramError> {
            let (mut client, first) = ClientExchange::start(credential)?;
            let server = ServerExchange::start(&secret, first.as_bytes())?;
            let last = client.respond(server.server_first().as_bytes())?;
            let (server_final, keys) = server.verify(last.as_bytes())?;
            client.finish(server_final.as_bytes())?;
            Ok(keys)
        };
        let keys = run(Credential::Password("s3cret".into())).unwrap();
        run(Credential::Keys(keys)).unwrap();
        assert_eq!(
            run(Credential::Password("wrong".into())).unwrap_err(),
            ScramError::BadProof
        );
    }

    #[test]
    fn stored_secrets_round_trip_and_garbage_is_refused() {
        // Captured from PostgreSQL 15: `CREATE ROLE alice PASSWORD 'alice-pw'` then
        // `SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'`.
        let stored = "SCRAM-SHA-256$4096:ep5k32k8N92ZJHidQSWqNA==$S+8vZzKs/3kka8G8wxdbLpLnfjSjFEiQvfKOK1Ngt5M=:y/g+NgbCeAqOJy8BuOfDGSrV8yvWNy271TuKaGKTXMI=";
        let secret = ScramSecret::parse(stored).unwrap();
        assert_eq!(secret.to_stored(), stored);
        let salt = secret.salt.clone();
        assert_eq!(
            Keys::derive("alice-pw", &salt, 4096).secret(salt, 4096),
            secret
        );
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$x:AA==$AA==:AA==",
            "SCRAM-SHA-256$4096:AA==$AA==:AA==",
        ] {
            assert!(ScramSecret::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn channel_binding_and_malformed_messages_are_refused() {
        let secret = rfc_secret();
        for bad in [
            "",
            "p=tls-server-end-point,,n=,r=abc",
            "x,,n=,r=abc",
            "n,,n=,r=",
            "n,n=,r=abc",
        ] {
            assert!(
                ServerExchange::start(&secret, bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
        let exchange = ServerExchange::start(&secret, b"n,,n=,r=abc").unwrap();
        for bad in ["", "c=biws", "c=eSws,r=x,p=AA==", "c=biws,r=abc,p=AA=="] {
            assert!(exchange.verify(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
