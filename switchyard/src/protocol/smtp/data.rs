//! The end of a `DATA` body: `CRLF.CRLF`, found across any split of the bytes into reads,
//! with the limits on the way (line length, bare line ends).
//!
//! Hand-written because the proxy streams the body to the server as it arrives and must
//! stop at exactly the byte the server will stop at: dot-stuffed lines pass untouched, and
//! a body whose end the server could read differently (a bare `LF` or `CR`, the
//! 2023 "SMTP smuggling" ambiguity) is refused rather than forwarded.

/// Longest text line of a body, `CRLF` included (RFC 5321 §4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 1000;

/// Where the scanner is within the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line.
    LineStart,
    /// After a `.` at the start of a line.
    Dot,
    /// After `.CR` at the start of a line.
    DotCr,
    /// Within a line.
    Text,
    /// After a `CR`.
    Cr,
}

/// Why a body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A line longer than [`MAX_TEXT_LINE`].
    LineTooLong,
    /// An `LF` without `CR`, or a `CR` without `LF`.
    BareLineEnd,
}

/// What one call of [`EndScanner::scan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The whole chunk is body; no end yet.
    Body,
    /// The body ends after this many bytes of the chunk (the final `CRLF.CRLF`'s `.CRLF`
    /// included).
    End(usize),
    /// The body breaks a rule at this byte of the chunk.
    Refused(usize, Refusal),
}

/// Scans a `DATA` body chunk by chunk; starts right after the `DATA` command's line end.
#[derive(Debug, Clone)]
pub struct EndScanner {
    state: State,
    line: usize,
}

impl Default for EndScanner {
    fn default() -> Self {
        Self {
            state: State::LineStart,
            line: 0,
        }
    }
}

impl EndScanner {
    /// Scans the next chunk of the body.
    pub fn scan(&mut self, chunk: &[u8]) -> Scan {
        for (i, &byte) in chunk.iter().enumerate() {
            self.line += 1;
            if self.line > MAX_TEXT_LINE {
                return Scan::Refused(i, Refusal::LineTooLong);
            }
            self.state = match (self.state, byte) {
                (State::DotCr, b'\n') => {
                    self.state = State::LineStart;
                    self.line = 0;
                    return Scan::End(i + 1);
                }
                (State::Cr, b'\n') => {
                    self.line = 0;
                    State::LineStart
                }
                (State::Cr | State::DotCr, _) | (_, b'\n') => {
                    return Scan::Refused(i, Refusal::BareLineEnd);
                }
                (State::Dot, b'\r') => State::DotCr,
                (_, b'\r') => State::Cr,
                (State::LineStart, b'.') => State::Dot,
                _ => State::Text,
            };
        }
        Scan::Body
    }

    /// A [`Skipper`] that goes on from where this scanner stopped (the refused byte is the
    /// first it is fed).
    pub fn skipper(&self) -> Skipper {
        let matched = match self.state {
            State::Text => 0,
            State::Cr => 1,
            State::LineStart => 2,
            State::Dot => 3,
            State::DotCr => 4,
        };
        Skipper { matched }
    }
}

/// Skips a refused body to its end without rules, so that the session can answer it and
/// go on: returns how many bytes of `chunk` belong to the body, or `None` for all of it.
#[derive(Debug, Clone, Default)]
pub struct Skipper {
    /// Matched bytes of `CRLF.CRLF`.
    matched: usize,
}

impl Skipper {
    /// Feeds the next chunk.
    pub fn skip(&mut self, chunk: &[u8]) -> Option<usize> {
        const END: &[u8] = b"\r\n.\r\n";
        for (i, &byte) in chunk.iter().enumerate() {
            self.matched = if byte == END[self.matched] {
                self.matched + 1
            } else if byte == END[0] {
                1
            } else {
                0
            };
            if self.matched == END.len() {
                return Some(i + 1);
            }
        }
        None
    }
}

/// Turns BDAT chunks into a `DATA` body for a server without `CHUNKING`: dot-stuffs
/// lines that start with `.`, and holds chunks to the rules a `DATA` body must follow, so
/// that the server finds the end exactly where the proxy puts it.
#[derive(Debug, Clone, Default)]
pub struct DotStuffer {
    /// Bytes of the current line so far, as stuffed.
    line: usize,
    /// The last byte was a `CR`.
    cr: bool,
}

