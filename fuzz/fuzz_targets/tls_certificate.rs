//! Fuzzes the certificate reader behind SNI names and client identities: any bytes must
//! parse or fail without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = switchyard::tls::cert_facts(data);
});
