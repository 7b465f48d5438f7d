//! Fuzzes the MySQL statement classification: any bytes must classify without panicking
//! (or overflowing the stack), a reported `SET` must re-run as the same change (the pooler
//! replays that text on other server connections), and a statement the proxy would answer
//! itself must be one `classify` sees using that session function.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::mysql::classify::{
    SessionChange, classify, classify_bytes, simple_session_query,
};

fuzz_target!(|data: &[u8]| {
    let classification = classify_bytes(data);
    for change in &classification.session {
        if let SessionChange::Set { statement } = change {
            assert_eq!(classify(statement).session, vec![change.clone()]);
        }
    }
    if let Ok(text) = std::str::from_utf8(data)
        && simple_session_query(text).is_some()
    {
        assert!(classification.session_functions.any());
    }
});
