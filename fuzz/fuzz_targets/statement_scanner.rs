//! Fuzzes the transaction pooler's statement scanner and its pre-check of session effects:
//! any text must scan and pre-check without panicking, and the pre-check must be sound:
//! text it passes as quiet, the full classification finds no session change, no pin and
//! nothing untracked in (unless PostgreSQL's grammar rejects the text, and then so does the
//! server). Texts of one shape (differing only in digit runs that stand alone) must get
//! one answer from the scan, unless the scanner refuses one, since the pre-check
//! remembers answers by shape.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::postgres::classify::{Rules, classify};
use switchyard::protocol::postgres::quiet::{is_quiet, respelling_keeps_the_answer};
use switchyard::protocol::postgres::scanner::Scan;

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    if let Some(scan) = Scan::new(&sql) {
        for statement in scan.statements() {
            statement.words().for_each(|word| drop(word.name()));
        }
        drop(scan.leading_comments());
    }
    let mut scratch = Vec::new();
    for digits in ["0", "98765"] {
        assert_eq!(respelling_keeps_the_answer(&sql, digits, &mut scratch), Ok(()));
    }
    if is_quiet(sql.as_bytes()) {
        let classification = classify(&sql, &Rules::default());
        assert!(
            classification.session.is_empty() && classification.pins.is_none(),
            "{sql:?}: {classification:?}"
        );
        assert!(
            !classification.untracked || pg_query::parse(&sql, 0).is_err(),
            "{sql:?}: {classification:?}"
        );
    }
});
