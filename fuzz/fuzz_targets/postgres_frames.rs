//! Fuzzes the message framing and the extended-protocol messages transaction pooling
//! rewrites: any bytes must frame and parse without panicking, a renamed Parse or Bind must
//! read back with the new name and everything else unchanged, and a downgraded FATAL must
//! keep its fields.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::postgres::errors::error_field;
use switchyard::protocol::postgres::frames::{
    FrameReader, Parse, bind_renamed, bind_statement, downgrade_fatal, query_text, target,
};

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::new(1 << 20);
    reader.feed(data);
    while let Ok(Some(frame)) = reader.next_frame() {
        let body = frame.body();
        let _ = query_text(body);
        let _ = target(body);
        if let Ok(parse) = Parse::read(body) {
            let renamed = parse.renamed("sy_x");
            let again = Parse::read(renamed.body()).expect("a renamed Parse reads back");
            assert_eq!((again.name, again.query, again.types), (&b"sy_x"[..], parse.query, parse.types));
        }
        if bind_statement(body).is_ok() {
            let renamed = bind_renamed(body, "sy_x").expect("a Bind that reads renames");
            assert_eq!(bind_statement(renamed.body()).ok(), Some(&b"sy_x"[..]));
        }
        if let Some(downgraded) = downgrade_fatal(body) {
            for field in [b'C', b'M'] {
                assert_eq!(error_field(downgraded.body(), field), error_field(body, field));
            }
        }
    }
});
