//! A one-row, one-column integer result set the proxy sends itself: the transaction
//! pooler answers `SELECT ROW_COUNT()` and `SELECT FOUND_ROWS()` from what the client's own
//! previous statement returned, since the connection that ran it may be serving someone
//! else by then. Framed as MariaDB frames such an answer (text protocol, a `BIGINT` column
//! named as the client wrote the expression).

use super::eof::EofPacket;
use super::flags::capabilities as cap;
use super::lenenc::put_lenenc_bytes;
use super::ok::{OK_EOF, OkPacket};
use super::packet::encode_packet;

/// `MYSQL_TYPE_LONGLONG`.
const LONGLONG: u8 = 0x08;
/// The `binary` character set, which numbers have.
const BINARY: u16 = 63;
/// `NOT_NULL_FLAG | BINARY_FLAG`.
const FLAGS: u16 = 0x0001 | 0x0080;

/// The reply to a command (sequence ids from 1) with one row holding `value` in a column
/// named `column`, ending with `status`, under the client's `capabilities`.
pub fn single_integer(column: &str, value: i64, capabilities: u32, status: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + column.len());
    let mut sequence = 1u8;
    let mut push = |payload: &[u8], out: &mut Vec<u8>| {
        sequence = encode_packet(sequence, payload, out);
    };
    push(&[1], &mut out);
    push(&definition(column), &mut out);
    let deprecate_eof = capabilities & cap::DEPRECATE_EOF != 0;
    let eof = EofPacket {
        warnings: 0,
        status,
    }
    .encode();
    if !deprecate_eof {
        push(&eof, &mut out);
    }
    let mut row = Vec::new();
    put_lenenc_bytes(&mut row, value.to_string().as_bytes());
    push(&row, &mut out);
    if deprecate_eof {
        let end = OkPacket {
            status,
            ..OkPacket::default()
        };
        push(&end.encode(OK_EOF, capabilities), &mut out);
    } else {
        push(&eof, &mut out);
    }
    out
}

/// A column definition (Protocol::ColumnDefinition41) of a `BIGINT` expression.
fn definition(column: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + column.len());
    for part in [&b"def"[..], b"", b"", b"", column.as_bytes(), b""] {
        put_lenenc_bytes(&mut out, part);
    }
    out.push(0x0c);
    out.extend_from_slice(&BINARY.to_le_bytes());
    out.extend_from_slice(&21u32.to_le_bytes());
    out.push(LONGLONG);
    out.extend_from_slice(&FLAGS.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&[0, 0]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mysql::flags::status;
    use crate::protocol::mysql::packet::PacketReader;
    use crate::protocol::mysql::reply::{Packet, Reply, Shape};

    /// Each form reads back as one row of one column to a client of its capabilities.
    #[test]
    fn answers_read_as_a_result_set() {
        for capabilities in [cap::PROTOCOL_41, cap::PROTOCOL_41 | cap::DEPRECATE_EOF] {
            let framed = single_integer("ROW_COUNT()", -1, capabilities, status::AUTOCOMMIT);
            let mut reader = PacketReader::new(1 << 20);
            reader.feed(&framed);
            let mut reply = Reply::new(Shape::Result, capabilities);
            let mut sequences = Vec::new();
            let mut last = None;
            while let Ok(Some(packet)) = reader.next_packet() {
                sequences.push(packet.sequence);
                last = Some(reply.feed(&packet.payload).expect("a reply packet"));
            }
            assert!(reply.done());
            assert_eq!(reply.rows(), 1);
            assert_eq!(reply.status(), status::AUTOCOMMIT);
            assert!(matches!(last, Some(Packet::Ok(_) | Packet::Eof(_))));
            assert_eq!(sequences[0], 1);
            assert!(sequences.windows(2).all(|w| w[1] == w[0] + 1));
            assert!(framed.windows(2).any(|w| w == b"-1"));
        }
    }
}
