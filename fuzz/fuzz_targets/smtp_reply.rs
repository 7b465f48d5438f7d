//! Fuzzes SMTP reply framing (`switchyard::protocol::smtp::reply`): any bytes, fed whole
//! and a byte at a time as from a socket, frame the same replies without panicking, each
//! within the reply limit and ending with its line end; the facts read from a reply
//! (extensions, queue id) never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::smtp::reply::{self, MAX_REPLY};

fn replies(data: &[u8]) -> Vec<(usize, u16)> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Ok(Some(found)) = reply::frame(rest) {
        assert!(found.len <= MAX_REPLY && rest[found.len - 1] == b'\n');
        assert!((200..600).contains(&found.code));
        let _ = reply::extension(&rest[..found.len], "XCLIENT");
        let _ = reply::queue_id(&rest[..found.len]);
        out.push((found.len, found.code));
        rest = &rest[found.len..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let whole = replies(data);
    // A prefix never frames a reply that the whole does not.
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    for (i, found) in replies(&data[..split]).iter().enumerate() {
        assert_eq!(whole.get(i), Some(found));
    }
});
