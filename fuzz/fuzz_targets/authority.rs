//! Fuzzes the request authority parser (`Host`, `:authority`, absolute-form targets): any
//! bytes must be checked without panicking; read as a header value they must get the same
//! verdict; an accepted authority's canonical form must be accepted unchanged. Route host
//! patterns (config text) must convert or be refused without panicking.

#![no_main]

use hyper::header::HeaderValue;
use libfuzzer_sys::fuzz_target;
use switchyard::authority::{Authority, route_pattern};

fuzz_target!(|data: &[u8]| {
    let parsed = Authority::parse(data);
    if let Ok(value) = HeaderValue::from_bytes(data) {
        assert_eq!(Authority::from_header(&value), parsed);
    }
    if let Ok(authority) = &parsed {
        assert_eq!(Authority::parse(authority.as_str().as_bytes()).as_ref(), Ok(authority));
        assert!(authority.as_str().starts_with(authority.host()));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = route_pattern(text);
    }
});
