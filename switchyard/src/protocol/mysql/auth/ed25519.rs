//! MariaDB's `ed25519` authentication (client plugin `client_ed25519`): the server sends
//! a 32-byte nonce and the client answers with an Ed25519 signature of it. MariaDB's key
//! is not RFC 8032's: the expanded secret key is `SHA512(password)` itself (of the whole
//! password, where RFC 8032 hashes a 32-byte seed), so signing goes through
//! `ed25519-dalek`'s hazmat API with that expansion. The server stores the public key,
//! base64 without padding (`SELECT ed25519_password('...')`), and verifies a standard
//! signature.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ed25519_dalek::hazmat::{ExpandedSecretKey, raw_sign};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha512};

/// The client plugin's protocol name (the server plugin is `ed25519`).
pub const NAME: &str = "client_ed25519";

fn expanded(password: &[u8]) -> ExpandedSecretKey {
    let hash: [u8; 64] = Sha512::digest(password).into();
    ExpandedSecretKey::from_bytes(&hash)
}

/// The public key for `password`, as the server stores it.
pub fn public_key(password: &[u8]) -> [u8; 32] {
    VerifyingKey::from(&expanded(password)).to_bytes()
}

/// The public key in the form `ed25519_password()` shows and `mysql.user` stores.
pub fn stored_key(password: &[u8]) -> String {
    STANDARD_NO_PAD.encode(public_key(password))
}

/// A public key from its stored (base64, unpadded) form.
pub fn parse_stored_key(text: &str) -> Option<[u8; 32]> {
    STANDARD_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()?
        .try_into()
        .ok()
}

/// The answer to `nonce`: its signature with `password`'s key.
pub fn sign(password: &[u8], nonce: &[u8]) -> [u8; 64] {
    let secret = expanded(password);
    let public = VerifyingKey::from(&secret);
    raw_sign::<Sha512>(&secret, nonce, &public).to_bytes()
}

/// Checks a client's `signature` of `nonce` against the stored public key.
pub fn verify(public_key: &[u8; 32], nonce: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(nonce, &signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mysql::auth_switch::AuthSwitch;
    use crate::protocol::mysql::testdata::{CLI_ED25519_CLIENT, CLI_ED25519_SERVER, packets};

    #[test]
    fn matches_what_the_mariadb_cli_signed_and_the_server_stored() {
        let switch = AuthSwitch::parse(&packets(CLI_ED25519_SERVER)[1].payload).expect("switch");
        let signature = packets(CLI_ED25519_CLIENT)[1].payload.clone();
        // Ed25519 signatures are deterministic: switchyard's is the CLI's, byte for byte.
        assert_eq!(sign(b"ed-pw", &switch.data), &signature[..]);
        // SELECT authentication_string FROM mysql.user WHERE user = 'ed_user'
        let stored = "24FjORYwAV6wiJLDpFI0doShISjOdPNUg1WR7eRAgqA";
        assert_eq!(stored_key(b"ed-pw"), stored);
        let key = parse_stored_key(stored).expect("key");
        assert!(verify(&key, &switch.data, &signature));
        assert!(!verify(&key, &switch.data, &sign(b"wrong", &switch.data)));
        assert!(!verify(&key, b"another nonce", &signature));
        assert!(!verify(&key, &switch.data, &signature[..63]));
        assert_eq!(parse_stored_key("not base64!"), None);
        assert_eq!(parse_stored_key("AAAA"), None);
    }
}
