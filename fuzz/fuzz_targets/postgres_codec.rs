//! Fuzzes the PostgreSQL codec: any bytes must parse without panicking, and whatever
//! parses as a startup packet must re-encode to exactly the bytes it came from (the proxy
//! re-sends startups it parsed, so a lossy round trip would change what servers see).
//! The same bytes as a server's authentication request (login.rs), a client's password or
//! SASLInitialResponse (auth.rs) and a stored md5 hash.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::postgres::codec::{
    StartupPacket, encode_cancel, parse_auth, parse_backend_key, parse_startup,
};
use switchyard::protocol::postgres::auth::{parse_password, parse_sasl_initial};
use switchyard::protocol::postgres::login::parse_request;

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(data);
    let _ = parse_password(data);
    let _ = parse_sasl_initial(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = switchyard::auth::md5::answer(text, [1, 2, 3, 4]);
    }
    let _ = parse_auth(data);
    let _ = parse_backend_key(data);
    match parse_startup(data) {
        Ok(StartupPacket::Startup(startup)) => assert_eq!(&startup.encode()[4..], data),
        Ok(StartupPacket::Cancel { pid, key }) => assert_eq!(&encode_cancel(pid, &key)[4..], data),
        Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => assert_eq!(data.len(), 4),
        Err(_) => {}
    }
});
