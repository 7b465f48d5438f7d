//! `caching_sha2_password` (MySQL 8's default): the fast path answers the 20-byte
//! scramble with `SHA256(password) XOR SHA256(SHA256(SHA256(password)) || scramble)`; a
//! server that has the user in its cache answers AuthMoreData [`FAST_AUTH_SUCCESS`],
//! else [`PERFORM_FULL_AUTH`]: then the client sends the password itself, in clear over
//! TLS, or over plaintext XORed with the scramble and encrypted with the server's RSA
//! public key (RSA-OAEP with SHA-1, as MySQL's client does), which the client asks for
//! with [`REQUEST_PUBLIC_KEY`].
//!
//! As a server (proxy-side authentication), switchyard holds an RSA key pair of its own
//! ([`RsaKeyPair`]) for the clients that send their password over plaintext.
//!
//! RSA comes from the `rsa` crate (pure Rust, RustCrypto): ring, already in the tree
//! for TLS, can verify RSA signatures but neither encrypt nor decrypt, and aws-lc-rs
//! would add a C build. The crate's known timing weakness (RUSTSEC-2023-0071, Marvin, no
//! fixed release yet) concerns operations with the private key: switchyard decrypts
//! blinded, with a key made per process, and only a client whose fast-path answer was
//! wrong ever gets that far (see `proxy_auth`).

use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};

use super::xor;
use crate::auth::scram::constant_time_eq;

/// The plugin's protocol name.
pub const NAME: &str = "caching_sha2_password";
/// The client asks for the server's RSA public key.
pub const REQUEST_PUBLIC_KEY: u8 = 2;
/// AuthMoreData: the fast path succeeded, an OK follows.
pub const FAST_AUTH_SUCCESS: u8 = 3;
/// AuthMoreData: the server needs the password itself.
pub const PERFORM_FULL_AUTH: u8 = 4;

/// `SHA256(password)`: what the answer is made from (and what a verified answer gives
/// back).
pub fn stage1(password: &[u8]) -> [u8; 32] {
    Sha256::digest(password).into()
}

/// `SHA256(SHA256(password))`: what a server caches, and switchyard stores to check
/// clients.
pub fn stage2(stage1: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(stage1).into()
}

/// The fast-path answer to `scramble` made from `SHA256(password)`.
pub fn scramble_with_stage1(stage1: &[u8; 32], scramble: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(stage2(stage1));
    hasher.update(super::native::nonce(scramble));
    xor(stage1, &hasher.finalize().into())
}

/// The fast-path answer for `password`: empty for an empty password.
pub fn answer(password: &[u8], scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    scramble_with_stage1(&stage1(password), scramble).to_vec()
}

/// Checks a client's fast-path `answer` against `SHA256(SHA256(password))`; on success
/// returns `SHA256(password)`.
pub fn verify(stage2_stored: &[u8; 32], scramble: &[u8], answer: &[u8]) -> Option<[u8; 32]> {
    let answer: &[u8; 32] = answer.try_into().ok()?;
    let mut hasher = Sha256::new();
    hasher.update(stage2_stored);
    hasher.update(super::native::nonce(scramble));
    let candidate = xor(answer, &hasher.finalize().into());
    constant_time_eq(&stage2(&candidate), stage2_stored).then_some(candidate)
}

/// Checks a password a client sent in full authentication (over TLS, NUL-terminated)
/// against `SHA256(SHA256(password))`; on success returns `SHA256(password)`.
pub fn verify_cleartext(stage2_stored: &[u8; 32], sent: &[u8]) -> Option<[u8; 32]> {
    let password = sent.strip_suffix(b"\0").unwrap_or(sent);
    let candidate = stage1(password);
    constant_time_eq(&stage2(&candidate), stage2_stored).then_some(candidate)
}

/// `message` XORed with the scramble's 20 bytes repeated: how the password is mixed
/// before RSA encryption (and unmixed after decryption).
fn mix_with_scramble(message: &mut [u8], scramble: &[u8]) -> Result<(), String> {
    let nonce = super::native::nonce(scramble);
    if nonce.is_empty() {
        return Err("no scramble to mix the password with".into());
    }
    for (i, byte) in message.iter_mut().enumerate() {
        *byte ^= nonce[i % nonce.len()];
    }
    Ok(())
}

/// The full-authentication answer over plaintext: `password || NUL`, XORed with the
/// scramble repeated, encrypted with RSA-OAEP (SHA-1) under the server's public key
/// (`pem`, a PEM `PUBLIC KEY` as the server sends it in AuthMoreData).
pub fn encrypt_password(password: &[u8], scramble: &[u8], pem: &[u8]) -> Result<Vec<u8>, String> {
    let pem = std::str::from_utf8(pem).map_err(|_| "the server's public key is not PEM text")?;
    let key = RsaPublicKey::from_public_key_pem(pem.trim_end_matches('\0'))
        .map_err(|e| format!("the server's public key: {e}"))?;
    let mut message = password.to_vec();
    message.push(0);
    mix_with_scramble(&mut message, scramble)?;
    key.encrypt(&mut rand_core::OsRng, Oaep::new::<sha1::Sha1>(), &message)
        .map_err(|e| format!("RSA encryption of the password: {e}"))
}

/// The RSA key pair switchyard serves full authentication over plaintext with: the
/// client asks for the public key (AuthMoreData [`REQUEST_PUBLIC_KEY`]), gets it as PEM,
/// and sends its password encrypted under it.
#[derive(Debug)]
pub struct RsaKeyPair {
    private: RsaPrivateKey,
    public_pem: String,
}

