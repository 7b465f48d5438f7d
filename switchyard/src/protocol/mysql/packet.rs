//! Packet framing: a 3-byte little-endian payload length and a 1-byte sequence id before
//! every payload. A payload of 16 MiB - 1 bytes or more is split into pieces of
//! 0xFFFFFF bytes, each a packet of its own, ended by a shorter piece (possibly empty);
//! [`PacketReader`] joins them back and [`encode_packet`] splits them.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// The largest piece one packet carries; a piece this long means another follows.
pub const MAX_PIECE: usize = 0xFF_FFFF;

/// Why bytes from a peer are not a valid packet.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The socket failed or closed mid-packet.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A payload over the configured limit.
    #[error("packet of {length} bytes or more is over the limit of {limit}")]
    TooLarge {
        /// The payload length announced so far.
        length: u64,
        /// The most accepted.
        limit: usize,
    },
    /// A piece of a split payload out of sequence.
    #[error("packet out of order: sequence id {got}, expected {expected}")]
    Sequence {
        /// The sequence id that should have come.
        expected: u8,
        /// The one that came.
        got: u8,
    },
    /// The content does not follow the protocol.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

/// One whole payload, its pieces joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The sequence id of the payload's last piece; a reply carries [`Packet::next`].
    pub sequence: u8,
    /// The payload, without headers.
    pub payload: Bytes,
}

impl Packet {
    /// The sequence id the answer to this packet carries.
    pub fn next(&self) -> u8 {
        self.sequence.wrapping_add(1)
    }

    /// The first payload byte, which tells OK (0x00), ERR (0xFF), EOF or AuthSwitchRequest
    /// (0xFE) and AuthMoreData (0x01) apart; `None` for an empty payload.
    pub fn header(&self) -> Option<u8> {
        self.payload.first().copied()
    }
}

/// Appends `payload` framed as packets starting at sequence id `sequence`, split into
/// pieces as needed; returns the sequence id of the next packet.
pub fn encode_packet(sequence: u8, payload: &[u8], out: &mut Vec<u8>) -> u8 {
    out.reserve(payload.len() + 4 * (payload.len() / MAX_PIECE + 1));
    let mut sequence = sequence;
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_PIECE);
        out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        out.push(sequence);
        out.extend_from_slice(&rest[..n]);
        sequence = sequence.wrapping_add(1);
        rest = &rest[n..];
        if n < MAX_PIECE {
            return sequence;
        }
    }
}

/// `payload` framed as packets starting at `sequence`.
pub fn packet(sequence: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_packet(sequence, payload, &mut out);
    out
}

/// Writes `payload` as packets starting at `sequence`; returns the next sequence id.
pub async fn write_packet<S: AsyncWrite + Unpin>(
    stream: &mut S,
    sequence: u8,
    payload: &[u8],
) -> io::Result<u8> {
    let mut out = Vec::new();
    let next = encode_packet(sequence, payload, &mut out);
    crate::net::send_all(stream, &out).await?;
    Ok(next)
}

/// Reads packets from one side of a connection into a buffer. `fill` is a single read
/// (safe to abandon in a `select!`); `next_packet` takes whole payloads without waiting.
#[derive(Debug)]
pub struct PacketReader {
    buf: BytesMut,
    limit: usize,
    /// Whether its buffers come from the lasting heap (see [`PacketReader::keep_lasting`]).
    lasting: bool,
}

