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

/// mysql-connector-python 9 (prepared cursors, `CLIENT_DEPRECATE_EOF`): the server's side.
pub const CONNECTOR_PREPARED_SERVER: &[u8] =
    include_bytes!("testdata/connector_prepared.server.bin");
/// ... and the client's.
pub const CONNECTOR_PREPARED_CLIENT: &[u8] =
    include_bytes!("testdata/connector_prepared.client.bin");
/// PyMySQL with `CLIENT_MULTI_STATEMENTS`: the server's side.
pub const PYMYSQL_MULTI_SERVER: &[u8] = include_bytes!("testdata/pymysql_multi.server.bin");
/// ... and the client's.
pub const PYMYSQL_MULTI_CLIENT: &[u8] = include_bytes!("testdata/pymysql_multi.client.bin");

/// `mariadb` CLI ↔ `sha2_full_auth.py` (caching_sha2_password full authentication over
/// plaintext, user `sha2_user`, password `sha2-pw`): what the client sent.
pub const CLI_SHA2_RSA_CLIENT: &[u8] = include_bytes!("testdata/cli_sha2_rsa.client.bin");
/// ... and what the scripted server sent.
pub const CLI_SHA2_RSA_SERVER: &[u8] = include_bytes!("testdata/cli_sha2_rsa.server.bin");
/// PyMySQL ↔ `sha2_full_auth.py`: the client's side.
pub const PYMYSQL_SHA2_RSA_CLIENT: &[u8] = include_bytes!("testdata/pymysql_sha2_rsa.client.bin");
/// The scramble `sha2_full_auth.py` greets with.
pub const SHA2_RSA_SCRAMBLE: &[u8] = b"0123456789abcdefghij";
/// The private key of `sha2_full_auth.py`, made for these captures only.
pub const SHA2_RSA_TEST_KEY: &str = include_str!("testdata/sha2_rsa_test_key.pem");

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The stable-run twin of the fuzz targets: mutated captured packets parse or fail
    /// cleanly, and what parses survives re-encoding as the targets require.
    #[test]
    fn mutated_captures_parse_or_fail_cleanly() {
        use crate::protocol::mysql::auth_switch::{AuthSwitch, parse_more_data};
        use crate::protocol::mysql::eof::EofPacket;
        use crate::protocol::mysql::err::ErrPacket;
        use crate::protocol::mysql::handshake::Handshake;
        use crate::protocol::mysql::ok::{OK, OkPacket, session_changes};
        use crate::protocol::mysql::response::{
            ClientReply, HandshakeResponse, parse_client_reply,
        };

        let seeds: Vec<Vec<u8>> = [
            CLI_NATIVE_SERVER,
            CLI_NATIVE_CLIENT,
            CLI_ED25519_SERVER,
            CLI_ED25519_CLIENT,
            CLI_WRONG_PASSWORD_SERVER,
            PYMYSQL_SERVER,
            PYMYSQL_CLIENT,
            CLI_SHA2_RSA_CLIENT,
            CLI_SHA2_RSA_SERVER,
            PYMYSQL_SHA2_RSA_CLIENT,
        ]
        .iter()
        .flat_map(|capture| packets(capture))
        .map(|packet| packet.payload.to_vec())
        .collect();
        let mut mutator = crate::testing::Mutator::new();
        let caps = crate::protocol::mysql::flags::capabilities::LOGIN;
        for round in 0..30_000 {
            let mut input = seeds[round % seeds.len()].clone();
            mutator.mutate(&mut input);
            if let Ok(greeting) = Handshake::parse(&input) {
                let once =
                    Handshake::parse(&greeting.encode()).expect("an encoded greeting parses");
                assert_eq!(Handshake::parse(&once.encode()).ok(), Some(once));
            }
            if let Ok(ClientReply::Response(response)) = parse_client_reply(&input) {
                assert_eq!(
                    HandshakeResponse::parse(&response.encode()).ok(),
                    Some(response)
                );
            }
            if let Ok(ok) = OkPacket::parse(&input, caps) {
                let _ = session_changes(&ok.session_state);
                let once =
                    OkPacket::parse(&ok.encode(OK, caps), caps).expect("an encoded OK parses");
                assert_eq!(
                    OkPacket::parse(&once.encode(OK, caps), caps).ok(),
                    Some(once)
                );
            }
            if let Ok(err) = ErrPacket::parse(&input) {
                let again = ErrPacket::parse(&err.encode()).expect("an encoded ERR parses");
                assert_eq!((again.code, again.message), (err.code, err.message));
            }
            if let Ok(eof) = EofPacket::parse(&input) {
                assert_eq!(EofPacket::parse(&eof.encode()).ok(), Some(eof));
            }
            if let Ok(switch) = AuthSwitch::parse(&input) {
                assert_eq!(AuthSwitch::parse(&switch.encode()).ok(), Some(switch));
            }
            let _ = parse_more_data(&input);
            let mut reader = PacketReader::new(1 << 12);
            reader.feed(&input);
            while let Ok(Some(_)) = reader.next_packet() {}
        }
    }
}
