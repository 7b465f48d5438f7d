//! SCRAM messages from a client or a server, and stored secrets from a file or a database,
//! must give a result or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::auth::scram::{ClientExchange, Credential, ScramSecret, ServerExchange};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ScramSecret::parse(text);
    }
    let secret = ScramSecret {
        iterations: 1,
        salt: vec![1, 2, 3],
        stored_key: [7; 32],
        server_key: [9; 32],
    };
    let (first, second) = data.split_at(data.len() / 2);
    if let Ok(exchange) = ServerExchange::start(&secret, first) {
        let _ = exchange.verify(second);
    }
    if let Ok((mut client, _)) = ClientExchange::start(Credential::Password("pw".into())) {
        let _ = client.respond(first);
        let _ = client.finish(second);
    }
});
