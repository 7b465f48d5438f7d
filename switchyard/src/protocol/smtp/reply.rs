//! Server replies: where a (multi-line) reply ends and its code, and the facts the proxy
//! reads from one (the extensions of an EHLO reply, the queue id of a final reply).
//!
//! Hand-written: the proxy forwards a server's reply to the client byte for byte and pairs
//! each with the one command it answers, so it needs the exact extent of a reply in a
//! buffer that may hold part of the next; `smtp-proto`'s reply parser gives the parsed
//! reply, not where it ended, and knows no `XCLIENT`.

/// Largest reply accepted from a server (all its lines).
pub const MAX_REPLY: usize = 64 * 1024;

/// A complete reply at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// Its length in bytes, the last line end included.
    pub len: usize,
    /// Its three-digit code (that of its last line).
    pub code: u16,
}

impl Reply {
    /// Whether it is a positive completion (2xx).
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Whether the server is closing the session (`421`): no reply to a later command
    /// may come.
    pub fn is_closing(&self) -> bool {
        self.code == 421
    }
}

/// A server reply that is not SMTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadReply {
    /// A line that does not start with a three-digit code.
    #[error("reply line without a three-digit code")]
    NoCode,
    /// Longer than [`MAX_REPLY`].
    #[error("reply longer than {MAX_REPLY} bytes")]
    TooLong,
}

/// Finds the first complete reply of `buffer`: lines `ddd-text` continue it, the line
/// `ddd text` (or `ddd`) ends it. `None` while incomplete.
pub fn frame(buffer: &[u8]) -> Result<Option<Reply>, BadReply> {
    let mut start = 0;
    loop {
        let rest = &buffer[start..];
        let Some(end) = memchr::memchr(b'\n', rest) else {
            if buffer.len() > MAX_REPLY {
                return Err(BadReply::TooLong);
            }
            if rest.len() >= 3 && code_of(rest).is_none() {
                return Err(BadReply::NoCode);
            }
            return Ok(None);
        };
        let line = &rest[..end];
        let code = code_of(line).ok_or(BadReply::NoCode)?;
        start += end + 1;
        if start > MAX_REPLY {
            return Err(BadReply::TooLong);
        }
        if line.get(3) != Some(&b'-') {
            return Ok(Some(Reply { len: start, code }));
        }
    }
}

fn code_of(line: &[u8]) -> Option<u16> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&digits[0]) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u16::from(*d - b'0')))
}

/// The parameters of the extension `keyword` (case-insensitive) when an EHLO reply offers
/// it (empty when it has none).
pub fn extension(reply: &[u8], keyword: &str) -> Option<String> {
    let text = String::from_utf8_lossy(reply);
    text.lines().skip(1).find_map(|line| {
        let line = line.get(4..)?.trim_end_matches('\r');
        let (word, params) = line.split_once(' ').unwrap_or((line, ""));
        word.eq_ignore_ascii_case(keyword)
            .then(|| params.to_string())
    })
}

/// The queue id a server names in its final reply to a message (`250 2.0.0 Ok: queued as
/// 4Xyz`, Postfix and most others), if it names one.
pub fn queue_id(reply: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(reply);
    let at = text.find("queued as ")? + "queued as ".len();
    let id: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        .collect();
    (!id.is_empty()).then_some(id)
}

/// The code class of a reply code, as metrics count it (`2xx` ...).
pub fn class(code: u16) -> &'static str {
    match code / 100 {
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Postfix's EHLO reply, as captured.
    const POSTFIX_EHLO: &[u8] = b"250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n";

    #[test]
    fn multi_line_replies_are_framed_whole() {
        let mut buffer = POSTFIX_EHLO.to_vec();
        buffer.extend_from_slice(b"250 2.1.0 Ok\r\n");
        assert_eq!(
            frame(&buffer),
            Ok(Some(Reply {
                len: POSTFIX_EHLO.len(),
                code: 250
            }))
        );
        assert_eq!(frame(&POSTFIX_EHLO[..30]), Ok(None));
        assert_eq!(frame(b"354\r\n"), Ok(Some(Reply { len: 5, code: 354 })));
        assert_eq!(frame(b"hello\r\n"), Err(BadReply::NoCode));
        assert_eq!(frame(b"xyz"), Err(BadReply::NoCode));
        assert_eq!(frame(&vec![b'2'; MAX_REPLY + 1]), Err(BadReply::TooLong));
    }

    #[test]
    fn extensions_and_queue_ids_are_read() {
        assert!(
            extension(POSTFIX_EHLO, "xclient")
                .is_some_and(|params| params.starts_with("NAME ADDR"))
        );
        assert_eq!(extension(POSTFIX_EHLO, "SMTPUTF8").as_deref(), Some(""));
        assert_eq!(extension(POSTFIX_EHLO, "STARTTLS"), None);
        assert_eq!(
            queue_id(b"250 2.0.0 Ok: queued as 4Vq3Lw0p1Nz9\r\n").as_deref(),
            Some("4Vq3Lw0p1Nz9")
        );
        assert_eq!(queue_id(b"250 OK\r\n"), None);
    }
}
