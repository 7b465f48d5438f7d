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
use switchyard::protocol::postgres::quiet::{is_quiet, respell_numbers, scan_is_quiet};
use switchyard::protocol::postgres::scanner::Scan;

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    if let Some(scan) = Scan::new(&sql) {
        for statement in scan.statements() {
            statement.words().for_each(|word| drop(word.name()));
        }
        drop(scan.leading_comments());
    }
    let mut respelled = Vec::new();
    for digits in ["0", "98765"] {
        respell_numbers(sql.as_bytes(), digits.as_bytes(), &mut respelled);
        let respelled = std::str::from_utf8(&respelled).expect("digits for digits");
        let (original, other) = (scan_is_quiet(&sql), scan_is_quiet(respelled));
        if original != other {
            let refused = if original { respelled } else { &*sql };
            assert!(Scan::new(refused).is_none(), "{sql:?} and {respelled:?}");
        }
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
