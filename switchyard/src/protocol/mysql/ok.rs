//! The OK packet: a command succeeded (and, with `CLIENT_DEPRECATE_EOF`, the end of a
//! result set, with header 0xFE). Its status flags say whether a transaction is open,
//! which is what lets a session move between server connections.

use super::CodecError;
use super::flags::{capabilities as cap, status};
use super::lenenc::{Cursor, put_lenenc_bytes, put_lenenc_int};

/// Header of an OK packet.
pub const OK: u8 = 0x00;
/// Header of the OK packet that ends a result set under `CLIENT_DEPRECATE_EOF`.
pub const OK_EOF: u8 = 0xFE;

/// An OK packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OkPacket {
    /// Rows changed (or found, with `CLIENT_FOUND_ROWS`).
    pub affected_rows: u64,
    /// The last `AUTO_INCREMENT` value generated.
    pub last_insert_id: u64,
    /// Server status flags ([`status`]).
    pub status: u16,
    /// Warnings raised.
    pub warnings: u16,
    /// Human-readable information (`Rows matched: 1  Changed: 1...`).
    pub info: String,
    /// Session state changes (`CLIENT_SESSION_TRACK` and `SERVER_SESSION_STATE_CHANGED`):
    /// the raw list, read with [`session_changes`].
    pub session_state: Vec<u8>,
}

impl OkPacket {
    /// Parses an OK payload (header 0x00 or 0xFE) under the session's `capabilities`.
    pub fn parse(payload: &[u8], capabilities: u32) -> Result<Self, CodecError> {
        let mut c = Cursor::new(payload);
        if !matches!(c.u8("empty OK")?, OK | OK_EOF) {
            return Err(CodecError::Malformed("not an OK packet"));
        }
        let mut ok = Self {
            affected_rows: c.lenenc_int("OK affected rows")?,
            last_insert_id: c.lenenc_int("OK last insert id")?,
            ..Self::default()
        };
        if capabilities & cap::PROTOCOL_41 != 0 {
            ok.status = c.u16("OK status")?;
            ok.warnings = c.u16("OK warnings")?;
        } else if capabilities & cap::TRANSACTIONS != 0 {
            ok.status = c.u16("OK status")?;
        }
        if capabilities & cap::SESSION_TRACK != 0 {
            // Servers leave the info out entirely when it is empty and nothing follows.
            if !c.is_empty() {
                ok.info = String::from_utf8_lossy(c.lenenc_bytes("OK info")?).into_owned();
            }
            if ok.status & status::SESSION_STATE_CHANGED != 0 {
                ok.session_state = c.lenenc_bytes("OK session state")?.to_vec();
            }
        } else {
            ok.info = String::from_utf8_lossy(c.rest()).into_owned();
        }
        Ok(ok)
    }

    /// The payload with `header` ([`OK`], or [`OK_EOF`] to end a result set).
    pub fn encode(&self, header: u8, capabilities: u32) -> Vec<u8> {
        let mut out = vec![header];
        put_lenenc_int(&mut out, self.affected_rows);
        put_lenenc_int(&mut out, self.last_insert_id);
        let mut status = self.status;
        if capabilities & cap::SESSION_TRACK == 0 || self.session_state.is_empty() {
            status &= !status::SESSION_STATE_CHANGED;
        } else {
            status |= status::SESSION_STATE_CHANGED;
        }
        if capabilities & cap::PROTOCOL_41 != 0 {
            out.extend_from_slice(&status.to_le_bytes());
            out.extend_from_slice(&self.warnings.to_le_bytes());
        } else if capabilities & cap::TRANSACTIONS != 0 {
            out.extend_from_slice(&status.to_le_bytes());
        }
        if capabilities & cap::SESSION_TRACK != 0 {
            if !self.info.is_empty() || status & status::SESSION_STATE_CHANGED != 0 {
                put_lenenc_bytes(&mut out, self.info.as_bytes());
            }
            if status & status::SESSION_STATE_CHANGED != 0 {
                put_lenenc_bytes(&mut out, &self.session_state);
            }
        } else {
            out.extend_from_slice(self.info.as_bytes());
        }
        out
    }

    /// Whether a transaction is open after this command.
    pub fn in_transaction(&self) -> bool {
        self.status & status::IN_TRANS != 0
    }
}

/// One entry of an OK packet's session state changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange<'a> {
    /// `SESSION_TRACK_SYSTEM_VARIABLES`: a tracked variable's new value.
    SystemVariable {
        /// The variable.
        name: &'a [u8],
        /// Its value.
        value: &'a [u8],
    },
    /// `SESSION_TRACK_SCHEMA`: the default database changed (`USE`).
    Schema(&'a [u8]),
    /// Another kind (state change, GTIDs, transaction characteristics/state), raw.
    Other {
        /// The entry type.
        kind: u8,
        /// Its data.
        data: &'a [u8],
    },
}

