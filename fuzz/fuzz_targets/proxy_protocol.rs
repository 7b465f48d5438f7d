//! Fuzzes the PROXY protocol parser: any byte sequence must parse without panicking, and a
//! complete header must lie within the input and parse the same on its own.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::proxy_protocol::{ParseOutcome, parse_header};

fuzz_target!(|data: &[u8]| {
    if let outcome @ ParseOutcome::Complete { consumed, .. } = parse_header(data) {
        assert!(consumed <= data.len());
        assert!(consumed > 0);
        // The header alone, without the payload after it, gives the same verdict.
        assert_eq!(parse_header(&data[..consumed]), outcome);
    }
});
