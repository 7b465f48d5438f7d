//! Fuzzes the `tls_passthrough` ClientHello reader: any bytes must give an SNI or an error
//! without panicking, and on success every byte read is handed back for forwarding.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use switchyard::tls::read_client_hello;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let (head, tail) = data.split_at(
        data.len()
            .min(usize::from(data.first().copied().unwrap_or(0))),
    );
    let mut rest = tail;
    let result = runtime().block_on(read_client_hello(
        &mut rest,
        bytes::Bytes::copy_from_slice(head),
    ));
    if let Ok((_, forwarded)) = result {
        assert!(data.starts_with(&forwarded));
    }
});
