//! Fuzzes the relayed MySQL authentication (`switchyard::protocol::mysql::passthrough`):
//! the first byte splits the input into what the client sends and what the server sends,
//! both arbitrary. The exchange must end (logged in, refused or broken off) without
//! panicking, whatever either side sends.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::mysql::PacketReader;
use switchyard::protocol::mysql::passthrough::{Moved, Side, relay_login, switch_to_server};
use switchyard::protocol::mysql::response::{ClientHead, HandshakeResponse};
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (from_client, from_server) = rest.split_at(usize::from(split).min(rest.len()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (mut client, mut client_end) = tokio::io::duplex(1 << 16);
        let (mut server_end, mut server) = tokio::io::duplex(1 << 16);
        client.write_all(from_client).await.expect("client bytes");
        server.write_all(from_server).await.expect("server bytes");
        // Both peers have said everything: reads past it end the exchange.
        drop((client.shutdown().await, server.shutdown().await));
        let response = HandshakeResponse {
            head: ClientHead {
                capabilities: 0x01ff_a20f,
                max_packet: 1 << 24,
                charset: 45,
                mariadb_capabilities: 0,
            },
            user: "u".into(),
            auth_response: Vec::new(),
            database: Some("d".into()),
            auth_plugin: None,
            attributes: Vec::new(),
        };
        let (mut client_reader, mut server_reader) =
            (PacketReader::new(1 << 16), PacketReader::new(1 << 16));
        let _ = relay_login(
            Side {
                stream: &mut client_end,
                reader: &mut client_reader,
                sequence: 2,
            },
            Side {
                stream: &mut server_end,
                reader: &mut server_reader,
                sequence: 1,
            },
            &switch_to_server("mysql_native_password", &[b'a'; 20]),
            response,
            &mut Moved::default(),
        )
        .await;
    });
});
