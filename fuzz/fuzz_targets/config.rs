//! Config loading must turn any text into a config or a list of errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = switchyard::config::load_str(std::path::Path::new("fuzz.toml"), text);
    }
});