impl DotStuffer {
    /// Appends `chunk`, dot-stuffed, to `out`.
    pub fn stuff(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), Refusal> {
        out.reserve(chunk.len());
        for &byte in chunk {
            if self.cr != (byte == b'\n') {
                return Err(Refusal::BareLineEnd);
            }
            if self.line == 0 && byte == b'.' {
                out.push(b'.');
                self.line += 1;
            }
            out.push(byte);
            self.line += 1;
            // Room is kept for the line end, which `finish` may have to add.
            let room = match byte {
                b'\n' => 0,
                b'\r' => 1,
                _ => 2,
            };
            if self.line + room > MAX_TEXT_LINE {
                return Err(Refusal::LineTooLong);
            }
            self.cr = byte == b'\r';
            if byte == b'\n' {
                self.line = 0;
            }
        }
        Ok(())
    }

    /// The end of the body: the last line ended if it was not, then `.CRLF`.
    pub fn finish(&self) -> &'static [u8] {
        match (self.line, self.cr) {
            (0, _) => b".\r\n",
            (_, true) => b"\n.\r\n",
            _ => b"\r\n.\r\n",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        b"Subject: t\r\n\r\n..leading dot\r\n.\r\n-not the end: stuffed above\r\n\r\n.\r\nQUIT\r\n";

    fn end_in_one(body: &[u8]) -> Scan {
        EndScanner::default().scan(body)
    }

    #[test]
    fn the_end_is_the_first_lone_dot_line() {
        // `..leading dot` is stuffed; the `.` line after it ends the body.
        let end = BODY
            .windows(5)
            .position(|w| w == b"\r\n.\r\n")
            .map(|p| p + 5);
        assert_eq!(end_in_one(BODY), Scan::End(end.unwrap_or_default()));
        assert_eq!(end_in_one(b".\r\n"), Scan::End(3));
        assert_eq!(end_in_one(b"a\r\n..\r\n"), Scan::Body);
    }

    #[test]
    fn every_split_finds_the_same_end() {
        let whole = match end_in_one(BODY) {
            Scan::End(n) => n,
            other => panic!("{other:?}"),
        };
        for a in 0..BODY.len() {
            for b in a..BODY.len() {
                let mut scanner = EndScanner::default();
                let mut at = 0;
                let mut found = None;
                for (from, to) in [(0, a), (a, b), (b, BODY.len())] {
                    if let Scan::End(n) = scanner.scan(&BODY[from..to]) {
                        found = Some(from + n);
                        break;
                    }
                    at = to;
                }
                assert_eq!(found, Some(whole), "split at {a},{b} (scanned to {at})");
            }
        }
    }

    #[test]
    fn bare_line_ends_and_long_lines_are_refused() {
        assert_eq!(
            end_in_one(b"a\n.\n"),
            Scan::Refused(1, Refusal::BareLineEnd)
        );
        assert_eq!(
            end_in_one(b"a\r.\r\n"),
            Scan::Refused(2, Refusal::BareLineEnd)
        );
        let mut long = vec![b'x'; MAX_TEXT_LINE - 2];
        long.extend_from_slice(b"\r\n");
        assert_eq!(end_in_one(&long), Scan::Body);
        long.insert(0, b'x');
        assert_eq!(
            end_in_one(&long),
            Scan::Refused(MAX_TEXT_LINE, Refusal::LineTooLong)
        );
    }

    #[test]
    fn chunks_become_a_body_that_ends_where_they_do() {
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::new();
        let chunks: [&[u8]; 3] = [b".a\r\n.", b"\r\nb\r", b"\nlast"];
        for chunk in chunks {
            assert_eq!(stuffer.stuff(chunk, &mut out), Ok(()));
        }
        out.extend_from_slice(stuffer.finish());
        assert_eq!(out, b"..a\r\n..\r\nb\r\nlast\r\n.\r\n");
        let mut scanner = EndScanner::default();
        assert_eq!(scanner.scan(&out), Scan::End(out.len()));
        assert_eq!(
            DotStuffer::default().stuff(b"a\n.\n", &mut Vec::new()),
            Err(Refusal::BareLineEnd)
        );
    }

    #[test]
    fn a_skipped_body_ends_at_crlf_dot_crlf() {
        let mut scanner = EndScanner::default();
        assert_eq!(
            scanner.scan(b"xx\n"),
            Scan::Refused(2, Refusal::BareLineEnd)
        );
        let mut skipper = scanner.skipper();
        assert_eq!(skipper.skip(b"\n.\nyy\r\n."), None);
        assert_eq!(skipper.skip(b"\r\nQUIT\r\n"), Some(2));
        // Refused right at a line start: the line end before it counts.
        let mut scanner = EndScanner::default();
        assert!(matches!(scanner.scan(b"a\r\n\n"), Scan::Refused(3, _)));
        let mut skipper = scanner.skipper();
        assert_eq!(skipper.skip(b"\n"), None);
        let mut scanner = EndScanner::default();
        assert_eq!(scanner.scan(b"a\r\n"), Scan::Body);
        assert_eq!(scanner.skipper().skip(b".\r\n"), Some(3));
    }
}
