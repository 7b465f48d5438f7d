//! The packets of the authentication exchange after the HandshakeResponse41:
//! AuthSwitchRequest (0xFE: use another plugin, with its own data) and AuthMoreData
//! (0x01: plugin-specific data, e.g. caching_sha2_password's fast-auth result or the
//! server's RSA public key).

use super::CodecError;
use super::lenenc::{Cursor, put_cstr, utf8};

/// Header of an AuthSwitchRequest.
pub const AUTH_SWITCH: u8 = 0xFE;
/// Header of AuthMoreData.
pub const AUTH_MORE_DATA: u8 = 0x01;

/// An AuthSwitchRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSwitch {
    /// The plugin to answer with.
    pub plugin: String,
    /// Its data as sent: for `mysql_native_password` and `caching_sha2_password` a
    /// 20-byte scramble and a NUL, for `client_ed25519` a 32-byte nonce.
    pub data: Vec<u8>,
}

impl AuthSwitch {
    /// Parses an AuthSwitchRequest. The pre-4.1 form (0xFE alone: switch to
    /// `mysql_old_password`) is refused.
    pub fn parse(payload: &[u8]) -> Result<Self, CodecError> {
        let mut c = Cursor::new(payload);
        if c.u8("empty auth switch")? != AUTH_SWITCH {
            return Err(CodecError::Malformed("not an AuthSwitchRequest"));
        }
        if c.is_empty() {
            return Err(CodecError::Malformed("switch to the pre-4.1 password hash"));
        }
        let plugin = utf8(c.cstr("auth switch plugin")?, "auth switch plugin")?.to_string();
        Ok(Self {
            plugin,
            data: c.rest().to_vec(),
        })
    }

    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![AUTH_SWITCH];
        put_cstr(&mut out, self.plugin.as_bytes());
        out.extend_from_slice(&self.data);
        out
    }
}

/// The data of an AuthMoreData payload.
pub fn parse_more_data(payload: &[u8]) -> Result<&[u8], CodecError> {
    match payload.split_first() {
        Some((&AUTH_MORE_DATA, data)) => Ok(data),
        _ => Err(CodecError::Malformed("not AuthMoreData")),
    }
}

/// An AuthMoreData payload.
pub fn more_data(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(AUTH_MORE_DATA);
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mysql::testdata::{CLI_ED25519_SERVER, packets};

    #[test]
    fn captured_switch_to_ed25519() {
        let server = packets(CLI_ED25519_SERVER);
        let switch = AuthSwitch::parse(&server[1].payload).expect("switch");
        assert_eq!(switch.plugin, "client_ed25519");
        assert_eq!(switch.data.len(), 32);
        assert_eq!(switch.encode(), &server[1].payload[..]);
        assert!(AuthSwitch::parse(b"\xfe").is_err());
        assert!(AuthSwitch::parse(b"\xfeno-nul").is_err());
        assert_eq!(
            parse_more_data(&more_data(b"\x03")).ok(),
            Some(&b"\x03"[..])
        );
        assert!(parse_more_data(b"\x02x").is_err());
    }
}
