//! Reading and writing the protocol's field encodings: fixed little-endian integers,
//! NUL-terminated strings, and length-encoded integers and strings (one byte below 0xFB,
//! else 0xFC/0xFD/0xFE and 2, 3 or 8 bytes; 0xFB is NULL in a row).

use super::CodecError;

/// The NULL marker of a text result row.
pub const NULL: u8 = 0xFB;

/// Reads fields off the front of a payload; every read checks the length first, so a
/// short or hostile payload is a [`CodecError::Malformed`], never a panic.
#[derive(Debug, Clone, Copy)]
pub struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The next byte, not consumed.
    pub fn peek(&self) -> Option<u8> {
        self.bytes.first().copied()
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if self.bytes.len() < n {
            return Err(CodecError::Malformed(what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }

    /// A 2-byte little-endian integer.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, CodecError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A 4-byte little-endian integer.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated string, without its NUL.
    pub fn cstr(&mut self, what: &'static str) -> Result<&'a [u8], CodecError> {
        let end = memchr::memchr(0, self.bytes).ok_or(CodecError::Malformed(what))?;
        let text = &self.bytes[..end];
        self.bytes = &self.bytes[end + 1..];
        Ok(text)
    }

    /// A NUL-terminated string, or everything left if no NUL comes (some servers end the
    /// handshake's plugin name with the packet instead).
    pub fn cstr_or_rest(&mut self) -> &'a [u8] {
        match memchr::memchr(0, self.bytes) {
            Some(end) => {
                let text = &self.bytes[..end];
                self.bytes = &self.bytes[end + 1..];
                text
            }
            None => self.rest(),
        }
    }

    /// A length-encoded integer; NULL (0xFB) and 0xFF are not integers.
    pub fn lenenc_int(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let first = self.u8(what)?;
        let width = match first {
            0..=0xFA => return Ok(first.into()),
            0xFC => 2,
            0xFD => 3,
            0xFE => 8,
            _ => return Err(CodecError::Malformed(what)),
        };
        let bytes = self.take(width, what)?;
        let mut value = [0u8; 8];
        value[..width].copy_from_slice(bytes);
        Ok(u64::from_le_bytes(value))
    }

    /// A length-encoded string.
    pub fn lenenc_bytes(&mut self, what: &'static str) -> Result<&'a [u8], CodecError> {
        let length = self.lenenc_int(what)?;
        let length = usize::try_from(length).map_err(|_| CodecError::Malformed(what))?;
        self.take(length, what)
    }

    /// A length-encoded string, or `None` for the NULL marker (a text row's value).
    pub fn lenenc_or_null(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, CodecError> {
        if self.peek() == Some(NULL) {
            self.bytes = &self.bytes[1..];
            return Ok(None);
        }
        self.lenenc_bytes(what).map(Some)
    }
}

/// `bytes` as UTF-8, or a malformed-packet error naming the field.
pub fn utf8<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str, CodecError> {
    std::str::from_utf8(bytes).map_err(|_| CodecError::Malformed(what))
}

/// Appends a length-encoded integer.
pub fn put_lenenc_int(out: &mut Vec<u8>, value: u64) {
    match value {
        0..=0xFA => out.push(value as u8),
        0xFB..=0xFFFF => {
            out.push(0xFC);
            out.extend_from_slice(&(value as u16).to_le_bytes());
        }
        0x1_0000..=0xFF_FFFF => {
            out.push(0xFD);
            out.extend_from_slice(&(value as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xFE);
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
}

/// Appends a length-encoded string.
pub fn put_lenenc_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_lenenc_int(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends a NUL-terminated string; a NUL inside `bytes` is dropped, since it would end
/// the field early.
pub fn put_cstr(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend(bytes.iter().filter(|&&b| b != 0));
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_encoded_integers_at_every_width() {
        for (value, encoded) in [
            (0u64, &[0u8][..]),
            (250, &[250]),
            (251, &[0xFC, 251, 0]),
            (0xFFFF, &[0xFC, 0xFF, 0xFF]),
            (0x1_0000, &[0xFD, 0, 0, 1]),
            (0xFF_FFFF, &[0xFD, 0xFF, 0xFF, 0xFF]),
            (0x100_0000, &[0xFE, 0, 0, 0, 1, 0, 0, 0, 0]),
            (
                u64::MAX,
                &[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
            ),
        ] {
            let mut out = Vec::new();
            put_lenenc_int(&mut out, value);
            assert_eq!(out, encoded, "{value}");
            let mut cursor = Cursor::new(encoded);
            assert_eq!(cursor.lenenc_int("n").ok(), Some(value));
            assert!(cursor.is_empty());
        }
    }

    #[test]
    fn strings_nulls_and_short_input() {
        let mut out = Vec::new();
        put_lenenc_bytes(&mut out, b"def");
        out.push(NULL);
        put_cstr(&mut out, b"ro\0ot");
        let mut cursor = Cursor::new(&out);
        assert_eq!(cursor.lenenc_or_null("a").ok(), Some(Some(&b"def"[..])));
        assert_eq!(cursor.lenenc_or_null("b").ok(), Some(None));
        assert_eq!(cursor.cstr("c").ok(), Some(&b"root"[..]));
        assert!(cursor.is_empty());
        for bad in [
            &[0xFC, 1][..],
            &[0xFF],
            &[0xFB],
            &[5, b'a'],
            &[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
        ] {
            assert!(Cursor::new(bad).lenenc_bytes("x").is_err(), "{bad:?}");
        }
        assert!(Cursor::new(b"no nul").cstr("x").is_err());
        assert_eq!(Cursor::new(b"no nul").cstr_or_rest(), b"no nul");
        assert!(Cursor::new(&[1]).u16("x").is_err());
        assert!(Cursor::new(&[1, 2, 3]).u32("x").is_err());
    }
}
