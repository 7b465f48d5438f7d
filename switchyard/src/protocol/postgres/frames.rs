//! Protocol messages after the startup, as transaction pooling needs them: read without
//! losing bytes when a read is abandoned (the pooler waits on the client and the server at
//! once), and the few extended-protocol messages whose statement names the proxy rewrites.
//!
//! Hand-written because the proxy rewrites these messages byte for byte (statement names
//! in Parse/Bind/Describe/Close) and must know where every message ends to track
//! transaction boundaries; no crate exposes the wire framing at that level.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncRead;

use super::codec::CodecError;

/// One whole message the proxy made or kept: type byte, length word and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(pub Bytes);

impl Frame {
    /// The type byte.
    pub fn tag(&self) -> u8 {
        self.message().tag()
    }

    /// The body, after the length word.
    pub fn body(&self) -> &[u8] {
        self.message().body()
    }

    /// Builds a frame from its type byte and body.
    pub fn new(tag: u8, body: &[u8]) -> Self {
        Self(Bytes::from(super::codec::with_length(Some(tag), body)))
    }

    /// The frame as a [`Message`], the form the conversation reads.
    pub fn message(&self) -> Message<'_> {
        Message(&self.0)
    }
}

/// One whole message where it lies (a [`FrameReader`]'s buffer, a [`Frame`]): type byte,
/// length word and body. Messages read are looked at in place and copied once, into the
/// buffer bound for the other side, never split off or counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a>(pub &'a [u8]);

impl<'a> Message<'a> {
    /// The type byte.
    pub fn tag(self) -> u8 {
        self.0[0]
    }

    /// The body, after the length word.
    pub fn body(self) -> &'a [u8] {
        &self.0[5..]
    }

    /// A copy that outlives the buffer it lies in.
    pub fn to_frame(self) -> Frame {
        Frame(Bytes::copy_from_slice(self.0))
    }
}

/// Room taken for a connection's messages when it has none.
const INITIAL_BUFFER: usize = 8 * 1024;

/// Reads messages from one side of a connection into a buffer. `fill` is a single read
/// (safe to abandon in a `select!`); `next_frame` takes whole messages without waiting.
/// `LASTING`: the buffer is the connection's for its life (see [`ServerFrameReader`]).
#[derive(Debug)]
pub struct FrameReader<const LASTING: bool = false> {
    buf: BytesMut,
    /// Bytes at the front of `buf` already taken as messages. They stay until the buffer
    /// is read into again, so that a message taken can be lent where it lies. A word,
    /// beside `limit`, so that the reader stays as small as an idle pooled client needs.
    taken: u32,
    /// The longest message taken. A message's length is a 32-bit word, so no larger limit
    /// could apply (and the reader is part of what an idle pooled client keeps).
    limit: u32,
}

/// The reader of a connection that keeps its buffer for its life (a pooled server
/// connection): the buffer comes from the lasting heap (`memory`). Taken in the main heap
/// during a burst of clients, the few server buffers would each pin a page of the
/// clients' freed buffers after the burst.
pub type ServerFrameReader = FrameReader<true>;

impl FrameReader {
    /// A reader refusing messages longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self::empty(limit)
    }
}

impl ServerFrameReader {
    /// [`FrameReader::new`] for a pooled server connection.
    pub fn lasting(limit: usize) -> Self {
        Self::empty(limit)
    }
}

