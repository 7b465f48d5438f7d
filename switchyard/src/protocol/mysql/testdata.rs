//! The captured traffic in `testdata/` (see its README), split into packets, for the
//! codec tests.

use super::{Packet, PacketReader};

/// `mariadb` CLI ↔ MariaDB 10.11, `native_user`: what the server sent.
pub const CLI_NATIVE_SERVER: &[u8] = include_bytes!("testdata/cli_native.server.bin");
/// ... and what the client sent.
pub const CLI_NATIVE_CLIENT: &[u8] = include_bytes!("testdata/cli_native.client.bin");
/// `mariadb` CLI, `ed_user` (ed25519): the server's side.
pub const CLI_ED25519_SERVER: &[u8] = include_bytes!("testdata/cli_ed25519.server.bin");
/// ... and the client's.
pub const CLI_ED25519_CLIENT: &[u8] = include_bytes!("testdata/cli_ed25519.client.bin");
/// `mariadb` CLI with a wrong password: the server's side.
pub const CLI_WRONG_PASSWORD_SERVER: &[u8] =
    include_bytes!("testdata/cli_wrong_password.server.bin");
/// PyMySQL, `native_user` with a database: the server's side.
pub const PYMYSQL_SERVER: &[u8] = include_bytes!("testdata/pymysql_native.server.bin");
/// ... and the client's.
pub const PYMYSQL_CLIENT: &[u8] = include_bytes!("testdata/pymysql_native.client.bin");

/// The packets of one side of a capture.
pub fn packets(stream: &[u8]) -> Vec<Packet> {
    let mut reader = PacketReader::new(1 << 20);
    reader.feed(stream);
    let mut packets = Vec::new();
    // Pieces of one payload are never split across a capture, and sequence ids restart
    // per command, so read packet by packet.
    while let Ok(Some(packet)) = reader.next_packet() {
        packets.push(packet);
    }
    assert!(!reader.has_partial(), "a capture ends on a packet boundary");
    packets
}
