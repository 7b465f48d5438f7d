//! Fuzzes the end of an SMTP DATA body (`switchyard::protocol::smtp::data`): any bytes,
//! split anywhere into reads, give the same end (or refusal) as when scanned whole; the
//! end is the first `CRLF.CRLF` (the DATA command's CRLF counting as the first); and BDAT
//! chunks dot-stuffed into a body end exactly at the end the stuffer writes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::smtp::data::{DotStuffer, EndScanner, Scan};

fn scan_split(data: &[u8], split: usize) -> Scan {
    let mut scanner = EndScanner::default();
    match scanner.scan(&data[..split]) {
        Scan::Body => match scanner.scan(&data[split..]) {
            Scan::Body => Scan::Body,
            Scan::End(n) => Scan::End(split + n),
            Scan::Refused(at, why) => Scan::Refused(split + at, why),
        },
        other => other,
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let whole = EndScanner::default().scan(data);
    assert_eq!(scan_split(data, split), whole);
    if let Scan::End(n) = whole {
        let framed = [&b"\r\n"[..], &data[..n]].concat();
        let first = framed.windows(5).position(|w| w == b"\r\n.\r\n");
        assert_eq!(first.map(|p| p + 5), Some(framed.len()));
    }
    let mut stuffer = DotStuffer::default();
    let mut body = Vec::new();
    if stuffer.stuff(data, &mut body).is_ok() {
        body.extend_from_slice(stuffer.finish());
        assert_eq!(EndScanner::default().scan(&body), Scan::End(body.len()));
    }
});