impl<const LASTING: bool> FrameReader<LASTING> {
    fn empty(limit: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            taken: 0,
            limit: word_limit(limit),
        }
    }

    /// Reads what the stream has; `Ok(0)` is the end of the stream.
    pub async fn fill<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx, stream)).await
    }

    /// [`FrameReader::fill`] as a poll, for a task that waits on more than one stream.
    pub fn poll_fill<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        stream: &mut S,
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.drop_taken();
        if self.buf.capacity() - self.buf.len() < 4096 {
            crate::memory::lasting_if(LASTING, || self.buf.reserve(INITIAL_BUFFER));
        }
        tokio_util::io::poll_read_buf(std::pin::Pin::new(stream), cx, &mut self.buf)
    }

    /// Like [`FrameReader::fill`], for a wait that may last (a client between
    /// transactions): while the stream has nothing to read and no message is partly
    /// read, the buffer is given back and `on_wait` runs, so that an idle connection holds
    /// no heap buffer (see [`crate::net::poll_read_unbuffered`]).
    /// A poll, so that the wait between transactions (where pooled clients spend their
    /// time) keeps no future of its own for the read.
    pub fn poll_fill_idle<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        stream: &mut S,
        on_wait: &mut impl FnMut(),
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.drop_taken();
        crate::net::poll_fill_idle(cx, &mut self.buf, INITIAL_BUFFER, stream, on_wait)
    }

    /// The next whole message in the buffer, if one has arrived; taken, so the next call
    /// gives the one after.
    pub fn next_frame(&mut self) -> Result<Option<Message<'_>>, CodecError> {
        let Some(length) = self.front_length()? else {
            return Ok(None);
        };
        // At most `u32::MAX` (see `word_limit`).
        let total = length + 1;
        if self.taken.checked_add(total).is_none() {
            // No message taken before is still lent: this call borrows the reader whole.
            self.drop_taken();
        }
        let start = self.taken as usize;
        self.taken += total;
        Ok(Some(Message(&self.buf[start..self.taken as usize])))
    }

    /// The next whole message in the buffer, if one has arrived, left there: the next
    /// [`FrameReader::next_frame`] takes it.
    pub fn peek_frame(&self) -> Result<Option<Message<'_>>, CodecError> {
        let start = self.taken as usize;
        let length = self.front_length()?;
        Ok(length.map(|length| Message(&self.buf[start..start + length as usize + 1])))
    }

    /// The length word of the message after those taken, once all of it has arrived.
    fn front_length(&self) -> Result<Option<u32>, CodecError> {
        let start = self.taken as usize;
        let Some(head) = self.buf.get(start..start + 5) else {
            return Ok(None);
        };
        let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if length < 4 || length > self.limit {
            return Err(CodecError::Length {
                length: length.into(),
                limit: self.limit as usize,
            });
        }
        // Grow with what arrives, never to the announced length at once.
        Ok((self.buf.len() - start > length as usize).then_some(length))
    }

    /// Forgets the messages taken.
    fn drop_taken(&mut self) {
        self.buf.advance(std::mem::take(&mut self.taken) as usize);
    }

    /// Holds messages read from now on to `limit` bytes (a pooled server connection takes
    /// the limit of the listener whose client leases it).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = word_limit(limit);
    }

    /// Adds bytes as if read (tests and fuzzing feed captured traffic this way).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether bytes of a message not yet whole are waiting.
    pub fn has_partial(&self) -> bool {
        self.buf.len() > self.taken as usize
    }

    /// Drops everything buffered (the connection is being closed or reset).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.taken = 0;
    }
}

/// `limit` as a message length word can reach it, short of `u32::MAX` so that a whole
/// message (type byte and length) can be counted in a word.
fn word_limit(limit: usize) -> u32 {
    u32::try_from(limit).unwrap_or(u32::MAX).min(u32::MAX - 1)
}

/// Splits a NUL-terminated string off the front of `bytes`.
fn cstr(bytes: &[u8]) -> Result<(&[u8], &[u8]), CodecError> {
    super::codec::split_cstr(bytes).ok_or(CodecError::Malformed("string without its NUL"))
}

/// A Parse message: statement name, query text, and the parameter-type section as sent.
#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Statement name; empty for the unnamed statement.
    pub name: &'a [u8],
    /// The query text.
    pub query: &'a [u8],
    /// Parameter count and type OIDs, exactly as the client sent them.
    pub types: &'a [u8],
}

impl<'a> Parse<'a> {
    /// Reads a Parse body.
    pub fn read(body: &'a [u8]) -> Result<Self, CodecError> {
        let (name, rest) = cstr(body)?;
        let (query, types) = cstr(rest)?;
        let mut check = types;
        if check.len() < 2 {
            return Err(CodecError::Malformed("Parse without its parameter count"));
        }
        let count = check.get_u16() as usize;
        if check.len() != count * 4 {
            return Err(CodecError::Malformed("Parse parameter types truncated"));
        }
        Ok(Self { name, query, types })
    }

    /// This Parse under another statement name.
    pub fn renamed(&self, name: &str) -> Frame {
        let mut body = Vec::with_capacity(name.len() + self.query.len() + self.types.len() + 2);
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(self.query);
        body.push(0);
        body.extend_from_slice(self.types);
        Frame::new(b'P', &body)
    }
}

