//! Fuzzes SMTP command framing and parsing (`switchyard::protocol::smtp::command`): any
//! bytes must frame within the 512-byte limit and parse (or be refused with a reply)
//! without panicking, and a recipient's domain, when there is one, is in routing form.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::smtp::command::{self, Line, MAX_COMMAND_LINE};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Line::Complete(len) = command::frame(rest) {
        assert!(len <= MAX_COMMAND_LINE && rest[len - 1] == b'\n');
        let line = &rest[..len];
        match command::parse(line) {
            Ok(smtp_proto::Request::Rcpt { to }) => {
                if let Some(domain) = command::domain_of(&to.address) {
                    assert!(domain.is_ascii() && !domain.bytes().any(|b| b.is_ascii_uppercase()));
                }
            }
            Ok(_) => {}
            Err(error) => assert!(command::refusal(&error).ends_with("\r\n")),
        }
        rest = &rest[len..];
    }
});
