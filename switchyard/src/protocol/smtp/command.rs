//! Client command lines: where each one ends, what it says, and the reply to one that does
//! not parse.
//!
//! Framing is hand-written: the proxy must know exactly where every line ends so that
//! pipelined commands, and the bytes after a `DATA` or `BDAT` command, stay in order and
//! are never read twice; and it enforces RFC 5321's 512-byte command line. What a line
//! says is read by `smtp-proto` (Stalwart's parser).

use std::borrow::Cow;

use smtp_proto::{Error, Request};

/// Longest command line, `CRLF` included (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;

/// Where the first command line of a buffer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// A complete line of this many bytes, its `LF` included.
    Complete(usize),
    /// No line end yet, and still within the limit.
    Incomplete,
    /// More than [`MAX_COMMAND_LINE`] bytes without a line end.
    TooLong,
}

/// Finds the end of the first command line of `buffer`.
pub fn frame(buffer: &[u8]) -> Line {
    let window = &buffer[..buffer.len().min(MAX_COMMAND_LINE)];
    match memchr::memchr(b'\n', window) {
        Some(at) => Line::Complete(at + 1),
        None if buffer.len() >= MAX_COMMAND_LINE => Line::TooLong,
        None => Line::Incomplete,
    }
}

/// Parses one complete command line (its line end included).
pub fn parse(line: &[u8]) -> Result<Request<Cow<'_, str>>, Error> {
    Request::parse(&mut line.iter())
}

/// The reply to a command line that does not parse: the command is refused, the session
/// goes on (as a mail server does).
pub fn refusal(error: &Error) -> String {
    match error {
        Error::UnknownCommand | Error::NeedsMoreData { .. } => {
            "500 5.5.1 Command unrecognized\r\n".into()
        }
        Error::InvalidSenderAddress => "501 5.1.7 Bad sender address syntax\r\n".into(),
        Error::InvalidRecipientAddress => "501 5.1.3 Bad recipient address syntax\r\n".into(),
        Error::SyntaxError { syntax } => format!("501 5.5.4 Syntax: {syntax}\r\n"),
        Error::InvalidParameter { param } => format!("501 5.5.4 Invalid parameter {param}\r\n"),
        Error::UnsupportedParameter { .. } => "555 5.5.4 Unsupported parameter\r\n".into(),
        Error::ResponseTooLong | Error::InvalidResponse { .. } => {
            "500 5.5.2 Syntax error\r\n".into()
        }
    }
}

/// The domain of a mailbox (`user@domain`), in the form routes compare: A-labels, lower
/// case, no trailing dot. `None` for a mailbox without one (`postmaster`) or a domain that
/// is not a valid host name.
pub fn domain_of(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() {
        return None;
    }
    if domain.is_ascii() {
        return Some(domain.to_ascii_lowercase());
    }
    idna::domain_to_ascii(domain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_at_their_line_feed_within_the_limit() {
        assert_eq!(frame(b"MAIL FROM:<a@b>\r\nRCPT"), Line::Complete(17));
        assert_eq!(frame(b"NOOP"), Line::Incomplete);
        let long = vec![b'x'; MAX_COMMAND_LINE];
        assert_eq!(frame(&long), Line::TooLong);
        let mut just = vec![b'x'; MAX_COMMAND_LINE - 2];
        just.extend_from_slice(b"\r\n");
        assert_eq!(frame(&just), Line::Complete(MAX_COMMAND_LINE));
    }

    #[test]
    fn captured_commands_parse() {
        // As swaks sends them.
        let Ok(Request::Mail { from }) =
            parse(b"MAIL FROM:<sender@example.net> SIZE=1234 BODY=8BITMIME\r\n")
        else {
            panic!("MAIL")
        };
        assert_eq!(from.address, "sender@example.net");
        assert_eq!(from.size, 1234);
        let Ok(Request::Rcpt { to }) = parse("RCPT TO:<usér@bücher.example>\r\n".as_bytes())
        else {
            panic!("RCPT")
        };
        assert_eq!(
            domain_of(&to.address).as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert!(matches!(
            parse(b"BDAT 100 LAST\r\n"),
            Ok(Request::Bdat {
                chunk_size: 100,
                is_last: true
            })
        ));
        assert!(matches!(parse(b"XYZZY\r\n"), Err(Error::UnknownCommand)));
        assert!(refusal(&Error::UnknownCommand).starts_with("500 "));
    }

    #[test]
    fn domains_compare_in_one_form() {
        assert_eq!(domain_of("a@Example.ORG.").as_deref(), Some("example.org"));
        assert_eq!(domain_of("postmaster"), None);
        assert_eq!(domain_of("a@"), None);
    }
}