/// The statement a Bind message binds, and where that name sits in the body.
pub fn bind_statement(body: &[u8]) -> Result<&[u8], CodecError> {
    let (_portal, rest) = cstr(body)?;
    let (statement, _) = cstr(rest)?;
    Ok(statement)
}

/// A Bind message with its statement name replaced.
pub fn bind_renamed(body: &[u8], statement: &str) -> Result<Frame, CodecError> {
    let (portal, rest) = cstr(body)?;
    let (_, rest) = cstr(rest)?;
    let mut out = Vec::with_capacity(body.len() + statement.len());
    out.extend_from_slice(portal);
    out.push(0);
    out.extend_from_slice(statement.as_bytes());
    out.push(0);
    out.extend_from_slice(rest);
    Ok(Frame::new(b'B', &out))
}

/// What a Describe or Close message targets: `S` a statement or `P` a portal, and its name.
pub fn target(body: &[u8]) -> Result<(u8, &[u8]), CodecError> {
    let (&kind, rest) = body
        .split_first()
        .ok_or(CodecError::Malformed("Describe/Close without a target"))?;
    if kind != b'S' && kind != b'P' {
        return Err(CodecError::Malformed("Describe/Close target is not S or P"));
    }
    let (name, rest) = cstr(rest)?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed("bytes after a Describe/Close name"));
    }
    Ok((kind, name))
}

/// A Describe (`D`) or Close (`C`) of the statement `name`.
pub fn statement_message(tag: u8, name: &str) -> Frame {
    let mut body = Vec::with_capacity(name.len() + 2);
    body.push(b'S');
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    Frame::new(tag, &body)
}

/// A simple Query message.
pub fn query(sql: &str) -> Frame {
    let mut body = Vec::with_capacity(sql.len() + 1);
    body.extend(sql.bytes().filter(|&b| b != 0));
    body.push(0);
    Frame::new(b'Q', &body)
}

/// The SQL text of a Query body, without its NUL.
pub fn query_text(body: &[u8]) -> Result<&[u8], CodecError> {
    Ok(cstr(body)?.0)
}

/// The ErrorResponse `body` with severity ERROR instead of FATAL or PANIC (the server
/// connection ends, but the proxy keeps the client's session); `None` if it was not fatal.
pub fn downgrade_fatal(body: &[u8]) -> Option<Frame> {
    let mut fatal = false;
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let (value, next) = cstr(after).ok()?;
        let severity = matches!(field, b'S' | b'V');
        let replaced = severity && matches!(value, b"FATAL" | b"PANIC");
        fatal |= replaced;
        out.push(field);
        out.extend_from_slice(if replaced { b"ERROR" } else { value });
        out.push(0);
        rest = next;
    }
    out.push(0);
    fatal.then(|| Frame::new(b'E', &out))
}

/// An ErrorResponse of severity ERROR: the transaction failed, the session goes on.
pub fn error(code: &str, message: &str) -> Frame {
    Frame(Bytes::from(super::errors::error_response(
        "ERROR", code, message,
    )))
}

/// A Sync message.
pub fn sync() -> Frame {
    Frame::new(b'S', &[])
}

/// ReadyForQuery with a transaction status (`I`, `T` or `E`).
pub fn ready_for_query(status: u8) -> Frame {
    Frame::new(b'Z', &[status])
}

#[cfg(test)]
mod tests {
    use super::super::errors::error_field;
    use super::*;

    // The shape tokio-postgres sends: Parse of statement "s0" with one int4 parameter,
    // and its Bind with one text parameter.
    const PARSE: &[u8] = b"P\x00\x00\x00\x20s0\x00SELECT $1::int + 1\x00\x00\x01\x00\x00\x00\x17";
    const BIND: &[u8] = b"B\x00\x00\x00\x13\x00s0\x00\x00\x00\x00\x01\x00\x00\x00\x01\x37\x00\x00";

    fn frames(bytes: &[u8]) -> Vec<Frame> {
        let mut reader = FrameReader::new(1 << 20);
        reader.feed(bytes);
        std::iter::from_fn(|| reader.next_frame().ok().flatten().map(Message::to_frame)).collect()
    }

