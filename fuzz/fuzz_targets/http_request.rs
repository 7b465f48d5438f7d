//! Fuzzes the HTTP/1 request framing scanner: any byte sequence, fed in one piece or split
//! anywhere, must be checked without panicking and give the same verdict.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::http::scanner::{HeadLimits, RequestScanner};

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 4096,
    max_headers: 32,
    max_uri_bytes: 1024,
};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let mut whole = RequestScanner::new(LIMITS);
    let verdict = whole.push(data);
    let cut = usize::from(cut).min(data.len());
    let mut split = RequestScanner::new(LIMITS);
    let split_verdict = split
        .push(&data[..cut])
        .and_then(|()| split.push(&data[cut..]));
    assert_eq!(verdict, split_verdict);
});
