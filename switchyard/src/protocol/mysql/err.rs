//! The ERR packet: an error code, a SQLSTATE after a `#` marker (protocol 4.1) and a
//! message. Parsed from servers (a login refused, a query failed) and built by the proxy
//! for its own errors ([`super::errors`]).

use super::CodecError;
use super::lenenc::Cursor;

/// Header of an ERR packet.
pub const ERR: u8 = 0xFF;

/// An ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    /// The MySQL error number (1045 access denied...).
    pub code: u16,
    /// The SQLSTATE (`28000`...); `HY000` when the server sent none.
    pub sqlstate: String,
    /// The message.
    pub message: String,
}

impl ErrPacket {
    /// Parses an ERR payload. The SQLSTATE marker is optional, as servers omit it before
    /// the client said it speaks 4.1.
    pub fn parse(payload: &[u8]) -> Result<Self, CodecError> {
        let mut c = Cursor::new(payload);
        if c.u8("empty ERR")? != ERR {
            return Err(CodecError::Malformed("not an ERR packet"));
        }
        let code = c.u16("ERR code")?;
        let mut sqlstate = "HY000".to_string();
        if c.peek() == Some(b'#') {
            c.take(1, "ERR marker")?;
            sqlstate = String::from_utf8_lossy(c.take(5, "ERR SQLSTATE")?).into_owned();
        }
        Ok(Self {
            code,
            sqlstate,
            message: String::from_utf8_lossy(c.rest()).into_owned(),
        })
    }

    /// The payload, with the `#` marker and SQLSTATE (padded or cut to 5 characters).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.message.len());
        out.push(ERR);
        out.extend_from_slice(&self.code.to_le_bytes());
        out.push(b'#');
        let mut state = [b'0'; 5];
        for (slot, byte) in state.iter_mut().zip(self.sqlstate.bytes()) {
            *slot = byte;
        }
        out.extend_from_slice(&state);
        out.extend_from_slice(self.message.as_bytes());
        out
    }
}

impl std::fmt::Display for ErrPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ERROR {} ({}): {}",
            self.code, self.sqlstate, self.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mysql::testdata::{CLI_NATIVE_SERVER, CLI_WRONG_PASSWORD_SERVER, packets};

    #[test]
    fn captured_errors() {
        let refused = packets(CLI_WRONG_PASSWORD_SERVER);
        let err = ErrPacket::parse(&refused[1].payload).expect("err");
        assert_eq!(err.code, 1045);
        assert_eq!(err.sqlstate, "28000");
        assert_eq!(
            err.message,
            "Access denied for user 'native_user'@'127.0.0.1' (using password: YES)"
        );
        assert_eq!(
            err.encode(),
            &refused[1].payload[..],
            "re-encodes byte for byte"
        );
        let query = packets(CLI_NATIVE_SERVER);
        let last = query.last().expect("packets");
        let err = ErrPacket::parse(&last.payload).expect("err");
        assert_eq!((err.code, err.sqlstate.as_str()), (1054, "42S22"));
        assert_eq!(
            err.to_string(),
            "ERROR 1054 (42S22): Unknown column 'nosuchcolumn' in 'SELECT'"
        );
    }

    #[test]
    fn without_a_marker_and_malformed() {
        let err = ErrPacket::parse(b"\xff\x10\x04Too many connections").expect("err");
        assert_eq!((err.code, err.sqlstate.as_str()), (1040, "HY000"));
        assert_eq!(err.message, "Too many connections");
        for bad in [&b""[..], b"\xff\x10", b"\x00\x10\x04", b"\xff\x10\x04#280"] {
            assert!(ErrPacket::parse(bad).is_err(), "{bad:?}");
        }
    }
}