    #[test]
    fn reads_whole_messages_and_waits_for_partial_ones() {
        let mut reader = FrameReader::new(1 << 20);
        reader.feed(&PARSE[..10]);
        assert_eq!(reader.next_frame().ok(), Some(None));
        reader.feed(&PARSE[10..]);
        reader.feed(BIND);
        // A look leaves the message for the next take.
        let peeked = reader.peek_frame().ok().flatten().map(Message::to_frame);
        assert_eq!(peeked.as_ref().map(|f| &f.0[..]), Some(PARSE));
        assert_eq!(reader.next_frame().ok().flatten().map(|f| f.0), Some(PARSE));
        assert_eq!(
            reader.peek_frame().ok().flatten().map(|f| f.tag()),
            Some(b'B')
        );
        assert_eq!(
            reader.next_frame().ok().flatten().map(|f| f.tag()),
            Some(b'B')
        );
        assert!(!reader.has_partial());
    }

    #[test]
    fn refuses_lengths_over_the_limit_or_under_four() {
        let mut reader = FrameReader::new(100);
        reader.feed(b"Q\x7f\xff\xff\xff");
        assert!(reader.next_frame().is_err());
        let mut reader = FrameReader::new(100);
        reader.feed(b"Q\x00\x00\x00\x03");
        assert!(reader.next_frame().is_err());
    }

    #[test]
    fn renames_statements_in_parse_and_bind() {
        let all = frames(&[PARSE, BIND].concat());
        let parse = Parse::read(all[0].body()).expect("parse");
        assert_eq!(parse.name, b"s0");
        assert_eq!(parse.query, b"SELECT $1::int + 1");
        let renamed = parse.renamed("sy_abc");
        let again = Parse::read(renamed.body()).expect("renamed parse");
        assert_eq!(
            (again.name, again.query, again.types),
            (&b"sy_abc"[..], parse.query, parse.types)
        );
        assert_eq!(bind_statement(all[1].body()).ok(), Some(&b"s0"[..]));
        let bind = bind_renamed(all[1].body(), "sy_abc").expect("bind");
        assert_eq!(bind_statement(bind.body()).ok(), Some(&b"sy_abc"[..]));
        assert_eq!(
            &bind.body()[bind.body().len() - 9..],
            &all[1].body()[all[1].body().len() - 9..]
        );
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        assert!(Parse::read(b"s0").is_err());
        assert!(Parse::read(b"s0\0SELECT 1\0\x00\x02\x00\x00\x00\x17").is_err());
        assert!(bind_statement(b"\0s0").is_err());
        assert!(target(b"").is_err());
        assert!(target(b"Xname\0").is_err());
        assert_eq!(target(b"Sname\0").ok(), Some((b'S', &b"name"[..])));
    }

    #[test]
    fn mutated_traffic_frames_and_parses_without_panicking() {
        let fatal: &[u8] = b"E\x00\x00\x00\x1eSFATAL\x00VFATAL\x00C57P01\x00Mbye\x00\x00";
        let seeds = [PARSE, BIND, fatal, b"Q\x00\x00\x00\x0dSELECT 1\x00"];
        let mut mutator = crate::testing::Mutator::new();
        for round in 0..20_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            mutator.mutate(&mut input);
            let mut reader = FrameReader::new(1 << 16);
            reader.feed(&input);
            while let Ok(Some(frame)) = reader.next_frame() {
                let body = frame.body();
                let _ = (query_text(body), target(body));
                if let Ok(parse) = Parse::read(body) {
                    let again = parse.renamed("sy_x");
                    assert!(Parse::read(again.body()).is_ok());
                }
                if bind_statement(body).is_ok() {
                    assert!(bind_renamed(body, "sy_x").is_ok());
                }
                let _ = downgrade_fatal(body);
            }
        }
    }

    #[test]
    fn fatal_errors_are_downgraded_and_others_left_alone() {
        // What PostgreSQL 15 sends to a backend terminated by pg_terminate_backend.
        let fatal = b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0Fpostgres.c\0L3200\0RProcessInterrupts\0\0";
        let downgraded = downgrade_fatal(fatal).expect("fatal");
        let text = String::from_utf8_lossy(downgraded.body()).into_owned();
        assert!(text.starts_with("SERROR\0VERROR\0C57P01\0"), "{text}");
        assert_eq!(error_field(downgraded.body(), b'C'), Some("57P01"));
        assert!(downgrade_fatal(b"SERROR\0VERROR\0C42P01\0Mx\0\0").is_none());
        assert!(downgrade_fatal(b"SFATAL\0Vtrunc").is_none());
    }
}