impl PacketReader {
    /// A reader refusing payloads longer than `limit` bytes (pieces joined).
    pub fn new(limit: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(8 * 1024),
            limit,
            lasting: false,
        }
    }

    /// Takes every buffer from now on from the lasting heap (`memory`), for a connection
    /// that keeps its reader for its life (a pooled server connection). Its buffer is
    /// replaced as it fills while payloads read before are still held, which happens while
    /// a client's transaction runs: in the main heap, the few server buffers would each pin
    /// a page of the clients' freed allocations.
    pub fn keep_lasting(&mut self) {
        self.lasting = true;
    }

    /// Reads what the stream has; `Ok(0)` is the end of the stream.
    pub async fn fill<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            crate::memory::lasting_if(self.lasting, || self.buf.reserve(8 * 1024));
        }
        stream.read_buf(&mut self.buf).await
    }

    /// Like [`PacketReader::fill`], for a wait that may last (a pooled client between
    /// transactions): the buffer is given back while nothing is partly read and the stream
    /// has nothing, and `on_wait` runs (see [`crate::net::poll_fill_idle`]).
    /// A poll, so that the wait between transactions keeps no future of its own for the
    /// read.
    pub fn poll_fill_idle<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        stream: &mut S,
        on_wait: &mut impl FnMut(),
    ) -> std::task::Poll<io::Result<usize>> {
        crate::net::poll_fill_idle(cx, &mut self.buf, 8 * 1024, stream, on_wait)
    }

    /// Waits for the next whole payload; the end of the stream mid-way is an error.
    pub async fn read<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<Packet, CodecError> {
        loop {
            if let Some(packet) = self.next_packet()? {
                return Ok(packet);
            }
            if self.fill(stream).await? == 0 {
                return Err(CodecError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// The next whole payload in the buffer, if all its pieces have arrived. The limit is
    /// checked on each piece's header, before its bytes are waited for.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, CodecError> {
        let mut offset = 0;
        let mut total = 0usize;
        let mut pieces = 0usize;
        let mut first = None;
        let sequence = loop {
            let Some(header) = self.buf.get(offset..offset + 4) else {
                return Ok(None);
            };
            let length =
                usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
            let sequence = header[3];
            let first = *first.get_or_insert(sequence);
            let expected = first.wrapping_add(pieces as u8);
            if sequence != expected {
                return Err(CodecError::Sequence {
                    expected,
                    got: sequence,
                });
            }
            total += length;
            if total > self.limit {
                return Err(CodecError::TooLarge {
                    length: total as u64,
                    limit: self.limit,
                });
            }
            // Grow with what arrives, never to the announced length at once.
            if self.buf.len() < offset + 4 + length {
                return Ok(None);
            }
            offset += 4 + length;
            pieces += 1;
            if length < MAX_PIECE {
                break sequence;
            }
        };
        // The first split makes the buffer's shared header, which lasts as the buffer does.
        let mut whole = crate::memory::lasting_if(self.lasting, || self.buf.split_to(offset));
        let payload = if pieces == 1 {
            let _ = whole.split_to(4);
            whole.freeze()
        } else {
            let mut joined = BytesMut::with_capacity(total);
            let mut rest = &whole[..];
            while let Some((header, after)) = rest.split_first_chunk::<4>() {
                let length = usize::from(header[0])
                    | usize::from(header[1]) << 8
                    | usize::from(header[2]) << 16;
                joined.extend_from_slice(&after[..length]);
                rest = &after[length..];
            }
            joined.freeze()
        };
        Ok(Some(Packet { sequence, payload }))
    }

    /// Adds bytes as if read (tests and fuzzing feed captured traffic this way).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Changes the longest payload accepted from here on.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Takes the bytes read and not yet taken as packets (to pass them on when the relay
    /// of raw bytes begins).
    pub fn take_buffered(&mut self) -> BytesMut {
        self.buf.split()
    }

    /// Whether bytes of a packet not yet whole are waiting (before a TLS upgrade, any is
    /// a peer sending unencrypted data where only the handshake may come).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_payloads_frame_and_parse() {
        let framed = packet(3, b"\x03SELECT 1");
        assert_eq!(&framed[..4], &[9, 0, 0, 3]);
        let mut reader = PacketReader::new(1 << 20);
        reader.feed(&framed[..6]);
        assert_eq!(reader.next_packet().ok(), Some(None), "waits for the rest");
        reader.feed(&framed[6..]);
        let read = reader.next_packet().ok().flatten().expect("a packet");
        assert_eq!(read.sequence, 3);
        assert_eq!(read.next(), 4);
        assert_eq!(&read.payload[..], b"\x03SELECT 1");
        assert!(!reader.has_partial());
        assert_eq!(packet(0, b""), vec![0, 0, 0, 0]);
    }

    #[test]
    fn payloads_of_16_mib_and_more_are_split_and_joined() {
        for size in [MAX_PIECE - 1, MAX_PIECE, MAX_PIECE + 1, 2 * MAX_PIECE] {
            let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let mut framed = Vec::new();
            let next = encode_packet(255, &payload, &mut framed);
            let pieces = size / MAX_PIECE + 1;
            assert_eq!(next, 255u8.wrapping_add(pieces as u8), "size {size}");
            assert_eq!(framed.len(), size + 4 * pieces);
            let mut reader = PacketReader::new(64 << 20);
            // Arrives in chunks, as from a socket.
            for chunk in framed.chunks(1 << 20) {
                assert!(matches!(reader.next_packet(), Ok(None)));
                reader.feed(chunk);
            }
            let packet = reader.next_packet().ok().flatten().expect("joined");
            assert_eq!(packet.payload.len(), size);
            assert!(packet.payload[..] == payload[..], "size {size}");
            assert_eq!(packet.next(), next);
        }
    }

    #[test]
    fn limits_and_sequence_errors() {
        let mut reader = PacketReader::new(100);
        reader.feed(&[0xff, 0xff, 0xff, 0]);
        assert!(matches!(
            reader.next_packet(),
            Err(CodecError::TooLarge { .. })
        ));
        // Two pieces whose sum is over the limit, refused at the second header.
        let mut reader = PacketReader::new(MAX_PIECE + 10);
        let mut framed = Vec::new();
        encode_packet(0, &vec![0; MAX_PIECE + 20], &mut framed);
        reader.feed(&framed);
        assert!(matches!(
            reader.next_packet(),
            Err(CodecError::TooLarge { .. })
        ));
        // A continuation piece with the wrong sequence id.
        let mut bad = framed[..4 + MAX_PIECE].to_vec();
        bad.extend_from_slice(&[1, 0, 0, 7, b'x']);
        let mut reader = PacketReader::new(64 << 20);
        reader.feed(&bad);
        assert!(matches!(
            reader.next_packet(),
            Err(CodecError::Sequence {
                expected: 1,
                got: 7
            })
        ));
    }

    #[tokio::test]
    async fn read_waits_for_whole_packets_and_reports_a_cut_stream() {
        let framed = [packet(0, b"hello"), packet(1, b"world")].concat();
        let mut stream: &[u8] = &framed;
        let mut reader = PacketReader::new(100);
        assert_eq!(
            &reader.read(&mut stream).await.expect("first").payload[..],
            b"hello"
        );
        assert_eq!(reader.read(&mut stream).await.expect("second").sequence, 1);
        let mut cut: &[u8] = &framed[..7];
        let mut reader = PacketReader::new(100);
        assert!(matches!(
            reader.read(&mut cut).await,
            Err(CodecError::Io(_))
        ));
    }
}
