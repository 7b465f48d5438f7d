//! Fuzzes the read/write split's SQL classification: any text must classify without
//! panicking, whatever PostgreSQL's grammar rejects must go to the primary (bar the unquoted
//! `SET switchyard.route = primary` the proxy accepts), and a reported `SET` must re-run as
//! the same change (the pooler replays that text on other server connections).

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::postgres::classify::{Access, Rules, SessionChange, classify};

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    let rules = Rules::new(["my_writer"]);
    let classification = classify(&sql, &rules);
    if pg_query::parse(&sql, 0).is_err() && classification.session.is_empty() {
        assert_eq!(classification.access, Access::Write);
    }
    for change in &classification.session {
        if let SessionChange::Set { statement, .. } = change {
            assert_eq!(classify(statement, &rules).session, vec![change.clone()]);
        }
    }
});
