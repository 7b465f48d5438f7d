//! Fuzzes the MySQL handshake parsers: the server's HandshakeV10 and the client's
//! SSLRequest / HandshakeResponse41 (`switchyard::protocol::mysql::{handshake, response}`).
//! Any bytes must parse or fail without panicking. A parsed HandshakeResponse41 must
//! re-encode to a packet that parses to the same response (the proxy re-sends responses
//! it rewrote); a parsed greeting must be stable after one re-encoding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::mysql::handshake::Handshake;
use switchyard::protocol::mysql::response::{ClientReply, HandshakeResponse, parse_client_reply};

fuzz_target!(|data: &[u8]| {
    if let Ok(greeting) = Handshake::parse(data) {
        let once = Handshake::parse(&greeting.encode()).expect("an encoded greeting parses");
        assert_eq!(
            (&once.server_version, once.connection_id, once.capabilities, &once.auth_plugin),
            (&greeting.server_version, greeting.connection_id, greeting.capabilities, &greeting.auth_plugin)
        );
        let twice = Handshake::parse(&once.encode()).expect("parses again");
        assert_eq!(twice, once);
    }
    match parse_client_reply(data) {
        Ok(ClientReply::Response(response)) => {
            let again = HandshakeResponse::parse(&response.encode()).expect("an encoded response parses");
            assert_eq!(again, response);
        }
        Ok(ClientReply::SslRequest(head)) => {
            assert_eq!(head.ssl_request().len(), 32);
            assert_eq!(data.len(), 32);
        }
        Err(_) => {}
    }
});
