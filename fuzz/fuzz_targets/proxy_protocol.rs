//! PROXY protocol header parsing must never panic and never claim more bytes than it got.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::proxy_protocol::{ParseOutcome, parse_header};

fuzz_target!(|data: &[u8]| {
    if let ParseOutcome::Complete { consumed, .. } = parse_header(data) {
        assert!(consumed <= data.len());
    }
});
