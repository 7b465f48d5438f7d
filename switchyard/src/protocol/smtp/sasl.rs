//! The name a client logs in as, read from the AUTH exchange the proxy relays (PLAIN and
//! LOGIN). A server session opened after the client authenticated is told that name with
//! `XCLIENT LOGIN=`: the proxy keeps no password, so it cannot replay the AUTH.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The login name in the client's first SASL response for `mechanism`
/// (`smtp_proto::AUTH_PLAIN` or `AUTH_LOGIN`); `response` is the base64 text as sent, on the
/// AUTH line or on the line after the server's first `334`. PLAIN gives its authorization
/// identity, or its authentication identity when that is empty (RFC 4616: the identity the
/// session acts as); LOGIN gives its user name. `None` for a cancelled exchange (`*`), text
/// that is not base64, a name that is empty or not UTF-8, or another mechanism. PLAIN's
/// password is dropped here, never kept.
pub fn login_name(mechanism: u64, response: &[u8]) -> Option<String> {
    let text = response.trim_ascii();
    let decoded = STANDARD.decode(text).ok()?;
    let name = match mechanism {
        smtp_proto::AUTH_PLAIN => {
            let mut fields = decoded.splitn(3, |&b| b == 0);
            let (authzid, authcid, _password) = (fields.next()?, fields.next()?, fields.next()?);
            if authzid.is_empty() { authcid } else { authzid }.to_vec()
        }
        smtp_proto::AUTH_LOGIN => decoded,
        _ => return None,
    };
    String::from_utf8(name).ok().filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(raw: &[u8]) -> Vec<u8> {
        STANDARD.encode(raw).into_bytes()
    }

    #[test]
    fn plain_gives_the_identity_the_session_acts_as() {
        let plain = smtp_proto::AUTH_PLAIN;
        assert_eq!(
            login_name(plain, &encoded(b"\0alice\0secret")).as_deref(),
            Some("alice")
        );
        assert_eq!(
            login_name(plain, &encoded(b"shared@example.org\0admin\0secret")).as_deref(),
            Some("shared@example.org"),
            "the authorization identity when there is one"
        );
        let mut line = encoded("\0j\u{f6}rg\0pw".as_bytes());
        line.extend_from_slice(b"\r\n");
        assert_eq!(login_name(plain, &line).as_deref(), Some("j\u{f6}rg"));
        for bad in [
            encoded(b"alice\0secret"),
            encoded(b"\0\0secret"),
            encoded(b"\0\xff\xfe\0pw"),
            b"*".to_vec(),
            b"=".to_vec(),
            b"not base64!".to_vec(),
        ] {
            assert_eq!(login_name(plain, &bad), None, "{bad:?}");
        }
    }

    #[test]
    fn login_gives_its_user_name() {
        let login = smtp_proto::AUTH_LOGIN;
        assert_eq!(
            login_name(login, &encoded(b"alice")).as_deref(),
            Some("alice")
        );
        assert_eq!(login_name(login, b"*"), None);
        assert_eq!(
            login_name(smtp_proto::AUTH_CRAM_MD5, &encoded(b"alice")),
            None
        );
    }
}