impl RsaKeyPair {
    /// Size of a generated key, as MySQL's own (`caching_sha2_password_auto_generate_rsa_keys`).
    pub const BITS: usize = 2048;

    /// A new key pair (about a second of CPU: run it off the async workers).
    pub fn generate() -> Result<Self, String> {
        let private = RsaPrivateKey::new(&mut rand_core::OsRng, Self::BITS)
            .map_err(|e| format!("generating an RSA key: {e}"))?;
        Self::from_private(private)
    }

    /// The key pair of a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, String> {
        let private =
            RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| format!("the RSA private key: {e}"))?;
        Self::from_private(private)
    }

    fn from_private(private: RsaPrivateKey) -> Result<Self, String> {
        let public_pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| format!("the RSA public key as PEM: {e}"))?;
        Ok(Self {
            private,
            public_pem,
        })
    }

    /// The public key as clients get it (`-----BEGIN PUBLIC KEY-----`, SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// The password a client sent encrypted ([`encrypt_password`]'s format) under this key
    /// with `scramble`, without its NUL; `None` when `sealed` does not decrypt or is not
    /// NUL-terminated.
    pub fn decrypt_password(&self, scramble: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let mut opened = self
            .private
            .decrypt_blinded(&mut rand_core::OsRng, Oaep::new::<sha1::Sha1>(), sealed)
            .ok()?;
        mix_with_scramble(&mut opened, scramble).ok()?;
        match opened.pop() {
            Some(0) => Some(opened),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mysql::testdata::{
        CLI_SHA2_RSA_CLIENT, PYMYSQL_SHA2_RSA_CLIENT, SHA2_RSA_SCRAMBLE, SHA2_RSA_TEST_KEY, packets,
    };

    // No caching_sha2_password server is at hand (MariaDB has none), so the answers are
    // checked against an independent computation of MySQL's formula and against the
    // verifier; the login tests run the whole exchange against a scripted server.
    #[test]
    fn fast_path_answers_verify_and_give_back_the_first_hash() {
        let scramble = b"0123456789abcdefghij\0";
        let response = answer(b"secret", scramble);
        let s1 = Sha256::digest(b"secret");
        let s2 = Sha256::digest(s1);
        let mix = Sha256::digest([&s2[..], b"0123456789abcdefghij"].concat());
        let expected: Vec<u8> = s1.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect();
        assert_eq!(response, expected);
        let stored = stage2(&stage1(b"secret"));
        assert_eq!(
            verify(&stored, scramble, &response),
            Some(stage1(b"secret"))
        );
        assert_eq!(verify(&stored, scramble, &answer(b"other", scramble)), None);
        assert_eq!(verify(&stored, scramble, &response[..31]), None);
        assert_eq!(
            verify_cleartext(&stored, b"secret\0"),
            Some(stage1(b"secret"))
        );
        assert_eq!(verify_cleartext(&stored, b"secreT\0"), None);
        assert!(answer(b"", scramble).is_empty());
    }

    #[test]
    fn rsa_encrypted_password_decrypts_as_mysql_expects() {
        // A small key keeps the test fast; servers use 2048 bits.
        let private = RsaPrivateKey::new(&mut rand_core::OsRng, 1024).expect("key");
        let pem = private
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .expect("pem");
        let scramble = b"abcdefghijklmnopqrst\0";
        let sealed = encrypt_password(b"a password longer than 20 bytes", scramble, pem.as_bytes())
            .expect("encrypted");
        let opened = private
            .decrypt(Oaep::new::<sha1::Sha1>(), &sealed)
            .expect("decrypts");
        let plain: Vec<u8> = opened
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ scramble[i % 20])
            .collect();
        assert_eq!(plain, b"a password longer than 20 bytes\0");
        assert!(encrypt_password(b"pw", scramble, b"not a key").is_err());
        assert!(encrypt_password(b"pw", b"", pem.as_bytes()).is_err());
    }

    #[test]
    fn passwords_sent_by_the_cli_and_pymysql_decrypt() {
        let pair = RsaKeyPair::from_pkcs8_pem(SHA2_RSA_TEST_KEY).expect("test key");
        assert!(
            pair.public_pem()
                .starts_with("-----BEGIN PUBLIC KEY-----\n")
        );
        for capture in [CLI_SHA2_RSA_CLIENT, PYMYSQL_SHA2_RSA_CLIENT] {
            // The login, the request for the key, the encrypted password.
            let sent = packets(capture);
            assert_eq!(&sent[1].payload[..], [REQUEST_PUBLIC_KEY]);
            let sealed = &sent[2].payload;
            assert_eq!(sealed.len(), 256, "one 2048-bit RSA block");
            assert_eq!(
                pair.decrypt_password(SHA2_RSA_SCRAMBLE, sealed).as_deref(),
                Some(&b"sha2-pw"[..])
            );
            assert_eq!(pair.decrypt_password(b"another scramble!!!!", sealed), None);
            let mut bent = sealed.to_vec();
            bent[100] ^= 1;
            assert_eq!(pair.decrypt_password(SHA2_RSA_SCRAMBLE, &bent), None);
            assert_eq!(
                pair.decrypt_password(SHA2_RSA_SCRAMBLE, &sealed[..255]),
                None
            );
        }
        // What this crate's client side sends, too.
        let sealed = encrypt_password(b"pw", SHA2_RSA_SCRAMBLE, pair.public_pem().as_bytes())
            .expect("encrypted");
        assert_eq!(
            pair.decrypt_password(SHA2_RSA_SCRAMBLE, &sealed).as_deref(),
            Some(&b"pw"[..])
        );
        assert!(RsaKeyPair::from_pkcs8_pem("not a key").is_err());
    }
}