/// The entries of an OK packet's `session_state`.
pub fn session_changes(state: &[u8]) -> Result<Vec<SessionChange<'_>>, CodecError> {
    let mut c = Cursor::new(state);
    let mut changes = Vec::new();
    while !c.is_empty() {
        let kind = c.u8("session change type")?;
        let mut data = Cursor::new(c.lenenc_bytes("session change")?);
        changes.push(match kind {
            0 => SessionChange::SystemVariable {
                name: data.lenenc_bytes("tracked variable name")?,
                value: data.lenenc_bytes("tracked variable value")?,
            },
            1 => SessionChange::Schema(data.lenenc_bytes("tracked schema")?),
            kind => SessionChange::Other {
                kind,
                data: data.rest(),
            },
        });
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mysql::response::HandshakeResponse;
    use crate::protocol::mysql::testdata::{
        CLI_NATIVE_CLIENT, CLI_NATIVE_SERVER, PYMYSQL_CLIENT, PYMYSQL_SERVER, packets,
    };

    fn capabilities(client: &[u8]) -> u32 {
        HandshakeResponse::parse(&packets(client)[0].payload)
            .expect("login")
            .head
            .capabilities
    }

    #[test]
    fn captured_oks_with_session_tracking_and_transactions() {
        let caps = capabilities(CLI_NATIVE_CLIENT);
        let server = packets(CLI_NATIVE_SERVER);
        let oks: Vec<OkPacket> = server
            .iter()
            .filter(|p| p.header() == Some(OK) && p.payload.len() >= 7)
            .map(|p| OkPacket::parse(&p.payload, caps).expect("ok"))
            .collect();
        // Login, USE mysql, BEGIN, COMMIT.
        assert_eq!(oks.len(), 4, "{oks:?}");
        assert_eq!(oks[0].status, status::AUTOCOMMIT);
        assert_eq!(
            session_changes(&oks[1].session_state).ok(),
            Some(vec![SessionChange::Schema(b"mysql")])
        );
        assert!(oks[2].in_transaction(), "after BEGIN");
        assert!(!oks[3].in_transaction(), "after COMMIT");
        for (ok, packet) in oks.iter().zip(
            server
                .iter()
                .filter(|p| p.header() == Some(OK) && p.payload.len() >= 7),
        ) {
            assert_eq!(
                ok.encode(OK, caps),
                &packet.payload[..],
                "re-encodes byte for byte"
            );
        }
    }

    #[test]
    fn captured_oks_without_session_tracking() {
        let caps = capabilities(PYMYSQL_CLIENT);
        assert_eq!(caps & cap::SESSION_TRACK, 0);
        let server = packets(PYMYSQL_SERVER);
        // SET AUTOCOMMIT = 0 answered with autocommit off.
        let ok = OkPacket::parse(&server[3].payload, caps).expect("ok");
        assert_eq!(ok.status & status::AUTOCOMMIT, 0);
        assert_eq!(ok.encode(OK, caps), &server[3].payload[..]);
    }

    #[test]
    fn built_oks_round_trip() {
        let ok = OkPacket {
            affected_rows: 300,
            last_insert_id: 1 << 40,
            status: status::IN_TRANS | status::AUTOCOMMIT,
            warnings: 2,
            info: "Rows matched: 1".into(),
            session_state: vec![0, 6, 1, b'a', 3, b'1', b'2', b'3'],
        };
        let caps = cap::LOGIN;
        let parsed = OkPacket::parse(&ok.encode(OK_EOF, caps), caps).expect("ok");
        assert_eq!(parsed.session_state, ok.session_state);
        assert_eq!(parsed.status, ok.status | status::SESSION_STATE_CHANGED);
        assert_eq!(
            session_changes(&parsed.session_state).ok(),
            Some(vec![SessionChange::SystemVariable {
                name: b"a",
                value: b"123"
            }])
        );
        let plain =
            OkPacket::parse(&ok.encode(OK, cap::PROTOCOL_41), cap::PROTOCOL_41).expect("ok");
        assert_eq!(plain.info, "Rows matched: 1");
        assert!(plain.session_state.is_empty());
        for bad in [&b""[..], b"\x01", b"\x00\xfc", b"\x00\x00\x00\x02"] {
            assert!(OkPacket::parse(bad, caps).is_err(), "{bad:?}");
        }
        assert!(session_changes(&[0, 5, 1]).is_err());
    }
}
