//! `mysql_native_password`: the server sends a 20-byte scramble; the client answers
//! `SHA1(password) XOR SHA1(scramble || SHA1(SHA1(password)))`. The server stores
//! `SHA1(SHA1(password))` (shown as `*` and 40 uppercase hex digits), so it recovers
//! `SHA1(password)` from the answer and checks that it hashes to what it stored.

use sha1::{Digest, Sha1};

use super::xor;
use crate::auth::scram::constant_time_eq;

/// The plugin's protocol name.
pub const NAME: &str = "mysql_native_password";

/// `SHA1(password)`: what the answer is made from (and what a verified answer gives back).
pub fn stage1(password: &[u8]) -> [u8; 20] {
    Sha1::digest(password).into()
}

/// `SHA1(SHA1(password))`: what servers store.
pub fn stage2(stage1: &[u8; 20]) -> [u8; 20] {
    Sha1::digest(stage1).into()
}

/// The answer to `scramble` made from `SHA1(password)`; an empty password answers with
/// nothing, which is not this (see [`answer`]).
pub fn scramble_with_stage1(stage1: &[u8; 20], scramble: &[u8]) -> [u8; 20] {
    let mut hasher = Sha1::new();
    hasher.update(scramble);
    hasher.update(stage2(stage1));
    xor(stage1, &hasher.finalize().into())
}

/// The answer to `scramble` (the first 20 bytes of the server's data) for `password`:
/// empty for an empty password, as every client sends it.
pub fn answer(password: &[u8], scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    scramble_with_stage1(&stage1(password), nonce(scramble)).to_vec()
}

/// The 20 scramble bytes of a greeting's or AuthSwitchRequest's data (servers add a NUL).
pub fn nonce(data: &[u8]) -> &[u8] {
    &data[..data.len().min(20)]
}

/// The stored form, `*` and 40 uppercase hex digits (`PASSWORD('...')`).
pub fn stored_hash(password: &[u8]) -> String {
    let mut out = String::with_capacity(41);
    out.push('*');
    for byte in stage2(&stage1(password)) {
        out.push_str(&format!("{byte:02X}"));
    }
    out
}

/// `SHA1(SHA1(password))` from its stored form (`*` and 40 hex digits, either case).
pub fn parse_stored_hash(text: &str) -> Option<[u8; 20]> {
    let hex = text.strip_prefix('*')?;
    if hex.len() != 40 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Checks a client's `answer` to `scramble` against the stored `SHA1(SHA1(password))`;
/// on success returns `SHA1(password)`, with which switchyard can answer a server's
/// scramble for the same user. An empty answer (no password) never verifies here.
pub fn verify(stage2_stored: &[u8; 20], scramble: &[u8], answer: &[u8]) -> Option<[u8; 20]> {
    let answer: &[u8; 20] = answer.try_into().ok()?;
    let mut hasher = Sha1::new();
    hasher.update(nonce(scramble));
    hasher.update(stage2_stored);
    let candidate = xor(answer, &hasher.finalize().into());
    constant_time_eq(&stage2(&candidate), stage2_stored).then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mysql::handshake::Handshake;
    use crate::protocol::mysql::response::HandshakeResponse;
    use crate::protocol::mysql::testdata::{CLI_NATIVE_CLIENT, CLI_NATIVE_SERVER, packets};

    #[test]
    fn matches_what_the_mariadb_cli_sent_and_the_server_stored() {
        let greeting = Handshake::parse(&packets(CLI_NATIVE_SERVER)[0].payload).expect("greeting");
        let login =
            HandshakeResponse::parse(&packets(CLI_NATIVE_CLIENT)[0].payload).expect("login");
        assert_eq!(
            answer(b"native-pw", &greeting.scramble),
            login.auth_response
        );
        // SELECT authentication_string FROM mysql.user WHERE user = 'native_user'
        let stored = "*FF48E68563F59169DF2C2F820BAC747E1DA6A5D2";
        assert_eq!(stored_hash(b"native-pw"), stored);
        let stage2 = parse_stored_hash(stored).expect("hash");
        assert_eq!(parse_stored_hash(&stored.to_lowercase()), Some(stage2));
        let recovered = verify(&stage2, &greeting.scramble, &login.auth_response);
        assert_eq!(recovered, Some(stage1(b"native-pw")));
        assert_eq!(
            verify(
                &stage2,
                &greeting.scramble,
                &answer(b"wrong", &greeting.scramble)
            ),
            None
        );
        assert_eq!(verify(&stage2, &greeting.scramble, b""), None);
        assert_eq!(answer(b"", &greeting.scramble), b"");
        for bad in [
            "",
            "*",
            "FF48E68563F59169DF2C2F820BAC747E1DA6A5D2",
            "*FF48E68563F59169DF2C2F820BAC747E1DA6A5DZ",
            "*é8E68563F59169DF2C2F820BAC747E1DA6A5D2",
        ] {
            assert_eq!(parse_stored_hash(bad), None, "{bad}");
        }
    }
}
