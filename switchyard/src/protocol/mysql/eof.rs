//! The EOF packet: the end of column definitions and of rows in a result set, unless the
//! client negotiated `CLIENT_DEPRECATE_EOF` (then an OK packet with header 0xFE ends the
//! rows and nothing ends the columns).

use super::CodecError;
use super::lenenc::Cursor;

/// Header of an EOF packet (shared with AuthSwitchRequest and the 0xFE OK).
pub const EOF: u8 = 0xFE;

/// An EOF packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EofPacket {
    /// Warnings raised.
    pub warnings: u16,
    /// Server status flags.
    pub status: u16,
}

impl EofPacket {
    /// Whether `payload` is an EOF packet rather than a row: 0xFE and shorter than 9 bytes
    /// (a row starting with 0xFE carries an 8-byte length).
    pub fn is_eof(payload: &[u8]) -> bool {
        payload.first() == Some(&EOF) && payload.len() < 9
    }

    /// Parses an EOF payload (4.1 form: warnings and status).
    pub fn parse(payload: &[u8]) -> Result<Self, CodecError> {
        if !Self::is_eof(payload) {
            return Err(CodecError::Malformed("not an EOF packet"));
        }
        let mut c = Cursor::new(&payload[1..]);
        Ok(Self {
            warnings: c.u16("EOF warnings")?,
            status: c.u16("EOF status")?,
        })
    }

    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![EOF];
        out.extend_from_slice(&self.warnings.to_le_bytes());
        out.extend_from_slice(&self.status.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mysql::flags::status;
    use crate::protocol::mysql::testdata::{CLI_NATIVE_SERVER, packets};

    #[test]
    fn captured_eofs() {
        let eofs: Vec<_> = packets(CLI_NATIVE_SERVER)
            .into_iter()
            .filter(|p| EofPacket::is_eof(&p.payload))
            .collect();
        assert_eq!(eofs.len(), 6, "two per result set");
        let in_transaction = EofPacket::parse(&eofs[4].payload).expect("eof");
        assert_eq!(in_transaction.status, status::IN_TRANS | status::AUTOCOMMIT);
        for eof in &eofs {
            let parsed = EofPacket::parse(&eof.payload).expect("eof");
            assert_eq!(parsed.encode(), &eof.payload[..]);
        }
        assert!(EofPacket::parse(b"\xfe\x00").is_err());
        assert!(!EofPacket::is_eof(&[0xFE; 9]));
    }
}
