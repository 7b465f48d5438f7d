//! PostgreSQL's legacy `md5` password method: the stored form `md5<hex(md5(password ‖ user))>`
//! and the salted answer `md5<hex(md5(hex-part ‖ salt))>` sent in a PasswordMessage.
//!
//! Both sides use the stored form only, so a user configured with a stored hash (or fetched
//! from `pg_shadow`) can be checked and logged in with, without the password.

use md5::{Digest, Md5};

/// Prefix of the stored form and of every answer.
const PREFIX: &str = "md5";

/// The stored form for `user` with `password`, as `pg_authid.rolpassword` holds it.
pub fn stored(user: &str, password: &str) -> String {
    let mut hasher = Md5::new();
    hasher.update(password.as_bytes());
    hasher.update(user.as_bytes());
    format!("{PREFIX}{}", hex(&hasher.finalize()))
}

/// Whether `text` is a stored md5 hash (`md5` and 32 lowercase hex digits).
pub fn is_stored(text: &str) -> bool {
    text.strip_prefix(PREFIX).is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The PasswordMessage answer to AuthenticationMD5Password with `salt`, from the stored
/// form; `None` when `stored` is not one.
pub fn answer(stored: &str, salt: [u8; 4]) -> Option<String> {
    if !is_stored(stored) {
        return None;
    }
    let mut hasher = Md5::new();
    hasher.update(&stored.as_bytes()[PREFIX.len()..]);
    hasher.update(salt);
    Some(format!("{PREFIX}{}", hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_and_answer_match_postgresql() {
        // PostgreSQL 15 after `SET password_encryption = md5; CREATE ROLE alice PASSWORD
        // 'secret'`: `SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'`.
        let stored = stored("alice", "secret");
        assert_eq!(stored, "md54a0a68b43b6cd5cf266fa02f196e2371");
        assert!(is_stored(&stored));
        // libpq's answer for salt 01 02 03 04 (pg_md5_encrypt over the hex part and salt).
        let answer = answer(&stored, [1, 2, 3, 4]);
        assert_eq!(
            answer.as_deref(),
            Some("md598a0412b9c31436fc53776e863350083")
        );
        for bad in [
            "",
            "md5",
            "md54A0A68B43B6CD5CF266FA02F196E2371",
            "sha1abc",
            "md5zz",
        ] {
            assert!(!is_stored(bad), "{bad}");
            assert_eq!(super::answer(bad, [0; 4]), None);
        }
    }
}
